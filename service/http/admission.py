"""Admission control and drain state shared by every API-server process.

Nothing else bounds the requests waiting for workers; without a limit an overloaded server queues until every
request times out. Counters live in shared memory created by the main process before the API servers
are forked, so the limit holds across all of them.
"""

from __future__ import annotations

import multiprocessing as mp


class AdmissionGate:
    """At most ``limit`` admitted-but-unanswered requests for one model, across processes."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._count = mp.Value("i", 0)

    def try_enter(self) -> bool:
        with self._count.get_lock():
            if self._count.value >= self.limit:
                return False
            self._count.value += 1
            return True

    def leave(self) -> None:
        with self._count.get_lock():
            self._count.value -= 1

    @property
    def in_flight(self) -> int:
        return self._count.value


class DrainSwitch:
    """Set once on SIGTERM/SIGINT: API servers then refuse new work and /health says not ready."""

    def __init__(self) -> None:
        self._flag = mp.Value("b", 0, lock=False)

    def start(self) -> None:
        self._flag.value = 1

    @property
    def draining(self) -> bool:
        return bool(self._flag.value)
