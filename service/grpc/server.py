"""The gRPC server of one API-server process: started and stopped with its HTTP side (FrontRouter's lifespan).

It runs on the API server's own event loop (uvicorn's: uvloop when installed; ``grpc.aio`` works on
it), so gRPC requests use the process's worker links, admission gates and drain switch directly. Every
API server binds the same port with ``SO_REUSEPORT`` and the kernel spreads connections over them.
``grpc.health.v1`` answers SERVING for the server (``""`` and ``inference.GRPCInferenceService``)
when every model is ready and no drain has started, and for each model name when that model is ready.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from service.grpc.endpoint import GrpcEndpoint
from service.grpc.proto import grpc_predict_v2_pb2_grpc as pb_grpc
from service.grpc.repository import RepositoryMethods
from service.grpc.service import SERVICE_NAME, InferenceService, inference_handlers

if TYPE_CHECKING:
    from service.http.route_table import RouteTable
    from service.tracing.request_spans import RequestTracer

logger = logging.getLogger(__name__)
HEALTH_REFRESH_S = 0.5  # how often Watch subscribers learn of a change (Check always reads it fresh)
STOP_GRACE_S = 2.0  # in-flight calls have had the drain's grace already; this is for the last ones
SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING


class ReadinessHealth(health.aio.HealthServicer):
    """``grpc.health.v1`` reading hookserve's readiness, fresh on every Check."""

    def __init__(
        self, server_ready: Callable[[], bool], routes: RouteTable, unit_ready: Callable[[int], bool]
    ) -> None:
        super().__init__()
        self.server_ready = server_ready
        self.routes = routes
        self.unit_ready = unit_ready

    async def refresh(self) -> None:
        server = SERVING if self.server_ready() else NOT_SERVING
        await self.set("", server)
        await self.set(SERVICE_NAME, server)
        for name, model in list(self.routes.models.items()):  # a model: ready when its default version is
            routes = self.routes.versions.get((name, model.default_version))
            ready = routes is not None and self.unit_ready(routes.unit)
            await self.set(name, SERVING if ready else NOT_SERVING)

    async def Check(self, request: health_pb2.HealthCheckRequest, context) -> health_pb2.HealthCheckResponse:
        await self.refresh()
        return await super().Check(request, context)

    async def keep_fresh(self) -> None:
        while True:
            await self.refresh()
            await asyncio.sleep(HEALTH_REFRESH_S)


class _HandlerCapture:
    """Stands in for a server to collect the generated code's method handlers for the V2 servicer."""

    def __init__(self) -> None:
        self.handlers: dict[str, grpc.RpcMethodHandler] = {}

    def add_generic_rpc_handlers(self, handlers: tuple) -> None:
        pass

    def add_registered_method_handlers(self, service: str, handlers: dict) -> None:
        self.handlers.update(handlers)


def servicer_handlers(service: InferenceService) -> dict[str, grpc.RpcMethodHandler]:
    capture = _HandlerCapture()
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(service, capture)
    return capture.handlers


class GrpcEdge:
    """A started ``grpc.aio`` server and its health refresher; :meth:`stop` ends both."""

    def __init__(self, server: grpc.aio.Server, health: ReadinessHealth, refresher: asyncio.Task) -> None:
        self.server = server
        self.health = health
        self.refresher = refresher

    async def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        await self.health.enter_graceful_shutdown()
        self.refresher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.refresher
        await self.server.stop(grace_s)


async def start_grpc(
    endpoint: GrpcEndpoint,
    routes: RouteTable,
    unit_ready: Callable[[int], bool],
    server_ready: Callable[[], bool],
    version: str,
    api_key: bytes | None,
    max_message: int,
    repository: RepositoryMethods,
    tracer: RequestTracer | None = None,
) -> GrpcEdge:
    """Serve gRPC on ``endpoint`` from this process's event loop, beside its HTTP routes (``routes``, the
    router's, kept current with the serving table)."""
    server = grpc.aio.server(
        options=[
            ("grpc.so_reuseport", 1),  # every API server binds the port (grpc's default on Linux; said here)
            ("grpc.max_receive_message_length", max_message),  # larger: RESOURCE_EXHAUSTED, like REST's 413
        ]
    )
    service = InferenceService(routes, unit_ready, server_ready, version, api_key)
    service.tracer = tracer
    handlers = {
        **servicer_handlers(service),
        **inference_handlers(service),
        **repository.method_handlers(),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)
    readiness = ReadinessHealth(server_ready, routes, unit_ready)
    health_pb2_grpc.add_HealthServicer_to_server(readiness, server)
    server.add_insecure_port(endpoint.address)  # raises RuntimeError when it cannot bind
    await server.start()
    refresher = asyncio.create_task(readiness.keep_fresh(), name="grpc-health")
    loop = type(asyncio.get_running_loop())
    logger.debug("gRPC on %s (event loop %s.%s)", endpoint.address, loop.__module__, loop.__name__)
    return GrpcEdge(server, readiness, refresher)
