"""The HTTP contract against a real hookserve process (default config) on 127.0.0.1."""

from __future__ import annotations

import json
import subprocess
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
import torch

from benchmarks.metrics_text import sum_samples
from models.checkpoint import load_pretrained
from models.datasets import load_dataset

pytestmark = pytest.mark.slow


def predict(base: str, model: str, instances: list, **kwargs) -> requests.Response:
    return requests.post(
        f"{base}/v1/models/{model}:predict", json={"instances": instances}, timeout=30, **kwargs
    )


def scrape(base: str) -> str:
    response = requests.get(f"{base}/metrics", timeout=10)
    assert response.status_code == 200
    return response.text


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    data = load_dataset("digits")
    return data.test_x.numpy(), data.test_y.numpy()


def in_process_probabilities(model_name: str, x: np.ndarray) -> np.ndarray:
    model = load_pretrained(model_name)
    with torch.inference_mode():
        return model(torch.from_numpy(x)).numpy()


def test_health_is_ready(live_server: str) -> None:
    assert requests.get(f"{live_server}/health", timeout=5).status_code == 200


@pytest.mark.parametrize("model_name", ["digits-cnn", "digits-transformer"])
def test_predictions_over_http_equal_in_process_inference(live_server: str, digits, model_name: str) -> None:
    x, _ = digits
    response = predict(live_server, model_name, x[:16].tolist())
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == model_name and body["model_version"] == "1"
    served = np.array([p["probabilities"] for p in body["predictions"]])
    np.testing.assert_allclose(served, in_process_probabilities(model_name, x[:16]), atol=1e-5)
    assert [p["label"] for p in body["predictions"]] == [str(i) for i in served.argmax(1)]


def test_tabular_model_serves_raw_features(live_server: str) -> None:
    data = load_dataset(requests.get(f"{live_server}/v1/models/tabular-mlp", timeout=5).json()["dataset"])
    x = data.test_x[:8].numpy()
    response = predict(live_server, "tabular-mlp", x.tolist())
    assert response.status_code == 200, response.text
    served = np.array([p["probabilities"] for p in response.json()["predictions"]])
    np.testing.assert_allclose(served, in_process_probabilities("tabular-mlp", x), atol=1e-5)


def test_concurrent_requests_are_batched_and_each_gets_its_own_answer(live_server: str, digits) -> None:
    x, _ = digits
    expected = in_process_probabilities("digits-cnn", x[:96]).argmax(1)
    before = scrape(live_server)

    def one(i: int) -> tuple[int, int]:
        response = predict(live_server, "digits-cnn", [x[i].tolist()])
        assert response.status_code == 200, response.text
        return i, response.json()["predictions"][0]["label_index"]

    with ThreadPoolExecutor(max_workers=32) as pool:
        answers = list(pool.map(one, range(96)))
    assert all(label == expected[i] for i, label in answers)

    after = scrape(live_server)

    def batches(text: str, le: str | None = None) -> float:
        if le is None:
            return sum_samples(text, "hookserve_batch_size_count", model="digits-cnn")
        return sum_samples(text, "hookserve_batch_size_bucket", model="digits-cnn", le=le)

    new_batches = batches(after) - batches(before)
    singles = batches(after, "1.0") - batches(before, "1.0")
    assert 0 < new_batches < 96, "96 concurrent requests should have been combined into fewer batches"
    assert new_batches - singles > 0, "at least one batch should hold more than one instance"


def test_several_instances_per_request_come_back_in_order(live_server: str, digits) -> None:
    x, _ = digits
    labels = in_process_probabilities("digits-cnn", x[:40]).argmax(1)
    response = predict(live_server, "digits-cnn", x[:40].tolist())
    assert [p["label_index"] for p in response.json()["predictions"]] == labels.tolist()


GOOD_DIGIT = [[0.0] * 8] * 8


@pytest.mark.parametrize(
    ("body", "headers", "status", "message"),
    [
        ({"instances": [[[0.0] * 7] * 8]}, None, 422, "expected shape [8, 8]"),
        ({"instances": [[["a"] * 8] * 8]}, None, 422, "numbers only"),
        (
            '{"instances": [' + json.dumps([[0.0] * 8] * 7 + [[0.0] * 7 + [None]]) + "]}",
            None,
            422,
            "instance 0",
        ),
        ('{"instances": [' + json.dumps([[0.0] * 8] * 7)[:-1] + ", [NaN,0,0,0,0,0,0,0]]]}", None, 422, "NaN"),
        (
            '{"instances": [' + json.dumps([[0.0] * 8] * 7)[:-1] + ", [Infinity,0,0,0,0,0,0,0]]]}",
            None,
            422,
            "infinite",
        ),
        ({"instances": [[[17.0] * 8] * 8]}, None, 422, "<= 16"),
        ({"instances": []}, None, 422, "1 to 64 items, got 0"),
        ({"instances": [GOOD_DIGIT] * 65}, None, 422, "got 65"),
        ({"inputs": [GOOD_DIGIT]}, None, 422, "instances"),
        ("this is not json", None, 422, "JSON"),
        ('{"instances": [', None, 422, "JSON"),
        ("[1, 2, 3]", None, 422, "body must be a JSON object"),
    ],
)
def test_bad_requests_get_a_4xx_naming_the_problem(live_server, body, headers, status, message) -> None:
    data = body if isinstance(body, str) else json.dumps(body)
    response = requests.post(
        f"{live_server}/v1/models/digits-cnn:predict",
        data=data,
        headers=headers or {"Content-Type": "application/json"},
        timeout=10,
    )
    assert response.status_code == status, response.text
    assert message.lower() in response.json()["error"].lower()


