"""Failing well, against real hookserve processes: overload, deadlines, a failing instance, auth,
start-up refusals, reduced precision, and SIGTERM drain with no orphaned processes."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from benchmarks.metrics_text import samples
from benchmarks.servers import ServerProcess
from tests.conftest import ROOT
from tests.fixtures.slow_model import NAN_TRIGGER, POISON

pytestmark = pytest.mark.slow

API_KEY = "test-key-0123456789"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
OK_INSTANCE = [1.0, 2.0, 3.0, 4.0]


def slow_model(name: str, delay_ms: float, **settings) -> dict:
    """A served copy of tests/fixtures/slow_model.py, unmonitored (the tests time it)."""
    return {
        "name": name,
        "source": "tests.fixtures.slow_model:build",
        "overrides": {"delay_ms": delay_ms},
        "monitoring": {"enabled": False},
        **settings,
    }


def slow_config(timeout_s: float = 1.0, **model_overrides) -> dict:
    return {
        "server": {
            "request_timeout_s": timeout_s,
            "shutdown_grace_s": 15,
            "auth": {"api_key_env": "TEST_HOOKSERVE_KEY"},
        },
        "models": [
            slow_model("slow", 300, **{"max_batch_size": 1, "max_queued_requests": 8, **model_overrides}),
            slow_model("batchy", 20, max_batch_size=16, batch_timeout_ms=150),
            {
                "name": "digits-bf16",
                "source": "digits-cnn",
                "precision": "bf16",
                "min_precision_agreement": 0.9,
            },
        ],
    }


@pytest.fixture(scope="module")
def slow_server(server_factory) -> ServerProcess:
    return server_factory(slow_config(), env={"TEST_HOOKSERVE_KEY": API_KEY})


def post(
    server: ServerProcess, model: str, instances: list, headers: dict | None = AUTH, timeout: float = 30
) -> requests.Response:
    return requests.post(
        f"{server.base_url}/v1/models/{model}:predict",
        json={"instances": instances},
        headers=headers,
        timeout=timeout,
    )


def test_predict_requires_the_api_key_but_health_and_metrics_stay_open(slow_server: ServerProcess) -> None:
    assert post(slow_server, "batchy", [OK_INSTANCE], headers=None).status_code == 401
    wrong = post(slow_server, "batchy", [OK_INSTANCE], headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and "API key" in wrong.json()["error"]
    assert post(slow_server, "batchy", [OK_INSTANCE]).status_code == 200
    assert requests.get(f"{slow_server.base_url}/health", timeout=5).status_code == 200
    assert requests.get(f"{slow_server.base_url}/metrics", timeout=5).status_code == 200
    assert requests.get(f"{slow_server.base_url}/v1/models", timeout=5).status_code == 401


def test_overload_gets_503_with_retry_after_and_past_deadline_gets_504(slow_server: ServerProcess) -> None:
    # 300 ms per request, one at a time, a 1 s deadline and room for 8: of 20 simultaneous requests a few
    # finish, the rest of the admitted ones hit their deadline, and the others are refused at once.
    with ThreadPoolExecutor(max_workers=20) as pool:
        responses = list(pool.map(lambda _: post(slow_server, "slow", [OK_INSTANCE]), range(20)))
    codes = [r.status_code for r in responses]
    assert set(codes) <= {200, 503, 504}, codes
    assert codes.count(200) >= 1 and codes.count(504) >= 1 and codes.count(503) >= 1, codes
    refused = next(r for r in responses if r.status_code == 503)
    assert int(refused.headers["Retry-After"]) >= 1
    assert "too many requests" in refused.json()["error"]
    assert "deadline" in next(r for r in responses if r.status_code == 504).json()["error"]
    time.sleep(3)  # let the worker finish what was admitted
    assert post(slow_server, "slow", [OK_INSTANCE]).status_code == 200


def test_a_failing_instance_does_not_fail_the_requests_batched_with_it(slow_server: ServerProcess) -> None:
    poisoned = [POISON, 0.0, 0.0, 0.0]
    with ThreadPoolExecutor(max_workers=8) as pool:
        futures = [
            pool.submit(post, slow_server, "batchy", [poisoned if i == 3 else OK_INSTANCE]) for i in range(8)
        ]
        codes = [f.result().status_code for f in futures]
    assert codes[3] == 500
    assert codes[:3] + codes[4:] == [200] * 7
    error = post(slow_server, "batchy", [poisoned]).json()["error"]
    assert "internal error" in error and "Traceback" not in error and "poisoned" not in error
    assert "poisoned instance" in slow_server.log(), "the cause is logged on the server"
    metrics = requests.get(f"{slow_server.base_url}/metrics", timeout=5).text
    assert samples(metrics, "hookserve_requests_total", code="500", model="batchy")


def test_a_non_finite_model_output_fails_only_its_request_and_is_counted(slow_server: ServerProcess) -> None:
    nan_instance = [NAN_TRIGGER, 0.0, 0.0, 0.0]
    with ThreadPoolExecutor(max_workers=6) as pool:
        futures = [
            pool.submit(post, slow_server, "batchy", [nan_instance if i == 2 else OK_INSTANCE])
            for i in range(6)
        ]
        responses = [f.result() for f in futures]
    assert [r.status_code for r in responses] == [200, 200, 500, 200, 200, 200]
    assert "NaN" not in responses[2].text and "internal error" in responses[2].json()["error"]
    metrics = requests.get(f"{slow_server.base_url}/metrics", timeout=5).text
    nonfinite = samples(metrics, "hookserve_output_nonfinite_total", model="batchy")
    assert [sample.value for sample in nonfinite] == [1.0]
    assert "non-finite probabilities" in slow_server.log()


def test_bf16_on_cpu_serves_and_reports_agreement_with_fp32(slow_server: ServerProcess) -> None:
    meta = requests.get(f"{slow_server.base_url}/v1/models/digits-bf16", headers=AUTH, timeout=5).json()
    assert meta["precision"] == "bf16"
    check = meta["precision_check"]
    assert check["precision"] == "bf16" and check["calibration_instances"] > 0
    assert 0.9 <= check["top1_agreement"] <= 1.0 and check["max_abs_diff"] > 0
    assert "top-1 agreement" in slow_server.log()
    response = post(slow_server, "digits-bf16", [[[8.0] * 8] * 8])
    assert response.status_code == 200
    assert sum(response.json()["predictions"][0]["probabilities"]) == pytest.approx(1.0, abs=1e-3)


def test_cuda_on_a_machine_without_it_is_refused_at_start_up(tmp_path) -> None:
    config = tmp_path / "cuda.yaml"
    config.write_text("models:\n  - name: digits-cnn\n    device: cuda\n")
    result = subprocess.run(
        [sys.executable, "-m", "service", "serve", "--config", str(config)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if "CUDA is not available" not in result.stdout + result.stderr:
        pytest.fail(f"expected a clear refusal, got rc={result.returncode}:\n{result.stderr[-2000:]}")
    assert result.returncode == 1


def test_reduced_precision_below_the_required_agreement_is_refused_at_start_up(tmp_path) -> None:
    config = tmp_path / "tie.yaml"
    config.write_text(
        "models:\n  - name: tie\n    source: tests.fixtures.tie_model:build\n    precision: bf16\n"
        "    min_precision_agreement: 0.99\n    monitoring: {enabled: false}\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "service", "serve", "--config", str(config)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 1
    assert "tie version 1 failed to start: StartupError: tie: bf16 agrees with fp32 on only 0.0000" in output


def test_unknown_model_in_config_is_refused_with_a_clear_message(tmp_path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("models:\n  - name: nope-model\n")
    result = subprocess.run(
        [sys.executable, "-m", "service", "serve", "--config", str(config)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert "unknown model 'nope-model'" in result.stderr


def test_sigterm_drains_in_flight_requests_and_leaves_no_process(server_factory) -> None:
    server = server_factory(
        slow_config(timeout_s=5.0, max_queued_requests=32), env={"TEST_HOOKSERVE_KEY": API_KEY}
    )
    children = server.session_pids()
    assert len(children) >= 4, "main, API server, workers and queue manager are expected"
    with ThreadPoolExecutor(max_workers=3) as pool:
        futures = [pool.submit(post, server, "slow", [OK_INSTANCE]) for _ in range(3)]
        time.sleep(0.3)  # the requests are admitted and in flight
        server.process.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        late = post(server, "slow", [OK_INSTANCE], timeout=5)
        codes = [f.result().status_code for f in futures]
    assert codes == [200, 200, 200], "in-flight requests complete during the drain"
    assert late.status_code == 503 and "shutting down" in late.json()["error"]
    assert server.process.wait(timeout=30) == 0
    deadline = time.monotonic() + 10
    while server.session_pids() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert server.session_pids() == [], "no orphaned API server, worker or manager"
