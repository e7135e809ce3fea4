"""Span export that never touches a request: a bounded buffer and one background thread per process.

The serving code hands over spans already encoded (:mod:`service.tracing.otlp_wire`): recording one
is an append to a deque, with no lock. Every ``interval_s`` (5 s by default), or as soon as ``batch``
spans are buffered (512), a daemon thread joins what is buffered into OTLP export requests of at most
``batch`` spans and sends them: OpenTelemetry's batch span processor's schedule, so a process posts
once per 5 s at low span rates and full batches at high ones. Every lost span is counted
(``hookserve_trace_spans_dropped_total``): those that found the buffer full, and those whose export
failed (a collector that is down or slow).
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Sequence

from service.monitoring.metrics import TRACE_SPANS_DROPPED
from service.tracing.otlp_wire import export_request

logger = logging.getLogger(__name__)
Send = Callable[[bytes], bool]  # posts one serialized ExportTraceServiceRequest; True when accepted


class SpanExport:
    """Buffers encoded spans (at most ``max_queued``) and sends them every ``interval_s`` from a thread.

    ``resource`` and ``scope`` are the encoded ``Resource`` and ``InstrumentationScope`` messages every
    span of this process shares.
    """

    def __init__(
        self, send: Send, resource: bytes, scope: bytes, max_queued: int, interval_s: float, batch: int
    ) -> None:
        self.send = send
        self.resource = resource
        self.scope = scope
        self.max_queued = max_queued
        self.interval_s = interval_s
        self.batch = batch
        self._buffer: deque[bytes] = deque()
        self._dropped = TRACE_SPANS_DROPPED
        self._wake = threading.Event()
        self._stopped = False
        self._warned = False
        self._sending = threading.Lock()  # the thread and force_flush: never the request path
        self._thread = threading.Thread(target=self._run, name="hookserve-span-export", daemon=True)
        self._thread.start()

    def add(self, spans: Sequence[bytes]) -> None:
        """Buffer encoded ``spans`` (:func:`~service.tracing.otlp_wire.span`); count and drop the overflow."""
        room = self.max_queued - len(self._buffer)
        if room < len(spans):
            self._dropped.inc(len(spans) - max(room, 0))
            spans = spans[: max(room, 0)]
        self._buffer.extend(spans)  # deque.extend is atomic: no lock on the request path
        if len(self._buffer) >= self.batch and not self._wake.is_set():
            self._wake.set()  # a full batch: export now rather than at the interval's end

    def _run(self) -> None:
        while not self._stopped:
            self._wake.wait(self.interval_s)
            self._wake.clear()
            self._export_all()

    def _export_all(self) -> None:
        with self._sending:
            self._drain()

    def _drain(self) -> None:
        buffer = self._buffer
        while buffer:
            batch = [buffer.popleft() for _ in range(min(len(buffer), self.batch))]
            try:
                sent = self.send(export_request(self.resource, self.scope, batch))
            except Exception:  # the sender's own errors must not end the thread
                sent = False
            if not sent:
                self._dropped.inc(len(batch))
                if not self._warned:
                    self._warned = True
                    logger.warning("trace export failed; spans are dropped and counted until it recovers")
            elif self._warned:
                self._warned = False
                logger.info("trace export recovered")

    def force_flush(self) -> None:
        """Send what is buffered now (tests, shutdown)."""
        self._export_all()

    def shutdown(self) -> None:
        self._stopped = True
        self._wake.set()
        self._thread.join(timeout=self.interval_s + 1)
        self._export_all()
