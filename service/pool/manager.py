"""Models that change while serving: load, reload and unload, with no failed request (main process).

Every change builds a new :class:`~service.pool.table.ServingTable` and moves traffic in this order:

1. **start** the versions that are new or whose config changed, as new units beside the serving ones
   (their own workers, warmed up and listening): nothing else changes while they load;
2. **switch**: publish the table that routes to them, and wait until every API server routes by it;
3. **retire** the units no longer in the table: wait until their admitted requests are answered
   (their admission gates count them across API servers), then stop their workers.

A load that fails (import error, bad weights, a failed precision check, a worker that dies starting)
stops what it started, is counted in ``hookserve_model_load_failures_total`` and leaves whatever was
serving still serving. One change at a time: concurrent calls wait for each other.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from service.config import ModelServeConfig, ServerConfig
from service.model_loading import describe_model
from service.monitoring.metrics import MODEL_LOAD_FAILURES
from service.pool.shared import SharedSlots
from service.pool.table import ModelStatus, ServedModel, ServedVersion, ServingTable
from service.pool.workers import StartFailed, WorkerPool
from service.repository import ModelPlan, ModelRepository, RepositoryError, read_model

logger = logging.getLogger(__name__)
ACK_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Outcome:
    """A control call's answer: an HTTP status and, unless 200, what went wrong."""

    status: int
    error: str = ""


