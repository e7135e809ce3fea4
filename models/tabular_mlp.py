"""tabular-mlp: an MLP on scikit-learn's breast-cancer dataset (30 features, malignant vs benign).

Input: the 30 raw measurements in their own units. Standardization is part of the model: ``feature_mean``
and ``feature_std`` are buffers fitted on the training split (:meth:`TabularMLP.fit_preprocessing`) and
saved in the checkpoint, so clients send raw values.

    standardize -> blocks.{i}.fc -> relu -> dropout   (depth hidden layers)
    head                                             2 classes
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import torch
from torch import nn

from models.base import InputSpec, ModelCard, OutputSpec, ServableModel
from models.registry import register_model

N_FEATURES = 30
LABELS = ("malignant", "benign")


@dataclass(frozen=True)
class TabularMLPConfig:
    n_features: int = N_FEATURES
    width: int = 64
    depth: int = 2
    dropout: float = 0.2


class TabularMLP(ServableModel):
    def __init__(self, config: TabularMLPConfig) -> None:
        super().__init__(
            InputSpec(
                shape=(config.n_features,),
                description="30 raw breast-cancer measurements (scikit-learn load_breast_cancer order)",
            ),
            OutputSpec(labels=LABELS),
        )
        self.config = config
        # Identity until fitted; the checkpoint carries the fitted values.
        self.register_buffer("feature_mean", torch.zeros(config.n_features))
        self.register_buffer("feature_std", torch.ones(config.n_features))
        widths = [config.n_features] + [config.width] * config.depth
        self.blocks = nn.Sequential(
            *[
                nn.Sequential(
                    OrderedDict(fc=nn.Linear(n_in, n_out), relu=nn.ReLU(), dropout=nn.Dropout(config.dropout))
                )
                for n_in, n_out in pairwise(widths)
            ]
        )
        self.head = nn.Linear(widths[-1], len(LABELS))

    @torch.no_grad()
    def fit_preprocessing(self, train_x: torch.Tensor) -> None:
        """Fit the standardization buffers on the training inputs (raw values, shape (N, n_features))."""
        self.feature_mean.copy_(train_x.mean(dim=0))
        # A constant feature would divide by zero; clamp keeps it at 0 after centering.
        self.feature_std.copy_(train_x.std(dim=0).clamp_min(1e-6))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.feature_mean) / self.feature_std
        return self.head(self.blocks(x))


@register_model(
    ModelCard(
        name="tabular-mlp",
        task="tabular classification (breast cancer)",
        dataset="breast_cancer",
        notes="standardization buffers fitted on the training split; dropout after each hidden layer",
    )
)
def tabular_mlp(**overrides: Any) -> TabularMLP:
    return TabularMLP(TabularMLPConfig(**overrides))
