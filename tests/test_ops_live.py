"""The monitoring stack against a live hookserve: the metrics that dashboards and alerts use are exported,
and a real Prometheus with this repository's config and rules scrapes them.

Needs ``prometheus`` and ``promtool`` (``scripts/install_debian.sh prometheus``); missing, these tests fail.
"""

from __future__ import annotations

import random
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from urllib.parse import urlparse

import pytest
import requests
import yaml

from benchmarks.metrics_text import parse
from benchmarks.servers import free_port, wait_for_ok
from loadtests.payloads import ModelSpec, invalid_requests, valid_batch
from tests.test_ops_static import (
    ALERT_RULES,
    PROMETHEUS_BUILTINS,
    PROMETHEUS_CONFIG,
    alert_rules,
    promtool,
    used_metric_names,
)

pytestmark = pytest.mark.slow

METRICS_WAIT_S = 60.0
PROMETHEUS_WAIT_S = 30.0


def model_specs(base_url: str) -> list[ModelSpec]:
    models = requests.get(f"{base_url}/v1/models", timeout=10).json()["models"]
    return [
        ModelSpec.from_metadata(requests.get(f"{base_url}/v1/models/{m['name']}", timeout=10).json())
        for m in models
    ]


def send_traffic(base_url: str, specs: list[ModelSpec], rounds: int, rng: random.Random) -> None:
    """Valid predictions for every model (several instances each), every other one with its own deadline
    (so admission predicts its wait: ``hookserve_predicted_wait_seconds``), and a few invalid requests."""
    with requests.Session() as session:
        for round_ in range(rounds):
            headers = {"X-Request-Timeout-Ms": "5000"} if round_ % 2 else {}
            for spec in specs:
                body = valid_batch(spec, rng, 4).body
                url = f"{base_url}/v1/models/{spec.name}:predict"
                response = session.post(url, json=body, headers=headers, timeout=10)
                assert response.status_code == 200, response.text
        for spec in specs:
            for case in invalid_requests(spec, rng)[:3]:
                session.post(
                    f"{base_url}{case.path}",
                    data=case.body,
                    headers={"Content-Type": "application/json"},
                    timeout=10,
                )


def exported_names(base_url: str) -> set[str]:
    return {sample.name for sample in parse(requests.get(f"{base_url}/metrics", timeout=10).text)}


# Exported only by a server that mirrors a candidate version: tests/test_mirror_live.py checks them there.
MIRROR_ONLY = {
    "hookserve_mirror_requests_total",
    "hookserve_mirror_failures_total",
    "hookserve_mirror_passed_over_total",
    "hookserve_mirror_top1_agreement",
    "hookserve_mirror_max_abs_diff",
    "hookserve_mirror_activation_psi",
}


def test_every_metric_used_by_dashboards_and_alerts_is_exported(live_server: str) -> None:
    needed = set(used_metric_names()) - PROMETHEUS_BUILTINS - MIRROR_ONLY
    specs, rng = model_specs(live_server), random.Random(0)
    deadline = time.monotonic() + METRICS_WAIT_S
    missing = needed
    # Activation statistics are published for sampled batches only: keep sending until they show.
    while missing and time.monotonic() < deadline:
        send_traffic(live_server, specs, rounds=10, rng=rng)
        missing = needed - exported_names(live_server)
    assert not missing, f"used by dashboards/alerts but not on {live_server}/metrics: {sorted(missing)}"


