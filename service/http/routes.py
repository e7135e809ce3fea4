"""The FastAPI routes: model list and metadata, and ``/metrics``. Not on the hot path.

Auth is a FastAPI dependency here (it also documents the bearer scheme in ``/openapi.json``).
"""

from __future__ import annotations

from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Response

from service.config import HookserveConfig
from service.http.admission import AdmissionGate
from service.http.auth import make_auth_dependency
from service.http.predict import predict_path
from service.model_loading import ModelDescription
from service.monitoring.metrics import INFLIGHT, render_latest
from service.worker_states import WorkerStates, read_reports

METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class ServedModels:
    """What the API servers know about each model, for the metadata routes."""

    def __init__(
        self, config: HookserveConfig, descriptions: dict[str, ModelDescription], states: WorkerStates
    ) -> None:
        self.config = config
        self.descriptions = descriptions
        self.states = states

    def summary(self) -> list[dict[str, Any]]:
        return [
            {
                "name": m.name,
                "version": m.version,
                "ready": self.states.model_ready(m.name),
                "predict": predict_path(m.name),
                "metadata": f"/v1/models/{m.name}",
            }
            for m in self.config.models
        ]

    def metadata(self, name: str) -> dict[str, Any]:
        if name not in self.descriptions:
            raise HTTPException(404, f"model {name!r} is not served; served: {sorted(self.descriptions)}")
        cfg = self.config.model(name)
        reports = read_reports(name, cfg.workers)
        first = reports[0] if reports else {}
        return {
            "name": name,
            "version": cfg.version,
            "ready": self.states.model_ready(name),
            "state": self.states.model_state(name).name.lower(),
            "source": cfg.model_source,
            **self.descriptions[name].to_dict(),
            "device": first.get("device", cfg.device),
            "precision": cfg.precision,
            "batching": {
                "max_batch_size": cfg.max_batch_size,
                "batch_timeout_ms": cfg.batch_timeout_ms,
                "max_instances_per_request": cfg.max_instances_per_request,
                "max_queued_requests": cfg.max_queued_requests,
                "workers": cfg.workers,
            },
            "request_timeout_s": self.config.server.request_timeout_s,
            "precision_check": first.get("precision_check"),
            "monitoring": {"enabled": cfg.monitoring.enabled, "modules": first.get("monitored_modules", [])},
            "workers": [
                {**report, "state": self.states.get(name, report["worker"]).name.lower()}
                for report in reports
            ],
        }


def add_routes(
    app: FastAPI, models: ServedModels, config: HookserveConfig, gates: dict[str, AdmissionGate]
) -> None:
    auth = make_auth_dependency(config.server.auth.api_key())
    protect_metrics = [Depends(auth)] if config.server.auth.protect_metrics else []

    @app.get("/v1/models", dependencies=[Depends(auth)], tags=["models"])
    async def list_models() -> dict[str, Any]:
        return {"models": models.summary()}

    @app.get("/v1/models/{name}", dependencies=[Depends(auth)], tags=["models"])
    async def model_metadata(name: str) -> dict[str, Any]:
        return models.metadata(name)

    @app.get("/metrics", dependencies=protect_metrics, include_in_schema=False)
    async def metrics() -> Response:
        for name, gate in gates.items():  # read at scrape time: no per-request gauge writes
            INFLIGHT.labels(name).set(gate.in_flight)
        return Response(render_latest(), media_type=METRICS_CONTENT_TYPE)
