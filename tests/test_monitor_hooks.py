"""The monitor's hooks: what they record per module, and that detaching leaves the model untouched."""

from __future__ import annotations

import itertools
import logging

import pytest
import torch
from prometheus_client import REGISTRY
from torch import nn

from service.monitoring import ModelMonitor, MonitorConfig

_names = itertools.count()


def unique_name(prefix: str) -> str:
    """Prometheus state is process-global: each test counts under its own model label."""
    return f"{prefix}-{next(_names)}"


def every_batch(**overrides: object) -> MonitorConfig:
    """Deterministic monitoring: every batch armed and sampled, metrics pushed every batch."""
    return MonitorConfig.model_validate(
        {"guard_every": 1, "stats_every": 1, "publish_interval_s": 0, "level": "leaf", **overrides}
    )


def sample(metric: str, model: str, module: str | None = None) -> float | None:
    labels = {"model": model} if module is None else {"model": model, "version": "1", "module": module}
    return REGISTRY.get_sample_value(metric, labels)


class InjectNaN(nn.Module):
    """Writes one NaN into its input, like a numerically broken layer."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        x[0, 0] = float("nan")
        return x


class CallsChildForward(nn.Module):
    """A parent that bypasses its child's hooks by calling ``child.forward`` directly."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Linear(4, 4)
        self.outer = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.outer(self.inner.forward(x))


def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4)).eval()


def run_batches(monitor: ModelMonitor, model: nn.Module, x: torch.Tensor, n: int = 1) -> list[torch.Tensor]:
    outputs = []
    with torch.inference_mode():
        for _ in range(n):
            with monitor.observe_batch():
                outputs.append(model(x))
    return outputs


def test_nonfinite_is_counted_where_it_first_appears_and_not_before() -> None:
    model = nn.Sequential(nn.Linear(8, 16), InjectNaN(), nn.Linear(16, 4), nn.ReLU()).eval()
    name = unique_name("nan")
    monitor = ModelMonitor(model, name, every_batch())
    monitor.attach()
    run_batches(monitor, model, torch.randn(3, 8), n=2)
    monitor.detach()

    metric = "hookserve_activation_nonfinite_total"
    assert sample(metric, name, "0") in (None, 0.0)  # before the broken layer: clean
    assert sample(metric, name, "1") == 2.0  # one NaN per batch, exactly
    assert sample(metric, name, "2") == 2 * 4.0  # then it spreads through the next linear layer


def test_nonfinite_checks_the_full_output_when_stats_are_subsampled() -> None:
    model = nn.Sequential(nn.Linear(8, 4096), InjectNaN()).eval()
    name = unique_name("nan-big")
    monitor = ModelMonitor(model, name, every_batch(sample_elements=16, stats_every=1000))
    monitor.attach()
    run_batches(monitor, model, torch.randn(8, 8), n=3)
    monitor.detach()
    assert sample("hookserve_activation_nonfinite_total", name, "1") == 3.0


def test_latency_is_recorded_for_every_selected_module() -> None:
    model = mlp()
    name = unique_name("latency")
    monitor = ModelMonitor(model, name, every_batch())
    monitor.attach()
    run_batches(monitor, model, torch.randn(5, 8), n=3)
    monitor.detach()

    assert monitor.module_names == ["0", "1", "2", "3", "4"]
    for module in monitor.module_names:
        assert sample("hookserve_module_forward_seconds_count", name, module) == 3.0
        assert sample("hookserve_module_forward_seconds_sum", name, module) > 0.0


def test_detach_leaves_no_hook_or_forward_wrapper_and_outputs_unchanged() -> None:
    model = mlp()
    custom_forward = model[2].forward  # a module that already had an instance-level forward
    model[2].forward = custom_forward
    x = torch.randn(5, 8)
    with torch.inference_mode():
        expected = model(x)
    before = {
        name: (dict(m._forward_hooks), dict(m._forward_pre_hooks), dict(vars(m)).get("forward"))
        for name, m in model.named_modules()
    }

    monitor = ModelMonitor(model, unique_name("detach"), every_batch())

    monitor.attach()
    assert all("forward" in vars(m) for m in model if isinstance(m, nn.Linear))
    outputs = run_batches(monitor, model, x, n=3)
    monitor.detach()

    after = {
        name: (dict(m._forward_hooks), dict(m._forward_pre_hooks), dict(vars(m)).get("forward"))
        for name, m in model.named_modules()
    }
    assert after == before
    assert "forward" not in vars(model[0])
    assert vars(model[2])["forward"] is custom_forward
    for output in outputs:
        assert torch.equal(output, expected)  # monitoring never changes what the model computes


def test_idle_batches_run_without_hooks() -> None:
    model = mlp()
    monitor = ModelMonitor(model, unique_name("idle"), every_batch(guard_every=4, stats_every=4))
    monitor.attach()
    hooked = []
    with torch.inference_mode():
        for _ in range(8):
            with monitor.observe_batch():
                hooked.append(bool(model[0]._forward_hooks))
                model(torch.randn(2, 8))
    monitor.detach()
    assert hooked == [True, False, False, False, True, False, False, False]


def test_bypass_detector_counts_a_child_forward_called_directly(caplog: pytest.LogCaptureFixture) -> None:
    model = CallsChildForward().eval()
    name = unique_name("bypass")
    monitor = ModelMonitor(model, name, every_batch())
    monitor.attach()
    with caplog.at_level(logging.WARNING, logger="service.monitoring.incidents"):
        run_batches(monitor, model, torch.randn(2, 4), n=3)
    monitor.detach()

    assert sample("hookserve_forward_bypass_total", name) == 3.0
    assert sum("'inner'" in record.getMessage() for record in caplog.records) == 1  # logged once
    assert sample("hookserve_module_forward_seconds_count", name, "outer") == 3.0


