"""A dead inference worker takes down nothing else, against real hookserve processes.

SIGKILL stands in for any death (segfault, OOM kill): the worker gets no chance to clean up.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from benchmarks.metrics_text import sum_samples
from benchmarks.servers import ServerProcess
from tests.fixtures.slow_model import POISON

pytestmark = pytest.mark.slow

DIGIT = [[0.0] * 8] * 8
TABULAR = [1.0] * 30
SLOW = [1.0, 2.0, 3.0, 4.0]


def config(max_restarts: int = 5) -> dict:
    return {
        "server": {
            "request_timeout_s": 10,
            "worker_restarts": {"max_restarts": max_restarts, "window_s": 300, "backoff_initial_s": 0.5},
        },
        "models": [
            {"name": "digits-cnn", "torch_threads": 1},
            {"name": "tabular-mlp", "torch_threads": 1},
            {
                "name": "slow",
                "source": "tests.fixtures.slow_model:build",
                "overrides": {"delay_ms": 1500},
                "monitoring": {"enabled": False},
                "max_batch_size": 1,
            },
        ],
    }


@pytest.fixture(scope="module")
def server(server_factory) -> ServerProcess:
    return server_factory(config())


def predict(server: ServerProcess, model: str, instance: list, timeout: float = 30) -> requests.Response:
    return requests.post(
        f"{server.base_url}/v1/models/{model}:predict", json={"instances": [instance]}, timeout=timeout
    )


def worker_pid(server: ServerProcess, model: str) -> int:
    meta = requests.get(f"{server.base_url}/v1/models/{model}", timeout=5).json()
    return meta["workers"][0]["pid"]


def metadata(server: ServerProcess, model: str) -> dict:
    return requests.get(f"{server.base_url}/v1/models/{model}", timeout=5).json()


def health(server: ServerProcess) -> int:
    return requests.get(f"{server.base_url}/health", timeout=5).status_code


def restarts(server: ServerProcess, model: str) -> float:
    text = requests.get(f"{server.base_url}/metrics", timeout=5).text
    return sum_samples(text, "hookserve_worker_restarts_total", model=model)


def wait_until(condition, timeout_s: float, interval_s: float = 0.05) -> float:
    """Seconds until ``condition()`` held; fails the test after ``timeout_s``."""
    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < timeout_s, f"not true within {timeout_s} s"
        time.sleep(interval_s)
    return time.monotonic() - start


class SteadyTraffic:
    """Sends requests to one model in a loop (a thread) and records every status code."""

    def __init__(self, server: ServerProcess, model: str, instance: list) -> None:
        self.codes: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(server, model, instance), daemon=True)

    def _run(self, server: ServerProcess, model: str, instance: list) -> None:
        while not self._stop.is_set():
            try:
                self.codes.append(predict(server, model, instance, timeout=10).status_code)
            except requests.RequestException:
                self.codes.append(-1)

    def __enter__(self) -> SteadyTraffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=15)


def test_a_killed_worker_is_restarted_while_other_models_serve_without_error(server: ServerProcess) -> None:
    before = restarts(server, "digits-cnn")
    old_pid = worker_pid(server, "digits-cnn")
    with SteadyTraffic(server, "tabular-mlp", TABULAR) as others:
        time.sleep(0.5)
        os.kill(old_pid, signal.SIGKILL)
        noticed = wait_until(lambda: health(server) == 503, 2)
        assert metadata(server, "digits-cnn")["ready"] is False
        refused = predict(server, "digits-cnn", DIGIT)
        recovered = wait_until(lambda: health(server) == 200, 60)
        time.sleep(0.5)
    assert noticed < 1.5, "the death is noticed within about a second"
    assert refused.status_code == 503 and int(refused.headers["Retry-After"]) >= 1, refused.text
    assert "digits-cnn" in refused.json()["error"]
    assert len(others.codes) > 10 and set(others.codes) == {200}, "the other model never failed"
    assert metadata(server, "digits-cnn")["ready"] is True
    assert worker_pid(server, "digits-cnn") != old_pid
    assert predict(server, "digits-cnn", DIGIT).status_code == 200
    assert restarts(server, "digits-cnn") == before + 1
    assert recovered < 60
    assert "digits-cnn v1 worker 0" in server.log() and "died with exit code -9" in server.log()


def test_requests_in_flight_on_a_dying_worker_get_a_prompt_503(server: ServerProcess) -> None:
    pid = worker_pid(server, "slow")
    with ThreadPoolExecutor(max_workers=3) as pool:
        futures = [pool.submit(predict, server, "slow", SLOW) for _ in range(3)]
        time.sleep(0.5)  # one request runs (1.5 s), two wait in the worker's queue
        killed_at = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        responses = [f.result() for f in futures]
        answered_within = time.monotonic() - killed_at
    assert [r.status_code for r in responses] == [503, 503, 503]
    assert all(int(r.headers["Retry-After"]) >= 1 for r in responses)
    assert answered_within < 1.0, "no request hangs until its deadline"
    wait_until(lambda: metadata(server, "slow")["ready"], 60)
    assert predict(server, "slow", SLOW).status_code == 200


def test_a_failing_request_is_no_crash_and_restarts_nothing(server: ServerProcess) -> None:
    before = restarts(server, "slow")
    assert predict(server, "slow", [POISON, 0, 0, 0]).status_code == 500
    assert predict(server, "slow", SLOW).status_code == 200
    assert restarts(server, "slow") == before


def test_a_crash_looping_worker_stays_down_and_the_log_says_why(server_factory) -> None:
    server = server_factory(config(max_restarts=1))
    first = worker_pid(server, "tabular-mlp")
    os.kill(first, signal.SIGKILL)
    replaced = lambda: metadata(server, "tabular-mlp")["ready"] and worker_pid(server, "tabular-mlp") != first  # noqa: E731
    wait_until(replaced, 60)
    os.kill(worker_pid(server, "tabular-mlp"), signal.SIGKILL)
    wait_until(lambda: metadata(server, "tabular-mlp")["state"] == "failed", 10)
    time.sleep(1.5)  # longer than any backoff: no restart comes
    assert metadata(server, "tabular-mlp")["state"] == "failed"
    assert requests.get(f"{server.base_url}/health", timeout=5).status_code == 503
    refused = predict(server, "tabular-mlp", TABULAR)
    assert refused.status_code == 503 and "down" in refused.json()["error"]
    assert predict(server, "digits-cnn", DIGIT).status_code == 200, "other models still serve"
    assert "stays down" in server.log() and "after 1 restarts within 300 s" in server.log()
    assert restarts(server, "tabular-mlp") == 1


def test_nothing_is_orphaned_when_the_main_process_is_killed(server_factory) -> None:
    server = server_factory(config())
    assert len(server.session_pids()) >= 5, "main, API servers, workers and queue manager"
    server.process.send_signal(signal.SIGKILL)
    server.process.wait(timeout=10)
    wait_until(lambda: server.session_pids() == [], 5, interval_s=0.2)
