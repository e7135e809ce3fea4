"""The gRPC edge without a server: stubs current, messages decoded as REST decodes them, codes mapped,
the pipeline's refusals, and the settings that turn it on."""

from __future__ import annotations

import asyncio
import contextlib
import filecmp
import os
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import grpc
import numpy as np
import pytest

from models.base import InputSpec, OutputSpec
from service.cli import build_parser
from service.config import HookserveConfig, ModelServeConfig, ServerConfig
from service.grpc.endpoint import GrpcEndpoint, check_port_free
from service.grpc.proto import grpc_predict_v2_pb2 as pb
from service.grpc.proto import triton_stream_pb2 as stream_pb
from service.grpc.service import InferenceService, grpc_code
from service.grpc.tensors import decode_infer_request, encode_infer_response
from service.http.admission import AdmissionGate, DrainSwitch
from service.http.codec import ClientError
from service.http.inference import InferencePipeline, RouteSettings
from service.http.worker_client import WorkerUnavailable
from service.pool.table import ServedModel, ServedVersion

ROOT = Path(__file__).resolve().parent.parent
STUBS = [
    "grpc_predict_v2_pb2.py",
    "grpc_predict_v2_pb2.pyi",
    "grpc_predict_v2_pb2_grpc.py",
    "triton_repository_pb2.py",
    "triton_repository_pb2.pyi",
    "triton_stream_pb2.py",
    "triton_stream_pb2.pyi",
]
SETTINGS = RouteSettings(
    model="m",
    version="1",
    input_spec=InputSpec(shape=(2, 3), min_value=-10, max_value=10),
    output_spec=OutputSpec(labels=("a", "b", "c")),
    max_instances=4,
    request_timeout_s=5.0,
    max_body_bytes=1 << 20,
    api_key=None,
)
Tensor = pb.ModelInferRequest.InferInputTensor


