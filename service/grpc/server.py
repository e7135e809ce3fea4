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
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from service.grpc.endpoint import GrpcEndpoint
from service.grpc.proto import grpc_predict_v2_pb2_grpc as pb_grpc
from service.grpc.service import SERVICE_NAME, GrpcModel, InferenceService, repository_index_handler
from service.http.admission import AdmissionGate, DrainSwitch
from service.http.inference import InferencePipeline, RouteSettings
from service.http.worker_client import ModelWorkers

if TYPE_CHECKING:
    from service.tracing.request_spans import RequestTracer

logger = logging.getLogger(__name__)
HEALTH_REFRESH_S = 0.5  # how often Watch subscribers learn of a change (Check always reads it fresh)
STOP_GRACE_S = 2.0  # in-flight calls have had the drain's grace already; this is for the last ones
SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING


class ReadinessHealth(health.aio.HealthServicer):
    """``grpc.health.v1`` reading hookserve's readiness, fresh on every Check."""

    def __init__(
        self, server_ready: Callable[[], bool], model_ready: Callable[[str], bool], models: list[str]
    ) -> None:
        super().__init__()
        self.server_ready = server_ready
        self.model_ready = model_ready
        self.models = models

    async def refresh(self) -> None:
        server = SERVING if self.server_ready() else NOT_SERVING
        await self.set("", server)
        await self.set(SERVICE_NAME, server)
        for model in self.models:
            await self.set(model, SERVING if self.model_ready(model) else NOT_SERVING)

    async def Check(self, request: health_pb2.HealthCheckRequest, context) -> health_pb2.HealthCheckResponse:
        await self.refresh()
        return await super().Check(request, context)

    async def keep_fresh(self) -> None:
        while True:
            await self.refresh()
            await asyncio.sleep(HEALTH_REFRESH_S)


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
    routes: list[RouteSettings],
    pools: Mapping[str, ModelWorkers],
    gates: Mapping[str, AdmissionGate],
    drain: DrainSwitch,
    server_ready: Callable[[], bool],
    model_ready: Callable[[str], bool],
    version: str,
    tracer: RequestTracer | None = None,
) -> GrpcEdge:
    """Serve gRPC on ``endpoint`` from this process's event loop, beside its HTTP routes."""
    models = {
        s.model: GrpcModel.build(s, InferencePipeline(s, pools[s.model], gates[s.model], drain))
        for s in routes
    }
    api_key = routes[0].api_key if routes else None
    max_message = max((s.max_body_bytes for s in routes), default=4 * 1024 * 1024)
    server = grpc.aio.server(
        options=[
            ("grpc.so_reuseport", 1),  # every API server binds the port (grpc's default on Linux; said here)
            ("grpc.max_receive_message_length", max_message),  # larger: RESOURCE_EXHAUSTED, like REST's 413
        ]
    )
    service = InferenceService(models, model_ready, server_ready, version, api_key)
    service.tracer = tracer
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(service, server)
    server.add_generic_rpc_handlers((repository_index_handler(),))
    readiness = ReadinessHealth(server_ready, model_ready, sorted(models))
    health_pb2_grpc.add_HealthServicer_to_server(readiness, server)
    server.add_insecure_port(endpoint.address)  # raises RuntimeError when it cannot bind
    await server.start()
    refresher = asyncio.create_task(readiness.keep_fresh(), name="grpc-health")
    loop = type(asyncio.get_running_loop())
    logger.debug("gRPC on %s (event loop %s.%s)", endpoint.address, loop.__module__, loop.__name__)
    return GrpcEdge(server, readiness, refresher)
