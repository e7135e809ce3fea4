"""The inference worker's loop: dynamic batching by instance count, deadlines, and failure isolation.

LitServe's own batched loop (0.2.19) counts requests rather than instances, always waits the full
``batch_timeout`` for a partial batch (or busy-loops a core when it is 0), and fails every request in a
batch when one of them makes ``predict`` raise. This loop, plugged in through LitServe's ``LitLoop``
extension point, instead:

* blocks for the first request, then takes whatever else is already queued, up to ``max_batch_size``
  instances, and waits at most ``batch_timeout`` more only if that is configured: at low load a
  request runs at once; under load batches fill up while the previous batch runs;
* answers requests whose deadline passed in the queue with 504 without running them;
* when a batched forward pass raises, re-runs each request on its own so only the culprit fails.

It still calls the LitAPI's ``decode_request``, ``batch``, ``predict``, ``unbatch`` and
``encode_response`` in that order.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from queue import Empty, Queue
from typing import Any

import numpy as np
from fastapi import HTTPException
from litserve.loops.base import _SENTINEL_VALUE, LitLoop
from litserve.utils import LitAPIStatus, LoopResponseType, PickleableHTTPException

from service.monitoring.metrics import BATCH_SIZE, QUEUE_WAIT

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkItem:
    """What the API server sends a worker for one request: validated instances and an absolute deadline.

    ``deadline`` is on ``time.monotonic()``, which is one clock for every process on the machine.
    """

    instances: np.ndarray
    deadline: float

    @property
    def size(self) -> int:
        return int(self.instances.shape[0])


@dataclass(frozen=True)
class QueuedRequest:
    response_queue_id: int
    uid: str
    enqueued_at: float
    item: WorkItem


class _Stop(Exception):
    pass


class InstanceBatchingLoop(LitLoop):
    """A LitServe loop that batches instances across requests (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__()
        self._carry: QueuedRequest | None = None

    # --- collecting a batch -----------------------------------------------------------------------
    def _next(self, request_queue: Queue, timeout: float | None) -> QueuedRequest | None:
        try:
            raw = request_queue.get(timeout=timeout) if timeout else request_queue.get_nowait()
        except Empty:
            return None
        if raw == _SENTINEL_VALUE:
            raise _Stop
        response_queue_id, uid, enqueued_at, item = raw
        return QueuedRequest(response_queue_id, uid, enqueued_at, item)

    def collect(self, request_queue: Queue, max_instances: int, batch_timeout: float) -> list[QueuedRequest]:
        """One batch: at least one request (blocking up to 1 s), at most ``max_instances`` instances."""
        first = self._carry or self._next(request_queue, timeout=1.0)
        self._carry = None
        if first is None:
            return []
        batch, size = [first], first.item.size
        wait_until = time.monotonic() + batch_timeout
        while size < max_instances:
            remaining = wait_until - time.monotonic()
            nxt = self._next(request_queue, timeout=remaining if remaining > 0 else None)
            if nxt is None:
                break
            if size + nxt.item.size > max_instances:
                self._carry = nxt  # starts the next batch; the queue cannot take it back
                break
            batch.append(nxt)
            size += nxt.item.size
        return batch

    # --- answering --------------------------------------------------------------------------------
    def _reply(self, transport: Any, request: QueuedRequest, data: Any, status: str) -> None:
        self.put_response(
            transport, request.response_queue_id, request.uid, data, status, LoopResponseType.REGULAR
        )

    def _reply_error(self, transport: Any, request: QueuedRequest, code: int, message: str) -> None:
        error = PickleableHTTPException.from_exception(HTTPException(code, message))
        self._reply(transport, request, error, LitAPIStatus.ERROR)

    def _run(self, lit_api: Any, requests: list[QueuedRequest]) -> list[Any]:
        """One output per request: the model's answers, unbatched (not yet encoded)."""
        inputs = [lit_api.decode_request(r.item) for r in requests]
        x = lit_api.batch(inputs)
        y = lit_api.predict(x)
        return lit_api.unbatch(y)

    def process(self, lit_api: Any, transport: Any, batch: list[QueuedRequest], model_name: str) -> None:
        now = time.monotonic()
        live = []
        for request in batch:
            if request.item.deadline <= now:
                self._reply_error(transport, request, 504, "request deadline passed while queued")
            else:
                QUEUE_WAIT.labels(model_name).observe(now - request.enqueued_at)
                live.append(request)
        if not live:
            return
        BATCH_SIZE.labels(model_name).observe(sum(r.item.size for r in live))
        try:
            outputs = self._run(lit_api, live)
        except Exception:
            if len(live) == 1:
                logger.exception("model %s failed on request %s", model_name, live[0].uid)
                self._reply_error(transport, live[0], 500, "internal error while running the model")
                return
            logger.warning("batched forward of %d requests failed; retrying them one by one", len(live))
            for request in live:
                self.process(lit_api, transport, [request], model_name)
            return
        for request, output in zip(live, outputs, strict=True):
            try:  # encoding is per request: an answer that cannot be sent (NaN output) fails alone
                self._reply(transport, request, lit_api.encode_response(output), LitAPIStatus.OK)
            except Exception:
                logger.exception("model %s: cannot answer request %s", model_name, request.uid)
                self._reply_error(transport, request, 500, "internal error while running the model")

    def __call__(
        self,
        lit_api: Any,
        device: str,
        worker_id: int,
        request_queue: Queue,
        transport: Any,
        workers_setup_status: dict,
        callback_runner: Any,
        lit_spec: Any = None,
        stream: bool = False,
    ) -> None:
        model_name = lit_api.model_name
        while True:
            try:
                batch = self.collect(request_queue, lit_api.max_batch_size, lit_api.batch_timeout)
            except _Stop:
                logger.debug("worker for %s received the stop sentinel", model_name)
                return
            except (EOFError, BrokenPipeError, ConnectionError):
                logger.info("request queue for %s closed; worker exits", model_name)
                return
            if batch:
                self.process(lit_api, transport, batch, model_name)
