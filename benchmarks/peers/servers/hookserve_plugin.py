"""The harness's models as hookserve plug-ins (``source: hookserve_plugin:tiny``).

Same architecture and seeded weights as every other peer (the harness's models.py, loaded here as
``peers_models`` because hookserve has a ``models`` package of its own), wrapped in hookserve's
duck-typed contract: ``input_spec``/``output_spec`` and a two-branch forward whose eval branch returns
float32 probabilities. The harness compares their log with the expected logits' log-softmax.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch
from models.base import InputSpec, OutputSpec  # hookserve's contract
from torch import nn

_spec = importlib.util.spec_from_file_location("peers_models", Path(__file__).resolve().parent.parent / "models.py")
peers_models = sys.modules["peers_models"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(peers_models)


class Plugin(nn.Module):
    def __init__(self, name: str) -> None:
        super().__init__()
        self.net = peers_models.build(name)
        self.input_spec = InputSpec(shape=peers_models.SPECS[name].input_shape, description=f"peers harness {name}")
        self.output_spec = OutputSpec(labels=tuple(str(i) for i in range(peers_models.NUM_CLASSES)))

    def forward(self, x: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        logits = self.net(x)
        if self.training:
            return logits
        return torch.softmax(logits.float(), dim=-1)


def tiny() -> Plugin:
    return Plugin("tiny").eval()


def mid() -> Plugin:
    return Plugin("mid").eval()
