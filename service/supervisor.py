"""Process supervision: an inference worker or API server that dies is replaced, with backoff.

Runs as a thread in the main process once the server is serving. It waits on the process sentinels of
every inference worker and every API server, so a death (SIGKILL, segfault, OOM kill) is seen at once, and
starts a replacement after a backoff that doubles with each restart within ``window_s``.

- **Inference worker.** Its slot is marked down (``/health`` turns 503 if that model has no other live
  worker; the API servers have already failed its in-flight requests with 503, because the kernel closed
  its connections). The replacement takes traffic once it is warmed up and listening. More than
  ``max_restarts`` within ``window_s`` and the model stays down (``failed``) with a log line saying why:
  a crash loop should page someone, not burn the machine.
- **API server.** Only the requests in flight on it fail; the others keep accepting on the shared
  listening socket. The replacement is forked like the original (same app, same socket) and accepts
  connections only once it has connected to the workers. More than ``max_restarts`` within ``window_s``
  and the whole service stops with a non-zero exit, so that systemd, compose or Kubernetes restarts it.

The thread outlives :meth:`Supervisor.stop` (it parks): Linux sends a child its parent-death signal
(:mod:`service.orphans`) when the *thread* that started it exits, so replacements started by a thread
that ended would be killed with it.
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
from service.monitoring.metrics import API_SERVER_RESTARTS, WORKER_RESTARTS
from service.worker_states import WorkerState, WorkerStates

logger = logging.getLogger(__name__)


def _unmarked(state: WorkerState) -> None:
    """API servers have no shared state slot."""


@dataclass
class Slot:
    """One supervised process: its name in logs, how to replace it, and its restart history."""

    label: str  # "digits-cnn worker 0", "API server 1"
    process: Any
    relaunch: Callable[[Any], Any]  # the dead process -> its started replacement
    policy: RestartPolicy
    restarts_total: Any  # the counter (child) a restart increments
    give_up: Callable[[Slot, int | None], None]  # more than max_restarts within window_s
    mark: Callable[[WorkerState], None] = _unmarked
    restarts: deque[float] = field(default_factory=deque)
    restart_at: float | None = None


class Supervisor:
    """Watches every inference worker and API server; replaces the dead ones (see the module docstring)."""

    def __init__(
        self,
        states: WorkerStates,
        worker_policy: RestartPolicy,
        relaunch_worker: Callable[[Any, int, Any], Any],
        api_server_policy: RestartPolicy | None = None,
        relaunch_api_server: Callable[[int, Any], Any] | None = None,
        on_fatal: Callable[[str], None] = lambda reason: None,
        clock: Callable[[], float] = time.monotonic,
        draining: Callable[[], bool] = lambda: False,
    ) -> None:
        self.states = states
        self.worker_policy = worker_policy
        self.api_server_policy = api_server_policy or worker_policy
        self.relaunch_worker = relaunch_worker
        self.relaunch_api_server = relaunch_api_server
        self.on_fatal = on_fatal
        self.clock = clock
        self.draining = draining
        self.slots: list[Slot] = []
        self.fatal: str | None = None  # why the service must exit non-zero, once it must
        self._lock = threading.Lock()  # slots change from other threads (live loads and unloads)
        self._stop = threading.Event()
        self._parked = threading.Event()
        self._thread: threading.Thread | None = None

    # -- what is watched
    def watch_worker(self, model: str, unit: int, worker: int, api: Any, process: Any) -> None:
        """Supervise ``worker`` of ``unit`` (a version of ``model``); ``api`` is pickled into each
        replacement. Called from any thread (start-up, a live load)."""
        counter = WORKER_RESTARTS.labels(model)  # exported at 0, so increase() sees the first restart

        def mark(state: WorkerState) -> None:
            self.states.set(unit, worker, state)

        version = getattr(getattr(api, "config", None), "version", None)
        label = f"{model} worker {worker}" if version is None else f"{model} v{version} worker {worker}"
        slot = Slot(
            label,
            process,
            relaunch=lambda dead: self.relaunch_worker(api, worker, dead),
            policy=self.worker_policy,
            restarts_total=counter,
            give_up=self._model_stays_down,
            mark=mark,
        )
        with self._lock:
            self.slots.append(slot)

    def unwatch(self, processes: list[Any]) -> None:
        """Stop supervising these processes (they are being stopped on purpose: an unload, a reload)."""
        with self._lock:
            self.slots = [s for s in self.slots if s.process is None or s.process not in processes]

    def watch_api_server(self, index: int, process: Any) -> None:
        """Supervise API server ``index`` (LitServe's numbering); needs ``relaunch_api_server``."""
        relaunch = self.relaunch_api_server
        if relaunch is None:
            raise ValueError("no way to relaunch an API server was given")
        slot = Slot(
            f"API server {index}",
            process,
            relaunch=lambda dead: relaunch(index, dead),
            policy=self.api_server_policy,
            restarts_total=API_SERVER_RESTARTS,
            give_up=self._service_exits,
        )
        with self._lock:
            self.slots.append(slot)

    def pids(self, prefix: str = "") -> dict[str, int]:
        """Live process ids by slot label (e.g. ``pids("API server")``), for logs and tests."""
        with self._lock:
            live = [s for s in self.slots if s.process is not None and s.label.startswith(prefix)]
        return {s.label: s.process.pid for s in live}

    # -- the thread
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="hookserve-supervisor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop replacing processes (before shutdown stops them on purpose)."""
        self._stop.set()
        if self._thread is not None:
            self._parked.wait(timeout=5)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.step(timeout=0.2)
        self._parked.set()
        threading.Event().wait()  # parked until the process exits: see the module docstring

    def step(self, timeout: float) -> None:
        """Notice deaths (waiting up to ``timeout``), then start any replacement that is due."""
        with self._lock:
            slots = list(self.slots)
        alive = {s.process.sentinel: s for s in slots if s.restart_at is None and s.process is not None}
        dead = wait(list(alive), timeout=timeout) if alive else []
        if not alive:
            self._stop.wait(timeout)
        with self._lock:  # a slot unwatched meanwhile was stopped on purpose: no restart
            watched = {id(s) for s in self.slots}
            for sentinel in dead:
                if not self._stop.is_set() and id(alive[sentinel]) in watched:
                    self._on_death(alive[sentinel])
            now = self.clock()
            for slot in self.slots:
                if slot.restart_at is not None and now >= slot.restart_at and not self._stop.is_set():
                    self._restart(slot)

    # -- deaths and restarts
    def _on_death(self, slot: Slot) -> None:
        slot.process.join(timeout=1)
        exitcode = slot.process.exitcode
        mark_process_dead(slot.process.pid)  # drops its live gauges (e.g. hookserve_workers_ready)
        now = self.clock()
        while slot.restarts and now - slot.restarts[0] > slot.policy.window_s:
            slot.restarts.popleft()
        if self.draining():  # the server is stopping: a replacement would only be stopped again
            slot.mark(WorkerState.DOWN)
            slot.process = None
            logger.info("%s exited (code %s) during shutdown", slot.label, exitcode)
            return
        if len(slot.restarts) >= slot.policy.max_restarts:
            slot.process = None
            slot.give_up(slot, exitcode)
            return
        backoff = min(slot.policy.backoff_initial_s * 2 ** len(slot.restarts), slot.policy.backoff_max_s)
        slot.restart_at = now + backoff
        slot.mark(WorkerState.DOWN)
        logger.error(
            "%s (pid %s) died with exit code %s; restarting it in %.1f s",
            slot.label,
            slot.process.pid,
            exitcode,
            backoff,
        )

    def _restart(self, slot: Slot) -> None:
        slot.restarts.append(self.clock())
        slot.restart_at = None
        slot.mark(WorkerState.STARTING)
        slot.process = slot.relaunch(slot.process)
        slot.restarts_total.inc()
        logger.info("%s restarted (pid %s); it takes traffic once ready", slot.label, slot.process.pid)

    # -- giving up
    def _model_stays_down(self, slot: Slot, exitcode: int | None) -> None:
        slot.mark(WorkerState.FAILED)
        logger.error(
            "%s died (exit code %s) after %d restarts within %.0f s: it stays down until the server is "
            "restarted (server.worker_restarts.max_restarts / window_s)",
            slot.label,
            exitcode,
            len(slot.restarts),
            slot.policy.window_s,
        )

    def _service_exits(self, slot: Slot, exitcode: int | None) -> None:
        self.fatal = (
            f"{slot.label} died (exit code {exitcode}) after {len(slot.restarts)} restarts within "
            f"{slot.policy.window_s:.0f} s: API servers cannot be kept alive, so hookserve exits for its "
            "supervisor (systemd, compose, Kubernetes) to restart it (server.api_server_restarts)"
        )
        logger.error("%s", self.fatal)
        self._stop.set()  # what the shutdown stops next is no crash
        self.on_fatal(self.fatal)
