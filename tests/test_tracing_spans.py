"""Spans as hookserve writes them, decoded by ``opentelemetry-proto`` (what a collector runs): the hand
encoding holds to OTLP, a request's spans and a batch's spans form one tree per trace, and the OTLP/HTTP
sender reaches a real receiver (and says so when the collector is down)."""

from __future__ import annotations

import socket
import time

import numpy as np
import torch
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status
from torch import nn

from benchmarks.otlp_receiver import OtlpReceiver
from service.messages import InferRequest
from service.tracing import otlp_wire
from service.tracing.batch_spans import BatchTracer
from service.tracing.context import new_span_id, new_trace_id, parse_traceparent, traceparent
from service.tracing.provider import OtlpHttpSender
from service.tracing.request_spans import RequestTracer
from tests.test_tracing_unit import Sender, decode, span_export


def value(any_value: AnyValue) -> object:
    kind = any_value.WhichOneof("value")
    if kind == "array_value":
        return [value(item) for item in any_value.array_value.values]
    return getattr(any_value, kind)


def attributes(span: Span) -> dict[str, object]:
    return {kv.key: value(kv.value) for kv in span.attributes}


def test_the_hand_encoding_decodes_as_the_otlp_messages_it_stands_for() -> None:
    trace_id, span_id, parent_id = new_trace_id(), new_span_id(), new_span_id()
    values = {
        "s": "é",
        "i": 7,
        "negative": -3,
        "big": 2**40,
        "f": 0.25,
        "yes": True,
        "no": False,
        "list": [1, "a"],
    }
    encoded = otlp_wire.span(
        trace_id, span_id, parent_id, otlp_wire.name_field("conv1 ✓"), otlp_wire.SERVER,
        1_700_000_000_000_000_000, 1_700_000_000_000_123_456, otlp_wire.attributes(values), error=True,
        trace_state="vendor=1",
    )  # fmt: skip
    plain = otlp_wire.span(
        trace_id, new_span_id(), None, otlp_wire.name_field("root"), otlp_wire.INTERNAL, 5, 6
    )
    resource = otlp_wire.attributes({"service.name": "hookserve", "pid": 12}, number=1)
    data = otlp_wire.export_request(resource, otlp_wire.scope("hookserve", "1.2"), [encoded, plain])

    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    request = ExportTraceServiceRequest.FromString(data)
    (resource_spans,) = request.resource_spans
    assert {kv.key: value(kv.value) for kv in resource_spans.resource.attributes} == {
        "service.name": "hookserve", "pid": 12,
    }  # fmt: skip
    (scope_spans,) = resource_spans.scope_spans
    assert (scope_spans.scope.name, scope_spans.scope.version) == ("hookserve", "1.2")
    first, second = scope_spans.spans
    assert (first.trace_id, first.span_id, first.parent_span_id) == (trace_id, span_id, parent_id)
    assert first.name == "conv1 ✓" and first.kind == Span.SPAN_KIND_SERVER
    assert (first.start_time_unix_nano, first.end_time_unix_nano) == (
        1_700_000_000_000_000_000,
        1_700_000_000_000_123_456,
    )
    assert attributes(first) == values
    assert first.status.code == Status.STATUS_CODE_ERROR and first.trace_state == "vendor=1"
    assert second.parent_span_id == b"" and second.kind == Span.SPAN_KIND_INTERNAL
    assert second.status.code == Status.STATUS_CODE_UNSET and not second.attributes


def test_traceparent_parsing_follows_the_w3c_rules() -> None:
    trace_hex, span_hex = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    parent = parse_traceparent(f"00-{trace_hex}-{span_hex}-01")
    assert parent is not None and parent.sampled
    assert (parent.trace_id.hex(), parent.span_id.hex()) == (trace_hex, span_hex)
    assert traceparent(parent.trace_id, parent.span_id) == f"00-{trace_hex}-{span_hex}-01"
    assert parse_traceparent(f"00-{trace_hex}-{span_hex}-00").sampled is False
    assert parse_traceparent(f"01-{trace_hex}-{span_hex}-03-future") is not None  # later versions may extend
    for bad in (
        None, "", "garbage", f"ff-{trace_hex}-{span_hex}-01", f"00-{'0' * 32}-{span_hex}-01",
        f"00-{trace_hex}-{'0' * 16}-01", f"00-{trace_hex.upper()}-{span_hex}-01",
        f"00-{trace_hex}-{span_hex}-01-extra", f"00-{trace_hex}-{span_hex}-1",
    ):  # fmt: skip
        assert parse_traceparent(bad) is None, bad


