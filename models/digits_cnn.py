"""digits-cnn: a small CNN on scikit-learn's 8x8 handwritten digits.

Input: raw pixel intensities 0..16, shape (8, 8). The model scales them to 0..1 itself.

    features.conv1 -> bn1 -> relu        8x8, width channels
    features.conv2 -> bn2 -> relu -> pool  4x4, 2*width
    features.conv3 -> bn3 -> relu -> pool  2x2, 2*width
    head.dropout -> head.fc               10 classes
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from models.base import InputSpec, ModelCard, OutputSpec, ServableModel
from models.registry import register_model

DIGIT_LABELS = tuple(str(digit) for digit in range(10))
MAX_PIXEL = 16.0


@dataclass(frozen=True)
class DigitsCNNConfig:
    width: int = 32
    dropout: float = 0.25


def _conv_bn_relu(in_channels: int, out_channels: int) -> list[nn.Module]:
    return [
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(),
    ]


class DigitsCNN(ServableModel):
    def __init__(self, config: DigitsCNNConfig) -> None:
        super().__init__(
            InputSpec(
                shape=(8, 8),
                min_value=0.0,
                max_value=MAX_PIXEL,
                description="8x8 grayscale digit, pixel intensities 0..16 (scikit-learn digits)",
            ),
            OutputSpec(labels=DIGIT_LABELS),
        )
        self.config = config
        w = config.width
        self.register_buffer("pixel_scale", torch.tensor(1.0 / MAX_PIXEL))
        conv1, bn1, relu1 = _conv_bn_relu(1, w)
        conv2, bn2, relu2 = _conv_bn_relu(w, 2 * w)
        conv3, bn3, relu3 = _conv_bn_relu(2 * w, 2 * w)
        self.features = nn.Sequential(
            OrderedDict(
                conv1=conv1, bn1=bn1, relu1=relu1,
                conv2=conv2, bn2=bn2, relu2=relu2, pool2=nn.MaxPool2d(2),
                conv3=conv3, bn3=bn3, relu3=relu3, pool3=nn.MaxPool2d(2),
            )
        )  # fmt: skip
        self.head = nn.Sequential(
            OrderedDict(flatten=nn.Flatten(), dropout=nn.Dropout(config.dropout), fc=nn.Linear(8 * w, 10))
        )

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        x = (x * self.pixel_scale).unsqueeze(1)  # (B, 8, 8) raw -> (B, 1, 8, 8) in 0..1
        return self.head(self.features(x))


@register_model(
    ModelCard(
        name="digits-cnn",
        task="image classification (8x8 digits)",
        dataset="digits",
        notes="3 conv layers with BatchNorm, dropout before the classifier; input scaled /16 inside",
    )
)
def digits_cnn(**overrides: Any) -> DigitsCNN:
    return DigitsCNN(DigitsCNNConfig(**overrides))
