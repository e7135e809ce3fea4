"""The outermost layer of every API server: hookserve's own routes first, then the FastAPI app.

Inference (V1 predict, every Open Inference Protocol V2 path), ``/health``, ``/`` and the repository
routes are answered here, in plain ASGI, without FastAPI's middleware, routing, dependency injection and
validation: they are the hot path and the probes. Everything else (V1 metadata, ``/metrics``, ``/docs``)
falls through to FastAPI. Each forked API server builds its own router on its first ASGI call (the
lifespan), and connects to the workers before it accepts requests.

What is served changes while serving (loads, reloads, unloads): the router follows the main process's
serving table (:mod:`service.pool.table`), checked with one shared-memory read per request and every
100 ms, and rebuilds its paths when it moved (:class:`~service.http.route_table.RouteTable`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.grpc.endpoint import GrpcEndpoint
from service.http import v2
from service.http.admission import DrainSwitch
from service.http.asgi import send_response
from service.http.errors import request_id_of, send_error
from service.http.inference import RequestCounter
from service.http.repository_routes import RepositoryRoutes, RepositorySettings
from service.http.route_table import RouteTable, ServerSettings
from service.http.v2 import Handler
from service.http.worker_client import RECONNECT_INTERVAL_S
from service.pool.shared import SharedSlots
from service.tracing.settings import TracingSettings
from service.worker_states import WorkerState

logger = logging.getLogger(__name__)
UNKNOWN_MODEL = "unknown"  # the model label of predictions for models that are not served


def hookserve_version() -> str:
    try:
        return version("hookserve")
    except PackageNotFoundError:
        return "unknown"


@dataclass(frozen=True)
class ServingPlan:
    """Everything the API servers need, built in the main process before they are forked."""

    shared: SharedSlots
    server: ServerSettings
    drain: DrainSwitch
    repository: RepositorySettings
    tracing: TracingSettings | None = None
    grpc: GrpcEndpoint | None = None  # where each API server also serves V2 over gRPC; None: no gRPC


class FrontRouter:
    """ASGI app: serves inference, probes and ``/``; passes everything else to ``app`` (FastAPI)."""

    def __init__(self, app: ASGIApp, plan: ServingPlan) -> None:
        self.app = app
        self.plan = plan
        self.store = plan.shared.store
        self.states = plan.shared.states
        self.table = RouteTable(plan.shared, plan.drain, plan.server)
        self.repository = RepositoryRoutes(plan.repository, self.store, self.states)
        self.fixed: dict[str, Handler] = {
            **v2.server_routes(self.ready, hookserve_version()),
            **self.repository.table(),
            "/health": self.health,
            "/": self.index,
        }
        self.routes: dict[str, Handler] = {}
        self.refresh()
        self._unknown = RequestCounter(UNKNOWN_MODEL, "v1")
        self._maintainer: asyncio.Task | None = None
        self._grpc: Any = None  # service.grpc.server.GrpcEdge once started

    def refresh(self) -> None:
        """Route by the newest serving table, and say so to the main process. The table is adopted only
        once the routes follow it: a failure here is retried by the next request, not forgotten."""
        table = self.store.current()
        self.table.update(table)
        self.routes = {**self.table.paths, **self.fixed}
        self.store.adopt(table)
        self.store.acknowledge(table.generation)

    @property
    def served(self) -> list[str]:
        return self.table.served

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            if self.store.changed:
                self.refresh()
            path = scope["path"]
            route = self.routes.get(path)
            if route is not None:
                await route(scope, receive, send)
                return
            if self.repository.handles(path):
                await self.repository.control(scope, receive, send)
                return
            if path.startswith("/v1/models/") and path.endswith(":predict"):
                await self.unknown_model(scope, send)
                return
            if path.startswith("/v2/") or path == "/v2":
                await v2.not_found(scope, send, self.served)
                return
        elif scope["type"] == "lifespan":
            await self.app(scope, self._watch_lifespan(receive), send)
            return
        await self.app(scope, receive, send)

    def unit_states(self) -> dict[str, WorkerState]:
        """Each served model's state: ready only when every one of its versions is."""
        table = self.store.current()
        return {
            name: max((self.states.unit_state(v.unit) for v in model.versions.values()), key=_severity)
            for name, model in table.models.items()
        }

    def ready(self) -> bool:
        """Every model has a live, warmed-up worker and no drain has started."""
        states = self.unit_states()
        return not self.plan.drain.draining and all(s == WorkerState.READY for s in states.values())

    # -- probes and index
    async def health(self, scope: Scope, receive: Receive, send: Send) -> None:
        """200 only when every model has a live, warmed-up worker and no drain has started."""
        models = {name: state.name.lower() for name, state in self.unit_states().items()}
        if self.plan.drain.draining:
            status, code = "draining", 503
        elif all(state == "ready" for state in models.values()):
            status, code = "ready", 200
        else:
            status, code = "not ready", 503
        await send_response(send, code, orjson.dumps({"status": status, "models": models}))

    async def index(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = {
            "name": "hookserve",
            "status": "alive",  # what KServe's V1 client reads as liveness from GET /
            "version": hookserve_version(),
            "models": self.served,
            "links": {
                "models": "/v1/models",
                "health": "/health",
                "metrics": "/metrics",
                "docs": "/docs",
                "v2": "/v2",
            },
        }
        await send_response(send, 200, orjson.dumps(body))

    async def unknown_model(self, scope: Scope, send: Send) -> None:
        name = scope["path"].removeprefix("/v1/models/").removesuffix(":predict")
        message = f"model {name!r} is not served; served: {self.served}"
        await send_error(send, 404, message, request_id_of(scope))
        self._unknown.record(404, 0.0)

    # -- per-process start and stop
    def _watch_lifespan(self, receive: Receive) -> Receive:
        async def watched() -> Message:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await self._start()
            elif message["type"] == "lifespan.shutdown":
                await self._stop()
            return message

        return watched

    async def _start(self) -> None:
        if self.plan.server.nice:
            os.nice(self.plan.server.nice)  # this API server only (after the fork)
        request_tracer = None
        if self.plan.tracing is not None:  # a tracer per API server, built after the fork
            from service.tracing.provider import start_tracer
            from service.tracing.request_spans import RequestTracer

            tracer, _ = start_tracer(self.plan.tracing, role=f"api-server {os.getpid()}")
            settings = self.plan.tracing
            request_tracer = RequestTracer(tracer, settings.sample_ratio, settings.follow_parent)
            for routes in self.table.versions.values():
                for route in routes.routes:
                    route.tracer = request_tracer
        self.table.on_new_route = lambda route: setattr(route, "tracer", request_tracer)
        for pool in self.table.pools.values():
            await pool.connect_missing()
        self._maintainer = asyncio.create_task(self._maintain(), name="routes-and-links")
        if self.plan.grpc is not None:
            from service.grpc.repository import RepositoryMethods
            from service.grpc.server import start_grpc  # grpc loads after the fork, in API servers only

            server = self.plan.server
            repository = RepositoryMethods(self.plan.repository, self.store, self.states)
            self._grpc = await start_grpc(
                self.plan.grpc, self.table, self.states.unit_ready, self.ready, hookserve_version(),
                server.api_key, server.max_body_bytes, repository, request_tracer,
            )  # fmt: skip

    async def _stop(self) -> None:
        if self._grpc is not None:
            await self._grpc.stop()
        if self._maintainer is not None:
            self._maintainer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._maintainer
        for pool in self.table.pools.values():
            pool.close()

    async def _maintain(self) -> None:
        """Forever: follow the serving table (an idle server too), and connect to workers as they
        become ready (at start-up, after a restart, after a load)."""
        while True:
            try:
                if self.store.changed:
                    self.refresh()
                for pool in list(self.table.pools.values()):
                    await pool.connect_missing()
            except Exception:  # a bug: logged, and the next round tries again (this task must not end)
                logger.exception("following the serving table failed")
            await asyncio.sleep(RECONNECT_INTERVAL_S)


_ORDER = [WorkerState.READY, WorkerState.STARTING, WorkerState.DOWN, WorkerState.STOPPED, WorkerState.FAILED]


def _severity(state: WorkerState) -> int:
    return _ORDER.index(state)