def test_committed_stubs_are_what_the_script_generates(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHON": sys.executable}
    subprocess.run(["bash", "scripts/gen_grpc.sh", str(tmp_path)], cwd=ROOT, env=env, check=True, timeout=120)
    fresh, committed = tmp_path / "service" / "grpc" / "proto", ROOT / "service" / "grpc" / "proto"
    for name in STUBS:
        assert filecmp.cmp(fresh / name, committed / name, shallow=False), f"{name} is stale: run gen_grpc.sh"


# --- requests and answers -----------------------------------------------------------------------------


def raw_request(x: np.ndarray, datatype: str = "FP32", **fields) -> pb.ModelInferRequest:
    tensor = Tensor(name="input", datatype=datatype, shape=x.shape)
    return pb.ModelInferRequest(model_name="m", inputs=[tensor], raw_input_contents=[x.tobytes()], **fields)


def test_raw_and_typed_inputs_decode_to_the_same_instances() -> None:
    x = np.arange(12, dtype=np.float32).reshape(2, 2, 3) - 5
    raw = decode_infer_request(raw_request(x), SETTINGS)
    typed = pb.ModelInferRequest(
        inputs=[
            Tensor(
                name="input",
                datatype="INT64",
                shape=x.shape,
                contents={"int64_contents": x.ravel().astype(int).tolist()},
            )
        ]
    )
    fp64 = pb.ModelInferRequest(
        inputs=[Tensor(name="input", datatype="FP64", shape=x.shape, contents={"fp64_contents": x.ravel()})]
    )
    for request in (typed, fp64):
        np.testing.assert_array_equal(decode_infer_request(request, SETTINGS).instances, raw.instances)
    assert raw.instances.dtype == np.float32 and raw.instances.shape == (2, 2, 3)


@pytest.mark.parametrize(
    ("request_", "says"),
    [
        (raw_request(np.zeros((1, 2, 4), np.float32)), "shape must be [N, 2, 3]"),
        (raw_request(np.zeros((5, 2, 3), np.float32)), "must hold 1 to 4 items, got 5"),
        (raw_request(np.zeros((1, 2, 3), bool), "BOOL"), "'BOOL' is not supported"),
        (raw_request(np.full((1, 2, 3), 11, np.float32)), "values must be <= 10"),
        (
            pb.ModelInferRequest(
                inputs=[Tensor(name="input", datatype="FP32", shape=[1, 2, 3])],
                raw_input_contents=[b"\0" * 20],
            ),
            "does not match shape",
        ),
        (
            pb.ModelInferRequest(
                inputs=[Tensor(name="x", datatype="FP32", shape=[1, 2, 3])], raw_input_contents=[]
            ),
            "neither raw_input_contents nor contents",
        ),
        (
            pb.ModelInferRequest(
                inputs=[
                    Tensor(
                        name="input", datatype="INT8", shape=[1, 2, 3], contents={"int_contents": [300] * 6}
                    )
                ]
            ),
            "outside INT8's range",
        ),
        (
            pb.ModelInferRequest(
                inputs=[
                    Tensor(name="input", datatype="FP32", shape=[1, 2, 3], contents={"fp32_contents": [1, 2]})
                ]
            ),
            "contents hold 2 value(s), shape [1, 2, 3] needs 6",
        ),
        (
            pb.ModelInferRequest(
                inputs=[
                    Tensor(
                        name="input", datatype="FP16", shape=[1, 2, 3], contents={"fp32_contents": [0] * 6}
                    )
                ]
            ),
            "FP16 tensors must be sent in raw_input_contents",
        ),
        (
            pb.ModelInferRequest(
                inputs=[
                    Tensor(
                        name="input",
                        datatype="FP32",
                        shape=[1, 2, 3],
                        contents={"fp32_contents": [0] * 6},
                    )
                ],
                raw_input_contents=[b"\0" * 24],
            ),
            "not both",
        ),
        (
            pb.ModelInferRequest(
                inputs=[Tensor(name="input", datatype="FP32", shape=[1, 2, 3])] * 2,
                raw_input_contents=[b"\0" * 24],
            ),
            "raw_input_contents holds 1 tensor(s) for 2 input(s)",
        ),
        (
            raw_request(np.zeros((1, 2, 3), np.float32), outputs=[{"name": "logits"}]),
            "unknown output 'logits'",
        ),
        (
            raw_request(
                np.zeros((1, 2, 3), np.float32),
                outputs=[{"name": "label", "parameters": {"classification": {"int64_param": 2}}}],
            ),
            "classification extension is not supported",
        ),
    ],
)
def test_each_bad_request_is_a_400_naming_the_problem(request_: pb.ModelInferRequest, says: str) -> None:
    with pytest.raises(ClientError) as error:
        decode_infer_request(request_, SETTINGS)
    assert error.value.status == 400 and says in error.value.message


def test_the_answer_is_raw_outputs_in_the_v2_codecs_bytes() -> None:
    x = np.zeros((2, 2, 3), np.float32)
    decoded = decode_infer_request(
        raw_request(x, id="given", outputs=[{"name": "label"}, {"name": "probabilities"}]), SETTINGS
    )
    probabilities = np.array([[0.1, 0.7, 0.2], [0.5, 0.2, 0.3]], np.float32)
    response = encode_infer_response(probabilities.tobytes(), decoded, SETTINGS, "rid")
    assert (response.model_name, response.model_version, response.id) == ("m", "1", "given")
    assert [(o.name, o.datatype, list(o.shape)) for o in response.outputs] == [
        ("label", "BYTES", [2]),
        ("probabilities", "FP32", [2, 3]),
    ]
    assert response.raw_output_contents[0] == b"\x01\0\0\0b\x01\0\0\0a"  # 4-byte length + UTF-8, per element
    np.testing.assert_array_equal(
        np.frombuffer(response.raw_output_contents[1], np.float32), probabilities.ravel()
    )
    anonymous = decode_infer_request(raw_request(x), SETTINGS)
    assert encode_infer_response(probabilities.tobytes(), anonymous, SETTINGS, "rid").id == "rid"


# --- codes and the service -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (400, grpc.StatusCode.INVALID_ARGUMENT),
        (413, grpc.StatusCode.INVALID_ARGUMENT),
        (422, grpc.StatusCode.INVALID_ARGUMENT),
        (418, grpc.StatusCode.INVALID_ARGUMENT),
        (401, grpc.StatusCode.UNAUTHENTICATED),
        (404, grpc.StatusCode.NOT_FOUND),
        (503, grpc.StatusCode.UNAVAILABLE),
        (504, grpc.StatusCode.DEADLINE_EXCEEDED),
        (500, grpc.StatusCode.INTERNAL),
    ],
)
def test_http_statuses_map_to_grpc_codes(status: int, code: grpc.StatusCode) -> None:
    assert grpc_code(status) == code


