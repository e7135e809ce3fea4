"""The live precision shadow, with bf16 (and fp16) autocast on CPU: which batches it runs on, what it
compares, what it exports, and that it changes nothing of the served run."""

from __future__ import annotations

import itertools

import pytest
import torch
from prometheus_client import REGISTRY
from torch import nn

from models import load_pretrained
from service.monitoring import ModelMonitor, MonitorConfig
from service.monitoring.config import ShadowConfig
from service.monitoring.shadow import OUTPUT, PrecisionShadow
from tests.fixtures.tie_model import TieModel

_names = itertools.count()
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def every_batch(**shadow: object) -> MonitorConfig:
    return MonitorConfig.model_validate(
        {
            "guard_every": 1,
            "stats_every": 1,
            "publish_interval_s": 0,
            "drift": {"enabled": False},
            "shadow": {"every": 1, "min_instances": 1, **shadow},
        }
    )


def serve(monitor: ModelMonitor, model: nn.Module, x: torch.Tensor, precision: str = "bf16") -> torch.Tensor:
    """One batch as the worker runs it: the served forward under autocast, then the shadow if due."""
    with torch.inference_mode(), torch.autocast("cpu", dtype=DTYPES[precision]), monitor.observe_batch():
        out = model(x)
    if monitor.shadow_due:
        monitor.run_shadow(x, out)
    return out


def value(metric: str, **labels: str) -> float | None:
    if metric.startswith(
        ("hookserve_activation", "hookserve_module_forward")
    ):  # series that carry the version
        labels = {"version": "1", **labels}
    return REGISTRY.get_sample_value(metric, labels)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_shadow_metrics_for_a_trained_model(precision: str) -> None:
    model = load_pretrained("digits-cnn").eval()
    name = f"shadow-cnn-{precision}-{next(_names)}"
    monitor = ModelMonitor(model, name, every_batch(), precision=precision)
    monitor.attach()
    x = model.example_input(16)
    for _ in range(4):
        serve(monitor, model, x, precision)
    monitor.detach()

    assert value("hookserve_shadow_batches_total", model=name) == 4.0
    agreement = value("hookserve_shadow_top1_agreement", model=name)
    assert agreement is not None and 0.9 <= agreement <= 1.0
    for module in [*monitor.module_names, OUTPUT]:
        diff = value("hookserve_shadow_max_abs_diff", model=name, module=module)
        assert diff is not None and 0.0 < diff < 1.0, module  # reduced precision differs, a little
    # The fp32 pass is not a served batch: module latencies count the 4 served batches only.
    for module in monitor.module_names:
        assert value("hookserve_module_forward_seconds_count", model=name, module=module) == 4.0


def test_a_flipped_argmax_shows_as_disagreement() -> None:
    model = TieModel().eval()  # bf16 ties the two logits that fp32 tells apart
    name = f"shadow-tie-{next(_names)}"
    monitor = ModelMonitor(model, name, every_batch(), precision="bf16")
    monitor.attach()
    serve(monitor, model, torch.ones(8, 1))
    monitor.detach()
    assert value("hookserve_shadow_top1_agreement", model=name) == 0.0
    assert monitor.shadow is not None and monitor.shadow.top1_agreement == 0.0


def test_fp32_models_have_no_shadow_and_keep_the_whole_budget() -> None:
    model = nn.Sequential(nn.Linear(4, 4)).eval()
    name = f"shadow-fp32-{next(_names)}"
    monitor = ModelMonitor(model, name, MonitorConfig(), precision="fp32")
    assert monitor.shadow is None and monitor.controller.budget == MonitorConfig().overhead_budget
    reduced = ModelMonitor(model, f"{name}-bf16", MonitorConfig(), precision="bf16")
    assert reduced.shadow is not None
    assert reduced.controller.budget == pytest.approx(0.03 * 0.5)
    assert reduced.shadow.budget == pytest.approx(0.03 * 0.5)
    off = MonitorConfig(shadow={"enabled": False})
    assert ModelMonitor(model, f"{name}-off", off, precision="bf16").shadow is None
    assert value("hookserve_shadow_batches_total", model=name) is None


