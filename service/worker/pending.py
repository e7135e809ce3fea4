"""The worker's queue of received requests: first by priority (1 is highest), then in arrival order.

Priorities are few (a model's ``priority_levels``, 2 by default), so one FIFO per level is both the
simplest structure and O(1) per request: the highest non-empty level is served first.

Strict priority starves: under a flood of priority-1 requests, an admitted priority-2 request waited
until its deadline and got a 504 (89 of them in a 10 s overload run). So a request outranked that long
does not wait for its deadline:

* with a latency target (``shed_after_s``), :meth:`PendingRequests.take_outranked` removes a lower
  level's requests once the higher-priority work ahead of them (``predict``, the worker's cost line)
  makes them miss the target; the worker answers them 503 at once: shed, as admission would have
  refused them had it known of the higher-priority work to come. Running them at the target instead
  made them the slowest answers (p99 592 ms against a 500 ms target);
* without one, a lower level's oldest request goes first once it has waited half of its own deadline.

The clock is read only while two levels hold requests.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator

from service.messages import InferRequest

Item = tuple[object, InferRequest]  # (the API-server connection it came on, the request)
Predict = Callable[[int, int], float]  # (instances ahead, its own) -> seconds until its answer


class PendingRequests:
    """FIFO per priority level; iteration and :meth:`popleft` follow the order batches are formed in."""

    __slots__ = ("_instances", "_levels", "_predict", "_shed_after_s", "_size")

    def __init__(self, shed_after_s: float | None = None, predict: Predict | None = None) -> None:
        self._levels: dict[int, deque[Item]] = {}
        self._instances: dict[int, int] = {}  # per level
        self._size = 0
        self._shed_after_s = shed_after_s
        self._predict = predict

    def append(self, item: Item) -> None:
        priority = item[1].priority
        level = self._levels.get(priority)
        if level is None:
            level = self._levels[priority] = deque()
            self._levels = dict(sorted(self._levels.items()))  # rare: a level seen for the first time
            self._instances[priority] = 0
        level.append(item)
        self._instances[priority] += item[1].size
        self._size += 1

    def extend(self, items: Iterable[Item]) -> None:
        for item in items:
            self.append(item)

    def _first_level(self) -> deque[Item]:
        first: deque[Item] | None = None
        now = 0.0
        for level in self._levels.values():
            if not level:
                continue
            if first is None:
                first = level
                if self._shed_after_s is not None:
                    return first  # outranked requests are shed (take_outranked), not promoted
                continue
            head = level[0][1]  # a lower level's oldest request: waited half of its deadline?
            now = now or time.monotonic()
            if now - head.enqueued_at >= (head.deadline - head.enqueued_at) / 2:
                return level
        if first is None:
            raise IndexError("no pending request")
        return first

    def take_outranked(self) -> list[Item]:
        """Remove and return the requests of lower levels that can no longer be answered within
        ``shed_after_s`` of their arrival: what they waited, plus the predicted time of the higher-priority
        work pending ahead of them and their own, is past it (none without ``shed_after_s``)."""
        limit = self._shed_after_s
        if limit is None or self._size == 0:
            return []
        predict = self._predict
        taken: list[Item] = []
        ahead = 0  # instances of the higher levels
        now = 0.0
        for priority, level in self._levels.items():
            if not level:
                continue
            if ahead:
                now = now or time.monotonic()
                while level:
                    request = level[0][1]
                    waited = now - request.enqueued_at
                    if waited + (predict(ahead, request.size) if predict else 0.0) < limit:
                        break
                    taken.append(level.popleft())
                    self._instances[priority] -= request.size
            ahead += self._instances[priority]
        self._size -= len(taken)
        return taken

    def popleft(self) -> Item:
        item = self._first_level().popleft()
        self._instances[item[1].priority] -= item[1].size
        self._size -= 1
        return item

    def __getitem__(self, index: int) -> Item:
        """Only ``[0]``: the next request to run."""
        if index != 0:
            raise IndexError("only the head of the queue can be read")
        return self._first_level()[0]

    def __iter__(self) -> Iterator[Item]:
        for level in self._levels.values():
            yield from level

    def __len__(self) -> int:
        return self._size

    def __bool__(self) -> bool:
        return self._size > 0

    def drop_connection(self, connection: object) -> None:
        """Forget the requests of a connection that closed: nobody waits for their answers."""
        for priority, level in self._levels.items():
            kept = deque(item for item in level if item[0] is not connection)
            self._size -= len(level) - len(kept)
            self._levels[priority] = kept
            self._instances[priority] = sum(item[1].size for item in kept)