class Aborted(Exception):
    pass


class FakeContext:
    """What InferenceService reads of a call: metadata and deadline; abort raises like grpc's."""

    def __init__(self, metadata: tuple = (), remaining: float | None = None) -> None:
        self.metadata = metadata
        self.remaining = remaining
        self.code: grpc.StatusCode | None = None
        self.details = ""
        self.trailing: tuple = ()

    def invocation_metadata(self) -> tuple:
        return self.metadata

    def time_remaining(self) -> float | None:
        return self.remaining

    async def abort(self, code: grpc.StatusCode, details: str = "", trailing_metadata: tuple = ()) -> None:
        self.code, self.details, self.trailing = code, details, trailing_metadata
        raise Aborted


class FakePipeline:
    def __init__(self, answer=None, error: Exception | None = None, delay_s: float = 0.0) -> None:
        self.answer, self.error, self.delay_s = answer, error, delay_s

    async def infer(self, decoded, request_id: str, arrived: float, traced=None) -> tuple[int, bytes]:
        await asyncio.sleep(self.delay_s)
        if self.error is not None:
            raise self.error
        return self.answer


def service_over(pipeline, api_key: bytes | None = None) -> InferenceService:
    """The V2 service over one model ``m`` whose pipeline is ``pipeline``."""
    settings = RouteSettings(**{**SETTINGS.__dict__, "api_key": api_key})
    served = ServedVersion(0, ModelServeConfig(name="m", version="1"), None)  # type: ignore[arg-type]
    model = ServedModel("m", {"1": served}, "1")
    routes = SimpleNamespace(
        generation=1,
        models={"m": model},
        served=["m"],
        versions={("m", "1"): SimpleNamespace(settings=settings, v2=pipeline, unit=0)},
    )  # the router's RouteTable, as the service reads it
    return InferenceService(routes, lambda unit: True, lambda: True, "0", api_key)


def call(pipeline: FakePipeline, context: FakeContext, api_key: bytes | None = None) -> FakeContext:
    request = raw_request(np.zeros((1, 2, 3), np.float32))
    with contextlib.suppress(Aborted):
        asyncio.run(service_over(pipeline, api_key).ModelInfer(request, context))
    return context


class StreamContext(FakeContext):
    """A stream's context: what was written on it, in order."""

    def __init__(self, metadata: tuple = ()) -> None:
        super().__init__(metadata)
        self.written: list[stream_pb.ModelStreamInferResponse] = []

    async def write(self, message: stream_pb.ModelStreamInferResponse) -> None:
        self.written.append(stream_pb.ModelStreamInferResponse.FromString(message.SerializeToString()))


class ByIdPipeline:
    """Answers each request after the delay its id names (``slow-*``: 50 ms), fails ``fail-*`` ones, and
    records how many calls were in progress at once."""

    def __init__(self) -> None:
        self.running = self.most_running = 0

    async def infer(self, decoded, request_id: str, arrived: float, traced=None) -> tuple[int, bytes]:
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            await asyncio.sleep(0.05 if request_id.startswith("slow") else 0.001)
            if request_id.startswith("fail"):
                return 503, b"too many requests queued"
            return 200, np.zeros((1, 3), np.float32).tobytes()
        finally:
            self.running -= 1


