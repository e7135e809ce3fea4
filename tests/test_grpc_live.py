"""The Open Inference Protocol V2 over gRPC against live servers, driven by the real ``tritonclient.grpc``.

tritonclient runs in its own venv and process (``.venv-triton``, made by ``scripts/setup.sh triton``,
which the test command runs): its stubs and hookserve's both register the ``inference`` proto package,
and one process cannot hold both (kserve #3099). This process speaks gRPC only through hookserve's own
stubs and ``grpc.health.v1``.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import grpc
import numpy as np
import pytest
import requests
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc

from benchmarks.metrics_text import sum_samples
from benchmarks.servers import REPO_ROOT, ServerProcess
from models.checkpoint import load_pretrained
from models.datasets import load_dataset
from service.grpc.proto import grpc_predict_v2_pb2 as pb
from service.grpc.proto import grpc_predict_v2_pb2_grpc as pb_grpc
from service.grpc.proto import triton_stream_pb2 as stream_pb

pytestmark = pytest.mark.slow
TRITON_PYTHON = REPO_ROOT / ".venv-triton" / "bin" / "python"
CLIENT = REPO_ROOT / "tests" / "clients" / "triton_grpc_check.py"
API_KEY = "grpc-test-key-0123"
SERVER_DEADLINE_S = 0.5
STREAMED = 12  # good requests sent down one ModelStreamInfer stream before any answer is read


def triton(server: ServerProcess, *args: str) -> dict:
    """What ``tests/clients/triton_grpc_check.py`` saw, run with tritonclient's venv."""
    assert TRITON_PYTHON.exists(), "run scripts/setup.sh triton (scripts/test.sh does) to make .venv-triton"
    assert server.grpc_port is not None
    result = subprocess.run(
        [str(TRITON_PYTHON), str(CLIENT), f"127.0.0.1:{server.grpc_port}", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def metric(server: ServerProcess, name: str, **labels: str) -> float:
    return sum_samples(requests.get(f"{server.base_url}/metrics", timeout=10).text, name, **labels)


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    return load_dataset("digits").test_x[:5].numpy()


@pytest.fixture(scope="module")
def basics(live_server_process: ServerProcess, digits: np.ndarray, tmp_path_factory) -> dict:
    """One run of the client's basic checks, with the server's counters before and after it."""
    path = tmp_path_factory.mktemp("grpc") / "x.npy"
    np.save(path, digits)
    server = live_server_process
    counted = {
        "grpc": ("hookserve_protocol_requests_total", {"model": "digits-cnn", "protocol": "grpc"}),
        "unknown": ("hookserve_protocol_requests_total", {"model": "unknown", "protocol": "grpc"}),
        "400": ("hookserve_requests_total", {"model": "digits-cnn", "code": "400"}),
        "200": ("hookserve_requests_total", {"model": "digits-cnn", "code": "200"}),
    }
    before = {key: metric(server, name, **labels) for key, (name, labels) in counted.items()}
    seen = triton(server, "basics", str(path))
    after = {key: metric(server, name, **labels) for key, (name, labels) in counted.items()}
    return {**seen, "counted": {key: after[key] - before[key] for key in counted}}


@pytest.fixture(scope="module")
def streamed(live_server_process: ServerProcess, digits: np.ndarray, tmp_path_factory) -> dict:
    """One stream through tritonclient's streaming API, with the server's gRPC count before and after."""
    path = tmp_path_factory.mktemp("grpc-stream") / "x.npy"
    np.save(path, digits)
    labels = {"model": "digits-cnn", "protocol": "grpc"}
    before = metric(live_server_process, "hookserve_protocol_requests_total", **labels)
    seen = triton(live_server_process, "stream", str(path), str(STREAMED))
    after = metric(live_server_process, "hookserve_protocol_requests_total", **labels)
    return {**seen, "counted": after - before}


@pytest.fixture(scope="module")
def guarded(server_factory) -> ServerProcess:
    """Auth on, a short server deadline, and a model slower than it."""
    config = {
        "server": {"request_timeout_s": SERVER_DEADLINE_S, "auth": {"api_key_env": "TEST_GRPC_KEY"}},
        "models": [
            {"name": "digits-cnn", "monitoring": {"enabled": False}},
            {
                "name": "slow",
                "source": "tests.fixtures.slow_model:build",
                "overrides": {"delay_ms": 1500},
                "max_batch_size": 1,
                "monitoring": {"enabled": False},
            },
        ],
    }
    return server_factory(config, env={"TEST_GRPC_KEY": API_KEY})


def in_process(x: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return load_pretrained("digits-cnn")(torch.from_numpy(x)).numpy()


def test_health_and_readiness(basics: dict, live_server_process: ServerProcess) -> None:
    assert basics["live"] and basics["ready"] and basics["model_ready"] and basics["model_ready_v1"]
    assert basics["unknown_model_ready"]["code"] == "NOT_FOUND"
    with grpc.insecure_channel(f"127.0.0.1:{live_server_process.grpc_port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "inference.GRPCInferenceService", "digits-cnn"):
            answer = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING, service
        with pytest.raises(grpc.RpcError) as unknown:
            health.Check(health_pb2.HealthCheckRequest(service="no-such-model"), timeout=10)
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND


def test_metadata_says_what_rest_v2_says(basics: dict, live_server: str) -> None:
    assert basics["server_metadata"]["name"] == "hookserve"
    rest = requests.get(f"{live_server}/v2/models/digits-cnn", timeout=10).json()
    for key in ("model_metadata", "model_metadata_v1"):
        metadata = basics[key]
        for kind in ("inputs", "outputs"):  # protobuf's JSON writes int64 as strings
            for tensor in metadata[kind]:
                tensor["shape"] = [int(d) for d in tensor["shape"]]
        assert metadata == rest


def test_binary_inference_equals_rest_v2_and_the_model(
    basics: dict, digits: np.ndarray, live_server: str
) -> None:
    answer = basics["binary"]
    assert answer["model_name"] == "digits-cnn" and answer["model_version"] == "1"
    assert answer["id"] == "triton-grpc"
    n = len(digits)
    assert answer["outputs"] == {
        "probabilities": ["FP32", [n, 10]],
        "label_index": ["INT64", [n]],
        "label": ["BYTES", [n]],
    }
    tensor = {"name": "input", "shape": list(digits.shape), "datatype": "FP32", "data": digits.tolist()}
    url = f"{live_server}/v2/models/digits-cnn/infer"
    rest = requests.post(url, json={"inputs": [tensor]}, timeout=30).json()
    rest_outputs = {o["name"]: o["data"] for o in rest["outputs"]}
    probabilities = np.asarray(answer["probabilities"])
    np.testing.assert_allclose(probabilities.ravel(), rest_outputs["probabilities"], atol=1e-6)
    np.testing.assert_allclose(probabilities, in_process(digits), atol=1e-5)
    assert answer["label_index"] == rest_outputs["label_index"] == probabilities.argmax(1).tolist()
    assert answer["label"] == rest_outputs["label"]
    assert basics["binary_v1"]["probabilities"] == answer["probabilities"]
    assert basics["one_output"] == answer["label_index"]


@pytest.mark.parametrize(
    ("case", "code", "says"),
    [
        ("bad_shape", "INVALID_ARGUMENT", "shape must be [N, 8, 8]"),
        ("bad_datatype", "INVALID_ARGUMENT", "'BOOL' is not supported"),
        ("bad_size", "INVALID_ARGUMENT", "does not match shape"),
        ("bad_value", "INVALID_ARGUMENT", "NaN"),
        ("too_many", "INVALID_ARGUMENT", "must hold 1 to 64 items"),
        ("unknown_model", "NOT_FOUND", "'no-such-model' is not served"),
        ("unknown_version", "NOT_FOUND", "no version '7'"),
        ("repository_load", "PERMISSION_DENIED", "explicit model load / unload is not allowed"),
    ],
)
def test_client_mistakes_get_their_grpc_code_and_a_clear_message(
    basics: dict, case: str, code: str, says: str
) -> None:
    assert basics[case]["code"] == code
    assert says in basics[case]["message"]


def test_the_repository_index_answers_with_tritons_messages(basics: dict) -> None:
    models = basics["repository_index"]["models"]
    assert {"name": "digits-cnn", "version": "1", "state": "READY"} in [
        {k: m.get(k) for k in ("name", "version", "state")} for m in models
    ]


def test_grpc_requests_are_counted_by_protocol_and_status(basics: dict) -> None:
    # digits-cnn: binary, binary_v1, one_output (200) and five client mistakes (400).
    assert basics["counted"] == {"grpc": 8, "unknown": 2, "400": 5, "200": 3}


def test_a_stream_answers_every_request_matched_by_id(streamed: dict, digits: np.ndarray) -> None:
    answers = streamed["answers"]
    assert set(answers) == {f"ok-{i}" for i in range(STREAMED)} | {"after-mistakes"}
    for i in range(STREAMED):
        np.testing.assert_allclose(
            answers[f"ok-{i}"]["probabilities"], in_process(digits[i % len(digits) :]), atol=1e-5
        )
    assert answers["after-mistakes"]["version"] == "1"
    assert all(answer["final"] for answer in answers.values())  # Triton's mark of a request's last answer
    np.testing.assert_allclose(answers["after-mistakes"]["probabilities"], in_process(digits), atol=1e-5)


def test_a_streamed_mistake_is_answered_on_the_stream_which_goes_on(streamed: dict) -> None:
    errors = sorted(streamed["errors"])  # "INVALID_ARGUMENT: ..." sorts before "NOT_FOUND: ..."
    assert len(errors) == 2, errors
    assert errors[0].startswith("INVALID_ARGUMENT: ") and "shape must be [N, 8, 8]" in errors[0]
    assert errors[0].endswith("(request id bad-shape)")
    assert errors[1].startswith("NOT_FOUND: ") and "'no-such-model' is not served" in errors[1]
    assert "after-mistakes" in streamed["answers"]  # sent after both mistakes, on the same stream
    # Every request to digits-cnn on the stream is counted as gRPC: the good ones and the bad shape.
    assert streamed["counted"] == STREAMED + 2


def test_typed_contents_answer_as_raw_ones(live_server_process: ServerProcess, digits: np.ndarray) -> None:
    """Inputs as ``contents`` (FP32 and INT32 here; tritonclient always sends raw) decode like raw ones."""
    tensor = pb.ModelInferRequest.InferInputTensor
    x = np.rint(digits[:2])
    requests_ = {
        "raw": pb.ModelInferRequest(
            inputs=[tensor(name="input", datatype="FP32", shape=x.shape)],
            raw_input_contents=[x.astype("<f4").tobytes()],
        ),
        "fp32": pb.ModelInferRequest(
            inputs=[
                tensor(name="input", datatype="FP32", shape=x.shape, contents={"fp32_contents": x.ravel()})
            ]
        ),
        "int32": pb.ModelInferRequest(
            inputs=[
                tensor(
                    name="input",
                    datatype="INT32",
                    shape=x.shape,
                    contents={"int_contents": x.ravel().astype(int).tolist()},
                )
            ]
        ),
    }
    with grpc.insecure_channel(f"127.0.0.1:{live_server_process.grpc_port}") as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        answers = {}
        for name, request in requests_.items():
            request.model_name = "digits-cnn"
            answer = stub.ModelInfer(request, timeout=30)
            assert [o.name for o in answer.outputs] == ["probabilities", "label_index", "label"]
            answers[name] = np.frombuffer(answer.raw_output_contents[0], np.float32).reshape(2, 10)
    np.testing.assert_allclose(answers["fp32"], answers["raw"], atol=1e-6)
    np.testing.assert_allclose(answers["int32"], answers["raw"], atol=1e-6)
    np.testing.assert_allclose(answers["raw"], in_process(x.astype(np.float32)), atol=1e-5)


def test_the_key_is_needed_for_inference_and_metadata_not_for_health(
    guarded: ServerProcess, digits: np.ndarray, tmp_path: Path
) -> None:
    np.save(tmp_path / "x.npy", digits)
    seen = triton(guarded, "auth", str(tmp_path / "x.npy"), API_KEY)
    assert seen["live"] and seen["model_ready"]
    for case in ("no_key", "wrong_key", "metadata_no_key", "stream_no_key"):
        assert seen[case]["code"] == "UNAUTHENTICATED", case
        assert "authorization: Bearer" in seen[case]["message"]
    np.testing.assert_allclose(seen["key"]["probabilities"], in_process(digits), atol=1e-5)
    assert seen["metadata_key"]["name"] == "digits-cnn"


def test_deadlines_server_and_client_give_deadline_exceeded(guarded: ServerProcess) -> None:
    before = metric(guarded, "hookserve_requests_total", model="slow", code="504")
    seen = triton(guarded, "deadline", "slow", "0.2", API_KEY)
    assert seen["server_deadline"]["code"] == "DEADLINE_EXCEEDED"
    assert f"{SERVER_DEADLINE_S:g} s deadline" in seen["server_deadline"]["message"]
    assert seen["client_deadline"]["code"] == "DEADLINE_EXCEEDED"
    assert metric(guarded, "hookserve_requests_total", model="slow", code="504") >= before + 1


def test_a_corrupt_message_is_invalid_argument_on_the_wire(live_server_process: ServerProcess) -> None:
    """Not a ModelInferRequest at all: the client's mistake, so INVALID_ARGUMENT, never UNKNOWN."""
    with grpc.insecure_channel(f"127.0.0.1:{live_server_process.grpc_port}") as channel:
        unary = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        with pytest.raises(grpc.RpcError) as failed:
            unary(b"\xff\xff\xff", timeout=30)
        stream = channel.stream_stream(
            "/inference.GRPCInferenceService/ModelStreamInfer",
            response_deserializer=stream_pb.ModelStreamInferResponse.FromString,
        )
        (answer,) = list(stream(iter([b"\xff\xff\xff"]), timeout=30))
    assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid ModelInferRequest" in failed.value.details()
    assert answer.error_message.startswith("INVALID_ARGUMENT: the message is not a valid ModelInferRequest")
