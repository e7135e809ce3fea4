"""The contract every served model follows.

A served model is an ``nn.Module`` that

* declares what it accepts (:class:`InputSpec`) and what it returns (:class:`OutputSpec`), so the
  service can derive request schemas, example payloads and load-test data without knowing the model;
* has a ``forward`` with two branches: in training mode it takes targets and returns
  :class:`TrainingOutput` (logits and a differentiable loss); in eval mode it returns class
  probabilities and skips training-only work;
* carries its own preprocessing (standardization as buffers), so a raw client instance is all it needs.

The service calls models only through ``model(x)`` (``nn.Module.__call__``) so forward hooks fire.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple

import torch
from torch import nn


@dataclass(frozen=True)
class InputSpec:
    """One instance as a client sends it (no batch dimension)."""

    shape: tuple[int, ...]
    dtype: str = "float32"
    min_value: float | None = None
    max_value: float | None = None
    description: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "shape": list(self.shape)}

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)


@dataclass(frozen=True)
class OutputSpec:
    """What one prediction holds. Only classification is served today."""

    labels: tuple[str, ...]
    task: str = "classification"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "labels": list(self.labels)}


class TrainingOutput(NamedTuple):
    """What the training branch returns: logits always, a loss when targets were given."""

    logits: torch.Tensor
    loss: torch.Tensor | None


@dataclass(frozen=True)
class ModelCard:
    """Static facts about a registered model, used by the registry, the CLI and the README table."""

    name: str
    task: str
    dataset: str | None
    synthetic_weights: bool = False
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


class ServableModel(nn.Module):
    """Base class of the shipped models: holds the specs and the shared two-branch logic.

    Subclasses implement :meth:`logits` (raw scores for a batch of *raw* instances, preprocessing
    included). ``forward`` then picks the branch from ``self.training``.
    """

    input_spec: InputSpec
    output_spec: OutputSpec

    def __init__(self, input_spec: InputSpec, output_spec: OutputSpec) -> None:
        super().__init__()
        self.input_spec = input_spec
        self.output_spec = output_spec

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor, targets: torch.Tensor | None = None) -> TrainingOutput | torch.Tensor:
        logits = self.logits(x)
        if self.training:
            loss = None if targets is None else nn.functional.cross_entropy(logits.float(), targets)
            return TrainingOutput(logits, loss)
        # Softmax in float32: under autocast the logits may be bf16/fp16, and probabilities must sum to 1.
        return torch.softmax(logits.float(), dim=-1)

    def example_input(self, batch_size: int = 1, seed: int = 0) -> torch.Tensor:
        return example_batch(self.input_spec, batch_size, seed)


def example_batch(spec: InputSpec, batch_size: int = 1, seed: int = 0) -> torch.Tensor:
    """A valid random batch, in range, for warm-up and smoke tests (works for any model with a spec)."""
    generator = torch.Generator().manual_seed(seed)
    low = spec.min_value if spec.min_value is not None else -1.0
    high = spec.max_value if spec.max_value is not None else 1.0
    shape = (batch_size, *spec.shape)
    return low + (high - low) * torch.rand(shape, generator=generator, dtype=spec.torch_dtype)
