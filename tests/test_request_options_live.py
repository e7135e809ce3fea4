"""A request's own deadline and priority, through V1 (headers) and V2 (Triton's request parameters), on a
live server whose plug-in model costs 100 ms per batch, one request per batch.

Out-of-range values are a 400 that says what is allowed; a deadline shorter than the queue ahead ends in
503 (refused at the door) or 504 (expired in the queue), never a 200 late; a priority-1 request queued
behind priority-2 ones is answered before those still waiting (completion order, not timings)."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from benchmarks.servers import ServerProcess

pytestmark = pytest.mark.slow

INSTANCE = [[1.0, 2.0, 3.0, 4.0]]


@pytest.fixture(scope="module")
def server(server_factory) -> ServerProcess:
    config = {
        "server": {"request_timeout_s": 10.0, "api_servers": 1},
        "models": [
            {
                "name": "slow",
                "source": "tests.fixtures.costly_model:build",
                "overrides": {"batch_ms": 100.0, "instance_ms": 0.0},
                "monitoring": {"enabled": False},
                "max_batch_size": 1,
                "priority_levels": 2,
            }
        ],
    }
    return server_factory(config)


def v1(server: ServerProcess, headers: dict[str, str] | None = None) -> requests.Response:
    url = f"{server.base_url}/v1/models/slow:predict"
    return requests.post(url, json={"instances": INSTANCE}, headers=headers or {}, timeout=30)


def v2(server: ServerProcess, parameters: dict | None = None) -> requests.Response:
    body: dict = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": INSTANCE[0]}]}
    if parameters is not None:
        body["parameters"] = parameters
    return requests.post(f"{server.base_url}/v2/models/slow/infer", json=body, timeout=30)


@pytest.mark.parametrize(
    ("headers", "says"),
    [
        ({"X-Priority": "3"}, "X-Priority must be an integer from 1 (highest) to 2"),
        ({"X-Priority": "high"}, "X-Priority must be an integer"),
        ({"X-Request-Timeout-Ms": "0"}, "X-Request-Timeout-Ms must be above 0"),
        ({"X-Request-Timeout-Ms": "20000"}, "at most the model's deadline, 10 s"),
        ({"X-Request-Timeout-Ms": "soon"}, "X-Request-Timeout-Ms must be a number"),
    ],
)
def test_v1_out_of_range_options_are_a_400(server: ServerProcess, headers: dict, says: str) -> None:
    response = v1(server, headers)
    assert response.status_code == 400 and says in response.json()["error"]


@pytest.mark.parametrize(
    ("parameters", "says"),
    [
        ({"priority": 3}, "parameters.priority must be an integer from 1 (highest) to 2"),
        ({"priority": "1"}, "parameters.priority must be an integer"),
        ({"timeout": -5}, "parameters.timeout must be above 0"),
        ({"timeout": 11_000_000}, "at most the model's deadline, 10 s"),
        ({"timeout": "fast"}, "parameters.timeout must be a number of microseconds"),
    ],
)
def test_v2_out_of_range_parameters_are_a_400(server: ServerProcess, parameters: dict, says: str) -> None:
    response = v2(server, parameters)
    assert response.status_code == 400 and says in response.json()["error"]


def test_in_range_options_are_served(server: ServerProcess) -> None:
    assert v1(server, {"X-Priority": "1", "X-Request-Timeout-Ms": "5000"}).status_code == 200
    assert v2(server, {"priority": 2, "timeout": 5_000_000}).status_code == 200
    assert v2(server, {"priority": 0}).status_code == 200  # 0: the model's default (Triton's meaning)


def busy(server: ServerProcess, requests_in_queue: int) -> ThreadPoolExecutor:
    """Keep the worker busy: ``requests_in_queue`` priority-2 requests sent at once."""
    pool = ThreadPoolExecutor(requests_in_queue)
    for _ in range(requests_in_queue):
        pool.submit(v1, server, {"X-Priority": "2"})
    time.sleep(0.15)  # they reach the worker's queue
    return pool


@pytest.mark.parametrize("protocol", ["v1", "v2"])
def test_a_deadline_shorter_than_the_queue_is_never_a_late_200(server: ServerProcess, protocol: str) -> None:
    pool = busy(server, 6)  # ~600 ms of work ahead
    try:
        if protocol == "v1":
            response = v1(server, {"X-Request-Timeout-Ms": "150"})
        else:
            response = v2(server, {"timeout": 150_000})
        assert response.status_code in (503, 504), response.text
        message = response.json()["error"]
        assert "timeout" in message or "deadline" in message, message
    finally:
        pool.shutdown(wait=True)


@pytest.mark.parametrize("protocol", ["v1", "v2"])
def test_priority_one_is_answered_before_queued_priority_two(server: ServerProcess, protocol: str) -> None:
    done: list[str] = []
    lock = threading.Lock()

    def low() -> None:
        assert v1(server, {"X-Priority": "2"}).status_code == 200
        with lock:
            done.append("low")

    threads = [threading.Thread(target=low) for _ in range(6)]
    for thread in threads:
        thread.start()
    time.sleep(0.25)  # one low request runs, the others wait in the worker's queue
    high = v1(server, {"X-Priority": "1"}) if protocol == "v1" else v2(server, {"priority": 1})
    with lock:
        done.append("high")
    assert high.status_code == 200
    for thread in threads:
        thread.join()
    assert done.count("low") == 6
    # At most the running batch and the one started as the high request arrived come before it.
    assert done.index("high") <= 3, done


def test_openapi_documents_the_deadline_and_priority_of_both_protocols(server: ServerProcess) -> None:
    spec = requests.get(f"{server.base_url}/openapi.json", timeout=10).json()
    v1_operation = spec["paths"]["/v1/models/slow:predict"]["post"]
    headers = {p["name"]: p for p in v1_operation["parameters"] if p["in"] == "header"}
    assert headers["X-Request-Timeout-Ms"]["schema"]["maximum"] == 10_000  # the model's 10 s, in ms
    assert headers["X-Priority"]["schema"] == {"type": "integer", "minimum": 1, "maximum": 2}
    assert "400" in v1_operation["responses"]
    v2_operation = spec["paths"]["/v2/models/slow/infer"]["post"]
    body = v2_operation["requestBody"]["content"]["application/json"]["schema"]
    parameters = next(part for part in body["allOf"] if "properties" in part)["properties"]["parameters"]
    assert parameters["properties"]["timeout"]["maximum"] == 10_000_000  # microseconds
    assert parameters["properties"]["priority"]["maximum"] == 2
    assert "priority" in v2_operation["responses"]["400"]["description"]
