"""Admission control and drain state shared by every API-server process.

Without a limit an overloaded server queues until every request times out. Each model's gate admits a
request only if (1) fewer than ``max_queued_requests`` are admitted and unanswered (a hard cap) and (2),
when the model has a ``latency_target_ms``, its predicted time to answer meets the target
(:mod:`service.scheduling.prediction` has the formula, from the queue and the cost line the workers
learn). Otherwise it is refused at once, before any queueing, with 503 and a ``Retry-After``.

The queue state lives in shared memory created by the main process before the API servers are forked:
requests and instances admitted and not yet answered, incremented here at admission and decremented by
:meth:`AdmissionGate.leave` when the answer (or its failure) is back. Both counters change under one
lock, the one the hard cap already needs for its check-and-increment; the prediction is made under it
too, so concurrent API servers cannot all admit into the same free room. Admitting costs a few
microseconds (the lock, two shared reads per worker, a few float operations).

The prediction adds what the API server itself will make the request wait, which the cost line cannot
see: the time since it arrived (``waited_s``) and two turns of this process's event loop
(:class:`~service.scheduling.loop_lag.LoopLag`: one before the request was read, one before its answer
is written). :meth:`AdmissionGate.refuse_early` runs the same test before the body is read and decoded,
with the request's size guessed from its length: under a flood most refusals then cost no decoding.
What is still unseen (a CPU shared with the API servers, noisy neighbours) is corrected from the answers'
real times: the prediction is held to a :class:`~service.scheduling.budget.TargetBudget` (AIMD below the
target).
"""

from __future__ import annotations

import multiprocessing as mp

from service.http.worker_client import WorkerUnavailable
from service.scheduling.board import ModelCosts
from service.scheduling.budget import TargetBudget
from service.scheduling.loop_lag import LoopLag
from service.scheduling.prediction import predicted_answer_s, retry_after_s

REASONS = ("overload", "latency_target", "deadline", "draining")  # hookserve_rejected_total{reason}
LOOP_TURNS = 2  # the loop turns a request waits in its API server: before it is read, before its answer


