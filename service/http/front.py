"""The outermost layer of every API server: hookserve's own routes first, then the FastAPI app.

Inference (V1 predict, every Open Inference Protocol V2 path), ``/health`` and ``/`` are answered here,
in plain ASGI, without FastAPI's middleware, routing, dependency injection and validation: they are the
hot path and the probes. Everything else (V1 metadata, ``/metrics``, ``/docs``) falls through to
FastAPI. Each forked API server builds its own router on its first ASGI call (the lifespan), and
connects to the workers before it accepts requests.
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
from service.http.admission import AdmissionGate, DrainSwitch
from service.http.asgi import send_response
from service.http.errors import request_id_of, send_error
from service.http.inference import InferenceRoute, RequestCounter, RouteSettings
from service.http.predict import PredictRoute, predict_path
from service.http.repository_routes import RepositoryRoutes, RepositorySettings
from service.http.v2 import Handler, V2InferRoute
from service.http.worker_client import ModelWorkers, keep_connected
from service.tracing.settings import TracingSettings
from service.worker_states import WorkerStates

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

    routes: list[RouteSettings]
    gates: dict[str, AdmissionGate]
    drain: DrainSwitch
    states: WorkerStates
    repository: RepositorySettings
    tracing: TracingSettings | None = None
    grpc: GrpcEndpoint | None = None  # where each API server also serves V2 over gRPC; None: no gRPC


class FrontRouter:
    """ASGI app: serves inference, probes and ``/``; passes everything else to ``app`` (FastAPI)."""

    def __init__(self, app: ASGIApp, plan: ServingPlan) -> None:
        self.app = app
        self.plan = plan
        self.pools = {s.model: ModelWorkers(s.model, plan.states) for s in plan.routes}
        self.served = sorted(self.pools)

        def route(kind: type[InferenceRoute], s: RouteSettings) -> InferenceRoute:
            return kind(s, self.pools[s.model], plan.gates[s.model], plan.drain)

        v2_infer = {s.model: route(V2InferRoute, s) for s in plan.routes}
        predict = {predict_path(s.model): route(PredictRoute, s) for s in plan.routes}
        self.inference_routes = [*v2_infer.values(), *predict.values()]
        self.routes: dict[str, Handler] = {
            **predict,
            **v2.routes(plan.routes, v2_infer, plan.states.model_ready, self.ready, hookserve_version()),
            **RepositoryRoutes(plan.repository, plan.states).table(),  # Triton's /v2/repository/...
            "/health": self.health,
            "/": self.index,
        }
        self._unknown = RequestCounter(UNKNOWN_MODEL, "v1")
        self._connector: asyncio.Task | None = None
        self._grpc: Any = None  # service.grpc.server.GrpcEdge once started

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path = scope["path"]
            route = self.routes.get(path)
            if route is not None:
                await route(scope, receive, send)
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

    def ready(self) -> bool:
        """Every model has a live, warmed-up worker and no drain has started."""
        return not self.plan.drain.draining and self.plan.states.all_ready()

    # -- probes and index
    async def health(self, scope: Scope, receive: Receive, send: Send) -> None:
        """200 only when every model has a live, warmed-up worker and no drain has started."""
        states = self.plan.states
        models = {name: states.model_state(name).name.lower() for name in self.pools}
        if self.plan.drain.draining:
            status, code = "draining", 503
        elif states.all_ready():
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
        request_tracer = None
        if self.plan.tracing is not None:  # a tracer per API server, built after the fork
            from service.tracing.provider import start_tracer
            from service.tracing.request_spans import RequestTracer

            tracer, _ = start_tracer(self.plan.tracing, role=f"api-server {os.getpid()}")
            settings = self.plan.tracing
            request_tracer = RequestTracer(tracer, settings.sample_ratio, settings.follow_parent)
            for route in self.inference_routes:
                route.tracer = request_tracer
        for pool in self.pools.values():
            await pool.connect_missing()
        self._connector = asyncio.create_task(keep_connected(self.pools.values()), name="worker-links")
        if self.plan.grpc is not None:
            from service.grpc.server import start_grpc  # grpc loads after the fork, in API servers only

            plan = self.plan
            self._grpc = await start_grpc(
                plan.grpc, plan.routes, self.pools, plan.gates, plan.drain, self.ready,
                plan.states.model_ready, hookserve_version(), request_tracer,
            )  # fmt: skip

    async def _stop(self) -> None:
        if self._grpc is not None:
            await self._grpc.stop()
        if self._connector is not None:
            self._connector.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._connector
        for pool in self.pools.values():
            pool.close()
