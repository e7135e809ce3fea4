"""Assemble the server: one worker API per model, the API servers' router and routes, the supervisor.

Built in the main process before anything forks; the API servers inherit it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from service.config import HookserveConfig
from service.grpc.endpoint import GrpcEndpoint, check_port_free
from service.http.admission import REASONS, AdmissionGate, DrainSwitch
from service.http.errors import install_error_handlers
from service.http.front import FrontRouter, ServingPlan
from service.http.inference import RouteSettings
from service.http.middleware import BodySizeLimitMiddleware
from service.http.openapi import document_predict_routes
from service.http.repository_routes import RepositorySettings
from service.http.routes import ServedModels, add_routes
from service.litserve_compat import CompatLitServer
from service.model_loading import describe_model
from service.monitoring.metrics import REJECTED, WORKERS_READY
from service.repository import ModelRepository, catalog, mirror_candidate
from service.scheduling.board import CostBoard
from service.supervisor import Supervisor
from service.tracing.settings import resolve as resolve_tracing
from service.worker.runtime import check_device_request
from service.worker.worker import ModelWorker
from service.worker_states import WorkerStates

logger = logging.getLogger(__name__)


@dataclass
class Server:
    """The assembled server and the handles the command line needs to run and stop it."""

    litserver: CompatLitServer
    plan: ServingPlan
    supervisor: Supervisor


def build_server(config: HookserveConfig, repository: ModelRepository | None = None) -> Server:
    """Everything validated: a bad model, checkpoint or device fails here, before any process starts.

    ``config.models`` are the models served from start (``repository.resolve_models`` adds the
    repository's); ``repository`` is what ``/v2/repository/index`` lists besides them.
    """
    api_key = config.server.auth.api_key()
    states = WorkerStates({m.name: m.workers for m in config.models})
    tracing = resolve_tracing(config.server.tracing)
    costs = CostBoard({m.name: m.workers for m in config.models})  # learned by workers, read at the door
    workers, routes, gates, descriptions = [], [], {}, {}
    for model_cfg in config.models:
        check_device_request(model_cfg.device)
        description = describe_model(model_cfg)
        descriptions[model_cfg.name] = description
        routes.append(
            RouteSettings(
                model=model_cfg.name,
                version=model_cfg.version,
                input_spec=description.input_spec,
                output_spec=description.output_spec,
                max_instances=model_cfg.max_instances_per_request,
                request_timeout_s=config.server.request_timeout_s,
                max_body_bytes=config.server.max_payload_bytes,
                api_key=api_key.encode() if api_key else None,
                priority_levels=model_cfg.priority_levels,
                default_priority=model_cfg.default_priority or model_cfg.priority_levels,
            )
        )
        target_ms = model_cfg.latency_target_ms
        gates[model_cfg.name] = AdmissionGate(
            model_cfg.max_queued_requests,
            model_cfg.name,
            latency_target_s=None if target_ms is None else target_ms / 1000.0,
            costs=costs.costs(model_cfg.name),
            max_batch_size=model_cfg.max_batch_size,
            priority_levels=model_cfg.priority_levels,
        )
        candidate = mirror_candidate(repository.models.get(model_cfg.name) if repository else None, model_cfg)
        workers.append(ModelWorker(model_cfg, states, costs, tracing, mirror_candidate=candidate))
        for reason in REASONS:  # exported at 0, so increase() sees the first one
            REJECTED.labels(model_cfg.name, reason)
        WORKERS_READY.labels(model_cfg.name).set(0)  # the main process's 0 keeps the series when none is

    grpc = None
    if config.server.grpc_port is not None:
        grpc = GrpcEndpoint(config.server.host, config.server.grpc_port)
        check_port_free(grpc)  # before the API servers bind it with SO_REUSEPORT
    admin_key = config.server.auth.admin_key()
    repository_settings = RepositorySettings(
        catalog=catalog(config, repository),
        model_control=config.server.model_control,
        admin_key=admin_key.encode() if admin_key else None,
        api_key=api_key.encode() if api_key else None,
        max_body_bytes=config.server.max_payload_bytes,
    )
    plan = ServingPlan(
        routes=routes,
        gates=gates,
        drain=DrainSwitch(),
        states=states,
        repository=repository_settings,
        tracing=tracing,
        grpc=grpc,
    )
    litserver = CompatLitServer(
        [(worker, worker.config.route) for worker in workers],
        accelerator="cpu",  # each ModelWorker places itself on its configured device
        devices=1,
        workers_per_device={m.route: m.workers for m in config.models},
        timeout=False,  # deadlines are hookserve's (server.request_timeout_s)
        max_payload_size=None,  # the router answers 413 itself
        middlewares=[(BodySizeLimitMiddleware, {"max_bytes": config.server.max_payload_bytes})],
        on_serving=lambda: _start_supervising(litserver, supervisor, workers),
    )
    litserver.serve_first(lambda fastapi_app: FrontRouter(fastapi_app, plan))
    supervisor = Supervisor(
        states,
        config.server.worker_restarts,
        relaunch_worker=litserver.relaunch_worker,
        api_server_policy=config.server.api_server_restarts,
        relaunch_api_server=litserver.relaunch_api_server,
        on_fatal=lambda reason: _stop_for_restart(litserver, plan),
        draining=lambda: plan.drain.draining,
    )
    add_routes(litserver.app, ServedModels(config, descriptions, states), config, gates)
    document_predict_routes(litserver.app, routes)
    install_error_handlers(litserver.app)
    return Server(litserver, plan, supervisor)


def _start_supervising(
    litserver: CompatLitServer, supervisor: Supervisor, workers: list[ModelWorker]
) -> None:
    """Map each worker process LitServe started to its model and worker id, then watch them all."""
    by_pid = {}
    for served in workers:
        for worker in supervisor.states.workers(served.model_name):
            by_pid[supervisor.states.pid(served.model_name, worker)] = (served, worker)
    for process in litserver.worker_processes():
        served, worker = by_pid[process.pid]
        supervisor.watch_worker(served.model_name, worker, served, process)
    for index, process in litserver.api_server_processes().items():
        supervisor.watch_api_server(index, process)
    supervisor.start()
    api_pids = ", ".join(str(pid) for pid in supervisor.pids("API server").values())
    logger.info("supervising %d inference worker(s) and API servers (pids %s)", len(by_pid), api_pids)


def _stop_for_restart(litserver: CompatLitServer, plan: ServingPlan) -> None:
    """API servers cannot be kept alive: refuse new requests and end run(); the command exits non-zero."""
    plan.drain.start()
    litserver.request_stop()