def test_wrong_content_type_is_a_client_error(live_server: str) -> None:
    response = requests.post(
        f"{live_server}/v1/models/digits-cnn:predict",
        data=json.dumps({"instances": [GOOD_DIGIT]}),
        headers={"Content-Type": "text/plain"},
        timeout=10,
    )
    assert response.status_code == 415
    assert "application/json" in response.json()["error"]


def test_oversized_body_gets_413_before_it_is_read(live_server: str) -> None:
    response = requests.post(
        f"{live_server}/v1/models/digits-cnn:predict",
        data=b"[" + b"0," * 3_000_000 + b"0]",
        headers={"Content-Type": "application/json"},
        timeout=30,
    )
    assert response.status_code == 413
    assert "exceeds" in response.json()["error"]


def test_oversized_chunked_body_gets_413(live_server: str) -> None:
    def chunks():
        for _ in range(80):
            yield b" " * 65536

    response = requests.post(
        f"{live_server}/v1/models/digits-cnn:predict",
        data=chunks(),
        headers={"Content-Type": "application/json"},
        timeout=30,
    )
    assert response.status_code == 413


def test_unknown_model_is_404_with_the_served_list(live_server: str) -> None:
    response = predict(live_server, "no-such-model", [GOOD_DIGIT])
    assert response.status_code == 404
    assert "digits-cnn" in response.json()["error"]


def test_server_keeps_serving_after_bad_requests(live_server: str, digits) -> None:
    for _ in range(5):
        requests.post(f"{live_server}/v1/models/digits-cnn:predict", data="{", timeout=10)
    x, _ = digits
    assert predict(live_server, "digits-cnn", [x[0].tolist()]).status_code == 200


def test_model_listing_and_metadata(live_server: str) -> None:
    listing = requests.get(f"{live_server}/v1/models", timeout=5).json()["models"]
    assert {m["name"] for m in listing} == {"digits-cnn", "tabular-mlp", "digits-transformer"}
    meta = requests.get(f"{live_server}/v1/models/digits-cnn", timeout=5).json()
    assert meta["input"]["shape"] == [8, 8] and meta["input"]["max_value"] == 16
    assert meta["output"]["labels"] == [str(i) for i in range(10)]
    assert meta["device"] == "cpu" and meta["precision"] == "fp32"
    assert meta["batching"]["max_batch_size"] == 64
    assert meta["workers"] and meta["workers"][0]["warmup_seconds"] > 0
    assert requests.get(f"{live_server}/v1/models/nope", timeout=5).status_code == 404


def test_openapi_documents_each_predict_route_with_its_schema(live_server: str) -> None:
    spec = requests.get(f"{live_server}/openapi.json", timeout=5).json()
    operation = spec["paths"]["/v1/models/digits-cnn:predict"]["post"]
    ref = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"].split("/")[-1]
    instances = spec["components"]["schemas"][ref]["properties"]["instances"]
    assert instances["items"]["minItems"] == 8


def test_request_metrics_agree_with_requests_sent(live_server: str, digits) -> None:
    x, _ = digits
    before = scrape(live_server)
    for i in range(7):
        assert predict(live_server, "digits-transformer", [x[i].tolist()]).status_code == 200
    for _ in range(3):
        assert predict(live_server, "digits-transformer", []).status_code == 422
    after = scrape(live_server)

    def delta(name: str, **labels: str) -> float:
        return sum_samples(after, name, **labels) - sum_samples(before, name, **labels)

    assert delta("hookserve_requests_total", model="digits-transformer", code="200") == 7
    assert delta("hookserve_requests_total", model="digits-transformer", code="422") == 3
    assert delta("hookserve_request_duration_seconds_count", model="digits-transformer") == 10
    assert delta("hookserve_queue_wait_seconds_count", model="digits-transformer") == 7
    assert delta("hookserve_model_forward_seconds_count", model="digits-transformer") >= 1
    assert sum_samples(after, "hookserve_inflight_requests", model="digits-transformer") == 0


def test_metrics_pass_promtool_check(live_server: str) -> None:
    result = subprocess.run(
        ["promtool", "check", "metrics"],
        input=scrape(live_server),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_metrics_path_answers_without_redirect(live_server: str) -> None:
    response = requests.get(f"{live_server}/metrics", timeout=5, allow_redirects=False)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
