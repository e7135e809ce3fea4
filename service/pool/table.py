"""What is served right now, published by the main process and read by every API server.

The main process is the only writer: it builds a new :class:`ServingTable` for every change (a load,
an unload, a reload, a load that starts or fails) and publishes it with :class:`TableStore`. The table
is written to a file in the server's private runtime folder and its generation to shared memory; an
API server compares one shared integer with the generation it has (per request, and every 100 ms),
reads the file only when it moved, and acknowledges the generation it serves. A change returns to its
caller once every live API server has acknowledged it, so "loaded" means "taking traffic everywhere".

The file is a pickle: it is written only by this server's main process into a folder only this user
can read (the runtime folder), like the pickles ``multiprocessing`` itself sends between processes.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import time
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from service.config import ModelServeConfig
from service.model_loading import ModelDescription
from service.worker_states import RUNTIME_DIR_ENV

MAX_API_SERVERS = 64  # acknowledgement slots


@dataclass(frozen=True)
class ServedVersion:
    """One served version of a model: its unit (workers, gate, costs), config and description."""

    unit: int
    config: ModelServeConfig
    description: ModelDescription
    mirror: ModelServeConfig | None = None  # the candidate version its workers compare with (config.mirror)

    @property
    def version(self) -> str:
        return self.config.version


@dataclass(frozen=True)
class ServedModel:
    """A model's served versions, where unversioned requests go, and its canary split."""

    name: str
    versions: dict[str, ServedVersion]
    default_version: str
    traffic: dict[str, int] | None = None  # weights by version; None: everything to default_version

    def sorted_versions(self) -> list[str]:
        return sorted(self.versions, key=int)

    def pick(self, request_id: str) -> ServedVersion:
        """The version an unversioned request goes to: the canary split, sticky by request id."""
        if not self.traffic:
            return self.versions[self.default_version]
        total = sum(self.traffic.values())
        point = zlib.crc32(request_id.encode()) % total
        for version, weight in sorted(self.traffic.items(), key=lambda item: int(item[0])):
            if point < weight:
                return self.versions[version]
            point -= weight
        return self.versions[self.default_version]  # not reached: the weights sum to total


@dataclass(frozen=True)
class ModelStatus:
    """A repository model as the index shows it (Triton's ``state`` and ``reason``), loaded or not."""

    name: str
    version: str
    state: str  # READY (read from the workers), LOADING, UNLOADING, UNAVAILABLE
    reason: str = ""


@dataclass(frozen=True)
class ServingTable:
    generation: int
    models: dict[str, ServedModel] = field(default_factory=dict)
    catalog: dict[str, list[ModelStatus]] = field(default_factory=dict)  # by model: one per version

    def units(self) -> dict[int, tuple[ServedModel, ServedVersion]]:
        return {v.unit: (m, v) for m in self.models.values() for v in m.versions.values()}


class TableStore:
    """Publishes tables (main process) and keeps each API server's copy current (see the module doc)."""

    def __init__(self) -> None:
        ctx = mp.get_context("spawn")
        self._generation = ctx.RawValue("q", 0)
        self._lock = ctx.Lock()
        self._ack_pid = ctx.RawArray("i", MAX_API_SERVERS)
        self._ack_generation = ctx.RawArray("q", MAX_API_SERVERS)
        self._latest: ServingTable | None = None  # the newest table this process has read
        self._adopted = -1  # the generation this process's routes follow (FrontRouter adopts it)
        self._ack_slot: int | None = None

    @staticmethod
    def _path() -> Path:
        return Path(os.environ[RUNTIME_DIR_ENV]) / "serving-table.pickle"

    # -- the main process
    def publish(self, table: ServingTable) -> None:
        path = self._path()
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(pickle.dumps(table, protocol=pickle.HIGHEST_PROTOCOL))
        tmp.replace(path)
        self._latest = table
        self._generation.value = table.generation

    def wait_acknowledged(
        self, generation: int, live_pids: Callable[[], Iterable[int]], timeout_s: float
    ) -> list[int]:
        """Wait until every live API server serves ``generation``; the pids still behind at the timeout."""
        deadline = time.monotonic() + timeout_s
        while True:
            behind = self._behind(generation, set(live_pids()))
            if not behind or time.monotonic() > deadline:
                return behind
            time.sleep(0.01)

    def _behind(self, generation: int, pids: set[int]) -> list[int]:
        served = {self._ack_pid[i]: self._ack_generation[i] for i in range(MAX_API_SERVERS)}
        return sorted(pid for pid in pids if served.get(pid, -1) < generation)

    # -- every API server
    def current(self) -> ServingTable:
        """The newest published table (read again only when the main process has published one)."""
        table = self._latest
        if table is None or table.generation != self._generation.value:
            table = self._latest = pickle.loads(self._path().read_bytes())
        return table

    def adopt(self, table: ServingTable) -> None:
        """This process's routes follow ``table`` now (the router says so, once they do)."""
        self._adopted = table.generation

    @property
    def changed(self) -> bool:
        """Cheap (one shared read): has a newer table been published than the routes follow?"""
        return self._adopted != self._generation.value

    def acknowledge(self, generation: int) -> None:
        """Say that this API server now routes by ``generation``."""
        if self._ack_slot is None:
            self._ack_slot = self._claim_slot()
        self._ack_generation[self._ack_slot] = generation

    def _claim_slot(self) -> int:
        pid = os.getpid()
        with self._lock:
            for i in range(MAX_API_SERVERS):
                owner = self._ack_pid[i]
                if owner == pid or owner == 0 or not _alive(owner):
                    self._ack_pid[i] = pid
                    self._ack_generation[i] = -1
                    return i
        raise RuntimeError(f"more than {MAX_API_SERVERS} API servers acknowledge serving tables")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
