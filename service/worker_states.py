"""Where each inference worker listens and whether it is live, shared by every process of the server.

Workers belong to *units*: one unit is one served (model, version) with its own workers. The main
process allocates a fixed number of unit slots (``server.max_units``) before any worker is spawned or
API server forked, so a model loaded later still finds its slots in memory every process shares. The
main process assigns and releases units and marks workers starting, down or failed; a worker marks
itself ready once it is warmed up and listening; API servers read it for ``/health`` and readiness.
It is plain shared memory without locks: each slot has one writer at a time, and readers only need a
recent value.
"""

from __future__ import annotations

import enum
import json
import multiprocessing as mp
import os
from pathlib import Path

RUNTIME_DIR_ENV = "HOOKSERVE_RUNTIME_DIR"
MAX_WORKERS_PER_UNIT = 16  # ModelServeConfig.workers is at most this


class WorkerState(enum.IntEnum):
    STARTING = 0  # spawned, loading and warming up
    READY = 1  # warmed up and accepting requests
    DOWN = 2  # died; a restart is scheduled
    FAILED = 3  # died too often: stays down until the server restarts
    STOPPED = 4  # stopped on purpose (unloaded or replaced by a reload)


class WorkerStates:
    """One slot per (unit, worker id): its state and process id; one worker count per unit."""

    def __init__(self, units: int) -> None:
        self.units = units
        ctx = mp.get_context("spawn")  # picklable into spawned workers, inherited by forked API servers
        self._state = ctx.RawArray("b", units * MAX_WORKERS_PER_UNIT)
        self._pid = ctx.RawArray("i", units * MAX_WORKERS_PER_UNIT)
        self._workers = ctx.RawArray("b", units)  # 0: the unit is free

    @staticmethod
    def _slot(unit: int, worker_id: int) -> int:
        return unit * MAX_WORKERS_PER_UNIT + worker_id

    # -- the main process
    def assign(self, unit: int, workers: int) -> None:
        """Give ``unit`` ``workers`` slots, all starting (the main process, before spawning them)."""
        if not 1 <= workers <= MAX_WORKERS_PER_UNIT:
            raise ValueError(f"a unit has 1 to {MAX_WORKERS_PER_UNIT} workers, not {workers}")
        for worker_id in range(workers):
            slot = self._slot(unit, worker_id)
            self._state[slot] = int(WorkerState.STARTING)
            self._pid[slot] = 0
        self._workers[unit] = workers

    def release(self, unit: int) -> None:
        """The unit's workers are gone: its slots are free for another unit."""
        for worker_id in range(self._workers[unit]):
            self._state[self._slot(unit, worker_id)] = int(WorkerState.STOPPED)
        self._workers[unit] = 0

    # -- every process
    def set(self, unit: int, worker_id: int, state: WorkerState, pid: int | None = None) -> None:
        slot = self._slot(unit, worker_id)
        if pid is not None:
            self._pid[slot] = pid
        self._state[slot] = int(state)

    def get(self, unit: int, worker_id: int) -> WorkerState:
        return WorkerState(self._state[self._slot(unit, worker_id)])

    def pid(self, unit: int, worker_id: int) -> int:
        return self._pid[self._slot(unit, worker_id)]

    def workers(self, unit: int) -> range:
        return range(self._workers[unit])

    def unit_state(self, unit: int) -> WorkerState:
        """READY when any worker is; else FAILED when every worker is; else STARTING or DOWN."""
        states = [self._state[self._slot(unit, w)] for w in self.workers(unit)]
        if not states:
            return WorkerState.STOPPED
        if WorkerState.READY in states:
            return WorkerState.READY
        if all(s == WorkerState.FAILED for s in states):
            return WorkerState.FAILED
        return WorkerState(min(s for s in states if s != WorkerState.FAILED))

    def unit_ready(self, unit: int) -> bool:
        return any(self._state[self._slot(unit, w)] == WorkerState.READY for w in self.workers(unit))

    def socket_path(self, unit: int, worker_id: int) -> Path:
        """The Unix socket a worker listens on (by slot number: socket paths are limited to 108 bytes)."""
        return Path(os.environ[RUNTIME_DIR_ENV]) / "sockets" / f"worker-{self._slot(unit, worker_id)}.sock"


def _report_path(unit: int, worker_id: int) -> Path:
    return Path(os.environ[RUNTIME_DIR_ENV]) / "status" / f"unit-{unit}.{worker_id}.json"


def write_report(unit: int, worker_id: int, report: dict) -> None:
    """Share a worker's start-up facts (device, precision check, monitored modules, or why it failed)."""
    path = _report_path(unit, worker_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(report))
    tmp.replace(path)


def read_reports(unit: int, workers: int) -> list[dict]:
    """The start-up facts of each worker of ``unit`` that has reported (for the metadata route)."""
    paths = [_report_path(unit, worker_id) for worker_id in range(workers)]
    reports = []
    for path in paths:
        try:
            reports.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue  # not written yet, or being replaced
    return reports


def clear_reports(unit: int) -> None:
    """Forget a released unit's reports, so its next owner starts clean."""
    for worker_id in range(MAX_WORKERS_PER_UNIT):
        _report_path(unit, worker_id).unlink(missing_ok=True)