def test_the_shadow_changes_neither_outputs_nor_the_model() -> None:
    model = load_pretrained("tabular-mlp").eval()
    x = model.example_input(8)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        expected = model(x)
    monitor = ModelMonitor(model, f"shadow-same-{next(_names)}", every_batch(), precision="bf16")
    monitor.attach()
    outputs = [serve(monitor, model, x) for _ in range(3)]
    monitor.detach()
    assert all(torch.equal(out, expected) for out in outputs)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    assert monitor.shadow is not None and monitor.shadow.batches == 3


def test_a_shadow_nobody_ran_is_dropped_at_the_next_armed_batch() -> None:
    model = load_pretrained("tabular-mlp").eval()
    x = model.example_input(4)
    monitor = ModelMonitor(model, f"shadow-stale-{next(_names)}", every_batch(), precision="bf16")
    monitor.attach()
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16), monitor.observe_batch():
        model(x)
    assert monitor.shadow_due
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16), monitor.observe_batch():
        model(x)  # the caller skipped run_shadow: the copies are dropped, not kept forever
    assert not any(monitor.shadow._captured)
    serve(monitor, model, x)
    serve(monitor, model, x)
    monitor.detach()
    assert monitor.shadow.batches >= 1


def test_the_interval_keeps_the_shadow_within_its_share_of_the_budget() -> None:
    model = nn.Sequential(nn.Linear(4, 4)).eval()
    shadow = PrecisionShadow(
        model, f"shadow-plan-{next(_names)}", [], ShadowConfig(), 0.015, torch.device("cpu")
    )
    assert not shadow.due(10, None)  # adaptive: waits for the monitor's forward-time estimate
    assert shadow.due(10, 0.001)  # the first one measures the cost
    shadow._replan(0.002, 0.001)  # 2 ms of shadow per 1 ms forward at 1.5 %: one batch in 134
    assert shadow.every == 134
    shadow.last_batch = 10
    assert not shadow.due(143, 0.001) and shadow.due(144, 0.001)


def test_default_config_shadows_a_few_live_batches_and_reports_its_cost() -> None:
    model = load_pretrained("tabular-mlp").eval()
    name = f"shadow-default-{next(_names)}"
    config = MonitorConfig(publish_interval_s=0, drift={"enabled": False})
    monitor = ModelMonitor(model, name, config, precision="bf16")
    monitor.attach()
    x = model.example_input(8)
    batches = 1500
    for _ in range(batches):
        serve(monitor, model, x)
    monitor.detach()
    shadow = monitor.shadow
    assert shadow is not None and 1 <= shadow.batches < batches / 10  # some, within budget
    assert shadow.every > 1 and shadow.cost_s is not None
    overhead = value("hookserve_monitor_overhead_seconds_total", model=name)
    assert overhead is not None and overhead >= shadow.batches * shadow.cost_s * 0.5


def test_the_worker_runs_the_shadow_after_the_replies_are_sent() -> None:
    import numpy as np

    from service.config import ModelServeConfig
    from service.messages import PREDICTIONS_JSON, InferRequest
    from service.worker.batching import BatchRunner
    from service.worker.runner import ModelRunner, attach_monitor
    from tests.fixtures.nan_model import HEALTHY, build

    name = f"shadow-worker-{next(_names)}"
    config = ModelServeConfig(
        name=name,
        source="tests.fixtures.nan_model:build",
        precision="bf16",
        monitoring=every_batch().model_dump(),
    )
    model, device = build(), torch.device("cpu")
    worker = ModelRunner(config, model, device, attach_monitor(config, model, device))
    instances = np.asarray([HEALTHY] * 3, dtype=np.float32)
    request = InferRequest(1, float("inf"), 0.0, instances, PREDICTIONS_JSON, "r-1")
    replies = BatchRunner(worker).run_batch([request])
    assert replies[0].status == 200
    assert worker.monitor.shadow.batches == 0 and worker._shadow_input is not None  # not before the replies
    worker.after_replies()
    assert worker.monitor.shadow.batches == 1 and worker._shadow_input is None
    assert value("hookserve_shadow_top1_agreement", model=name) == 1.0
    worker.monitor.detach()