def stream(pipeline, ids: list[str], context: StreamContext, api_key: bytes | None = None) -> StreamContext:
    async def requests():
        for request_id in ids:
            yield raw_request(np.zeros((1, 2, 3), np.float32), id=request_id).SerializeToString()

    with contextlib.suppress(Aborted):
        asyncio.run(service_over(pipeline, api_key).ModelStreamInfer(requests(), context))
    return context


def test_a_stream_answers_each_request_when_it_is_ready_and_errors_in_place() -> None:
    context = stream(ByIdPipeline(), ["slow-1", "fast-2", "fail-3", "fast-4"], StreamContext())
    order = [m.infer_response.id for m in context.written]
    assert order[-1] == "slow-1" and sorted(order) == ["fail-3", "fast-2", "fast-4", "slow-1"]
    by_id = {m.infer_response.id: m for m in context.written}
    assert by_id["fail-3"].error_message == "UNAVAILABLE: too many requests queued (request id fail-3)"
    assert by_id["fail-3"].infer_response.model_name == "m" and not by_id["fail-3"].infer_response.outputs
    for ok in ("slow-1", "fast-2", "fast-4"):
        assert by_id[ok].error_message == "" and by_id[ok].infer_response.raw_output_contents
    for message in context.written:  # one answer per request: each is its request's last
        assert message.infer_response.parameters["triton_final_response"].bool_param


def test_a_streamed_error_echoes_the_clients_id_even_one_too_long_to_log() -> None:
    long_id = "x" * 200  # over the 128 a request id may have: logs get a new one, the answer keeps this

    async def requests():
        request = raw_request(np.zeros((1, 2, 3), np.float32), id=long_id)
        request.model_name = "nope"
        yield request.SerializeToString()

    context = StreamContext()
    asyncio.run(service_over(ByIdPipeline()).ModelStreamInfer(requests(), context))
    (message,) = context.written
    assert message.infer_response.id == long_id
    assert message.error_message.startswith("NOT_FOUND: model 'nope' is not served")
    assert long_id not in message.error_message


def test_a_corrupt_message_is_invalid_argument_and_a_stream_goes_on() -> None:
    corrupt = b"\xff\xff\xff"  # not a ModelInferRequest: grpc's own deserializer would answer UNKNOWN
    context = FakeContext()
    with contextlib.suppress(Aborted):
        asyncio.run(service_over(ByIdPipeline()).infer_bytes(corrupt, context))
    assert (
        context.code == grpc.StatusCode.INVALID_ARGUMENT
        and "not a valid ModelInferRequest" in context.details
    )

    async def requests():
        yield corrupt
        yield raw_request(np.zeros((1, 2, 3), np.float32), id="fast-after").SerializeToString()

    streamed = StreamContext()
    asyncio.run(service_over(ByIdPipeline()).ModelStreamInfer(requests(), streamed))
    by_id = {m.infer_response.id: m for m in streamed.written}
    assert by_id["fast-after"].error_message == ""
    (corrupt_answer,) = [m for request_id, m in by_id.items() if request_id != "fast-after"]
    assert corrupt_answer.error_message.startswith("INVALID_ARGUMENT: the message is not a valid")


def test_a_stream_holds_at_most_its_in_flight_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("service.grpc.service.STREAM_IN_FLIGHT", 4)
    pipeline = ByIdPipeline()
    context = stream(pipeline, [f"slow-{i}" for i in range(20)], StreamContext())
    assert len(context.written) == 20 and pipeline.most_running == 4


