"""Servable models: the contract (:mod:`models.base`), the registry, checkpoints and the shipped models.

Typical use: ``model = load_pretrained("digits-cnn")`` gives the trained model in eval mode, and
``model(x)`` on a raw batch of shape ``(N, *model.input_spec.shape)`` gives class probabilities.
"""

from models.base import InputSpec, ModelCard, OutputSpec, ServableModel, TrainingOutput
from models.checkpoint import UnsafeCheckpointError, load_checkpoint, load_pretrained, save_checkpoint
from models.registry import UnknownModelError, create_model, get_card, list_models, register_model

__all__ = [
    "InputSpec",
    "ModelCard",
    "OutputSpec",
    "ServableModel",
    "TrainingOutput",
    "UnknownModelError",
    "UnsafeCheckpointError",
    "create_model",
    "get_card",
    "list_models",
    "load_checkpoint",
    "load_pretrained",
    "register_model",
    "save_checkpoint",
]
