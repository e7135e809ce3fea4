"""The inference worker's loop: dynamic batching by instance count, deadlines, and failure isolation.

LitServe runs it in the worker process after ``setup`` (it is a ``LitLoop``). It takes requests from
the worker's own :class:`~service.worker.inbox.Inbox` rather than LitServe's queues, and:

* blocks for the first request, then takes whatever else is already queued, up to ``max_batch_size``
  instances, and waits at most ``batch_timeout`` more only if that is configured: at low load a
  request runs at once; under load batches fill up while the previous batch runs;
* answers requests whose deadline passed in the queue with 504 without running them;
* when a batched forward pass raises, re-runs each request on its own so only the culprit fails;
* when some requests' outputs are non-finite, has the LitAPI explain them (``explain_nonfinite``:
  the model worker replays them to find the module where it started) and fails only those, with 500;
* sends each API server one frame with all of its replies per batch, then lets the LitAPI do work
  that may wait (``after_replies``: the model worker's fp32 precision shadow).

It calls the LitAPI's ``decode_request``, ``batch``, ``predict``, ``unbatch`` and ``encode_response``
in that order.
"""

from __future__ import annotations

import logging
import os
import time
from collections import defaultdict
from typing import Any

from service.litserve_compat import LitLoop
from service.messages import InferReply, InferRequest
from service.monitoring.metrics import BATCH_SIZE, QUEUE_WAIT, WORKERS_READY
from service.monitoring.origin import NonFiniteOutput
from service.worker.inbox import Connection, Inbox
from service.worker_states import WorkerState

logger = logging.getLogger(__name__)
Queued = tuple[Connection, InferRequest]
INTERNAL_ERROR = b"internal error while running the model"


def _size(item: Queued) -> int:
    return item[1].size


def collect(inbox: Inbox, max_instances: int, batch_timeout: float, idle_wait: float = 1.0) -> list[Queued]:
    """One batch: at least one request (waiting up to ``idle_wait``), at most ``max_instances`` instances.

    A request larger than ``max_instances`` still runs, alone.
    """
    if not inbox.pending:
        inbox.poll(idle_wait)
    inbox.poll(0)  # whatever else arrived meanwhile joins this batch
    pending = inbox.pending
    if not pending:
        return []
    batch = [pending.popleft()]
    size = _size(batch[0])
    wait_until = time.monotonic() + batch_timeout
    while size < max_instances:
        if not pending:
            remaining = wait_until - time.monotonic()
            if remaining <= 0:
                break
            inbox.poll(remaining)
            if not pending:
                continue
        if size + _size(pending[0]) > max_instances:
            break
        item = pending.popleft()
        batch.append(item)
        size += _size(item)
    return batch


class InstanceBatchingLoop(LitLoop):
    """A LitServe loop serving the worker's inbox (see the module docstring)."""

    def _run(self, lit_api: Any, requests: list[Queued]) -> list[Any]:
        """One output per request: the model's answers, unbatched (not yet encoded)."""
        inputs = [lit_api.decode_request(request.instances) for _, request in requests]
        return lit_api.unbatch(lit_api.predict(lit_api.batch(inputs)))

    def process(self, lit_api: Any, batch: list[Queued], replies: dict[Connection, list[InferReply]]) -> None:
        """Run one batch; add each request's reply to ``replies`` under its connection."""
        model_name = lit_api.model_name
        now = time.monotonic()
        live = []
        for connection, request in batch:
            if request.deadline <= now:
                replies[connection].append(
                    InferReply(request.uid, 504, b"request deadline passed while queued")
                )
            else:
                QUEUE_WAIT.labels(model_name).observe(now - request.enqueued_at)
                live.append((connection, request))
        if not live:
            return
        BATCH_SIZE.labels(model_name).observe(sum(_size(item) for item in live))
        try:
            outputs = self._run(lit_api, live)
        except Exception:
            if len(live) == 1:
                logger.exception("model %s failed on request %s", model_name, live[0][1].request_id)
                replies[live[0][0]].append(InferReply(live[0][1].uid, 500, INTERNAL_ERROR))
                return
            logger.warning("batched forward of %d requests failed; retrying them one by one", len(live))
            for item in live:
                self.process(lit_api, [item], replies)
            return
        nonfinite: list[tuple[Connection, InferRequest, Any]] = []
        for (connection, request), output in zip(live, outputs, strict=True):
            try:  # encoding is per request: an answer that cannot be sent (NaN output) fails alone
                replies[connection].append(
                    InferReply(request.uid, 200, lit_api.encode_response(output, request.answer_format))
                )
            except NonFiniteOutput as exc:
                nonfinite.append((connection, request, exc.rows))
            except Exception:
                logger.exception("model %s: cannot answer request %s", model_name, request.request_id)
                replies[connection].append(InferReply(request.uid, 500, INTERNAL_ERROR))
        if nonfinite:
            self._fail_nonfinite(lit_api, nonfinite, replies)

    @staticmethod
    def _fail_nonfinite(
        lit_api: Any,
        failed: list[tuple[Connection, InferRequest, Any]],
        replies: dict[Connection, list[InferReply]],
    ) -> None:
        """Answer requests with non-finite outputs with 500, once the LitAPI has looked for the origin."""
        try:
            bodies = lit_api.explain_nonfinite([(request, rows) for _, request, rows in failed])
        except Exception:
            logger.exception("model %s: locating the origin of non-finite outputs failed", lit_api.model_name)
            bodies = [INTERNAL_ERROR] * len(failed)
        for (connection, request, _), body in zip(failed, bodies, strict=True):
            replies[connection].append(InferReply(request.uid, 500, body))

    def __call__(
        self,
        lit_api: Any,
        device: str,
        worker_id: int,
        request_queue: Any,
        transport: Any,
        workers_setup_status: dict,
        callback_runner: Any,
        lit_spec: Any = None,
        stream: bool = False,
    ) -> None:
        """LitServe's entry point, called once setup is done. Its queues are not used (see the module)."""
        states, model_name = lit_api.states, lit_api.model_name
        inbox = Inbox(states.socket_path(model_name, worker_id))
        states.set(model_name, worker_id, WorkerState.READY, os.getpid())
        WORKERS_READY.labels(model_name).set(1)
        logger.info("%s worker %d accepting requests", model_name, worker_id)
        # Work that may wait until a batch's replies are sent (the model worker's precision shadow).
        after_replies = getattr(lit_api, "after_replies", None)
        try:
            while True:
                batch = collect(inbox, lit_api.max_batch_size, lit_api.batch_timeout)
                if not batch:
                    continue
                replies: dict[Connection, list[InferReply]] = defaultdict(list)
                self.process(lit_api, batch, replies)
                for connection, answers in replies.items():
                    inbox.send(connection, answers)
                if after_replies is not None:
                    after_replies()
        finally:
            inbox.close()
