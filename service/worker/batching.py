"""Dynamic batching by instance count, deadlines, and failure isolation, in the inference worker.

* :func:`collect` blocks for the first request, then takes whatever else is already queued, up to
  ``max_batch_size`` instances (the worker passes the learned curve's best size) and only as long as the
  batch still meets its requests' deadlines, and waits at most ``batch_timeout`` more only if that is
  configured: at low load a request runs at once; under load batches fill up while the previous runs.
* :class:`BatchRunner` runs one collected batch: it answers requests whose deadline passed in the queue
  with 504 without running them (and sheds with 503 those that can no longer meet the latency target);
  when the batched forward pass raises, it re-runs each request on its own so only the culprit fails;
  when some requests' outputs are non-finite, the runner explains them (the replay finds the module where
  it started) and only those fail, with 500. Queue wait and batch
  size are recorded once per request and once per batch, however the batch was retried.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Protocol

import numpy as np

from service.messages import InferReply, InferRequest
from service.monitoring.metrics import BATCH_SIZE, QUEUE_WAIT, REJECTED
from service.monitoring.origin import NonFiniteOutput
from service.worker.inbox import Connection, Inbox
from service.worker.runner import ModelRunner

if TYPE_CHECKING:
    from service.tracing.batch_spans import BatchTracer

logger = logging.getLogger(__name__)
Queued = tuple[Connection, InferRequest]
INTERNAL_ERROR = b"internal error while running the model"
EXPIRED = b"request deadline passed while queued"
LATE = (
    "{model} could not answer within its latency target of {target:g} ms (higher-priority work came "
    "first, or the worker ran slower than predicted); retry"
)


class CostLine(Protocol):
    """The worker's learned line ``t(b) = alpha * b + beta`` (a ``CostModel``)."""

    alpha: float
    beta: float


def collect(
    inbox: Inbox,
    max_instances: int,
    batch_timeout: float,
    idle_wait: float = 1.0,
    cost: CostLine | None = None,
) -> list[Queued]:
    """One batch: at least one request (waiting up to ``idle_wait``), at most ``max_instances`` instances.

    A request larger than ``max_instances`` still runs, alone. With ``cost``, the worker's learned line,
    a request joins only if the batch would still end before every deadline in it (Clipper's
    ``b_max = (SLO - beta) / alpha``, with each request's own deadline as the SLO): the requests behind
    it run in the next batch instead of making the head late. When the batch is already late without
    it, it joins (the late cannot be saved; throughput helps the rest). The wait for more requests
    (``batch_timeout``) also ends early enough for a full batch to meet the head's deadline, as in
    BentoML's CORK. This costs a few float operations per added request, none for a lone one.
    """
    pending = inbox.pending
    if not pending:
        inbox.poll(idle_wait)  # reads every frame ready on every connection in this wake-up
        if not pending:
            return []
    else:
        inbox.poll(0)  # whatever else arrived while the previous batch ran joins this one
    batch = [pending.popleft()]
    size = batch[0][1].size
    if size >= max_instances or (not pending and batch_timeout <= 0):
        return batch  # the common case at low load: one request, no more waiting
    now = time.monotonic()
    earliest = batch[0][1].deadline
    alpha = beta = 0.0
    if cost is not None:
        alpha, beta = cost.alpha, cost.beta
    limit: float = max_instances
    bounded = alpha > 0
    wait_until = now + batch_timeout
    if bounded:
        room = (earliest - now - beta) / alpha  # Clipper's b_max for the head's deadline
        if room >= size:
            limit = min(limit, room)
            if batch_timeout > 0:  # CORK: stop waiting while a full batch still meets the head
                wait_until = min(wait_until, earliest - alpha * limit - beta)
        else:
            bounded = False  # the head is late whatever runs: the full batch, for the requests behind
    while size < limit:
        if not pending:
            remaining = wait_until - time.monotonic()
            if remaining <= 0:
                break
            inbox.poll(remaining)
            if not pending:
                continue
        following = pending[0][1]
        next_size = following.size
        if size + next_size > limit:
            break
        if bounded and following.deadline < earliest:  # rare: a shorter own deadline behind the head
            room = (following.deadline - now - beta) / alpha
            if size + next_size > room:
                break  # it would make the batch late, and the batch is on time without it
            earliest, limit = following.deadline, min(limit, room)
        batch.append(pending.popleft())
        size += next_size
    return batch


