"""One span export per process (API server or worker), built after the fork or spawn that made it.

Spans are recorded without the SDK's span objects (see :mod:`service.tracing.otlp_wire`); the SDK still
describes the process (``Resource.create``: ``service.name``, ``OTEL_RESOURCE_ATTRIBUTES``, the
``telemetry.sdk.*`` attributes) and its OTLP/HTTP exporter still carries the bytes (endpoint, headers,
compression, TLS and retries from the standard ``OTEL_EXPORTER_OTLP_*`` variables).
"""

from __future__ import annotations

from opentelemetry.sdk.resources import Resource

from service.tracing import otlp_wire
from service.tracing.export import SpanExport
from service.tracing.settings import TracingSettings

INSTRUMENTATION = "hookserve"


class OtlpHttpSender:
    """Posts serialized export requests with the SDK's OTLP/HTTP exporter's client."""

    def __init__(self, endpoint: str | None, timeout_s: float) -> None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter(endpoint=endpoint, timeout=timeout_s)
        # The exporter's public export() takes SDK spans; its client sends bytes (pinned in the lock;
        # tests/test_tracing_unit.py sends through it to a real receiver).
        self._client = exporter._client

    def __call__(self, data: bytes) -> bool:
        return self._client.export(data).success


def start_tracer(
    settings: TracingSettings, role: str, follow_only: bool = False
) -> tuple[SpanExport, Resource]:
    """This process's span export, and the resource its spans carry.

    ``follow_only`` is what a worker asks for: it never starts a trace, and it cannot, since it only
    records spans under the ``traceparent`` of a request the API server sampled.
    """
    resource = Resource.create({"service.name": settings.service_name, "hookserve.process": role})
    export = SpanExport(
        OtlpHttpSender(settings.endpoint, settings.export_timeout_s),
        otlp_wire.attributes(resource.attributes, number=1),
        otlp_wire.scope(INSTRUMENTATION),
        settings.max_queued_spans,
        settings.export_interval_s,
        settings.export_batch_spans,
    )
    return export, resource
