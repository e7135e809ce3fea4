"""Assemble the LitServer: one ModelAPI + PredictSpec per model, plus the routes LitServe lacks.

Built in the main process before anything forks; the API servers inherit it.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import time
from typing import Any

import litserve as ls
from fastapi import Depends, FastAPI, HTTPException, Response
from litserve.transport.process_transport import MPQueueTransport
from litserve.utils import WorkerSetupStatus
from starlette.middleware.gzip import GZipMiddleware

from service.admission import AdmissionGate, DrainSwitch
from service.api import ModelAPI
from service.config import HookserveConfig, ModelServeConfig
from service.http.auth import make_auth_dependency
from service.http.errors import install_error_handlers
from service.http.middleware import (
    BodySizeLimitMiddleware,
    JsonContentTypeMiddleware,
    RequestMetricsMiddleware,
)
from service.model_loading import ModelDescription, describe_model
from service.monitoring.metrics import REJECTED, render_latest
from service.runtime import check_device_request, read_status
from service.spec import PredictSpec

logger = logging.getLogger(__name__)
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class HookserveServer(ls.LitServer):
    """LitServer with pipe-based queues and a stricter start-up: all workers of all models ready, or none."""

    startup_timeout_s = 600.0

    def _init_manager(self, num_api_servers: int) -> Any:
        # LitServe's queues are multiprocessing-manager proxies: every put and get is a round trip through
        # a third process. Pipe-based queues from the spawn context (so spawned workers can receive them)
        # halve the hops. The manager still holds the shared worker-status dict and the shutdown event.
        manager = super()._init_manager(num_api_servers)
        ctx = mp.get_context("spawn")
        for api_path in self.litapi_request_queues:
            self.litapi_request_queues[api_path] = ctx.Queue()
        self._transport = MPQueueTransport(manager, [ctx.Queue() for _ in range(num_api_servers)])
        return manager

    def verify_worker_status(self) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        while True:
            states = dict(self.workers_setup_status)
            failed = sorted(k for k, v in states.items() if v == WorkerSetupStatus.ERROR)
            if failed:
                raise RuntimeError(
                    f"worker(s) failed to start: {', '.join(failed)} (the cause is logged above)"
                )
            if states and all(v == WorkerSetupStatus.READY for v in states.values()):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"workers not ready after {self.startup_timeout_s:.0f} s: {states}")
            time.sleep(0.05)


class ServedModels:
    """What the API servers know about each model, for the metadata routes."""

    def __init__(self, config: HookserveConfig, descriptions: dict[str, ModelDescription]) -> None:
        self.config = config
        self.descriptions = descriptions

    def summary(self) -> list[dict[str, Any]]:
        return [
            {"name": m.name, "version": m.version, "predict": m.route, "metadata": f"/v1/models/{m.name}"}
            for m in self.config.models
        ]

    def metadata(self, name: str) -> dict[str, Any]:
        if name not in self.descriptions:
            raise HTTPException(404, f"model {name!r} is not served; served: {sorted(self.descriptions)}")
        cfg: ModelServeConfig = self.config.model(name)
        workers = read_status(name)
        return {
            "name": name,
            "version": cfg.version,
            "source": cfg.model_source,
            **self.descriptions[name].to_dict(),
            "device": workers[0]["device"] if workers else cfg.device,
            "precision": cfg.precision,
            "batching": {
                "max_batch_size": cfg.max_batch_size,
                "batch_timeout_ms": cfg.batch_timeout_ms,
                "max_instances_per_request": cfg.max_instances_per_request,
                "max_queued_requests": cfg.max_queued_requests,
                "workers": cfg.workers,
            },
            "request_timeout_s": self.config.server.request_timeout_s,
            "precision_check": workers[0]["precision_check"] if workers else None,
            "monitoring": {
                "enabled": cfg.monitoring.enabled,
                "modules": workers[0]["monitored_modules"] if workers else [],
            },
            "workers": workers,
        }


def build_server(config: HookserveConfig) -> tuple[HookserveServer, DrainSwitch, list[AdmissionGate]]:
    """Everything LitServer needs, validated: a bad model, checkpoint or device fails here, before forking."""
    drain = DrainSwitch()
    auth = make_auth_dependency(config.server.auth.api_key())
    apis, gates, descriptions = [], [], {}
    for model_cfg in config.models:
        check_device_request(model_cfg.device)
        description = describe_model(model_cfg)
        descriptions[model_cfg.name] = description
        gate = AdmissionGate(model_cfg.max_queued_requests)
        spec = PredictSpec(
            model_name=model_cfg.name,
            model_version=model_cfg.version,
            input_spec=description.input_spec,
            max_instances=model_cfg.max_instances_per_request,
            request_timeout_s=config.server.request_timeout_s,
            gate=gate,
            drain=drain,
            auth_dependency=auth,
        )
        apis.append(ModelAPI(model_cfg, spec, drain))
        for reason in (
            "overload",
            "draining",
        ):  # exported at 0 from the start, so increase() sees the first one
            REJECTED.labels(model_cfg.name, reason)
        gates.append(gate)

    server = HookserveServer(
        apis,
        accelerator="cpu",  # each ModelAPI places itself on its configured device
        devices=1,
        workers_per_device={m.route: m.workers for m in config.models},
        timeout=config.server.request_timeout_s,
        max_payload_size=None,  # BodySizeLimitMiddleware below answers 413 with a JSON body
        middlewares=[
            (JsonContentTypeMiddleware, {}),
            (BodySizeLimitMiddleware, {"max_bytes": config.server.max_payload_bytes}),
            (RequestMetricsMiddleware, {"model_names": [m.name for m in config.models]}),
        ],
    )
    # LitServe gzips every response over 1 kB; prediction bodies are small and gzip costs CPU on the hot path.
    server.app.user_middleware = [m for m in server.app.user_middleware if m.cls is not GZipMiddleware]
    _add_routes(server.app, ServedModels(config, descriptions), config, auth)
    install_error_handlers(server.app)
    return server, drain, gates


def _add_routes(app: FastAPI, models: ServedModels, config: HookserveConfig, auth: Any) -> None:
    protect_metrics = [Depends(auth)] if config.server.auth.protect_metrics else []

    @app.get("/v1/models", dependencies=[Depends(auth)], tags=["models"])
    async def list_models() -> dict[str, Any]:
        return {"models": models.summary()}

    @app.get("/v1/models/{name}", dependencies=[Depends(auth)], tags=["models"])
    async def model_metadata(name: str) -> dict[str, Any]:
        return models.metadata(name)

    @app.post("/v1/models/{name}:predict", include_in_schema=False)
    async def unknown_model(name: str) -> None:
        raise HTTPException(404, f"model {name!r} is not served; served: {sorted(models.descriptions)}")

    @app.get("/metrics", dependencies=protect_metrics, include_in_schema=False)
    async def metrics() -> Response:
        return Response(render_latest(), media_type=METRICS_CONTENT_TYPE)
