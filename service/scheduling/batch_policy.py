"""Which batch to run next: the most throughput whose requests still meet their deadlines.

The reference form of the rule; the worker runs its O(1) form in ``service.worker.batching.collect``
(docs/scheduling.md says why this rule, against Triton's delay and preferred sizes, BentoML's CORK
dispatcher and Clipper's AIMD and ``b_max``). Given the queue in arrival order, a cost curve ``cost(b)``
(seconds for a forward pass of ``b`` instances; the worker's
:meth:`~service.scheduling.cost_model.CostModel.predict`) and ``max_batch_size``:

1. the candidates are the queue's prefixes (requests are never split or reordered) of at most
   ``max_batch_size`` instances; the first request alone is always a candidate;
2. a candidate is *feasible* when running it now ends before the deadline of every request in it,
   the oldest one first: ``now + cost(size) <= min(deadline)``;
3. among feasible candidates, the one with the highest throughput ``size / cost(size)`` runs (ties: the
   larger). With a concave or linear curve that is the largest feasible one; with a curve whose
   per-instance cost rises past some size it is an interior size, and the rest waits for the next batch,
   which finishes the whole queue sooner than one big batch would;
4. when no candidate is feasible (the oldest is late whatever runs), the highest-throughput one runs:
   the late request cannot be saved, the ones behind it can;
5. optionally (``max_wait_s`` > 0) the policy waits for more work, like Triton's queue delay (at most
   ``max_wait_s`` since the oldest request arrived) but bounded by the deadlines like BentoML's CORK:
   only when the whole queue was chosen, it is below the curve's best size, and every queued request
   can afford the wait plus the best batch's run time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

Cost = Callable[[float], float]


@dataclass(frozen=True)
class QueuedRequest:
    instances: int
    enqueued_at: float
    deadline: float


@dataclass(frozen=True)
class BatchChoice:
    requests: int  # how many requests from the head of the queue run now (0: wait)
    instances: int
    predicted_s: float  # the forward time the cost curve predicts for them
    wait_s: float = 0.0  # > 0: wait up to this long for more requests before choosing again


def throughput(cost: Cost, size: float) -> float:
    """Instances per second of a batch of ``size`` (infinite for a free batch)."""
    seconds = cost(size)
    return size / seconds if seconds > 0 else float("inf")


def best_size(cost: Cost, max_batch_size: int, knots: Iterable[int] = ()) -> int:
    """The batch size of highest throughput up to ``max_batch_size``.

    For a piecewise-linear curve the throughput ``b / (a + c*b)`` is monotone on each piece, so its
    maximum is at a knot or an end: pass the curve's knots (``CostModel.knots()``) and only those, 1 and
    ``max_batch_size`` are evaluated. Without knots every size is (O(max_batch_size))."""
    sizes = {1, max_batch_size, *(k for k in knots if 1 <= k <= max_batch_size)}
    if not knots:
        sizes = set(range(1, max_batch_size + 1))
    return max(sorted(sizes), key=lambda size: (throughput(cost, size), size))


def choose_batch(
    queue: Sequence[QueuedRequest],
    cost: Cost,
    max_batch_size: int,
    now: float,
    max_wait_s: float = 0.0,
    best: int | None = None,
) -> BatchChoice:
    """The next batch (see the module docstring). ``best`` is :func:`best_size`'s answer, if known."""
    if not queue:
        return BatchChoice(0, 0, 0.0)
    size = 0
    earliest = float("inf")
    chosen: tuple[float, int, int, float] | None = None  # (throughput, size, requests, seconds)
    fallback: tuple[float, int, int, float] | None = None
    for count, request in enumerate(queue, start=1):
        if count > 1 and size + request.instances > max_batch_size:
            break
        size += request.instances
        earliest = min(earliest, request.deadline)
        seconds = cost(size)
        rate = size / seconds if seconds > 0 else float("inf")
        candidate = (rate, size, count, seconds)
        if fallback is None or candidate[:2] >= fallback[:2]:
            fallback = candidate
        if now + seconds <= earliest and (chosen is None or candidate[:2] >= chosen[:2]):
            chosen = candidate
    if chosen is None:
        chosen = fallback
    _, instances, requests, seconds = chosen  # type: ignore[misc]
    if max_wait_s > 0 and requests == len(queue):
        target = best if best is not None else best_size(cost, max_batch_size)
        if instances < target:
            slack = min(r.deadline for r in queue) - now - cost(target)
            wait = min(queue[0].enqueued_at + max_wait_s - now, slack)
            if wait > 0:
                return BatchChoice(0, 0, 0.0, wait_s=wait)
    return BatchChoice(requests, instances, seconds)
