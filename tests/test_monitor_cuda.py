"""The CUDA path: event timing, on-device results, no device sync inside the forward. Skipped without a
GPU (CI has none); run on a GPU box with ``pytest tests/test_monitor_cuda.py``."""

from __future__ import annotations

import itertools

import pytest
import torch
from prometheus_client import REGISTRY
from torch import nn

from service.monitoring import ModelMonitor, MonitorConfig

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

_names = itertools.count()
CONFIG = MonitorConfig(guard_every=1, stats_every=1, publish_interval_s=0, level="leaf")
STATS = ("mean", "std", "min", "max", "zero_fraction")


class InjectNaN(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        x[0, :3] = float("nan")
        return x


def model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 64), nn.ReLU(), InjectNaN(), nn.Linear(64, 8)).eval()


def serve(monitor: ModelMonitor, net: nn.Module, x: torch.Tensor, batches: int = 2) -> None:
    with torch.inference_mode():
        for _ in range(batches):
            monitor.begin_batch()
            # Any synchronizing call inside the forward (an .item() in a hook) raises here.
            torch.cuda.set_sync_debug_mode("error")
            try:
                net(x)
            finally:
                torch.cuda.set_sync_debug_mode("default")
            monitor.end_batch()


def value(metric: str, name: str, module: str) -> float | None:
    return REGISTRY.get_sample_value(metric, {"model": name, "module": module})


def test_cuda_matches_cpu_and_never_syncs_inside_the_forward() -> None:
    x = torch.randn(32, 16)
    names = {}
    for device in ("cpu", "cuda"):
        net = model().to(device)
        names[device] = f"cuda-vs-cpu-{device}-{next(_names)}"
        monitor = ModelMonitor(net, names[device], CONFIG, device)
        monitor.attach()
        serve(monitor, net, x.to(device), batches=2)
        monitor.detach()
    for module in ("0", "1", "2", "3"):
        counts = [value("hookserve_activation_nonfinite_total", names[d], module) for d in ("cpu", "cuda")]
        assert counts[0] == counts[1], (module, counts)
        for stat in STATS:
            cpu, cuda = (value(f"hookserve_activation_{stat}", names[d], module) for d in ("cpu", "cuda"))
            assert cpu == pytest.approx(cuda, rel=1e-4, abs=1e-5, nan_ok=True), (module, stat)
        assert value("hookserve_module_forward_seconds_count", names["cuda"], module) == 2
        assert value("hookserve_module_forward_seconds_sum", names["cuda"], module) > 0
    assert value("hookserve_activation_nonfinite_total", names["cuda"], "2") == 2 * 3
    assert value("hookserve_activation_nonfinite_total", names["cuda"], "3") == 2 * 8


def test_cuda_bf16_autocast_stats_are_float32_and_finite() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 256), nn.GELU(), nn.Linear(256, 10)).eval().cuda()
    name = f"cuda-bf16-{next(_names)}"
    monitor = ModelMonitor(net, name, CONFIG, "cuda")
    monitor.attach()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        serve(monitor, net, torch.randn(64, 16, device="cuda"), batches=3)
    monitor.detach()
    for module in monitor.module_names:
        assert value("hookserve_activation_nonfinite_total", name, module) == 0
        std = value("hookserve_activation_std", name, module)
        assert std is not None and 0 < std < 100


def test_cuda_detach_restores_the_model() -> None:
    net = model().cuda()
    monitor = ModelMonitor(net, f"cuda-detach-{next(_names)}", CONFIG, "cuda")
    monitor.attach()
    serve(monitor, net, torch.randn(4, 16, device="cuda"))
    monitor.detach()
    assert all(not m._forward_hooks and not m._forward_pre_hooks and "forward" not in vars(m) for m in net)
