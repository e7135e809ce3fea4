"""Where each inference worker listens and whether it is live, shared by every process of the server.

The main process creates :class:`WorkerStates` before any worker is spawned or API server forked; the
supervisor (main process) marks workers starting, down or failed; a worker marks itself ready once it
is warmed up and listening; API servers read it for ``/health`` and per-model readiness. It is plain
shared memory without locks: each slot has one writer at a time, and readers only need a recent value.
"""

from __future__ import annotations

import enum
import json
import multiprocessing as mp
import os
from collections.abc import Iterable
from pathlib import Path

RUNTIME_DIR_ENV = "HOOKSERVE_RUNTIME_DIR"


class WorkerState(enum.IntEnum):
    STARTING = 0  # spawned, loading and warming up
    READY = 1  # warmed up and accepting requests
    DOWN = 2  # died; a restart is scheduled
    FAILED = 3  # died too often: stays down until the server restarts


class WorkerStates:
    """One slot per (model, worker id): its state and process id."""

    def __init__(self, workers_per_model: dict[str, int]) -> None:
        self.models = list(workers_per_model)
        self._slots: dict[str, range] = {}
        start = 0
        for name, count in workers_per_model.items():
            self._slots[name] = range(start, start + count)
            start += count
        ctx = mp.get_context("spawn")  # picklable into spawned workers, inherited by forked API servers
        self._state = ctx.RawArray("b", start)
        self._pid = ctx.RawArray("i", start)

    def _slot(self, model: str, worker_id: int) -> int:
        return self._slots[model][worker_id]

    def set(self, model: str, worker_id: int, state: WorkerState, pid: int | None = None) -> None:
        slot = self._slot(model, worker_id)
        if pid is not None:
            self._pid[slot] = pid
        self._state[slot] = int(state)

    def get(self, model: str, worker_id: int) -> WorkerState:
        return WorkerState(self._state[self._slot(model, worker_id)])

    def pid(self, model: str, worker_id: int) -> int:
        return self._pid[self._slot(model, worker_id)]

    def workers(self, model: str) -> Iterable[int]:
        return range(len(self._slots[model]))

    def model_state(self, model: str) -> WorkerState:
        """READY when any worker is; else FAILED when every worker is; else STARTING or DOWN."""
        states = [self._state[slot] for slot in self._slots[model]]
        if WorkerState.READY in states:
            return WorkerState.READY
        if all(s == WorkerState.FAILED for s in states):
            return WorkerState.FAILED
        return WorkerState(min(s for s in states if s != WorkerState.FAILED))

    def model_ready(self, model: str) -> bool:
        return any(self._state[slot] == WorkerState.READY for slot in self._slots[model])

    def all_ready(self) -> bool:
        """True when every model has at least one live, warmed-up worker."""
        return all(self.model_ready(model) for model in self.models)

    def socket_path(self, model: str, worker_id: int) -> Path:
        """The Unix socket a worker listens on (by slot number: socket paths are limited to 108 bytes)."""
        return Path(os.environ[RUNTIME_DIR_ENV]) / "sockets" / f"worker-{self._slot(model, worker_id)}.sock"


def write_report(model: str, worker_id: int, report: dict) -> None:
    """Share a worker's start-up facts (device, precision check, monitored modules) with the API servers."""
    path = Path(os.environ[RUNTIME_DIR_ENV]) / "status" / f"{model}.{worker_id}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(report))
    tmp.replace(path)


def read_reports(model: str, workers: int) -> list[dict]:
    """The start-up facts of each worker of ``model`` that has reported (for the metadata route)."""
    directory = Path(os.environ[RUNTIME_DIR_ENV]) / "status"
    paths = [directory / f"{model}.{worker_id}.json" for worker_id in range(workers)]
    return [json.loads(path.read_text()) for path in paths if path.exists()]
