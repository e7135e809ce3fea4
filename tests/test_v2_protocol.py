"""The Open Inference Protocol V2 against a live server (default config), with the real tritonclient.

What a client of Triton or KServe does must work unmodified: health, metadata, readiness, inference in
binary and in JSON. Bad input is always a 4xx naming the problem, never a 5xx.
"""

from __future__ import annotations

import json
import struct
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
import torch
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from benchmarks.metrics_text import sum_samples
from models.checkpoint import load_pretrained
from models.datasets import load_dataset

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def client(live_server: str) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(url=live_server.removeprefix("http://"))


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    data = load_dataset("digits")
    return data.test_x.numpy(), data.test_y.numpy()


def in_process(model_name: str, x: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return load_pretrained(model_name)(torch.from_numpy(x)).numpy()


def digit_input(x: np.ndarray, binary: bool) -> triton.InferInput:
    tensor = triton.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=binary)
    return tensor


def test_health_and_server_metadata(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()
    metadata = client.get_server_metadata()
    assert metadata["name"] == "hookserve" and "binary_tensor_data" in metadata["extensions"]


def test_model_metadata_and_readiness(client: triton.InferenceServerClient, live_server: str) -> None:
    metadata = client.get_model_metadata("digits-cnn")
    assert metadata["platform"] == "pytorch" and metadata["versions"] == ["1"]
    assert metadata["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 8, 8]}]
    assert {o["name"]: (o["datatype"], o["shape"]) for o in metadata["outputs"]} == {
        "probabilities": ("FP32", [-1, 10]),
        "label_index": ("INT64", [-1]),
        "label": ("BYTES", [-1]),
    }
    assert client.get_model_metadata("digits-cnn", model_version="1") == metadata
    assert client.is_model_ready("digits-cnn") and client.is_model_ready("tabular-mlp", model_version="1")
    assert not client.is_model_ready("no-such-model")
    ready = requests.get(f"{live_server}/v2/models/digits-cnn/ready", timeout=5)
    assert ready.json() == {"name": "digits-cnn", "ready": True}
    assert requests.get(f"{live_server}/v2/health/live", timeout=5).json() == {"live": True}
    assert requests.get(f"{live_server}/v2/health/ready", timeout=5).json() == {"ready": True}


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("model_name", ["digits-cnn", "digits-transformer"])
def test_infer_equals_in_process_inference(client, digits, binary: bool, model_name: str) -> None:
    x = digits[0][:12]
    outputs = [
        triton.InferRequestedOutput(name, binary_data=binary)
        for name in ("probabilities", "label_index", "label")
    ]
    result = client.infer(model_name, [digit_input(x, binary)], outputs=outputs, request_id="req-42")
    expected = in_process(model_name, x)
    np.testing.assert_allclose(result.as_numpy("probabilities"), expected, atol=1e-5)
    assert result.as_numpy("label_index").tolist() == expected.argmax(1).tolist()
    assert [label.decode() if isinstance(label, bytes) else label for label in result.as_numpy("label")] == [
        str(i) for i in expected.argmax(1)
    ]
    response = result.get_response()
    assert response["model_name"] == model_name and response["model_version"] == "1"
    assert response["id"] == "req-42"


def test_every_output_comes_back_when_none_is_named(client, digits) -> None:
    result = client.infer("digits-cnn", [digit_input(digits[0][:3], True)], model_version="1")
    assert result.as_numpy("probabilities").shape == (3, 10)
    assert result.as_numpy("label_index").shape == (3,)
    assert len(result.as_numpy("label")) == 3


def test_a_subset_of_outputs_in_json(client, digits) -> None:
    outputs = [triton.InferRequestedOutput("label_index", binary_data=False)]
    result = client.infer("digits-cnn", [digit_input(digits[0][:2], False)], outputs=outputs)
    assert [o["name"] for o in result.get_response()["outputs"]] == ["label_index"]


def test_client_errors_reach_tritonclient_as_messages(client) -> None:
    with pytest.raises(InferenceServerException) as info:
        client.infer("digits-cnn", [digit_input(np.zeros((1, 8, 7), np.float32), True)])
    assert "shape must be [N, 8, 8]" in info.value.message() and info.value.status() == "400"
    with pytest.raises(InferenceServerException) as info:
        client.infer("digits-cnn", [digit_input(np.full((1, 8, 8), 17, np.float32), True)])
    assert "<= 16" in info.value.message()


def test_tabular_model_over_v2(client) -> None:
    data = load_dataset("breast_cancer")
    x = data.test_x[:5].numpy()
    tensor = triton.InferInput("input", [5, 30], "FP32")
    tensor.set_data_from_numpy(x)
    result = client.infer("tabular-mlp", [tensor])
    np.testing.assert_allclose(result.as_numpy("probabilities"), in_process("tabular-mlp", x), atol=1e-5)


def test_other_numeric_datatypes_are_converted(live_server: str) -> None:
    x = np.arange(64, dtype=np.float64).reshape(1, 8, 8) % 16
    body = {
        "inputs": [
            {"name": "input", "shape": [1, 8, 8], "datatype": "INT32", "data": x.astype(int).ravel().tolist()}
        ]
    }
    response = requests.post(f"{live_server}/v2/models/digits-cnn/infer", json=body, timeout=10)
    assert response.status_code == 200, response.text
    expected = in_process("digits-cnn", x.astype(np.float32))
    probabilities = next(o for o in response.json()["outputs"] if o["name"] == "probabilities")
    np.testing.assert_allclose(np.array(probabilities["data"]).reshape(1, 10), expected, atol=1e-5)


def binary_body(header: dict, blob: bytes) -> tuple[bytes, dict]:
    encoded = json.dumps(header).encode()
    return encoded + blob, {"Inference-Header-Content-Length": str(len(encoded))}


GOOD = np.zeros((1, 8, 8), np.float32)
GOOD_INPUT = {"name": "input", "shape": [1, 8, 8], "datatype": "FP32"}


def as_binary(array: np.ndarray = GOOD, **overrides) -> tuple[bytes, dict]:
    blob = array.tobytes()
    tensor = {**GOOD_INPUT, "parameters": {"binary_data_size": len(blob)}, **overrides}
    return binary_body({"inputs": [tensor]}, blob)


def json_input(**overrides) -> bytes:
    return json.dumps({"inputs": [{**GOOD_INPUT, "data": [0.0] * 64, **overrides}]}).encode()


BAD_REQUESTS = {
    "malformed JSON": (b'{"inputs": [', {}, 400, "not valid JSON"),
    "not an object": (b"[1, 2]", {}, 400, "JSON object"),
    "no inputs": (b'{"outputs": []}', {}, 400, "'inputs'"),
    "unknown input name": (json_input(name="x"), {}, 400, "unknown input 'x'"),
    "wrong shape": (json_input(shape=[1, 8, 7]), {}, 400, "shape must be [N, 8, 8]"),
    "too many instances": (
        json.dumps({"inputs": [{**GOOD_INPUT, "shape": [65, 8, 8], "data": [0] * 65 * 64}]}).encode(),
        {},
        400,
        "1 to 64",
    ),
    "BOOL datatype": (json_input(datatype="BOOL"), {}, 400, "datatype 'BOOL'"),
    "BYTES datatype": (json_input(datatype="BYTES"), {}, 400, "datatype 'BYTES'"),
    "data size mismatch": (json_input(data=[0.0] * 63), {}, 400, "holds 63 values"),
    "non-numbers": (json_input(data=["a"] * 64), {}, 400, "numbers only"),
    "NaN literal": (json_input().replace(b"0.0]", b"NaN]"), {}, 400, "NaN"),
    "out of range": (json_input(data=[17.0] * 64), {}, 400, "<= 16"),
    "unknown output": (
        json.dumps({"inputs": [{**GOOD_INPUT, "data": [0] * 64}], "outputs": [{"name": "logits"}]}).encode(),
        {},
        400,
        "unknown output",
    ),
    "truncated binary": (as_binary()[0][:-10], as_binary()[1], 400, "declared"),
    "header length past the body": (
        as_binary()[0],
        {"Inference-Header-Content-Length": "999999"},
        400,
        "Inference-Header-Content-Length",
    ),
    "binary size disagrees with shape": (
        *as_binary(parameters={"binary_data_size": 100}),
        400,
        "does not match",
    ),
    "extra binary bytes": (as_binary()[0] + b"1234", as_binary()[1], 400, "beyond what the inputs declare"),
}


@pytest.mark.parametrize(
    ("body", "headers", "status", "message"), BAD_REQUESTS.values(), ids=BAD_REQUESTS.keys()
)
def test_bad_v2_requests_get_a_4xx_naming_the_problem(live_server, body, headers, status, message) -> None:
    response = requests.post(
        f"{live_server}/v2/models/digits-cnn/infer", data=body, headers=headers, timeout=10
    )
    assert response.status_code == status, response.text
    assert message.lower() in response.json()["error"].lower()
    assert response.json()["request_id"] == response.headers["X-Request-ID"]


def test_unknown_models_and_versions_are_404(live_server: str) -> None:
    for path in (
        "/v2/models/nope/infer",
        "/v2/models/digits-cnn/versions/7/infer",
        "/v2/models/nope",
        "/v2/nothing",
    ):
        response = requests.post(f"{live_server}{path}", data=json_input(), timeout=10)
        assert response.status_code == 404, path
        assert "digits-cnn" in response.json()["error"]


def test_oversized_v2_body_gets_413(live_server: str) -> None:
    response = requests.post(
        f"{live_server}/v2/models/digits-cnn/infer", data=b" " * (5 * 1024 * 1024), timeout=30
    )
    assert response.status_code == 413


def test_v1_and_v2_share_workers_and_are_counted_apart(live_server: str, client, digits) -> None:
    before = requests.get(f"{live_server}/metrics", timeout=10).text
    x = digits[0]

    def v1(i: int) -> int:
        return requests.post(
            f"{live_server}/v1/models/digits-cnn:predict", json={"instances": [x[i].tolist()]}, timeout=30
        ).json()["predictions"][0]["label_index"]

    def v2(i: int) -> int:
        return int(client.infer("digits-cnn", [digit_input(x[i : i + 1], True)]).as_numpy("label_index")[0])

    with ThreadPoolExecutor(max_workers=16) as pool:
        v1_labels = list(pool.map(v1, range(24)))
        v2_labels = [v2(i) for i in range(24)]
    assert v1_labels == v2_labels == in_process("digits-cnn", x[:24]).argmax(1).tolist()
    after = requests.get(f"{live_server}/metrics", timeout=10).text

    def delta(name: str, **labels: str) -> float:
        return sum_samples(after, name, **labels) - sum_samples(before, name, **labels)

    assert delta("hookserve_protocol_requests_total", model="digits-cnn", protocol="v1") >= 24
    assert delta("hookserve_protocol_requests_total", model="digits-cnn", protocol="v2") >= 24
    assert delta("hookserve_requests_total", model="digits-cnn", code="200") >= 48


def test_bytes_outputs_use_the_length_prefixed_binary_layout(live_server: str) -> None:
    header = {
        "inputs": [{**GOOD_INPUT, "data": [0.0] * 64}],
        "outputs": [{"name": "label", "parameters": {"binary_data": True}}],
    }
    response = requests.post(f"{live_server}/v2/models/digits-cnn/infer", json=header, timeout=10)
    assert response.status_code == 200
    length = int(response.headers["Inference-Header-Content-Length"])
    blob = response.content[length:]
    (size,) = struct.unpack("<I", blob[:4])
    assert blob[4 : 4 + size].decode() in [str(i) for i in range(10)] and len(blob) == 4 + size
