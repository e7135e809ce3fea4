"""The CUDA code path's bookkeeping, run on CPU with stand-ins for CUDA events and streams: which
batches synchronize, that idle batches make no CUDA call except one timed per armed batch, and that
counts and latencies come out of the single copy. (tests/test_monitor_cuda.py runs the real thing on a
GPU.)"""

from __future__ import annotations

import time

import pytest
import torch
from prometheus_client import REGISTRY
from torch import nn

from service.monitoring import MonitorConfig
from service.monitoring.monitor import ModelMonitor


class FakeEvent:
    records = 0

    def __init__(self, enable_timing: bool = False) -> None:
        self.at: float | None = None

    def record(self) -> None:
        FakeEvent.records += 1
        self.at = time.perf_counter()

    def elapsed_time(self, end: FakeEvent) -> float:
        assert self.at is not None and end.at is not None, "read before both were recorded"
        return (end.at - self.at) * 1000.0


class FakeStream:
    syncs = 0

    def synchronize(self) -> None:
        FakeStream.syncs += 1


@pytest.fixture
def fake_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    FakeEvent.records = FakeStream.syncs = 0
    monkeypatch.setattr(torch.cuda, "Event", FakeEvent)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: FakeStream())


class InjectNaN(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        x[0, 0] = float("nan")
        return x


def test_armed_batches_sync_once_and_count_nonfinite_from_the_copy(fake_cuda: None) -> None:
    model = nn.Sequential(nn.Linear(4, 8), InjectNaN(), nn.Linear(8, 2)).eval()
    config = MonitorConfig(
        guard_every=1, stats_every=1, publish_interval_s=0, level="leaf", drift={"enabled": False}
    )
    monitor = ModelMonitor(model, "fake-cuda-armed", config, torch.device("cuda"))
    monitor.attach()
    with torch.inference_mode():
        for _ in range(3):
            with monitor.observe_batch():
                model(torch.randn(5, 4))
    monitor.detach()
    assert FakeStream.syncs == 3
    labels = {"model": "fake-cuda-armed", "version": "1"}
    assert REGISTRY.get_sample_value("hookserve_activation_nonfinite_total", {**labels, "module": "0"}) == 0
    assert REGISTRY.get_sample_value("hookserve_activation_nonfinite_total", {**labels, "module": "1"}) == 3
    assert REGISTRY.get_sample_value("hookserve_activation_nonfinite_total", {**labels, "module": "2"}) == 6
    assert REGISTRY.get_sample_value("hookserve_module_forward_seconds_count", {**labels, "module": "2"}) == 3
    assert REGISTRY.get_sample_value("hookserve_activation_std", {**labels, "module": "0"}) > 0


def test_idle_batches_make_no_cuda_call_but_one_is_timed_per_armed_batch(fake_cuda: None) -> None:
    model = nn.Sequential(nn.Linear(4, 8)).eval()
    config = MonitorConfig(guard_every=10, stats_every=10, publish_interval_s=3600, drift={"enabled": False})
    monitor = ModelMonitor(model, "fake-cuda-idle", config, torch.device("cuda"))
    monitor.attach()
    records_before = FakeEvent.records
    with torch.inference_mode():
        for _ in range(101):
            with monitor.observe_batch():
                model(torch.randn(2, 4))
    monitor.detach()
    armed = 11  # batches 0, 10, ..., 100
    assert FakeStream.syncs == armed
    # Per armed batch: a pre/post event pair for the one module; per gap: one timed idle batch (2 events).
    assert FakeEvent.records - records_before == 2 * armed + 2 * (armed - 1)
    # Idle forward time was measured, so the cold cost of armed batches too.
    assert sum(median.samples for median in monitor.controller.unseen_s.values()) > 0
    assert monitor.controller.forward_s is not None and monitor.controller.forward_s > 0