def test_metrics_exposition_passes_promtool_lint(live_server: str) -> None:
    text = requests.get(f"{live_server}/metrics", timeout=10).text
    result = subprocess.run(
        [promtool(), "check", "metrics"], input=text, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


# --- a real Prometheus ------------------------------------------------------------------------------


def prometheus_config(target: str, self_address: str) -> dict:
    """configs/prometheus/prometheus.yml pointed at ``target``, scraping and evaluating every second."""
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    config["rule_files"] = [str(ALERT_RULES)]
    for job in config["scrape_configs"]:
        job.update(scrape_interval="1s", scrape_timeout="1s")
        job["static_configs"] = [{"targets": [target if job["job_name"] == "hookserve" else self_address]}]
    return config


@pytest.fixture(scope="module")
def prometheus(live_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Prometheus on 127.0.0.1 scraping the live server every second; yields its base URL."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("prometheus not found: run scripts/install_debian.sh prometheus")
    target = urlparse(live_server)
    assert target.hostname == "127.0.0.1", "scrape only the local test server"
    work = tmp_path_factory.mktemp("prometheus")
    address = f"127.0.0.1:{free_port()}"
    config_path = work / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(prometheus_config(target.netloc, address)))
    log = (work / "prometheus.log").open("wb")
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={config_path}",
            f"--storage.tsdb.path={work / 'data'}",
            f"--web.listen-address={address}",
            "--log.level=warn",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base_url = f"http://{address}"
    try:
        wait_for_ok(f"{base_url}/-/ready", process, work / "prometheus.log", PROMETHEUS_WAIT_S, "prometheus")
        yield base_url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        log.close()


def query(prometheus: str, promql: str) -> list[dict]:
    response = requests.get(f"{prometheus}/api/v1/query", params={"query": promql}, timeout=5)
    response.raise_for_status()
    return response.json()["data"]["result"]


def wait_for_series(
    prometheus: str, promql: str, live_server: str, until: Callable[[list[dict]], bool] = bool
) -> list[dict]:
    """Poll ``promql`` (sending traffic meanwhile) until ``until(result)`` holds (by default: any series),
    for at most 30 s; the last result when time runs out."""
    specs, rng = model_specs(live_server), random.Random(1)
    deadline = time.monotonic() + PROMETHEUS_WAIT_S
    result: list[dict] = []
    while time.monotonic() < deadline:
        if until(result := query(prometheus, promql)):
            return result
        send_traffic(live_server, specs, rounds=2, rng=rng)
        time.sleep(0.5)
    if not result:
        pytest.fail(f"no series for {promql} after {PROMETHEUS_WAIT_S} s")
    return result


def test_prometheus_scrapes_the_live_server(prometheus: str, live_server: str) -> None:
    result = wait_for_series(prometheus, 'up{job="hookserve"} == 1', live_server)
    assert result[0]["metric"]["instance"] == urlparse(live_server).netloc


def test_prometheus_sees_request_series_for_every_model(prometheus: str, live_server: str) -> None:
    served = {spec.name for spec in model_specs(live_server)}
    result = wait_for_series(prometheus, 'sum by (model) (hookserve_requests_total{code="200"})', live_server)
    assert {series["metric"]["model"] for series in result} == served


def modules_by_model(result: list[dict]) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for series in result:
        found.setdefault(series["metric"]["model"], set()).add(series["metric"]["module"])
    return found


def test_prometheus_sees_per_module_series(prometheus: str, live_server: str) -> None:
    """Every served model's monitored modules, as its metadata lists them, each with its own series."""
    monitored = {
        spec.name: set(
            requests.get(f"{live_server}/v1/models/{spec.name}", timeout=10).json()["monitoring"]["modules"]
        )
        for spec in model_specs(live_server)
    }
    assert all(monitored.values()), monitored  # the default config monitors every model
    result = wait_for_series(
        prometheus,
        "count by (model, module) (hookserve_module_forward_seconds_count)",
        live_server,
        until=lambda result: modules_by_model(result) == monitored,
    )
    assert modules_by_model(result) == monitored


def test_alert_rules_evaluate_against_live_data(prometheus: str, live_server: str) -> None:
    wait_for_series(prometheus, 'up{job="hookserve"} == 1', live_server)
    deadline = time.monotonic() + PROMETHEUS_WAIT_S
    while True:
        groups = requests.get(f"{prometheus}/api/v1/rules", timeout=5).json()["data"]["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        evaluated = [r for r in rules if not r.get("lastEvaluation", "").startswith("0001-")]
        if len(evaluated) == len(rules) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert {r["name"] for r in rules} == {r["alert"] for r in alert_rules()}
    assert all(r["health"] == "ok" for r in rules), [(r["name"], r.get("lastError")) for r in rules]
    target_down = next(r for r in rules if r["name"] == "HookserveTargetDown")
    assert target_down["state"] == "inactive"
