"""How late this API server's event loop runs: the wait the cost line cannot see.

The admission prediction counts forward time only. Under a flood the API server's own loop is where a
request waits longest: its bytes sit in the socket until the loop comes round to read them, and its
answer waits again for the loop to write it. Both are about one loop iteration, and a timer that should
fire every ``interval_s`` fires late by just that. :class:`LoopLag` keeps an exponentially weighted mean
of the lateness, per process, started lazily on the first read inside a running loop (the gate is built
in the main process before the API servers are forked, where no loop runs).

It costs one timer callback every ``interval_s`` (100 a second by default) while requests are read, and
nothing per request but an attribute write. The probe stops once ``idle_after_s`` passes without a read,
so an idle API server runs no timer at all; the next read starts it again from the last estimate.
"""

from __future__ import annotations

import asyncio


class LoopLag:
    """The event loop's mean lateness in seconds (0 until the first probe fires)."""

    def __init__(self, interval_s: float = 0.01, weight: float = 0.25, idle_after_s: float = 1.0) -> None:
        self.interval_s = interval_s
        self.weight = weight
        self.lag_s = 0.0
        self._idle_ticks = max(1, round(idle_after_s / interval_s))  # probes without a read before stopping
        self._quiet = 0  # probes since the last read
        self._read = False  # a read since the last probe
        self._running = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._due = 0.0

    def seconds(self) -> float:
        """The current estimate; (re)starts the probe in the running loop when it is not running."""
        self._read = True
        if not self._running:
            self._start()
        return self.lag_s

    @property
    def running(self) -> bool:
        return self._running

    def _start(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # not inside an event loop (a test, the main process): nothing to measure
        self._loop = loop
        self._running = True
        self._quiet = 0
        self._due = loop.time() + self.interval_s
        loop.call_at(self._due, self._tick)

    def _tick(self) -> None:
        loop = self._loop
        assert loop is not None
        now = loop.time()
        self.record(max(0.0, now - self._due))
        if self._read:
            self._read, self._quiet = False, 0
        else:
            self._quiet += 1
            if self._quiet >= self._idle_ticks:
                self._running = False  # idle: no timer until the next read
                return
        self._due = now + self.interval_s
        loop.call_at(self._due, self._tick)

    def record(self, late_s: float) -> None:
        """One probe's lateness."""
        self.lag_s += self.weight * (late_s - self.lag_s)
