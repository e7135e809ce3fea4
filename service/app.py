"""Assemble the server: shared slots, the worker pool and model manager, the API servers' router and
routes, the supervisor.

Built in the main process before anything forks; the API servers inherit it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from service.config import HookserveConfig, ModelServeConfig
from service.grpc.endpoint import GrpcEndpoint, check_port_free
from service.http.admission import REASONS, DrainSwitch
from service.http.errors import install_error_handlers
from service.http.front import FrontRouter, ServingPlan
from service.http.inference import RouteSettings
from service.http.middleware import BodySizeLimitMiddleware
from service.http.openapi import document_predict_routes
from service.http.repository_routes import RepositorySettings
from service.http.route_table import ServerSettings, route_settings
from service.http.routes import ServedModels, add_routes
from service.litserve_compat import CompatLitServer
from service.monitoring.metrics import MODEL_LOAD_FAILURES, REJECTED, WORKERS_READY
from service.pool.control import ControlServer
from service.pool.manager import ModelManager
from service.pool.shared import SharedSlots
from service.pool.table import ServingTable
from service.pool.workers import WorkerPool
from service.repository import ModelPlan, ModelRepository
from service.supervisor import Supervisor
from service.tracing.settings import resolve as resolve_tracing
from service.worker.runtime import check_device_request
from service.worker.worker import ModelWorker

logger = logging.getLogger(__name__)


@dataclass
class Server:
    """The assembled server and the handles the command line needs to run and stop it."""

    litserver: CompatLitServer
    plan: ServingPlan
    supervisor: Supervisor
    manager: ModelManager


def build_server(
    config: HookserveConfig, plans: list[ModelPlan], repository: ModelRepository | None = None
) -> Server:
    """Everything validated: a bad model, checkpoint or device fails here, before any process starts.

    ``plans`` are the models served from start (``repository.startup_plans``); ``repository`` is where
    later loads read from.
    """
    server_cfg = config.server
    api_key = server_cfg.auth.api_key()
    shared = SharedSlots(server_cfg.max_units)
    tracing = resolve_tracing(server_cfg.tracing)
    for plan in plans:
        for model_cfg in plan.versions.values():
            check_device_request(model_cfg.device)
        for reason in REASONS:  # exported at 0, so increase() sees the first one
            REJECTED.labels(plan.name, reason)
        WORKERS_READY.labels(plan.name).set(0)  # the main process's 0 keeps the series when none is
        if plan.in_repository:
            MODEL_LOAD_FAILURES.labels(plan.name)

    def make_worker(model_cfg: ModelServeConfig, unit: int, mirror: ModelServeConfig | None) -> ModelWorker:
        states, costs = shared.states, shared.costs
        return ModelWorker(model_cfg, states, costs, tracing, unit=unit, mirror_candidate=mirror)

    pool = WorkerPool(shared.states)
    manager = ModelManager(server_cfg, repository, shared, pool, make_worker)
    grpc = None
    if server_cfg.grpc_port is not None:
        grpc = GrpcEndpoint(server_cfg.host, server_cfg.grpc_port)
        check_port_free(grpc)  # before the API servers bind it with SO_REUSEPORT
    admin_key = server_cfg.auth.admin_key()
    server_settings = ServerSettings(
        request_timeout_s=server_cfg.request_timeout_s,
        max_body_bytes=server_cfg.max_payload_bytes,
        api_key=api_key.encode() if api_key else None,
        nice=server_cfg.api_server_nice,
    )
    plan = ServingPlan(
        shared=shared,
        server=server_settings,
        drain=DrainSwitch(),
        repository=RepositorySettings(
            model_control=server_cfg.model_control,
            admin_key=admin_key.encode() if admin_key else None,
            api_key=server_settings.api_key,
            max_body_bytes=server_cfg.max_payload_bytes,
        ),
        tracing=tracing,
        grpc=grpc,
    )
    litserver = CompatLitServer(
        launch_workers=lambda processes: _start_models(manager, pool, processes),
        on_serving=lambda: _start_supervising(litserver, supervisor, manager),
        timeout=False,  # deadlines are hookserve's (server.request_timeout_s)
        max_payload_size=None,  # the router answers 413 itself
        middlewares=[(BodySizeLimitMiddleware, {"max_bytes": server_cfg.max_payload_bytes})],
    )
    litserver.serve_first(lambda fastapi_app: FrontRouter(fastapi_app, plan))
    supervisor = Supervisor(
        shared.states,
        server_cfg.worker_restarts,
        relaunch_worker=pool.relaunch,
        api_server_policy=server_cfg.api_server_restarts,
        relaunch_api_server=litserver.relaunch_api_server,
        on_fatal=lambda reason: _stop_for_restart(litserver, plan),
        draining=lambda: plan.drain.draining,
    )
    pool.on_ready = lambda served, worker, process: supervisor.watch_worker(
        served.model_name, served.unit, worker, served, process
    )
    pool.on_stopping = supervisor.unwatch
    manager.api_server_pids = lambda: supervisor.pids("API server").values()
    manager.prepare(plans)
    add_routes(litserver.app, ServedModels(server_cfg, shared), server_cfg)
    document_predict_routes(litserver.app, lambda: _default_routes(shared.store.current(), server_settings))
    install_error_handlers(litserver.app)
    return Server(litserver, plan, supervisor, manager)


def _default_routes(table: ServingTable, server: ServerSettings) -> tuple[int, list[RouteSettings]]:
    """The served models' default versions, for /openapi.json, with the table's generation."""
    models = table.models.values()
    return table.generation, [route_settings(m.versions[m.default_version], server) for m in models]


def _start_models(manager: ModelManager, pool: WorkerPool, processes: list) -> None:
    """LitServe's moment to start workers: the manager starts every start-up version and waits for
    them; the pool keeps its processes in ``processes`` (LitServe's list, which its shutdown stops)."""
    pool.processes = processes
    manager.launch()


def _start_supervising(litserver: CompatLitServer, supervisor: Supervisor, manager: ModelManager) -> None:
    """Watch the API servers LitServe forked (workers are watched since they became ready), then take
    control calls (loads and unloads)."""
    for index, process in litserver.api_server_processes().items():
        supervisor.watch_api_server(index, process)
    supervisor.start()
    ControlServer(manager).start()
    api_pids = ", ".join(str(pid) for pid in supervisor.pids("API server").values())
    workers = len(supervisor.pids()) - len(supervisor.pids("API server"))
    logger.info("supervising %d inference worker(s) and API servers (pids %s)", workers, api_pids)


def _stop_for_restart(litserver: CompatLitServer, plan: ServingPlan) -> None:
    """API servers cannot be kept alive: refuse new requests and end run(); the command exits non-zero."""
    plan.drain.start()
    litserver.request_stop()