def test_a_request_trace_is_a_server_span_with_its_phases_under_the_callers_span() -> None:
    sender = Sender()
    export = span_export(sender)
    tracer = RequestTracer(export, ratio=0.0)
    trace_id, client_span = new_trace_id(), new_span_id()
    headers = [(b"traceparent", traceparent(trace_id, client_span).encode()), (b"tracestate", b"a=b")]
    scope = {"method": "POST", "path": "/v1/models/m:predict", "headers": headers}
    traced = tracer.start_http(scope, lambda: {"hookserve.request_id": "r-1"})
    assert traced is not None
    with traced.phase("decode"):
        pass
    with traced.phase("admission", queued=3):
        pass
    worker_parent = parse_traceparent(traced.traceparent())
    traced.finish(503)
    export.force_flush()
    spans = {span.name: span for span in sender.spans()}
    assert set(spans) == {"POST /v1/models/m:predict", "decode", "admission"}
    server = spans["POST /v1/models/m:predict"]
    assert {span.trace_id for span in spans.values()} == {trace_id}
    assert server.parent_span_id == client_span and server.kind == Span.SPAN_KIND_SERVER
    assert attributes(server) == {"hookserve.request_id": "r-1", "http.response.status_code": 503}
    assert server.status.code == Status.STATUS_CODE_ERROR and server.trace_state == "a=b"
    assert spans["decode"].parent_span_id == server.span_id == spans["admission"].parent_span_id
    assert attributes(spans["admission"]) == {"queued": 3}
    assert server.start_time_unix_nano <= spans["decode"].start_time_unix_nano
    assert spans["admission"].end_time_unix_nano <= server.end_time_unix_nano
    assert worker_parent == (trace_id, server.span_id, True)  # what the worker's spans join
    root = tracer.start_http({"method": "GET", "path": "/x", "headers": []}, dict)
    assert root is None  # ratio 0 and no parent
    export.shutdown()


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.inner(x))


def traced_request(trace: str | None, size: int) -> InferRequest:
    return InferRequest(
        uid=1, deadline=time.monotonic() + 10, enqueued_at=time.monotonic() - 0.01,
        instances=np.zeros((size, 4), np.float32), answer_format="v1", request_id=f"r{size}", trace=trace,
    )  # fmt: skip


def test_each_traced_request_of_a_batch_gets_its_queue_forward_and_nested_module_spans() -> None:
    model = nn.Sequential(Block(), nn.Linear(4, 2)).eval()
    monitored = {"0": model[0], "0.inner": model[0].inner, "1": model[1]}
    sender = Sender()
    export = span_export(sender)
    tracer = BatchTracer(export, "m", monitored, "fp32", "cpu")
    parents = [(new_trace_id(), new_span_id()) for _ in range(2)]
    requests = [
        traced_request(traceparent(*parent), size) for parent, size in zip(parents, (1, 2), strict=True)
    ]
    started = time.monotonic()
    with torch.inference_mode(), tracer.recording() as timings:
        model(torch.zeros(3, 4))
    assert all(not module._forward_hooks and not module._forward_pre_hooks for module in monitored.values())
    tracer.emit(requests, timings, started)
    export.force_flush()
    spans = sender.spans()
    for (trace_id, parent_id), request in zip(parents, requests, strict=True):
        named = {span.name: span for span in spans if span.trace_id == trace_id}
        assert set(named) == {"queue", "forward", "0", "0.inner", "1"}
        queue, forward = named["queue"], named["forward"]
        assert queue.parent_span_id == parent_id == forward.parent_span_id
        assert attributes(queue) == {"hookserve.request_id": request.request_id}
        assert attributes(forward) == {
            "hookserve.model": "m",
            "hookserve.precision": "fp32",
            "hookserve.device": "cpu",
            "hookserve.batch_size": 3,
            "hookserve.request_id": request.request_id,
        }
        assert queue.end_time_unix_nano - queue.start_time_unix_nano >= 10_000_000  # enqueued 10 ms before
        assert named["0"].parent_span_id == forward.span_id == named["1"].parent_span_id
        assert named["0.inner"].parent_span_id == named["0"].span_id  # nested as the modules are
        for name in ("0", "0.inner", "1"):
            span = named[name]
            assert forward.start_time_unix_nano <= span.start_time_unix_nano <= span.end_time_unix_nano
            assert span.end_time_unix_nano <= forward.end_time_unix_nano
    ids = [span.span_id for span in spans]
    assert len(ids) == len(set(ids)) == 10  # each trace its own copy
    export.shutdown()


def test_the_otlp_http_sender_reaches_a_receiver_and_reports_a_down_collector() -> None:
    trace_id = new_trace_id()
    name = otlp_wire.name_field("sent")
    data = otlp_wire.export_request(
        otlp_wire.attributes({"service.name": "hookserve"}, number=1), otlp_wire.scope("hookserve"),
        [otlp_wire.span(trace_id, new_span_id(), None, name, otlp_wire.INTERNAL, 1, 2)],
    )  # fmt: skip
    with OtlpReceiver() as receiver:
        assert OtlpHttpSender(receiver.endpoint, timeout_s=5)(data)
        (span,) = receiver.wait_for(trace_id.hex(), {"sent"}, timeout_s=5)
        assert span.service == "hookserve" and decode(data)[0].name == "sent"
    with socket.socket() as closed:  # a port with nothing listening
        closed.bind(("127.0.0.1", 0))
        endpoint = f"http://127.0.0.1:{closed.getsockname()[1]}/v1/traces"
    assert OtlpHttpSender(endpoint, timeout_s=1)(data) is False