class Rejected(WorkerUnavailable):
    """A request refused at the door: 503 with ``Retry-After`` (whole seconds, at least 1)."""

    def __init__(self, reason: str, message: str, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.reason = reason
        self.retry_after_s = retry_after_s

    @property
    def headers(self) -> list[tuple[bytes, bytes]]:
        return [(b"retry-after", str(self.retry_after_s).encode())]


class AdmissionGate:
    """Admission for one model across processes (see the module docstring)."""

    def __init__(
        self,
        limit: int,
        model: str = "",
        latency_target_s: float | None = None,
        costs: ModelCosts | None = None,
        max_batch_size: int = 1,
        priority_levels: int = 1,
    ) -> None:
        self.limit = limit
        self.model = model
        self.latency_target_s = latency_target_s
        self.costs = costs
        self.max_batch_size = max_batch_size
        self.priority_levels = priority_levels
        self._lock = mp.Lock()
        # requests admitted and not yet answered, then their instances per priority level (1 first)
        self._queue = mp.RawArray("q", 1 + priority_levels)
        # per API-server process (each has its own copy after the fork)
        self.loop_lag = LoopLag()
        self.budget = None if latency_target_s is None else TargetBudget(latency_target_s)
        self._wait_s: float | None = None  # the last prediction's queue-wait part (this process only)
        self._predicted_wait = None

    def admit(
        self, instances: int, priority: int = 1, timeout_s: float | None = None, waited_s: float = 0.0
    ) -> Rejected | None:
        """Admit a request of ``instances`` (count it in the queue) or say why not; a refusal is counted
        in ``hookserve_rejected_total``.

        Workers batch higher priorities first, so a request waits only for the work of its own priority
        and higher: its prediction counts that work alone, and under overload the lowest priority is the
        first refused. ``timeout_s``, the request's own deadline, refuses it at once (reason
        ``deadline``) when it is predicted to miss it. ``waited_s``: how long it has been in the API
        server already (from its arrival), part of its answer time."""
        queue = self._queue
        with self._lock:
            ahead = sum(queue[1 : 1 + priority])
            rejection = self._refusal(queue[0], ahead, instances, timeout_s, waited_s)
            if rejection is None:
                queue[0] += 1
                queue[priority] += instances
        if rejection is None:
            if self._wait_s is not None:  # the prediction ran: export it beside the measured queue wait
                self._observe_wait(self._wait_s)
            return None
        return self._count(rejection)

    def _observe_wait(self, seconds: float) -> None:
        if self._predicted_wait is None:
            from service.monitoring.metrics import PREDICTED_WAIT  # see _count

            self._predicted_wait = PREDICTED_WAIT.labels(self.model)
        self._predicted_wait.observe(seconds)

    def refuse_early(self, priority: int = 1, waited_s: float = 0.0, instances: int = 1) -> Rejected | None:
        """The refusal :meth:`admit` would give a request of ``instances`` (an estimate:
        :class:`~service.http.instance_estimate.InstanceEstimate`) before its body is read: the queue
        ahead and its likely size miss the target, or the hard cap is reached. Counts nothing in the queue
        and takes no lock (a racy read only makes the test approximate; :meth:`admit` decides exactly)."""
        if self.latency_target_s is None:
            return None  # without a target, only the hard cap, checked at admission (no decoding saved)
        queue = self._queue
        rejection = self._refusal(queue[0], sum(queue[1 : 1 + priority]), instances, None, waited_s)
        return None if rejection is None else self._count(rejection)

    def _count(self, rejection: Rejected) -> Rejected:
        # Imported here: service.lifecycle imports this module before PROMETHEUS_MULTIPROC_DIR is set.
        from service.monitoring.metrics import REJECTED

        REJECTED.labels(self.model, rejection.reason).inc()
        return rejection

    def _refusal(
        self, requests: int, queued: int, instances: int, timeout_s: float | None, waited_s: float
    ) -> Rejected | None:
        self._wait_s = None
        if requests >= self.limit:
            message = f"too many requests queued for {self.model} (limit {self.limit}); retry"
            return Rejected("overload", message)
        target = self.latency_target_s
        if (target is None and timeout_s is None) or self.costs is None:
            return None
        alpha, beta, workers = self.costs.line()
        if workers == 0:
            return None  # no worker has learned its cost yet: only the hard cap applies
        predicted = predicted_answer_s(queued, instances, alpha, beta, workers, self.max_batch_size)
        predicted += waited_s + LOOP_TURNS * self.loop_lag.seconds()
        self._wait_s = waited_s + predicted_answer_s(queued, 0, alpha, beta, workers, self.max_batch_size)
        budget = target if self.budget is None else self.budget.budget_s
        if budget is not None and predicted > budget:
            return Rejected(
                "latency_target",
                f"{self.model} would answer in about {predicted * 1000:.0f} ms, over the "
                f"{budget * 1000:.0f} ms it may admit under its latency target of {target * 1000:.0f} ms",
                retry_after_s(predicted, budget),
            )
        if timeout_s is not None and predicted > timeout_s:
            return Rejected(
                "deadline",
                f"{self.model} would answer in about {predicted * 1000:.0f} ms, after the request's own "
                f"timeout of {timeout_s * 1000:.0f} ms; retry",
                retry_after_s(predicted, timeout_s),
            )
        return None

    def leave(self, instances: int, priority: int = 1, answered_s: float | None = None) -> None:
        """The request admitted with ``instances`` is answered (or failed): it no longer waits.
        ``answered_s``, the time from its arrival to its answer, corrects the admission budget."""
        with self._lock:
            self._queue[0] -= 1
            self._queue[priority] -= instances
        if answered_s is not None and self.budget is not None:
            self.budget.observe(answered_s)

    @property
    def in_flight(self) -> int:
        return self._queue[0]

    @property
    def queued_instances(self) -> int:
        return sum(self._queue[1:])


class DrainSwitch:
    """Set once on SIGTERM/SIGINT: API servers then refuse new work and /health says not ready."""

    def __init__(self) -> None:
        self._flag = mp.Value("b", 0, lock=False)

    def start(self) -> None:
        self._flag.value = 1

    @property
    def draining(self) -> bool:
        return bool(self._flag.value)
