"""Triton's model-repository extension (``/v2/repository/...``): the index, and the load/unload doors.

Shapes are what ``tritonclient.http`` sends and reads: ``POST /v2/repository/index`` (an empty body, or
``{"ready": true}`` for only the ready models) answers ``[{"name", "version", "state", "reason"}]`` for
every model the server knows, loaded or not; ``POST /v2/repository/models/{m}/load`` and ``.../unload``
answer ``{"error": ...}`` when they cannot act. With ``model_control: none`` they are refused (403, in
Triton's words); with ``explicit`` live loading and unloading are not built yet (501).

When auth is on (an API key or an admin key is set) the three routes need the admin key
(``server.auth.admin_key_env``): no key or a wrong one is 401, the inference API key is 403.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import orjson
from starlette.types import Receive, Scope, Send

from service.http.asgi import send_response
from service.http.auth import bearer_matches
from service.http.errors import ClientError, request_id_of, send_error
from service.http.middleware import read_body
from service.http.v2 import Handler
from service.repository import CatalogEntry
from service.worker_states import WorkerState, WorkerStates

INDEX_PATH = "/v2/repository/index"
# Triton's message (model_repository_manager.cc) when model control is off; clients match on it.
CONTROL_DISABLED = (
    "explicit model load / unload is not allowed if polling is enabled: "
    "hookserve runs with model_control none (every repository model loads at start); "
    "restart it with --model-control explicit to choose which models load"
)
NOT_BUILT = (
    "live model {action} is not built yet in this hookserve: with model_control explicit, the models in "
    "server.load_models load at start; change them and restart hookserve"
)
NO_ADMIN_KEY = "the repository routes need the admin key, and none is set (server.auth.admin_key_env)"
Answerer = Callable[[Scope, Receive], Awaitable[object]]


@dataclass(frozen=True)
class RepositorySettings:
    """What the repository routes need, fixed at start-up."""

    catalog: list[CatalogEntry]
    model_control: str
    admin_key: bytes | None
    api_key: bytes | None
    max_body_bytes: int

    @property
    def auth_on(self) -> bool:
        return self.admin_key is not None or self.api_key is not None


def admin_denial(scope: dict, admin_key: bytes | None, api_key: bytes | None) -> ClientError | None:
    """Why a request may not use the repository routes, or None when it may."""
    if admin_key is None and api_key is None:
        return None  # auth is off
    if admin_key is not None and bearer_matches(scope, admin_key):
        return None
    if api_key is not None and bearer_matches(scope, api_key):
        if admin_key is None:
            return ClientError(403, NO_ADMIN_KEY)
        return ClientError(403, "the inference key does not open the repository routes; use the admin key")
    if admin_key is None:
        return ClientError(401, NO_ADMIN_KEY)
    return ClientError(401, "missing or invalid admin key: send 'Authorization: Bearer <admin key>'")


def model_state(entry: CatalogEntry, states: WorkerStates) -> tuple[str, str]:
    """Triton's ``state`` and ``reason`` of one model, from its workers' states."""
    if not entry.loaded:
        return "UNAVAILABLE", "not loaded at start"
    state = states.model_state(entry.name)
    if state == WorkerState.READY:
        return "READY", ""
    if state == WorkerState.STARTING:
        return "LOADING", ""
    if state == WorkerState.DOWN:
        return "UNAVAILABLE", "no live worker: restarting after a crash"
    return "UNAVAILABLE", "every worker crashed too often (server.worker_restarts); restart hookserve"


class RepositoryRoutes:
    """The repository routes of one API-server process."""

    def __init__(self, settings: RepositorySettings, states: WorkerStates) -> None:
        self.settings = settings
        self.states = states

    def table(self) -> dict[str, Handler]:
        """Exact paths: the index, and load/unload for each model the server knows."""
        table: dict[str, Handler] = {INDEX_PATH: self._guarded(self.index)}
        for entry in self.settings.catalog:
            for action in ("load", "unload"):
                path = f"/v2/repository/models/{entry.name}/{action}"
                table[path] = self._guarded(self._control(action))
        return table

    def _guarded(self, answer: Answerer) -> Handler:
        """POST only, admin key when auth is on, errors as ``{"error", "request_id"}``."""

        async def handle(scope: Scope, receive: Receive, send: Send) -> None:
            try:
                if scope["method"] != "POST":
                    raise ClientError(405, "use POST for the repository routes")
                denial = admin_denial(scope, self.settings.admin_key, self.settings.api_key)
                if denial is not None:
                    raise denial
                body = await answer(scope, receive)
            except ClientError as error:
                extra = error.headers or ([(b"www-authenticate", b"Bearer")] if error.status == 401 else [])
                await send_error(send, error.status, error.message, request_id_of(scope), extra)
                return
            await send_response(send, 200, orjson.dumps(body))

        return handle

    async def index(self, scope: Scope, receive: Receive) -> list[dict]:
        body = await read_body(scope, receive, self.settings.max_body_bytes)
        only_ready = _ready_filter(body)
        entries = []
        for entry in self.settings.catalog:
            state, reason = model_state(entry, self.states)
            if only_ready and state != "READY":
                continue
            entries.append({"name": entry.name, "version": entry.version, "state": state, "reason": reason})
        return entries

    def _control(self, action: str) -> Answerer:
        async def control(scope: Scope, receive: Receive) -> dict:
            await read_body(scope, receive, self.settings.max_body_bytes)
            if self.settings.model_control == "none":
                raise ClientError(403, CONTROL_DISABLED)
            raise ClientError(501, NOT_BUILT.format(action="loading" if action == "load" else "unloading"))

        return control


def _ready_filter(body: bytes) -> bool:
    """The index request's ``ready`` flag: an empty body (what tritonclient sends) means every model."""
    if not body.strip():
        return False
    try:
        request = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ClientError(400, f"the index request is not valid JSON: {exc}") from exc
    if not isinstance(request, dict):
        raise ClientError(400, 'the index request must be a JSON object, e.g. {"ready": true}')
    ready = request.get("ready", False)
    if not isinstance(ready, bool):
        raise ClientError(400, "ready must be true or false")
    return ready