def test_a_stream_without_the_key_ends_unauthenticated_before_any_answer() -> None:
    context = stream(ByIdPipeline(), ["fast-1"], StreamContext(), api_key=b"k")
    assert context.code == grpc.StatusCode.UNAUTHENTICATED and context.written == []


@pytest.mark.parametrize(
    ("pipeline", "code", "says"),
    [
        (
            FakePipeline(error=WorkerUnavailable("server is shutting down")),
            grpc.StatusCode.UNAVAILABLE,
            "shutting",
        ),
        (FakePipeline((504, b"request exceeded its 5 s deadline")), grpc.StatusCode.DEADLINE_EXCEEDED, "5 s"),
        (FakePipeline((500, b"internal server error")), grpc.StatusCode.INTERNAL, "internal"),
        (FakePipeline(error=RuntimeError("bug")), grpc.StatusCode.INTERNAL, "internal server error"),
    ],
)
def test_pipeline_outcomes_become_grpc_codes(
    pipeline: FakePipeline, code: grpc.StatusCode, says: str
) -> None:
    context = call(pipeline, FakeContext(metadata=(("x-request-id", "req-1"),)))
    assert context.code == code and says in context.details
    assert context.trailing == (("x-request-id", "req-1"),)


def test_the_clients_deadline_bounds_the_wait() -> None:
    context = call(FakePipeline((200, b""), delay_s=5.0), FakeContext(remaining=0.05))
    assert context.code == grpc.StatusCode.DEADLINE_EXCEEDED and "client's deadline" in context.details


def test_a_missing_or_wrong_key_is_unauthenticated() -> None:
    for metadata in ((), (("authorization", "Bearer wrong"),), (("authorization", "Basic k"),)):
        context = call(FakePipeline((200, b"")), FakeContext(metadata=metadata), api_key=b"k")
        assert context.code == grpc.StatusCode.UNAUTHENTICATED
    ok = call(
        FakePipeline((200, np.zeros((1, 3), np.float32).tobytes())),
        FakeContext((("authorization", "Bearer k"),)),
        b"k",
    )
    assert ok.code is None


def test_the_pipeline_refuses_while_draining_or_full() -> None:
    drain, gate = DrainSwitch(), AdmissionGate(1)
    pipeline = InferencePipeline(SETTINGS, workers=None, gate=gate, drain=drain)  # type: ignore[arg-type]
    decoded = decode_infer_request(raw_request(np.zeros((1, 2, 3), np.float32)), SETTINGS)
    assert gate.admit(1) is None
    with pytest.raises(WorkerUnavailable, match="too many requests"):
        asyncio.run(pipeline.infer(decoded, "r", 0.0))
    gate.leave(1)
    drain.start()
    with pytest.raises(WorkerUnavailable, match="shutting down"):
        asyncio.run(pipeline.infer(decoded, "r", 0.0))
    assert gate.in_flight == 0


# --- settings -------------------------------------------------------------------------------------------


def test_grpc_port_defaults_to_8001_and_null_turns_it_off() -> None:
    assert ServerConfig().grpc_port == 8001
    config = HookserveConfig.model_validate({"server": {"grpc_port": None}, "models": [{"name": "tiny"}]})
    assert config.server.grpc_port is None
    with pytest.raises(ValueError, match="must differ"):
        ServerConfig(port=9000, grpc_port=9000)


@pytest.mark.parametrize(("given", "port"), [("9001", 9001), ("off", 0)])
def test_the_grpc_port_option(given: str, port: int) -> None:
    args = build_parser().parse_args(["serve", "--grpc-port", given])
    assert args.grpc_port == port


def test_a_taken_grpc_port_is_refused_before_the_api_servers_start() -> None:
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)  # as grpc binds it
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        taken = GrpcEndpoint("127.0.0.1", listener.getsockname()[1])
        with pytest.raises(OSError, match="cannot be bound"):
            check_port_free(taken)
    check_port_free(taken)  # closed: free again
    assert GrpcEndpoint("::", 8001).address == "[::]:8001"
