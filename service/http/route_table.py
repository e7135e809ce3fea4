"""An API server's routes for what is served now, rebuilt from each new serving table.

Each served (model, version) has one V1 and one V2 inference route. They are kept across tables and
*rebound* when a reload gives their version a new unit (:meth:`InferencePipeline.bind`), so requests
already routed, still reading their bodies, are admitted by the new unit. Unversioned paths go through a
:class:`VersionPicker`: the model's default version, or its canary split (sticky by ``X-Request-ID``).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from starlette.types import Receive, Scope, Send

from service.http import v2
from service.http.admission import DrainSwitch
from service.http.asgi import header
from service.http.inference import InferenceRoute, RouteSettings
from service.http.predict import PredictRoute, predict_path, versioned_predict_path
from service.http.v2 import Handler, V2InferRoute
from service.http.worker_client import ModelWorkers
from service.pool.shared import SharedSlots
from service.pool.table import ServedModel, ServedVersion, ServingTable


@dataclass(frozen=True)
class ServerSettings:
    """The server-wide parts of every route's settings."""

    request_timeout_s: float
    max_body_bytes: int
    api_key: bytes | None
    nice: int = 0  # server.api_server_nice, applied in each API server as it starts


def route_settings(served: ServedVersion, server: ServerSettings) -> RouteSettings:
    config, description = served.config, served.description
    return RouteSettings(
        model=config.name,
        version=config.version,
        input_spec=description.input_spec,
        output_spec=description.output_spec,
        max_instances=config.max_instances_per_request,
        request_timeout_s=server.request_timeout_s,
        max_body_bytes=server.max_body_bytes,
        api_key=server.api_key,
        priority_levels=config.priority_levels,
        default_priority=config.default_priority or config.priority_levels,
    )


class VersionRoutes:
    """The inference routes of one model version, in one API server."""

    def __init__(self, settings: RouteSettings, workers: ModelWorkers, gate, drain: DrainSwitch) -> None:
        self.v1 = PredictRoute(settings, workers, gate, drain)
        self.v2 = V2InferRoute(settings, workers, gate, drain)
        self.unit = workers.unit

    @property
    def routes(self) -> tuple[InferenceRoute, InferenceRoute]:
        return self.v1, self.v2

    @property
    def settings(self) -> RouteSettings:
        return self.v1.settings

    def bind(self, settings: RouteSettings, workers: ModelWorkers, gate) -> None:
        for route in self.routes:
            route.bind(settings, workers, gate)
        self.unit = workers.unit


class VersionPicker:
    """An unversioned inference path: the version a request goes to, then that version's route."""

    def __init__(self, model: ServedModel, routes: dict[str, VersionRoutes], protocol: str) -> None:
        self.model = model
        self.routes = routes
        self.protocol = protocol

    def route(self, request_id: bytes | None) -> InferenceRoute:
        model = self.model
        if model.traffic and request_id is None:  # no id to stick to: a fresh draw
            request_id = str(random.random()).encode()
        version = model.pick(request_id.decode(errors="replace") if request_id else "")
        chosen = self.routes[version.version]
        return chosen.v1 if self.protocol == "v1" else chosen.v2

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.route(header(scope, b"x-request-id"))(scope, receive, send)


class RouteTable:
    """This API server's inference routes and worker links, kept in step with the serving table."""

    def __init__(self, shared: SharedSlots, drain: DrainSwitch, server: ServerSettings) -> None:
        self.shared = shared
        self.drain = drain
        self.server = server
        self.generation = -1
        self.versions: dict[tuple[str, str], VersionRoutes] = {}
        self.pools: dict[int, ModelWorkers] = {}
        self.paths: dict[str, Handler] = {}
        self.models: dict[str, ServedModel] = {}
        self.served: list[str] = []
        self.on_new_route: Callable[[InferenceRoute], None] = lambda route: None  # e.g. give it a tracer

    def update(self, table: ServingTable) -> None:
        """Rebuild the paths from ``table``; keep (and rebind) the routes of versions still served."""
        versions: dict[tuple[str, str], VersionRoutes] = {}
        pools: dict[int, ModelWorkers] = {}
        paths: dict[str, Handler] = {}
        for model in table.models.values():
            served_routes = {}
            for served in model.versions.values():
                key = (model.name, served.version)
                routes = self._version_routes(key, served, model, pools)
                versions[key] = served_routes[served.version] = routes
                paths[versioned_predict_path(model.name, served.version)] = routes.v1
            paths[predict_path(model.name)] = VersionPicker(model, served_routes, "v1")
            paths.update(
                v2.model_routes(
                    model,
                    served_routes,
                    VersionPicker(model, served_routes, "v2"),
                    self.shared.states.unit_ready,
                )
            )
        self.versions, self.pools, self.paths = versions, pools, paths
        self.models = dict(table.models)
        self.served = sorted(table.models)
        self.generation = table.generation

    def _version_routes(
        self, key: tuple[str, str], served: ServedVersion, model: ServedModel, pools: dict[int, ModelWorkers]
    ) -> VersionRoutes:
        pool = self.pools.get(served.unit)
        if pool is None:
            label = repr(model.name) if len(model.versions) == 1 else f"{model.name!r} version {key[1]}"
            pool = ModelWorkers(served.unit, self.shared.states, label)
        pools[served.unit] = pool
        settings = route_settings(served, self.server)
        routes = self.versions.get(key)
        if routes is None:
            routes = VersionRoutes(settings, pool, self.shared.gate(served.unit, served.config), self.drain)
            for route in routes.routes:
                self.on_new_route(route)
        elif routes.unit != served.unit:  # reloaded: the same version served by a new unit
            routes.bind(settings, pool, self.shared.gate(served.unit, served.config))
        return routes
