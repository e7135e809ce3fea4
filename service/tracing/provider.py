"""One tracer per process (API server or worker), built after the fork or spawn that made the process."""

from __future__ import annotations

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Tracer, TracerProvider
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, ParentBased, Sampler

from service.tracing.export import CountingBatchProcessor
from service.tracing.settings import TracingSettings

INSTRUMENTATION = "hookserve"


def _sampler(follow_only: bool) -> Sampler:
    if follow_only:  # workers never start a trace: they continue the API server's sampled ones
        return ParentBased(root=ALWAYS_OFF)
    return ALWAYS_ON  # API servers decide before starting a span (RequestTracer.sampled)


def start_tracer(
    settings: TracingSettings, role: str, follow_only: bool = False
) -> tuple[Tracer, TracerProvider]:
    """A tracer whose spans are exported in the background (see :mod:`service.tracing.export`)."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    resource = Resource.create({"service.name": settings.service_name, "hookserve.process": role})
    provider = TracerProvider(resource=resource, sampler=_sampler(follow_only))
    exporter = OTLPSpanExporter(endpoint=settings.endpoint, timeout=settings.export_timeout_s)
    provider.add_span_processor(
        CountingBatchProcessor(exporter, settings.max_queued_spans, settings.export_interval_s)
    )
    return provider.get_tracer(INSTRUMENTATION), provider