class ModelManager:
    """Owns the serving table and the units behind it (see the module docstring)."""

    def __init__(
        self,
        server: ServerConfig,
        repository: ModelRepository | None,
        shared: SharedSlots,
        pool: WorkerPool,
        make_worker: Callable[[ModelServeConfig, int, ModelServeConfig | None], Any],
        api_server_pids: Callable[[], Iterable[int]] = lambda: (),
    ) -> None:
        self.server = server
        self.repository = repository
        self.shared = shared
        self.pool = pool
        self.make_worker = make_worker  # (config, unit, mirror) -> the worker object each process runs
        self.api_server_pids = api_server_pids
        self.table = ServingTable(0)
        self._lock = threading.Lock()

    # -- start-up (before the API servers fork)
    def prepare(self, plans: list[ModelPlan]) -> None:
        """Describe every start-up version (a bad model or checkpoint fails here, before any process
        starts) and give each a unit; the table is published with them (their workers not started)."""
        catalog = self._repository_catalog()
        models = {}
        for plan in plans:
            versions = {}
            for version, config in plan.versions.items():
                mirror = plan.mirrors.get(version)
                versions[version] = ServedVersion(
                    self.pool.allocate(), config, describe_model(config), mirror
                )
            models[plan.name] = ServedModel(plan.name, versions, plan.default_version, plan.traffic)
            catalog[plan.name] = _loaded_status(models[plan.name])
        self._publish(models=models, catalog=catalog)

    def launch(self) -> None:
        """Start the prepared versions' workers and wait until all are ready; raise when one cannot."""
        units = [served for model in self.table.models.values() for served in model.versions.values()]
        for served in units:
            worker = self.make_worker(served.config, served.unit, served.mirror)
            self.pool.start(worker, served.config.workers)
        for served in units:
            try:
                self.pool.wait_ready(served.unit, self.server.model_load_timeout_s)
            except StartFailed as exc:
                config = served.config
                raise StartFailed(f"{config.name} version {config.version} failed to start: {exc}") from None

    # -- live changes (the control channel's thread)
    def load(self, name: str, config_json: str | None = None) -> Outcome:
        """Load ``name`` from the repository, or reload it (Triton's load: new, changed or removed
        versions, a changed model.yaml). 200 once every version is taking traffic."""
        with self._lock:
            try:
                plan = self._read_plan(name, config_json)
            except RepositoryError as exc:
                return self._load_failed(name, str(exc), started=[])
            current = self.table.models.get(name)
            kept = {
                v: served
                for v, served in (current.versions.items() if current else ())
                if v in plan.versions
                and served.config == plan.versions[v]
                and served.mirror == plan.mirrors.get(v)
            }
            self._set_status(name, "LOADING", plan)
            began = time.monotonic()
            try:
                model = self._start_model(plan, kept)
                started = [s for v, s in model.versions.items() if v not in kept]
            except Exception as exc:  # any failure to build a version is the load's answer
                return self._load_failed(name, f"{type(exc).__name__}: {exc}", started=[])
            try:
                for served in started:
                    self.pool.wait_ready(served.unit, self.server.model_load_timeout_s)
            except StartFailed as exc:
                return self._load_failed(name, str(exc), started=started)
            retired = [s for v, s in (current.versions.items() if current else ()) if v not in kept]
            self._switch(models={**self.table.models, name: model}, status=(name, _loaded_status(model)))
            logger.info(
                "%s: versions %s taking traffic %.2f s after the load call (%d new unit(s), %d kept)",
                name, model.sorted_versions(), time.monotonic() - began, len(started), len(kept),
            )  # fmt: skip
            self._retire(retired)
            return Outcome(200)

    def unload(self, name: str) -> Outcome:
        """Stop serving ``name``: its requests get 404 from now on, its workers drain and exit."""
        with self._lock:
            current = self.table.models.get(name)
            if current is None:
                if name in self.table.catalog:
                    return Outcome(200)  # Triton: unloading a model that is not loaded succeeds
                return Outcome(400, f"model {name!r} is not served and not in the repository")
            unloading = [replace(s, state="UNLOADING") for s in _loaded_status(current)]
            models = {k: v for k, v in self.table.models.items() if k != name}
            self._switch(models=models, status=(name, unloading))
            self._retire(list(current.versions.values()))
            self._set_status(name, "UNAVAILABLE", reason="unloaded")
            logger.info("%s unloaded", name)
            return Outcome(200)

    # -- the steps
    def _read_plan(self, name: str, config_json: str | None) -> ModelPlan:
        if self.repository is None:
            raise RepositoryError("no model repository is configured (server.model_repository)")
        folder = self.repository.path / name
        if not (folder / "model.yaml").is_file():
            known = sorted(p.name for p in self.repository.path.iterdir() if (p / "model.yaml").is_file())
            raise RepositoryError(f"model {name!r} is not in the repository; it holds {known}")
        override = None
        if config_json:
            try:
                override = json.loads(config_json)
            except ValueError as exc:
                raise RepositoryError(f"parameters.config is not valid JSON: {exc}") from exc
            if not isinstance(override, dict):
                raise RepositoryError("parameters.config must be a JSON object of model.yaml keys")
        return read_model(Path(folder), override).plan()

    def _start_model(self, plan: ModelPlan, kept: dict[str, ServedVersion]) -> ServedModel:
        """Spawn a unit for each version of ``plan`` not in ``kept`` (returns at once)."""
        versions = dict(kept)
        try:
            for version, config in plan.versions.items():
                if version in kept:
                    continue
                description = describe_model(config)  # fails here (import, weights) before any spawn
                mirror = plan.mirrors.get(version)
                unit = self.pool.allocate()
                self.pool.start(self.make_worker(config, unit, mirror), config.workers)
                versions[version] = ServedVersion(unit, config, description, mirror)
        except Exception:
            self._stop_units([s for v, s in versions.items() if v not in kept])
            raise
        return ServedModel(plan.name, versions, plan.default_version, plan.traffic)

    def _switch(self, models: dict[str, ServedModel], status: tuple[str, list[ModelStatus]]) -> None:
        """Publish the new routes and wait until every API server routes by them."""
        name, entries = status
        self._publish(models=models, catalog={**self.table.catalog, name: entries})
        behind = self.shared.store.wait_acknowledged(
            self.table.generation, self.api_server_pids, ACK_TIMEOUT_S
        )
        if behind:
            logger.warning("API servers %s did not take table %d in time", behind, self.table.generation)

    def _retire(self, units: list[ServedVersion]) -> None:
        """Wait for each unit's admitted requests to be answered, then stop its workers."""
        deadline = time.monotonic() + self.server.request_timeout_s + 1.0
        for served in units:
            gate = self.shared.gates[served.unit]
            while gate.in_flight > 0 and time.monotonic() < deadline:
                time.sleep(0.01)
            if gate.in_flight > 0:
                logger.warning("unit %d retired with %d request(s) in flight", served.unit, gate.in_flight)
        self._stop_units(units)

    def _stop_units(self, units: list[ServedVersion]) -> None:
        for served in units:
            self.pool.stop(served.unit)
            self.shared.release(served.unit)

    def _load_failed(self, name: str, reason: str, started: list[ServedVersion]) -> Outcome:
        self._stop_units(started)
        MODEL_LOAD_FAILURES.labels(name).inc()
        logger.error("loading %s failed: %s", name, reason)
        current = self.table.models.get(name)
        if current is not None:  # the serving versions keep serving
            self._set_status(name, None, entries=_loaded_status(current))
        elif name in self.table.catalog:  # a repository model: the index says why it is not loaded
            self._set_status(name, "UNAVAILABLE", reason=f"load failed: {reason}")
        return Outcome(400, f"failed to load {name!r}: {reason}")

    # -- the table
    def _set_status(
        self,
        name: str,
        state: str | None,
        plan: ModelPlan | None = None,
        reason: str = "",
        entries: list[ModelStatus] | None = None,
    ) -> None:
        if entries is None:
            versions = list(plan.versions) if plan else [s.version for s in self.table.catalog.get(name, [])]
            entries = [ModelStatus(name, v, state or "UNAVAILABLE", reason) for v in versions or [""]]
        self._publish(models=self.table.models, catalog={**self.table.catalog, name: entries})

    def _publish(self, models: dict[str, ServedModel], catalog: dict[str, list[ModelStatus]]) -> None:
        self.table = ServingTable(self.table.generation + 1, models, catalog)
        self.shared.store.publish(self.table)

    def _repository_catalog(self) -> dict[str, list[ModelStatus]]:
        """Every repository model, not loaded (start-up marks the loaded ones)."""
        if self.repository is None:
            return {}
        catalog = {}
        for name, model in self.repository.models.items():
            versions = [str(v) for v in model.selected_versions()]
            catalog[name] = [ModelStatus(name, v, "UNAVAILABLE", "not loaded") for v in versions]
        return catalog


def _loaded_status(model: ServedModel) -> list[ModelStatus]:
    """Loaded: the index reads READY, LOADING or UNAVAILABLE from the version's workers."""
    return [ModelStatus(model.name, v, "READY") for v in model.sorted_versions()]
