"""Model internals on a live server's /metrics: every served model shows per-module latency, activation
statistics, drift and the bypass/overhead counters after real traffic."""

from __future__ import annotations

import time

import pytest
import requests

from benchmarks.metrics_text import label_values, samples, sum_samples
from models.datasets import load_dataset
from tests.test_serving_http import scrape

pytestmark = pytest.mark.slow
SERVED = ("digits-cnn", "tabular-mlp", "digits-transformer")


@pytest.fixture(scope="module")
def after_traffic(live_server: str) -> str:
    """Send held-out traffic until every model publishes drift (bounded at 300 s), then scrape.

    Drift needs a full window of sampled batches, and the sampler spaces statistics out to stay within
    the overhead budget, so this takes a few hundred batches per model: well under a minute on a quiet
    machine, several on a loaded one. Traffic goes only to the models that have not published yet, so
    the slowest one gets every request once the others are done.
    """
    session = requests.Session()
    datasets = {}
    for name in SERVED:
        meta = session.get(f"{live_server}/v1/models/{name}", timeout=5).json()
        datasets[name] = load_dataset(meta["dataset"]).test_x.numpy()
    deadline = time.monotonic() + 300
    pending = list(SERVED)
    for round_ in range(100_000):
        for name in pending:
            x = datasets[name]
            start = (round_ * 8) % (len(x) - 8)
            body = {"instances": x[start : start + 8].tolist()}
            response = session.post(f"{live_server}/v1/models/{name}:predict", json=body, timeout=30)
            assert response.status_code == 200, response.text
        if round_ % 50 == 49:
            text = scrape(live_server)
            pending = [n for n in pending if not module_labels(text, "hookserve_activation_drift_psi", n)]
            if not pending or time.monotonic() > deadline:
                break
    time.sleep(1.5)  # counters are published at most once per second
    return scrape(live_server)


def module_labels(text: str, metric: str, model: str) -> set[str]:
    return label_values(text, metric, "module", model=model)


@pytest.mark.timeout(480)  # the first test also pays for the fixture's traffic
@pytest.mark.parametrize("model", SERVED)
def test_every_monitored_module_reports_latency_and_statistics(
    live_server: str, after_traffic: str, model: str
) -> None:
    meta = requests.get(f"{live_server}/v1/models/{model}", timeout=5).json()
    modules = set(meta["monitoring"]["modules"])
    assert 1 <= len(modules) <= 100
    assert module_labels(after_traffic, "hookserve_module_forward_seconds_count", model) == modules
    for stat in ("mean", "std", "min", "max", "zero_fraction"):
        assert module_labels(after_traffic, f"hookserve_activation_{stat}", model) == modules, stat
    assert module_labels(after_traffic, "hookserve_activation_nonfinite_total", model) == modules
    for module in modules:
        assert (
            sum_samples(after_traffic, "hookserve_module_forward_seconds_count", model=model, module=module)
            > 0
        )
        assert (
            sum_samples(after_traffic, "hookserve_activation_nonfinite_total", model=model, module=module)
            == 0
        )
        fraction = sum_samples(
            after_traffic, "hookserve_activation_zero_fraction", model=model, module=module
        )
        assert 0.0 <= fraction <= 1.0


@pytest.mark.parametrize("model", SERVED)
def test_drift_is_low_on_held_out_traffic(after_traffic: str, model: str) -> None:
    psi_modules = module_labels(after_traffic, "hookserve_activation_drift_psi", model)
    assert psi_modules, "a drift reference ships with every trained model"
    for module in psi_modules:
        assert sum_samples(after_traffic, "hookserve_activation_drift_psi", model=model, module=module) < 0.25


@pytest.mark.parametrize("model", SERVED)
def test_guard_and_overhead_counters_exist(after_traffic: str, model: str) -> None:
    bypass = samples(after_traffic, "hookserve_forward_bypass_total", model=model)
    assert [sample.value for sample in bypass] == [0.0]
    overhead = sum_samples(after_traffic, "hookserve_monitor_overhead_seconds_total", model=model)
    forward = sum_samples(after_traffic, "hookserve_monitored_forward_seconds_total", model=model)
    assert overhead > 0 and forward > 0
