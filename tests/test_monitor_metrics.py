"""After a monitored batch, every monitoring metric is in the Prometheus exposition, named and labelled
as docs/contracts.md fixes."""

from __future__ import annotations

import torch
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from torch import nn

from service.monitoring import ModelMonitor, MonitorConfig
from service.monitoring.calibrate import capture_reference

MODEL = "metrics-contract"
PER_MODULE = {
    "hookserve_module_forward_seconds": "histogram",
    "hookserve_activation_mean": "gauge",
    "hookserve_activation_std": "gauge",
    "hookserve_activation_min": "gauge",
    "hookserve_activation_max": "gauge",
    "hookserve_activation_zero_fraction": "gauge",
    "hookserve_activation_nonfinite": "counter",
    "hookserve_activation_drift_psi": "gauge",
    "hookserve_nonfinite_origin": "counter",  # at 0 from attach, for every monitored module
}
PER_MODEL = {
    "hookserve_forward_bypass": "counter",
    "hookserve_training_mode_resets": "counter",
    "hookserve_monitor_overhead_seconds": "counter",
    "hookserve_monitored_forward_seconds": "counter",
    "hookserve_monitor_sample_interval_batches": "gauge",
}


def test_monitoring_metrics_are_exported_with_model_and_module_labels() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    x = torch.randn(32, 8)
    config = MonitorConfig.model_validate(
        {"guard_every": 1, "stats_every": 1, "publish_interval_s": 0, "drift": {"window_batches": 1}}
    )
    reference = capture_reference(model, MODEL, [x], config)
    monitor = ModelMonitor(model, MODEL, config, reference=reference)
    monitor.attach()
    with torch.inference_mode(), monitor.observe_batch():
        model(x)
    monitor.detach()

    families = {f.name: f for f in text_string_to_metric_families(generate_latest().decode())}
    for name, kind in {**PER_MODULE, **PER_MODEL}.items():
        assert families[name].type == kind, name
    for name in PER_MODULE:
        modules = {s.labels["module"] for s in families[name].samples if s.labels.get("model") == MODEL}
        assert modules == {"0", "2"}, name
    for name in PER_MODEL:
        assert any(s.labels.get("model") == MODEL for s in families[name].samples), name

    def value(family: str, sample_name: str, **labels: str) -> float:
        matches = [
            s.value
            for s in families[family].samples
            if s.name == sample_name and s.labels.items() >= {"model": MODEL, **labels}.items()
        ]
        assert len(matches) == 1, (family, labels)
        return matches[0]

    assert value("hookserve_monitored_forward_seconds", "hookserve_monitored_forward_seconds_total") > 0
    assert value("hookserve_monitor_overhead_seconds", "hookserve_monitor_overhead_seconds_total") > 0
    assert (
        value("hookserve_module_forward_seconds", "hookserve_module_forward_seconds_count", module="2") == 1
    )
    assert value("hookserve_activation_drift_psi", "hookserve_activation_drift_psi", module="0") < 0.05
    stats_first = value("hookserve_activation_max", "hookserve_activation_max", module="0")
    with torch.inference_mode():
        assert stats_first == torch.tensor(model[0](x).max().item()).item()
