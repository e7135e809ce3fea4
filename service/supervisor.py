"""Worker supervision: a worker that dies is restarted, with backoff, and nothing else goes down.

Runs as a thread in the main process once the server is serving. It waits on the workers' process
sentinels, so a death (SIGKILL, segfault, OOM kill) is seen at once. The dead worker's slot is marked
down (``/health`` turns 503 if that model has no other live worker; the API servers have already failed
its in-flight requests with 503, because the kernel closed its connections), and a replacement is
started after a backoff that doubles with each restart. A replacement takes traffic only once it is
warmed up and listening. More than ``max_restarts`` within ``window_s`` and the model stays down
(``failed``) with a log line saying why: a crash loop should page someone, not burn the machine.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from typing import Any

from prometheus_client.multiprocess import mark_process_dead

from service.config import RestartPolicy
from service.monitoring.metrics import WORKER_RESTARTS
from service.worker_states import WorkerState, WorkerStates

logger = logging.getLogger(__name__)


@dataclass
class WorkerSlot:
    """One worker of one model: its current process and its restart history."""

    model: str
    worker: int
    api: Any  # the model's worker, pickled into each replacement process
    process: Any
    restarts: deque[float] = field(default_factory=deque)
    restart_at: float | None = None


class Supervisor:
    """Watches every inference worker; restarts the dead ones (see the module docstring)."""

    def __init__(
        self,
        states: WorkerStates,
        policy: RestartPolicy,
        relaunch: Callable[[Any, int, Any], Any],
        clock: Callable[[], float] = time.monotonic,
        draining: Callable[[], bool] = lambda: False,
    ) -> None:
        self.states = states
        self.draining = draining
        self.policy = policy
        self.relaunch = relaunch
        self.clock = clock
        self.slots: list[WorkerSlot] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def watch(self, model: str, worker: int, api: Any, process: Any) -> None:
        self.slots.append(WorkerSlot(model, worker, api, process))
        WORKER_RESTARTS.labels(model)  # exported at 0, so increase() sees the first restart

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="hookserve-supervisor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop supervising (before shutdown stops the workers on purpose)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.step(timeout=0.2)

    def step(self, timeout: float) -> None:
        """Notice deaths (waiting up to ``timeout``), then start any replacement that is due."""
        alive = {s.process.sentinel: s for s in self.slots if s.restart_at is None and s.process is not None}
        for sentinel in wait(list(alive), timeout=timeout) if alive else []:
            self._on_death(alive[sentinel])
        if not alive:
            self._stop.wait(timeout)
        now = self.clock()
        for slot in self.slots:
            if slot.restart_at is not None and now >= slot.restart_at and not self._stop.is_set():
                self._restart(slot)

    def _on_death(self, slot: WorkerSlot) -> None:
        slot.process.join(timeout=1)
        exitcode = slot.process.exitcode
        mark_process_dead(slot.process.pid)  # drops its live gauges (hookserve_workers_ready)
        now = self.clock()
        while slot.restarts and now - slot.restarts[0] > self.policy.window_s:
            slot.restarts.popleft()
        if self.draining():  # the server is stopping: a replacement would only be stopped again
            self.states.set(slot.model, slot.worker, WorkerState.DOWN)
            slot.process = None
            logger.info("%s worker %d exited (code %s) during shutdown", slot.model, slot.worker, exitcode)
            return
        if len(slot.restarts) >= self.policy.max_restarts:
            self.states.set(slot.model, slot.worker, WorkerState.FAILED)
            slot.process = None
            logger.error(
                "%s worker %d died (exit code %s) after %d restarts within %.0f s: it stays down until "
                "the server is restarted (server.worker_restarts.max_restarts / window_s)",
                slot.model, slot.worker, exitcode, len(slot.restarts), self.policy.window_s,
            )
            return
        backoff = min(self.policy.backoff_initial_s * 2 ** len(slot.restarts), self.policy.backoff_max_s)
        slot.restart_at = now + backoff
        self.states.set(slot.model, slot.worker, WorkerState.DOWN)
        logger.error(
            "%s worker %d (pid %s) died with exit code %s; restarting it in %.1f s",
            slot.model, slot.worker, slot.process.pid, exitcode, backoff,
        )

    def _restart(self, slot: WorkerSlot) -> None:
        slot.restarts.append(self.clock())
        slot.restart_at = None
        self.states.set(slot.model, slot.worker, WorkerState.STARTING)
        slot.process = self.relaunch(slot.api, slot.worker, slot.process)
        WORKER_RESTARTS.labels(slot.model).inc()
        logger.info(
            "%s worker %d restarted (pid %s); it takes traffic once warmed up",
            slot.model, slot.worker, slot.process.pid,
        )
