"""The inference-worker processes: spawned per unit (one served model version), watched, stopped.

hookserve spawns its workers itself (``spawn``: CUDA-safe), at start-up and whenever a model is loaded,
so one mechanism starts, restarts (through the supervisor) and stops them. A worker is ready when it
has loaded, checked and warmed up its model and listens on its socket; one that fails its start-up
writes why into its report and exits, and :meth:`WorkerPool.wait_ready` returns that reason.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import sys
import time
from collections.abc import Callable
from typing import Any, Protocol

from prometheus_client.multiprocess import mark_process_dead

from service.worker_states import WorkerState, WorkerStates, clear_reports, read_reports

logger = logging.getLogger(__name__)
STOP_TIMEOUT_S = 10.0


class UnitWorker(Protocol):
    """What runs in each worker process of a unit (pickled into it)."""

    model_name: str
    unit: int

    def setup(self, worker_id: int) -> None:
        """Load and warm up; raising ends the process (the reason is in its report)."""

    def serve(self) -> None:
        """Serve requests until the process is stopped."""


def run_worker(served: UnitWorker, worker_id: int) -> None:
    """The entry of a worker process: set up, then serve; a failed set-up exits with status 1."""
    try:
        served.setup(worker_id)
    except BaseException:
        logging.getLogger("hookserve.worker").exception(
            "%s worker %d failed to start", served.model_name, worker_id
        )
        sys.exit(1)
    served.serve()


class StartFailed(Exception):
    """A unit's workers could not all start; the message says why (from the worker's report)."""


class WorkerPool:
    """Every unit's processes, in the main process. Not thread-safe: one caller at a time (see manager)."""

    def __init__(
        self,
        states: WorkerStates,
        on_ready: Callable[[UnitWorker, int, Any], None] = lambda served, worker, process: None,
        on_stopping: Callable[[list[Any]], None] = lambda processes: None,
    ) -> None:
        self.states = states
        self.processes: list[Any] = []  # every live worker process (LitServe's shutdown stops these too)
        self.units: dict[int, list[Any]] = {}
        self.served: dict[int, UnitWorker] = {}
        self._free = list(range(states.units))
        self.on_ready = on_ready  # the supervisor watches each process once its unit is ready
        self.on_stopping = on_stopping  # ... and stops watching before it is stopped on purpose

    def allocate(self) -> int:
        if not self._free:
            raise StartFailed(
                f"every one of the {self.states.units} unit slots is in use (server.max_units): "
                "unload a model or raise the limit"
            )
        return self._free.pop(0)

    def start(self, served: UnitWorker, workers: int) -> None:
        """Spawn ``workers`` processes for ``served.unit`` (returns at once; see :meth:`wait_ready`)."""
        unit = served.unit
        self.states.assign(unit, workers)
        clear_reports(unit)
        self.served[unit] = served
        self.units[unit] = [self._spawn(served, worker_id) for worker_id in range(workers)]

    def _spawn(self, served: UnitWorker, worker_id: int) -> Any:
        process = mp.get_context("spawn").Process(
            target=run_worker, args=(served, worker_id), name=f"worker-{served.model_name}-{worker_id}"
        )
        process.start()
        self.processes.append(process)
        return process

    def relaunch(self, served: UnitWorker, worker_id: int, dead: Any) -> Any:
        """A replacement for ``dead`` (the supervisor's restart)."""
        process = self._spawn(served, worker_id)
        if dead in self.processes:
            self.processes.remove(dead)
        for processes in self.units.values():
            if dead in processes:
                processes[processes.index(dead)] = process
        return process

    def wait_ready(self, unit: int, timeout_s: float) -> None:
        """Return once every worker of ``unit`` is ready; raise :class:`StartFailed` with the reason."""
        deadline = time.monotonic() + timeout_s
        workers = self.states.workers(unit)
        while True:
            states = [self.states.get(unit, w) for w in workers]
            if all(s == WorkerState.READY for s in states):
                for worker_id, process in enumerate(self.units[unit]):
                    self.on_ready(self.served[unit], worker_id, process)
                return
            for worker_id, process in enumerate(self.units.get(unit, [])):
                if process.exitcode is not None and states[worker_id] != WorkerState.READY:
                    raise StartFailed(self._failure(unit, worker_id, process.exitcode))
            if time.monotonic() > deadline:
                raise StartFailed(f"not ready after {timeout_s:.0f} s (still loading or warming up)")
            time.sleep(0.02)

    @staticmethod
    def _failure(unit: int, worker_id: int, exitcode: int) -> str:
        for report in read_reports(unit, worker_id + 1):
            if report.get("worker") == worker_id and report.get("error"):
                return report["error"]
        return f"worker {worker_id} exited with code {exitcode} while starting (see the server log)"

    def stop(self, unit: int) -> None:
        """Stop every process of ``unit`` (drained first by the caller) and free its slots."""
        processes = self.units.pop(unit, [])
        self.served.pop(unit, None)
        self.on_stopping(processes)
        for process in processes:
            if process.exitcode is None:
                process.terminate()  # SIGTERM: its requests are answered already
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for process in processes:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.exitcode is None:
                logger.warning("worker pid %s ignored SIGTERM; killing it", process.pid)
                process.kill()
                process.join(1.0)
            mark_process_dead(process.pid)
            if process in self.processes:
                self.processes.remove(process)
        self.states.release(unit)
        clear_reports(unit)
        self._free.append(unit)
