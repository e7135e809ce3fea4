"""The FastAPI routes: model list and metadata, and ``/metrics``. Not on the hot path.

Auth is a FastAPI dependency here (it also documents the bearer scheme in ``/openapi.json``).
"""

from __future__ import annotations

from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Response

from service.config import ServerConfig
from service.http.auth import make_auth_dependency
from service.http.predict import predict_path
from service.monitoring.metrics import INFLIGHT, render_latest
from service.pool.shared import SharedSlots
from service.worker_states import read_reports

METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class ServedModels:
    """What the API servers know about each served model, from the current serving table."""

    def __init__(self, server: ServerConfig, shared: SharedSlots) -> None:
        self.server = server
        self.store = shared.store
        self.states = shared.states
        self.shared_gates = shared.gates

    def summary(self) -> list[dict[str, Any]]:
        table = self.store.current()
        return [
            {
                "name": model.name,
                "version": model.default_version,
                "versions": model.sorted_versions(),
                "ready": self.states.unit_ready(model.versions[model.default_version].unit),
                "predict": predict_path(model.name),
                "metadata": f"/v1/models/{model.name}",
            }
            for model in sorted(table.models.values(), key=lambda m: m.name)
        ]

    def metadata(self, name: str, version: str | None = None) -> dict[str, Any]:
        table = self.store.current()
        model = table.models.get(name)
        if model is None:
            raise HTTPException(404, f"model {name!r} is not served; served: {sorted(table.models)}")
        served = model.versions.get(version or model.default_version)
        if served is None:
            raise HTTPException(
                404, f"model {name!r} has no version {version!r}; it serves {model.sorted_versions()}"
            )
        cfg, unit = served.config, served.unit
        reports = read_reports(unit, cfg.workers)
        first = reports[0] if reports else {}
        return {
            "name": name,
            "version": cfg.version,
            "versions": model.sorted_versions(),
            "default_version": model.default_version,
            "traffic": model.traffic,
            "ready": self.states.unit_ready(unit),
            "state": self.states.unit_state(unit).name.lower(),
            "source": cfg.model_source,
            **served.description.to_dict(),
            "device": first.get("device", cfg.device),
            "precision": cfg.precision,
            "batching": {
                "max_batch_size": cfg.max_batch_size,
                "batch_timeout_ms": cfg.batch_timeout_ms,
                "max_instances_per_request": cfg.max_instances_per_request,
                "max_queued_requests": cfg.max_queued_requests,
                "workers": cfg.workers,
            },
            "request_timeout_s": self.server.request_timeout_s,
            "precision_check": first.get("precision_check"),
            "monitoring": {"enabled": cfg.monitoring.enabled, "modules": first.get("monitored_modules", [])},
            "workers": [
                {**report, "state": self.states.get(unit, report["worker"]).name.lower()}
                for report in reports
                if "error" not in report
            ],
        }


def add_routes(app: FastAPI, models: ServedModels, server: ServerConfig) -> None:
    auth = make_auth_dependency(server.auth.api_key())
    protect_metrics = [Depends(auth)] if server.auth.protect_metrics else []

    @app.get("/v1/models", dependencies=[Depends(auth)], tags=["models"])
    async def list_models() -> dict[str, Any]:
        return {"models": models.summary()}

    @app.get("/v1/models/{name}", dependencies=[Depends(auth)], tags=["models"])
    async def model_metadata(name: str) -> dict[str, Any]:
        return models.metadata(name)

    @app.get("/v1/models/{name}/versions/{version}", dependencies=[Depends(auth)], tags=["models"])
    async def version_metadata(name: str, version: str) -> dict[str, Any]:
        return models.metadata(name, version)

    @app.get("/metrics", dependencies=protect_metrics, include_in_schema=False)
    async def metrics() -> Response:
        for model in models.store.current().models.values():  # read at scrape time, not per request
            for served in model.versions.values():
                INFLIGHT.labels(model.name, served.version).set(models.shared_gates[served.unit].in_flight)
        return Response(render_latest(), media_type=METRICS_CONTENT_TYPE)
