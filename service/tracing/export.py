"""Span export that never touches a request: a bounded buffer and one background thread per process.

The SDK's ``BatchSpanProcessor`` drops spans silently when its queue is full. This processor does the
same job in a few lines of its own, so every lost span is counted
(``hookserve_trace_spans_dropped_total``): those that found the buffer full, and those whose export
failed (a collector that is down or slow). A request only ever appends to a deque.
"""

from __future__ import annotations

import logging
import threading
from collections import deque

from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from service.monitoring.metrics import TRACE_SPANS_DROPPED

logger = logging.getLogger(__name__)
MAX_EXPORT_BATCH = 512


class CountingBatchProcessor(SpanProcessor):
    """Buffers ended spans (at most ``max_queued``) and exports them every ``interval_s`` from a thread."""

    def __init__(self, exporter: SpanExporter, max_queued: int, interval_s: float) -> None:
        self.exporter = exporter
        self.max_queued = max_queued
        self.interval_s = interval_s
        self._buffer: deque[ReadableSpan] = deque()
        self._dropped = TRACE_SPANS_DROPPED
        self._wake = threading.Event()
        self._stopped = False
        self._warned = False
        self._thread = threading.Thread(target=self._run, name="hookserve-span-export", daemon=True)
        self._thread.start()

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        pass

    def on_end(self, span: ReadableSpan) -> None:
        if len(self._buffer) >= self.max_queued:
            self._dropped.inc()
            return
        self._buffer.append(span)  # deque.append is atomic: no lock on the request path

    def _run(self) -> None:
        while not self._stopped:
            self._wake.wait(self.interval_s)
            self._wake.clear()
            self._export_all()

    def _export_all(self) -> None:
        while self._buffer:
            batch = [self._buffer.popleft() for _ in range(min(len(self._buffer), MAX_EXPORT_BATCH))]
            try:
                result = self.exporter.export(batch)
            except Exception:  # the exporter's own errors must not end the thread
                result = SpanExportResult.FAILURE
            if result is not SpanExportResult.SUCCESS:
                self._dropped.inc(len(batch))
                if not self._warned:
                    self._warned = True
                    logger.warning("trace export failed; spans are dropped and counted until it recovers")
            elif self._warned:
                self._warned = False
                logger.info("trace export recovered")

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        self._export_all()
        return True

    def shutdown(self) -> None:
        self._stopped = True
        self._wake.set()
        self._thread.join(timeout=self.interval_s + 1)
        self._export_all()
        self.exporter.shutdown()
