"""Tracing's parts without a server: when it is on, and that lost spans are counted, never waited on."""

from __future__ import annotations

import threading
import time

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from prometheus_client import REGISTRY

from service.tracing import otlp_wire
from service.tracing.context import new_span_id, new_trace_id
from service.tracing.export import SpanExport
from service.tracing.request_spans import RequestTracer
from service.tracing.settings import TracingConfig, resolve

DROPPED = "hookserve_trace_spans_dropped_total"


def dropped() -> float:
    return REGISTRY.get_sample_value(DROPPED) or 0.0


def test_off_by_default_and_on_with_the_standard_variables() -> None:
    assert resolve(TracingConfig(), {}) is None
    on = resolve(TracingConfig(), {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"})
    assert on is not None and on.service_name == "hookserve" and on.endpoint is None
    named = resolve(TracingConfig(), {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "x", "OTEL_SERVICE_NAME": "edge"})
    assert named is not None and named.service_name == "edge"
    endpoint = {"OTEL_EXPORTER_OTLP_ENDPOINT": "x"}
    assert resolve(TracingConfig(), {**endpoint, "OTEL_SDK_DISABLED": "true"}) is None
    assert resolve(TracingConfig(), {**endpoint, "OTEL_TRACES_EXPORTER": "none"}) is None
    assert resolve(TracingConfig(enabled=False), {"OTEL_EXPORTER_OTLP_ENDPOINT": "x"}) is None
    forced = resolve(TracingConfig(enabled=True, endpoint="http://c/v1/traces", sample_ratio=0.01), {})
    assert forced is not None and forced.endpoint == "http://c/v1/traces" and forced.sample_ratio == 0.01


def test_the_standard_sampler_variables_set_the_ratio_and_whether_parents_decide() -> None:
    def sampling(**env: str) -> tuple[float, bool]:
        settings = resolve(TracingConfig(enabled=True), env)
        assert settings is not None
        return settings.sample_ratio, settings.follow_parent

    assert sampling() == (1.0, True)  # OpenTelemetry's default: parentbased_always_on
    ratio = {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.01"}
    assert sampling(**ratio) == (0.01, True)
    assert sampling(OTEL_TRACES_SAMPLER="traceidratio", OTEL_TRACES_SAMPLER_ARG="0.2") == (0.2, False)
    assert sampling(OTEL_TRACES_SAMPLER="always_off") == (0.0, False)
    assert sampling(OTEL_TRACES_SAMPLER="traceidratio", OTEL_TRACES_SAMPLER_ARG="lots") == (1.0, False)


def test_the_export_schedule_follows_the_batch_processor_variables() -> None:
    on = {"OTEL_EXPORTER_OTLP_ENDPOINT": "x"}

    def schedule(config: TracingConfig, **env: str) -> tuple[float, int, int]:
        settings = resolve(config, {**on, **env})
        assert settings is not None
        return settings.export_interval_s, settings.max_queued_spans, settings.export_batch_spans

    assert schedule(TracingConfig()) == (5.0, 4096, 512)  # OpenTelemetry's batch processor defaults
    bsp = {
        "OTEL_BSP_SCHEDULE_DELAY": "250",
        "OTEL_BSP_MAX_QUEUE_SIZE": "100",
        "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "7",
    }
    assert schedule(TracingConfig(), **bsp) == (0.25, 100, 7)
    config = TracingConfig(export_interval_s=2.0, max_queued_spans=9, export_batch_spans=3)
    assert schedule(config, **bsp) == (2.0, 9, 3)  # the config's own keys win over the variables
    bad = {"OTEL_BSP_SCHEDULE_DELAY": "soon", "OTEL_BSP_MAX_QUEUE_SIZE": "-1"}
    assert schedule(TracingConfig(), **bad) == (5.0, 4096, 512)


class Sender:
    """Stands in for the OTLP/HTTP post: keeps what it is given, answers ``result``, or hangs on ``gate``."""

    def __init__(self, result: bool = True, gate: threading.Event | None = None) -> None:
        self.result = result
        self.gate = gate
        self.requests: list[bytes] = []

    def __call__(self, data: bytes) -> bool:
        if self.gate is not None:
            self.gate.wait(10)
        self.requests.append(data)
        return self.result

    def spans(self) -> list:
        return [span for data in self.requests for span in decode(data)]


def decode(data: bytes) -> list:
    request = ExportTraceServiceRequest.FromString(data)
    return [span for rs in request.resource_spans for ss in rs.scope_spans for span in ss.spans]


def span_export(sender: Sender, max_queued: int = 1000) -> SpanExport:
    resource = otlp_wire.attributes({"service.name": "test"}, number=1)
    return SpanExport(sender, resource, otlp_wire.scope("test"), max_queued, interval_s=3600, batch=512)


def encoded_spans(count: int) -> list[bytes]:
    trace_id, name = new_trace_id(), otlp_wire.name_field("s")
    return [
        otlp_wire.span(trace_id, new_span_id(), None, name, otlp_wire.INTERNAL, i, i + 1)
        for i in range(count)
    ]


def test_the_head_decision_follows_a_valid_parent_and_samples_the_rest_at_the_ratio() -> None:
    export = span_export(Sender())
    parent = "00-" + "a" * 32 + "-" + "b" * 16 + "-"
    never = RequestTracer(export, ratio=0.0)
    assert never.sampled(parent + "01") and not never.sampled(parent + "00")
    assert not never.sampled(None) and not never.sampled("garbage") and not never.sampled(parent + "zz")
    assert not RequestTracer(export, ratio=0.0, follow_parent=False).sampled(parent + "01")
    always = RequestTracer(export, ratio=1.0)
    assert always.sampled(None) and not always.sampled(parent + "00")
    some = RequestTracer(export, ratio=0.25)
    hits = sum(some.sampled(None) for _ in range(20_000))
    assert 4_000 < hits < 6_000  # 5,000 expected; the bounds are 14 standard deviations wide
    built: list[int] = []
    assert some.start("x", {"traceparent": parent + "00"}, lambda: built.append(1) or {}) is None
    assert built == []  # an unsampled request builds no attributes
    export.shutdown()


def test_a_full_buffer_drops_and_counts_instead_of_blocking() -> None:
    gate = threading.Event()  # the collector hangs: nothing leaves the buffer
    sender = Sender(gate=gate)
    export = span_export(sender, max_queued=5)
    before = dropped()
    export.add(encoded_spans(3))
    export.add(encoded_spans(5))
    assert dropped() - before == 3
    gate.set()
    export.shutdown()
    assert len(sender.spans()) == 5


def test_a_full_batch_is_exported_before_the_interval_ends_in_requests_of_at_most_a_batch() -> None:
    sender = Sender()
    resource = otlp_wire.attributes({"service.name": "test"}, number=1)
    export = SpanExport(sender, resource, otlp_wire.scope("test"), 1000, interval_s=3600, batch=4)
    export.add(encoded_spans(3))
    time.sleep(0.2)
    assert sender.requests == []  # under a batch: it waits for the interval (an hour here)
    export.add(encoded_spans(7))  # 10 buffered: the thread wakes at once
    deadline = time.monotonic() + 10
    while len(sender.spans()) < 10 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [len(decode(data)) for data in sender.requests] == [4, 4, 2]
    export.shutdown()


def test_a_failed_export_counts_its_spans_as_dropped() -> None:
    sender = Sender(result=False)
    export = span_export(sender)
    before = dropped()
    export.add(encoded_spans(4))
    export.force_flush()
    assert dropped() - before == 4
    assert len(sender.spans()) == 4  # it was sent, and refused
    export.shutdown()
