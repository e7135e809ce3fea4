"""Activation statistics: exact against float64 on known tensors, subsampling bounded and spread."""

from __future__ import annotations

import math

import pytest
import torch

from service.monitoring.stats import (
    STAT_NAMES,
    count_nonfinite,
    first_tensor,
    full_sum,
    summarize,
    take_subsample,
)


def reference_stats(x: torch.Tensor) -> list[float]:
    x = x.double().reshape(-1)
    return [
        x.mean().item(),
        x.std(correction=0).item(),
        x.min().item(),
        x.max().item(),
        (x == 0).double().mean().item(),
    ]


def test_stats_match_float64_on_known_tensors() -> None:
    generator = torch.Generator().manual_seed(0)
    relu_like = torch.relu(torch.randn(4, 16, 8, 8, generator=generator))  # ~half exact zeros
    shifted = 1000.0 + torch.randn(3000, generator=generator)  # large mean: naive variance cancels
    constant = torch.full((7, 5), -2.5)
    samples = [take_subsample(t, 4096) for t in (relu_like, shifted, constant)]

    got, order = summarize(samples)

    assert got.shape == (3, len(STAT_NAMES))
    assert sorted(order) == [0, 1, 2]  # grouped by length: relu_like (4096 of 4096) first
    tensors = (relu_like, shifted, constant)
    for row, index in zip(got.tolist(), order, strict=True):
        assert row == pytest.approx(reference_stats(tensors[index]), rel=1e-5, abs=1e-5)


def test_stats_are_float32_under_bfloat16_inputs() -> None:
    x = torch.linspace(-3, 3, 1000).to(torch.bfloat16)
    sample = take_subsample(x, 4096)
    assert sample.dtype == torch.float32
    assert summarize([sample])[0][0].tolist() == pytest.approx(reference_stats(x.float()), rel=1e-5, abs=1e-5)


def test_subsample_is_bounded_and_reads_the_whole_tensor() -> None:
    # 28x28 maps: a plain stride of numel // 4096 = 392 = 14 * 28 would read two columns only.
    x = torch.arange(64 * 32 * 28 * 28, dtype=torch.float32).reshape(64, 32, 28, 28)
    sample = take_subsample(x, 4096)
    assert sample.numel() == 4096
    assert sample.unique().numel() == 4096  # no element read twice
    columns = (sample.long() % 28).unique()
    assert columns.numel() == 28
    assert sample.min() < x.numel() * 0.01 and sample.max() > x.numel() * 0.99


def test_every_prefix_of_a_subsample_is_spread_over_the_tensor() -> None:
    # Drift histograms read a prefix: it must not be the first channels or the first images.
    small = torch.arange(32 * 8 * 8, dtype=torch.float32).reshape(1, 32, 8, 8)  # copied whole
    channels = (take_subsample(small, 4096)[:256].long() // 64).unique()
    assert channels.numel() == 32
    large = torch.arange(64 * 32 * 28 * 28, dtype=torch.float32).reshape(64, 32, 28, 28)
    images = (take_subsample(large, 4096)[:256].long() // (32 * 28 * 28)).unique()
    assert images.numel() >= 60


def test_subsample_copies_so_later_inplace_ops_do_not_change_it() -> None:
    x = torch.randn(100)
    sample = take_subsample(x, 4096)
    before = sample.clone()
    x.relu_()
    assert torch.equal(sample, before)


def test_full_sum_flags_any_nonfinite_and_count_is_exact() -> None:
    x = torch.randn(16, 32)
    assert math.isfinite(full_sum(x).item())
    x[3, 4] = float("nan")
    x[5, 6] = float("inf")
    x[7, 8] = float("-inf")
    assert not math.isfinite(full_sum(x).item())
    assert count_nonfinite(x) == 3


def test_full_sum_of_half_precision_does_not_overflow_on_finite_values() -> None:
    x = torch.full((1000,), 60000.0, dtype=torch.float16)  # sums past fp16's max (65504)
    assert math.isfinite(full_sum(x).item())


def test_first_tensor_finds_the_output_in_containers() -> None:
    t = torch.ones(2)
    assert first_tensor(t) is t
    assert first_tensor((None, [t, torch.zeros(1)])) is t
    assert first_tensor({"logits": t}) is t
    assert first_tensor("not a tensor") is None
