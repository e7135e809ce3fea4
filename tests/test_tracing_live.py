"""OpenTelemetry traces against a real server and a real OTLP/HTTP receiver: a request sent with a
``traceparent`` arrives as one trace holding the server span, its phases, the queue wait, the batch's
forward pass and one span per monitored module; an unsampled parent yields no spans."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator

import numpy as np
import pytest
import requests

from benchmarks.otlp_receiver import OtlpReceiver, ReceivedSpan
from benchmarks.servers import ServerProcess

MODEL = "digits-cnn"
PHASES = {"decode", "admission", "queue", "forward", "answer"}


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as receiver:
        yield receiver


@pytest.fixture(scope="module")
def server(server_factory, receiver: OtlpReceiver) -> ServerProcess:
    config = {
        "server": {"api_servers": 1, "tracing": {"export_interval_s": 0.2}},
        "models": [{"name": MODEL, "torch_threads": 1}],
    }
    return server_factory(config, env={"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": receiver.endpoint})


def predict(server: ServerProcess, traceparent: str) -> requests.Response:
    instances = np.random.default_rng(0).uniform(0, 16, (2, 8, 8)).round().tolist()
    return requests.post(
        f"{server.base_url}/v1/models/{MODEL}:predict",
        json={"instances": instances},
        headers={"traceparent": traceparent, "X-Request-ID": "traced-1"},
        timeout=30,
    )


def grpc_request(seed: int, **fields: str):
    """A one-row ``ModelInferRequest`` for MODEL with a raw FP32 input."""
    from service.grpc.proto import grpc_predict_v2_pb2 as pb

    x = np.random.default_rng(seed).uniform(0, 16, (1, 8, 8)).astype(np.float32)
    tensor = pb.ModelInferRequest.InferInputTensor(name="input", datatype="FP32", shape=x.shape)
    return pb.ModelInferRequest(model_name=MODEL, inputs=[tensor], raw_input_contents=[x.tobytes()], **fields)


def by_name(spans: list[ReceivedSpan]) -> dict[str, ReceivedSpan]:
    return {span.name: span for span in spans}


def test_a_traced_request_is_one_trace_down_to_each_module(
    server: ServerProcess, receiver: OtlpReceiver
) -> None:
    trace_id, client_span = secrets.token_hex(16), secrets.token_hex(8)
    response = predict(server, f"00-{trace_id}-{client_span}-01")
    assert response.status_code == 200, response.text
    metadata = requests.get(f"{server.base_url}/v1/models/{MODEL}", timeout=10).json()
    monitored = metadata["monitoring"]["modules"]
    assert monitored, "the model has monitored modules"
    route = f"POST /v1/models/{MODEL}:predict"
    spans = receiver.wait_for(trace_id, PHASES | {route} | set(monitored))
    named = by_name(spans)
    assert PHASES | {route} | set(monitored) <= set(named), sorted(named)
    assert {span.trace_id for span in spans} == {trace_id}
    assert {span.service for span in spans} == {"hookserve"}

    server_span = named[route]
    assert server_span.parent_span_id == client_span  # the incoming traceparent is honoured
    assert server_span.attributes["http.response.status_code"] == 200
    assert server_span.attributes["hookserve.request_id"] == "traced-1"
    for phase in PHASES:
        assert named[phase].parent_span_id == server_span.span_id, phase  # the worker's spans join it
    forward = named["forward"]
    assert forward.attributes["hookserve.batch_size"] == 2
    assert forward.attributes["hookserve.precision"] == "fp32"
    assert forward.attributes["hookserve.device"] == "cpu"
    ids = {span.span_id: span for span in spans}
    for module in monitored:  # each module span sits under forward, inside its time
        span = named[module]
        while span.parent_span_id != forward.span_id:
            span = ids[span.parent_span_id]
        assert forward.start_ns <= named[module].start_ns <= named[module].end_ns <= forward.end_ns
    assert named["queue"].end_ns <= forward.start_ns + 1_000_000  # queue wait ends as the batch starts


def test_an_unsampled_parent_yields_no_spans(server: ServerProcess, receiver: OtlpReceiver) -> None:
    trace_id = secrets.token_hex(16)
    assert predict(server, f"00-{trace_id}-{secrets.token_hex(8)}-00").status_code == 200
    sampled = secrets.token_hex(16)  # a sampled request after it: once its spans are in, so would be these
    assert predict(server, f"00-{sampled}-{secrets.token_hex(8)}-01").status_code == 200
    assert receiver.wait_for(sampled, {"forward"})
    assert receiver.trace(trace_id) == []


def test_a_grpc_request_joins_the_trace_in_its_metadata(
    server: ServerProcess, receiver: OtlpReceiver
) -> None:
    import grpc

    from service.grpc.proto import grpc_predict_v2_pb2_grpc as pb_grpc

    trace_id, client_span = secrets.token_hex(16), secrets.token_hex(8)
    request = grpc_request(seed=1)
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        stub.ModelInfer(request, metadata=(("traceparent", f"00-{trace_id}-{client_span}-01"),), timeout=30)
    rpc = "inference.GRPCInferenceService/ModelInfer"
    named = by_name(receiver.wait_for(trace_id, {rpc, "forward", "queue", "admission"}))
    assert {rpc, "forward", "queue", "admission"} <= set(named), sorted(named)
    assert named[rpc].parent_span_id == client_span
    assert named[rpc].attributes["rpc.system"] == "grpc"
    assert named[rpc].attributes["rpc.grpc.status_code"] == 0
    assert named["forward"].parent_span_id == named[rpc].span_id


def test_each_request_on_a_stream_is_a_server_span_under_the_streams_traceparent(
    server: ServerProcess, receiver: OtlpReceiver
) -> None:
    import grpc

    from service.grpc.proto import grpc_predict_v2_pb2 as pb
    from service.grpc.proto import triton_stream_pb2 as stream_pb

    trace_id, client_span = secrets.token_hex(16), secrets.token_hex(8)
    requests_ = [grpc_request(seed=2, id=f"streamed-{i}") for i in range(2)]
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        call = channel.stream_stream(
            "/inference.GRPCInferenceService/ModelStreamInfer",
            request_serializer=pb.ModelInferRequest.SerializeToString,
            response_deserializer=stream_pb.ModelStreamInferResponse.FromString,
        )
        answers = list(
            call(iter(requests_), metadata=(("traceparent", f"00-{trace_id}-{client_span}-01"),), timeout=30)
        )
    assert sorted(a.infer_response.id for a in answers) == ["streamed-0", "streamed-1"]
    assert all(a.error_message == "" for a in answers)
    rpc = "inference.GRPCInferenceService/ModelStreamInfer"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # both requests' spans, which may come in different exports
        spans = receiver.trace(trace_id)
        names = [span.name for span in spans]
        if names.count(rpc) == 2 and names.count("forward") == 2:
            break
        time.sleep(0.1)
    rpcs = [span for span in spans if span.name == rpc]
    assert sorted(span.attributes["hookserve.request_id"] for span in rpcs) == ["streamed-0", "streamed-1"]
    assert {span.parent_span_id for span in rpcs} == {client_span}
    forwards = [span for span in spans if span.name == "forward"]  # one per request, copied when batched
    assert sorted(span.parent_span_id for span in forwards) == sorted(span.span_id for span in rpcs)
