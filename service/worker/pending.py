"""The worker's queue of received requests: first by priority (1 is highest), then in arrival order.

Priorities are few (a model's ``priority_levels``, 2 by default), so one FIFO per level is both the
simplest structure and O(1) per request: the highest non-empty level is served first.

With a latency target the worker passes ``predict``, its learned line, and
:meth:`PendingRequests.take_late` removes, before each batch, the requests that can no longer be
answered in time: now, plus the predicted time of the work pending ahead of them (higher levels) and
their own, is past their ``answer_by`` (the API server sets it: arrival + target - its own two loop
turns). The worker answers them 503 without running them: a refusal that came late rather than a late
answer, as Clockwork and Nexus drop requests that cannot meet their SLO. Two cases made it needed:

* strict priority starves: under a flood of priority-1 requests, an admitted priority-2 request waited
  until its deadline and got a 504 (73-102 per 10 s overload run), and when it instead ran once it had
  waited the target it was among the slowest answers;
* admission predicts from the queue and the cost line; what neither sees (a CPU shared with the API
  servers and clients) made 1-2 % of the answers come back past the target anyway.

Without a target (no ``predict``) a lower level's oldest request goes first once it has waited half of its
own deadline, so it is answered late rather than not at all. The clock is read once per batch with a
target, else only while two levels hold requests.
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

    __slots__ = ("_instances", "_levels", "_predict", "_size")

    def __init__(self, predict: Predict | None = None) -> None:
        self._levels: dict[int, deque[Item]] = {}
        self._instances: dict[int, int] = {}  # per level
        self._size = 0
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
                if self._predict is not None:
                    return first  # with a target, late requests are shed (take_late), not promoted
                continue
            head = level[0][1]  # a lower level's oldest request: waited half of its deadline?
            now = now or time.monotonic()
            if now - head.enqueued_at >= (head.deadline - head.enqueued_at) / 2:
                return level
        if first is None:
            raise IndexError("no pending request")
        return first

    def take_late(self) -> list[Item]:
        """Remove and return the requests that can no longer be answered by their ``answer_by``: now,
        plus the predicted time of the work pending ahead of them in higher levels and their own, is past
        it (none without ``predict``). Only each level's oldest are looked at: a request behind them is
        looked at when it reaches the front."""
        predict = self._predict
        if predict is None or self._size == 0:
            return []
        taken: list[Item] = []
        ahead = 0  # instances of the higher levels
        now = time.monotonic()
        for priority, level in self._levels.items():
            while level:
                request = level[0][1]
                if now + predict(ahead, request.size) < request.answer_by:
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
