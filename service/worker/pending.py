"""The worker's queue of received requests: first by priority (1 is highest), then in arrival order.

Priorities are few (a model's ``priority_levels``, 2 by default), so one FIFO per level is both the
simplest structure and O(1) per request: the highest non-empty level is served first.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator

from service.messages import InferRequest

Item = tuple[object, InferRequest]  # (the API-server connection it came on, the request)


class PendingRequests:
    """FIFO per priority level; iteration and :meth:`popleft` follow the order batches are formed in."""

    __slots__ = ("_levels", "_size")

    def __init__(self) -> None:
        self._levels: dict[int, deque[Item]] = {}
        self._size = 0

    def append(self, item: Item) -> None:
        level = self._levels.get(item[1].priority)
        if level is None:
            level = self._levels[item[1].priority] = deque()
            self._levels = dict(sorted(self._levels.items()))  # rare: a level seen for the first time
        level.append(item)
        self._size += 1

    def extend(self, items: Iterable[Item]) -> None:
        for item in items:
            self.append(item)

    def _first_level(self) -> deque[Item]:
        for level in self._levels.values():
            if level:
                return level
        raise IndexError("no pending request")

    def popleft(self) -> Item:
        item = self._first_level().popleft()
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
