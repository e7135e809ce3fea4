"""Build a served model from its config: registry name or import path, plus safely loaded weights."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from models.base import InputSpec, ModelCard, OutputSpec, ServableModel
from models.checkpoint import load_pretrained
from models.registry import get_card
from service.config import ModelServeConfig


def load_served_model(config: ModelServeConfig) -> tuple[ServableModel, ModelCard]:
    """The model in eval mode on the CPU, with its card. Raises with a clear message when it cannot."""
    card = get_card(config.model_source)
    model = load_pretrained(config.model_source, checkpoint=config.checkpoint, **config.overrides)
    return model.eval(), card


@dataclass(frozen=True)
class ModelDescription:
    """What the API servers need to know about a model without running it."""

    input_spec: InputSpec
    output_spec: OutputSpec
    card: ModelCard
    parameters: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "input": self.input_spec.to_dict(),
            "output": self.output_spec.to_dict(),
            "task": self.card.task,
            "dataset": self.card.dataset,
            "synthetic_weights": self.card.synthetic_weights,
            "parameters": self.parameters,
        }


def describe_model(config: ModelServeConfig) -> ModelDescription:
    """Load once in the main process: proves the model and checkpoint load before workers start."""
    model, card = load_served_model(config)
    return ModelDescription(
        model.input_spec, model.output_spec, card, sum(p.numel() for p in model.parameters())
    )