def test_bypass_detector_is_quiet_when_modules_are_called() -> None:
    model = mlp()
    name = unique_name("no-bypass")
    monitor = ModelMonitor(model, name, every_batch())
    monitor.attach()
    run_batches(monitor, model, torch.randn(2, 8), n=3)
    monitor.detach()
    assert sample("hookserve_forward_bypass_total", name) == 0.0


def test_training_mode_is_reported_and_reset_before_the_forward() -> None:
    model = nn.Sequential(nn.Linear(8, 8), nn.Dropout(0.5), nn.Linear(8, 2))
    name = unique_name("train")
    monitor = ModelMonitor(model, name, every_batch())  # attach finds 4 modules training
    monitor.attach()
    model.train()  # someone flips the model back to training mid-serving
    x = torch.ones(64, 8)
    outputs = run_batches(monitor, model, x, n=2)
    monitor.detach()

    assert not any(m.training for m in model.modules())
    assert torch.equal(outputs[0], outputs[1])  # dropout was off: eval happened before the forward
    assert sample("hookserve_training_mode_resets_total", name) == 8.0


def test_a_submodule_left_in_training_mode_is_caught_at_publish() -> None:
    model = mlp()
    name = unique_name("train-sub")
    monitor = ModelMonitor(model, name, every_batch())
    monitor.attach()
    model[1].train()
    run_batches(monitor, model, torch.randn(2, 8))
    monitor.detach()
    assert not model[1].training
    assert sample("hookserve_training_mode_resets_total", name) == 1.0


def test_disabled_monitor_attaches_nothing() -> None:
    model = mlp()
    monitor = ModelMonitor(model, unique_name("off"), MonitorConfig(enabled=False))
    monitor.attach()
    outputs = run_batches(monitor, model, torch.randn(2, 8))
    assert monitor.module_names == []
    assert all(not m._forward_hooks and "forward" not in vars(m) for m in model.modules())
    assert outputs[0].shape == (2, 4)


def test_a_failed_batch_is_discarded_and_hooks_stay_consistent() -> None:
    model = mlp()
    name = unique_name("fail")
    monitor = ModelMonitor(model, name, every_batch())
    monitor.attach()
    with pytest.raises(RuntimeError), torch.inference_mode(), monitor.observe_batch():
        model(torch.randn(2, 3))  # wrong width: the first layer raises
    run_batches(monitor, model, torch.randn(2, 8))
    monitor.detach()
    assert sample("hookserve_module_forward_seconds_count", name, "4") == 1.0
    assert sample("hookserve_forward_bypass_total", name) == 0.0


def test_armed_batches_keep_coming_when_the_plan_changes() -> None:
    model = mlp()
    monitor = ModelMonitor(model, unique_name("replan"), MonitorConfig(publish_interval_s=0))
    monitor.attach()
    armed_at = []
    with torch.inference_mode():
        for index in range(3000):
            with monitor.observe_batch():
                if model[0]._forward_hooks:
                    armed_at.append(index)
                model(torch.randn(2, 8))
    monitor.detach()
    gaps = [b - a for a, b in itertools.pairwise(armed_at)]
    assert max(gaps) <= monitor.controller.MAX_GUARD_EVERY
    assert 3000 - armed_at[-1] <= monitor.controller.guard_every


def test_attach_returns_a_removable_handle() -> None:
    model = mlp()
    monitor = ModelMonitor(model, unique_name("handle"), every_batch())
    handle = monitor.attach()
    assert monitor.attach() is handle and handle.attached  # idempotent
    assert model[0]._forward_hooks
    handle.remove()
    assert not monitor.attached and not handle.attached
    assert all(not m._forward_hooks and "forward" not in vars(m) for m in model.modules())
    again = monitor.attach()
    handle.remove()  # a stale handle leaves the new attachment alone
    assert monitor.attached and again is not handle
    with again:
        run_batches(monitor, model, torch.randn(2, 8))
    assert not monitor.attached and all(not m._forward_hooks for m in model.modules())


def test_a_hook_set_toggles_its_hooks_and_suspends_them_for_a_side_pass() -> None:
    from service.monitoring.hooks import HookSet

    layer = nn.Linear(2, 2)
    seen: list[str] = []
    hooks = HookSet(
        pre=[(layer, lambda module, args: seen.append("pre"))],
        post=[(layer, lambda module, args, output: seen.append("post"))],
    )
    x = torch.ones(1, 2)
    layer(x)
    assert seen == []  # registered on the first arm only
    hooks.arm()
    layer(x)
    assert seen == ["pre", "post"]
    with hooks.suspended():
        layer(x)  # e.g. the shadow's fp32 pass or the NaN replay
        assert not layer._forward_hooks and not layer._forward_pre_hooks
    assert hooks.armed
    layer(x)
    assert seen == ["pre", "post"] * 2
    hooks.disarm()
    with hooks.suspended():
        pass
    assert not hooks.armed  # a disarmed set stays disarmed after a suspension
    hooks.remove()
    hooks.arm()  # registers afresh after remove()
    assert len(layer._forward_hooks) == 1
    hooks.remove()
    assert not layer._forward_hooks and not layer._forward_pre_hooks
