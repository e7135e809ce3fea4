"""Module selection: levels, include/exclude globs, the cap, and the shipped models' defaults."""

from __future__ import annotations

import logging

import pytest
from torch import nn

from models.registry import create_model
from service.monitoring.config import MonitorConfig
from service.monitoring.selection import select_modules


def names(model: nn.Module, **config: object) -> list[str]:
    return [name for name, _ in select_modules(model, MonitorConfig.model_validate(config))]


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.norm = nn.BatchNorm2d(4)
        self.act = nn.ReLU()


class Net(nn.Module):
    def __init__(self, depth: int = 3) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
        self.blocks = nn.ModuleList(Block() for _ in range(depth))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(4, 10)


class Wrapper(nn.Module):
    """A backbone holding a stack of blocks is looked into, not hooked as one module."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = Net()


def test_block_level_picks_blocks_and_layers_outside_them() -> None:
    assert names(Net()) == ["stem.0", "blocks.0", "blocks.1", "blocks.2", "head"]
    assert names(Wrapper()) == ["backbone.stem.0", "backbone.blocks.0", "backbone.blocks.1",
                                "backbone.blocks.2", "backbone.head"]  # fmt: skip


def test_leaf_and_all_levels() -> None:
    leaves = names(Net(depth=1), level="leaf")
    assert leaves == ["stem.0", "stem.1", "blocks.0.conv", "blocks.0.norm", "blocks.0.act", "pool", "head"]
    everything = names(Net(depth=1), level="all")
    assert everything[:3] == ["stem", "stem.0", "stem.1"] and "blocks" in everything and "" not in everything


def test_include_replaces_the_level_and_exclude_removes() -> None:
    assert names(Net(), include=["blocks.*.conv", "head"]) == [
        "blocks.0.conv", "blocks.1.conv", "blocks.2.conv", "head"
    ]  # fmt: skip
    assert names(Net(), exclude=["blocks.1", "stem.*"]) == ["blocks.0", "blocks.2", "head"]
    assert names(Net(), include=["blocks.*.conv"], exclude=["blocks.0.*"]) == [
        "blocks.1.conv",
        "blocks.2.conv",
    ]


def test_cap_keeps_the_first_modules_in_model_order(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        capped = names(Net(depth=10), level="leaf", max_modules=4)
    assert capped == ["stem.0", "stem.1", "blocks.0.conv", "blocks.0.norm"]
    assert "first 4 of" in caplog.text


def test_default_cap_bounds_the_label_count() -> None:
    assert len(names(Net(depth=60), level="leaf")) == MonitorConfig().max_modules


@pytest.mark.parametrize(
    ("model_name", "expected"),
    [
        ("digits-cnn", ["features.conv1", "features.conv2", "features.conv3", "head.fc"]),
        ("tabular-mlp", ["blocks.0.fc", "blocks.1.fc", "head"]),
        ("digits-transformer", ["patch_embed", "blocks.0", "blocks.1", "head"]),
        ("resnet-bench", ["stem.conv", *[f"layer{s}.{i}" for s in range(1, 5) for i in range(2)], "fc"]),
    ],
)
def test_shipped_models_default_selection(model_name: str, expected: list[str]) -> None:
    assert names(create_model(model_name)) == expected
