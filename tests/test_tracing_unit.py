"""Tracing's parts without a server: when it is on, and that lost spans are counted, never waited on."""

from __future__ import annotations

import threading

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from prometheus_client import REGISTRY

from service.tracing.export import CountingBatchProcessor
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


class Exporter(SpanExporter):
    def __init__(self, result: SpanExportResult, gate: threading.Event | None = None) -> None:
        self.result = result
        self.gate = gate
        self.exported = 0

    def export(self, spans) -> SpanExportResult:
        if self.gate is not None:
            self.gate.wait(10)
        self.exported += len(spans)
        return self.result

    def shutdown(self) -> None:
        pass


def spans_through(processor: CountingBatchProcessor, count: int) -> None:
    provider = TracerProvider()
    provider.add_span_processor(processor)
    tracer = provider.get_tracer("test")
    for i in range(count):
        tracer.start_span(f"s{i}").end()


def test_a_full_buffer_drops_and_counts_instead_of_blocking() -> None:
    gate = threading.Event()  # the collector hangs: nothing leaves the buffer
    exporter = Exporter(SpanExportResult.SUCCESS, gate)
    processor = CountingBatchProcessor(exporter, max_queued=5, interval_s=3600)
    before = dropped()
    spans_through(processor, 8)
    assert dropped() - before == 3
    gate.set()
    processor.shutdown()
    assert exporter.exported == 5


def test_a_failed_export_counts_its_spans_as_dropped() -> None:
    exporter = Exporter(SpanExportResult.FAILURE)
    processor = CountingBatchProcessor(exporter, max_queued=100, interval_s=3600)
    before = dropped()
    spans_through(processor, 4)
    processor.force_flush()
    assert dropped() - before == 4
    processor.shutdown()
