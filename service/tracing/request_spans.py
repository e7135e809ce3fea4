"""A request's spans in the API server: the server span, its phases, and the context its batch joins.

:meth:`RequestTracer.start` returns None for a request that is not sampled, so the inference path pays
one ``is None`` check per phase. The sampled request's context crosses to the worker as a W3C
``traceparent`` string in its frame (:attr:`service.messages.InferRequest.trace`).
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Iterator, Mapping

from opentelemetry import trace
from opentelemetry.sdk.trace import Tracer
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

_PROPAGATOR = TraceContextTextMapPropagator()
TRACEPARENT_LENGTH = 55  # "00-" + 32 hex trace id + "-" + 16 hex span id + "-" + 2 hex flags


class RequestTrace:
    """The spans of one sampled request."""

    __slots__ = ("_context", "_tracer", "span")

    def __init__(self, tracer: Tracer, span: trace.Span) -> None:
        self._tracer = tracer
        self.span = span
        self._context = trace.set_span_in_context(span)

    @contextlib.contextmanager
    def phase(self, name: str, **attributes: object) -> Iterator[trace.Span]:
        """A child span around one phase of the request (decode, admission, answer)."""
        span = self._tracer.start_span(name, context=self._context, attributes=attributes or None)
        try:
            yield span
        finally:
            span.end()

    def traceparent(self) -> str:
        """The W3C traceparent the worker's spans continue."""
        carrier: dict[str, str] = {}
        _PROPAGATOR.inject(carrier, context=self._context)
        return carrier["traceparent"]

    def finish(self, status: int, **attributes: object) -> None:
        """End the server span with the response's status code."""
        span = self.span
        span.set_attribute("http.response.status_code", status)
        for key, value in attributes.items():
            span.set_attribute(key, value)
        if status >= 500:
            span.set_status(Status(StatusCode.ERROR))
        span.end()


class RequestTracer:
    """Starts request traces in one API-server process, honouring an incoming ``traceparent``.

    The sampling decision is taken here, before the SDK sees the request: an unsampled request costs a
    header lookup and, without a ``traceparent``, one ``random()``. Only a sampled request builds its
    attributes and spans (the API server's provider then samples every span it is given).
    """

    def __init__(self, tracer: Tracer, ratio: float, follow_parent: bool = True) -> None:
        self.tracer = tracer
        self.ratio = ratio
        self.follow_parent = follow_parent

    def sampled(self, traceparent: str | None) -> bool:
        """Trace this request? A valid parent's sampled flag decides when following parents; otherwise
        the configured ratio does."""
        if traceparent is not None and self.follow_parent and len(traceparent) == TRACEPARENT_LENGTH:
            try:
                return bool(int(traceparent[-2:], 16) & 1)
            except ValueError:
                pass  # malformed: as if absent
        ratio = self.ratio
        return ratio >= 1.0 or (ratio > 0.0 and random.random() < ratio)

    def start(
        self, name: str, carrier: Mapping[str, str], attributes: Callable[[], dict[str, object]]
    ) -> RequestTrace | None:
        """The request's trace, or None when it is not sampled (``attributes`` is called only if it is)."""
        if not self.sampled(carrier.get("traceparent")):
            return None
        parent = _PROPAGATOR.extract(carrier) if carrier else None
        span = self.tracer.start_span(name, context=parent, kind=SpanKind.SERVER, attributes=attributes())
        if not span.is_recording():
            return None
        return RequestTrace(self.tracer, span)

    def start_http(self, scope: dict, attributes: Callable[[], dict[str, object]]) -> RequestTrace | None:
        """The trace of an ASGI request (its ``traceparent``/``tracestate`` headers honoured)."""
        return self.start(f"{scope['method']} {scope['path']}", http_carrier(scope), attributes)


def http_carrier(scope: dict) -> dict[str, str]:
    """The trace-context headers of an ASGI request (only those: nothing else is decoded)."""
    carrier = {}
    for key, value in scope["headers"]:
        if key == b"traceparent" or key == b"tracestate":
            carrier[key.decode()] = value.decode("latin-1")
    return carrier
