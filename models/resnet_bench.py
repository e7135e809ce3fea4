"""resnet-bench: a ResNet-style CNN with SYNTHETIC weights, for load and monitoring benchmarks only.

Its predictions mean nothing: the weights are drawn from a fixed seed (``config.seed``) inside the
factory, and BatchNorm running statistics are calibrated on one seeded batch of noise images so that
activations stay in a realistic range in eval mode. Same seed, same model, on any machine; no
checkpoint is needed.

Input: an RGB image, shape (3, 64, 64), values 0..1 (normalized inside). ResNet-18 layout (basic
blocks, ``depth`` blocks per stage, 4 stages of width w, 2w, 4w, 8w) after a stride-2 stem:

    stem.conv (3x3, stride 2) -> stem.bn -> stem.relu          32x32, w
    layer1..layer4.{i}: conv1 -> bn1 -> relu1 -> conv2 -> bn2 (+ downsample) -> relu2
                                                               32, 16, 8, 4 px
    pool -> fc                                                 10 classes

Cost at the defaults (width=40, depth=2): 0.435 GFLOP per image, 27.8 GFLOP per batch of 64, as counted
by ``torch.utils.flop_counter.FlopCounterMode`` (2 FLOPs per multiply-add); 4.37 M parameters. That is
the compute of a mid-sized CNN, a ResNet-18 layout of width 40 on 32x32 inputs (the stride-2 stem brings
64x64 down to 32x32), so numbers compare with servers measured on such a model.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from models.base import InputSpec, ModelCard, OutputSpec, ServableModel
from models.registry import register_model

N_CLASSES = 10
IMAGE_SIZE = 64
CALIBRATION_BATCH = 8


@dataclass(frozen=True)
class ResNetBenchConfig:
    width: int = 40
    depth: int = 2
    seed: int = 0


class BasicBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                OrderedDict(
                    conv=nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                    bn=nn.BatchNorm2d(out_channels),
                )
            )
        # Separate ReLU modules (not one reused twice, as torchvision does) so each hook sees one tensor.
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + identity)


class ResNetBench(ServableModel):
    def __init__(self, config: ResNetBenchConfig) -> None:
        super().__init__(
            InputSpec(
                shape=(3, IMAGE_SIZE, IMAGE_SIZE),
                min_value=0.0,
                max_value=1.0,
                description="RGB image 3x64x64, values 0..1 (synthetic-weights benchmark model)",
            ),
            OutputSpec(labels=tuple(f"class_{i}" for i in range(N_CLASSES))),
        )
        self.config = config
        w = config.width
        self.register_buffer("input_mean", torch.full((3, 1, 1), 0.5))
        self.register_buffer("input_std", torch.full((3, 1, 1), 0.25))
        self.stem = nn.Sequential(
            OrderedDict(
                conv=nn.Conv2d(3, w, 3, stride=2, padding=1, bias=False),
                bn=nn.BatchNorm2d(w),
                relu=nn.ReLU(),
            )
        )
        widths = [w, 2 * w, 4 * w, 8 * w]
        in_channels = w
        for stage, out_channels in enumerate(widths, start=1):
            # The first block of stages 2..4 halves the resolution and changes the width.
            stride = 1 if stage == 1 else 2
            blocks = [BasicBlock(in_channels, out_channels, stride)]
            blocks += [BasicBlock(out_channels, out_channels, 1) for _ in range(config.depth - 1)]
            self.add_module(f"layer{stage}", nn.Sequential(*blocks))
            in_channels = out_channels
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[-1], N_CLASSES)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem((x - self.input_mean) / self.input_std)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.pool(x), 1))

    @torch.no_grad()
    def calibrate_batchnorm(self, images: torch.Tensor) -> None:
        """Set every BatchNorm's running statistics to the statistics of ``images`` (a raw input batch)."""
        was_training = self.training
        batchnorms = [m for m in self.modules() if isinstance(m, nn.BatchNorm2d)]
        for bn in batchnorms:
            bn.reset_running_stats()
            bn.momentum = None  # cumulative average: after one batch, running stats == that batch's stats
        self.train()
        self.logits(images)
        for bn in batchnorms:
            bn.momentum = 0.1
        self.train(was_training)


@register_model(
    ModelCard(
        name="resnet-bench",
        task="image classification (synthetic weights, benchmark only)",
        dataset=None,
        synthetic_weights=True,
        notes="ResNet-18 layout on 3x64x64; random weights from a fixed seed; predictions are meaningless",
        extra={"gflop_per_image": 0.435, "gflop_per_batch_64": 27.8, "parameters": 4_368_690},
    )
)
def resnet_bench(**overrides: Any) -> ResNetBench:
    config = ResNetBenchConfig(**overrides)
    # A private RNG stream: building the model must not disturb (or depend on) the caller's global seed.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = ResNetBench(config)
        model.calibrate_batchnorm(torch.rand(CALIBRATION_BATCH, 3, IMAGE_SIZE, IMAGE_SIZE))
    return model