class BatchRunner:
    """Runs collected batches on one model: one call, :meth:`run_batch`, per batch."""

    def __init__(self, runner: ModelRunner, tracer: BatchTracer | None = None) -> None:
        self.runner = runner
        self.tracer = tracer
        self.model_name = runner.model_name
        version = runner.config.version
        self._queue_wait = QUEUE_WAIT.labels(runner.model_name, version)
        self._batch_size = BATCH_SIZE.labels(runner.model_name, version)

    def shed(self, requests: list[InferRequest]) -> list[InferReply]:
        """503 without running them, for requests that can no longer meet the latency target
        (:meth:`~service.worker.pending.PendingRequests.take_late`); counted as refusals."""
        REJECTED.labels(self.model_name, "latency_target").inc(len(requests))
        body = LATE.format(model=self.model_name, target=self.runner.config.latency_target_ms).encode()
        return [InferReply(request.uid, 503, body) for request in requests]

    def run_batch(self, requests: list[InferRequest]) -> list[InferReply]:
        """One reply per request, in order: 504 for the expired, else the model's answer or error."""
        now = time.monotonic()
        live = [i for i, request in enumerate(requests) if request.deadline > now]
        if len(live) == len(requests):
            return self._answer(requests, now)
        # uids are unique per API-server link only: match replies by position, not uid
        replies = [InferReply(request.uid, 504, EXPIRED) for request in requests]
        for i, reply in zip(live, self._answer([requests[i] for i in live], now), strict=True):
            replies[i] = reply
        return replies

    def _answer(self, live: list[InferRequest], now: float) -> list[InferReply]:
        if not live:
            return []
        observe_wait = self._queue_wait.observe
        for request in live:
            observe_wait(now - request.enqueued_at)
        self._batch_size.observe(sum(request.size for request in live))
        return self._run(live, now)

    def _forward(self, requests: list[InferRequest], started: float) -> np.ndarray:
        tracer = self.tracer
        if tracer is not None:
            traced = [request for request in requests if request.trace is not None]
            if traced:
                with tracer.recording() as timings:
                    probabilities = self.runner.predict(_stack(requests))
                tracer.emit(traced, timings, started)
                return probabilities
        return self.runner.predict(_stack(requests))

    def _run(self, requests: list[InferRequest], started: float) -> list[InferReply]:
        """Forward pass and encoding; on a failed batch, each request again alone (metrics not again)."""
        try:
            probabilities = self._forward(requests, started)
        except Exception:
            if len(requests) == 1:
                logger.exception("model %s failed on request %s", self.model_name, requests[0].request_id)
                return [InferReply(requests[0].uid, 500, INTERNAL_ERROR)]
            logger.warning("batched forward of %d requests failed; retrying them one by one", len(requests))
            return [reply for request in requests for reply in self._run([request], started)]
        replies: list[InferReply] = []
        nonfinite: list[tuple[int, InferRequest, np.ndarray]] = []
        offset = 0
        for request in requests:
            rows = probabilities[offset : offset + request.size]
            offset += request.size
            try:  # encoding is per request: an answer that cannot be sent (NaN output) fails alone
                replies.append(InferReply(request.uid, 200, self.runner.encode(rows, request.answer_format)))
            except NonFiniteOutput as exc:
                nonfinite.append((len(replies), request, exc.rows))
                replies.append(InferReply(request.uid, 500, INTERNAL_ERROR))
            except Exception:
                logger.exception("model %s: cannot answer request %s", self.model_name, request.request_id)
                replies.append(InferReply(request.uid, 500, INTERNAL_ERROR))
        if nonfinite:
            self._explain(nonfinite, replies)
        return replies

    def _explain(self, failed: list[tuple[int, InferRequest, np.ndarray]], replies: list[InferReply]) -> None:
        """Fill in the 500 bodies of requests with non-finite outputs once their origin is looked for."""
        try:
            bodies = self.runner.explain_nonfinite([(request, rows) for _, request, rows in failed])
        except Exception:
            logger.exception("model %s: locating the origin of non-finite outputs failed", self.model_name)
            bodies = [INTERNAL_ERROR] * len(failed)
        for (index, request, _), body in zip(failed, bodies, strict=True):
            replies[index] = InferReply(request.uid, 500, body)


def _stack(requests: list[InferRequest]) -> np.ndarray:
    """The batch's instances as one contiguous array (no copy for a lone request)."""
    if len(requests) == 1:
        return requests[0].instances
    return np.concatenate([request.instances for request in requests])
