"""A request's spans in the API server: the server span, its phases, and the context its batch joins.

:meth:`RequestTracer.start` returns None for a request that is not sampled, so the inference path pays
one ``is None`` check per phase. The sampled request's context crosses to the worker as a W3C
``traceparent`` string in its frame (:attr:`service.messages.InferRequest.trace`). Spans are encoded
as they end and handed to the process's :class:`~service.tracing.export.SpanExport` when the request
finishes (a few microseconds each: see :mod:`service.tracing.otlp_wire`).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping
from types import TracebackType

from service.tracing import otlp_wire
from service.tracing.context import Parent, new_span_id, new_trace_id, parse_traceparent, traceparent
from service.tracing.export import SpanExport

_time_ns = time.time_ns
_PHASE_NAMES: dict[str, bytes] = {}


class RequestTrace:
    """The spans of one sampled request."""

    __slots__ = ("_export", "_spans", "attributes", "name", "parent_id", "span_id", "start_ns", "trace_id",
                 "trace_state")  # fmt: skip

    def __init__(
        self, export: SpanExport, name: str, parent: Parent | None, trace_state: str | None,
        attributes: dict[str, object],
    ) -> None:  # fmt: skip
        self.start_ns = _time_ns()
        self._export = export
        self._spans: list[bytes] = []
        self.name = name
        self.trace_id = parent.trace_id if parent is not None else new_trace_id()
        self.parent_id = parent.span_id if parent is not None else None
        self.span_id = new_span_id()
        self.trace_state = trace_state
        self.attributes = attributes

    def phase(self, name: str, **attributes: object) -> Phase:
        """A child span around one phase of the request (decode, admission, answer): ``with`` it."""
        return Phase(self, name, attributes)

    def traceparent(self) -> str:
        """The W3C traceparent the worker's spans continue."""
        return traceparent(self.trace_id, self.span_id)

    def finish(self, status: int, **attributes: object) -> None:
        """End the server span with the response's status code, and hand the request's spans over."""
        values = self.attributes
        values["http.response.status_code"] = status
        values.update(attributes)
        self._spans.append(otlp_wire.span(
            self.trace_id, self.span_id, self.parent_id, otlp_wire.name_field(self.name), otlp_wire.SERVER,
            self.start_ns, _time_ns(), otlp_wire.attributes(values), status >= 500, self.trace_state,
        ))  # fmt: skip
        self._export.add(self._spans)


class Phase:
    """``with trace.phase("decode"):`` records one child span of the server span."""

    __slots__ = ("attributes", "name", "start_ns", "trace")

    def __init__(self, trace: RequestTrace, name: str, attributes: dict[str, object]) -> None:
        self.trace = trace
        self.name = name
        self.attributes = attributes
        self.start_ns = 0

    def __enter__(self) -> Phase:
        self.start_ns = _time_ns()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        end_ns = _time_ns()
        trace = self.trace
        name = _PHASE_NAMES.get(self.name) or _PHASE_NAMES.setdefault(
            self.name, otlp_wire.name_field(self.name)
        )
        attrs = otlp_wire.attributes(self.attributes) if self.attributes else b""
        trace._spans.append(otlp_wire.span(
            trace.trace_id, new_span_id(), trace.span_id, name, otlp_wire.INTERNAL, self.start_ns, end_ns,
            attrs, exc_type is not None, trace.trace_state,
        ))  # fmt: skip


class RequestTracer:
    """Starts request traces in one API-server process, honouring an incoming ``traceparent``.

    The sampling decision is taken first: an unsampled request costs a header lookup and, without a
    ``traceparent``, one ``random()``. Only a sampled request builds its attributes and spans.
    """

    def __init__(self, export: SpanExport, ratio: float, follow_parent: bool = True) -> None:
        self.export = export
        self.ratio = ratio
        self.follow_parent = follow_parent

    def sampled(self, traceparent: str | None) -> bool:
        """Trace this request? A valid parent's sampled flag decides when following parents; otherwise
        the configured ratio does."""
        return self._decide(parse_traceparent(traceparent) if traceparent else None)

    def _decide(self, parent: Parent | None) -> bool:
        if parent is not None and self.follow_parent:
            return parent.sampled
        ratio = self.ratio
        return ratio >= 1.0 or (ratio > 0.0 and random.random() < ratio)

    def start(
        self, name: str, carrier: Mapping[str, str], attributes: Callable[[], dict[str, object]]
    ) -> RequestTrace | None:
        """The request's trace, or None when it is not sampled (``attributes`` is called only if it is)."""
        header = carrier.get("traceparent")
        parent = parse_traceparent(header) if header else None
        if not self._decide(parent):
            return None
        return self._begin(name, parent, carrier, attributes)

    def start_http(self, scope: dict, attributes: Callable[[], dict[str, object]]) -> RequestTrace | None:
        """The trace of an ASGI request (its ``traceparent``/``tracestate`` headers honoured)."""
        carrier = http_carrier(scope)
        header = carrier.get("traceparent")
        parent = parse_traceparent(header) if header else None
        if not self._decide(parent):
            return None
        return self._begin(f"{scope['method']} {scope['path']}", parent, carrier, attributes)

    def _begin(
        self, name: str, parent: Parent | None, carrier: Mapping[str, str],
        attributes: Callable[[], dict[str, object]],
    ) -> RequestTrace:  # fmt: skip
        trace_state = carrier.get("tracestate") if parent is not None else None
        return RequestTrace(self.export, name, parent, trace_state, attributes())


def http_carrier(scope: dict) -> dict[str, str]:
    """The trace-context headers of an ASGI request (only those: nothing else is decoded)."""
    carrier = {}
    for key, value in scope["headers"]:
        if key == b"traceparent" or key == b"tracestate":
            carrier[key.decode()] = value.decode("latin-1")
    return carrier
