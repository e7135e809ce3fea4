"""Triton's model-repository extension (``/v2/repository/...``): the index, and the load/unload doors.

Shapes are what ``tritonclient.http`` sends and reads: ``POST /v2/repository/index`` (an empty body, or
``{"ready": true}`` for only the ready models) answers ``[{"name", "version", "state", "reason"}]`` for
every model the server knows, loaded or not; ``POST /v2/repository/models/{m}/load`` and ``.../unload``
answer ``{"error": ...}`` when they cannot act. With ``model_control: none`` they are refused (403, in
Triton's words); with ``explicit`` the API server asks the main process to act (:mod:`service.pool.control`)
and answers once it has: 200 when every version asked for is taking traffic (load) or the model's workers
are stopped (unload), 400 with the reason when loading failed (whatever was serving still serves).

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
from service.pool.control import call_control
from service.pool.table import TableStore
from service.worker_states import WorkerState, WorkerStates

INDEX_PATH = "/v2/repository/index"
# Triton's message (model_repository_manager.cc) when model control is off; clients match on it.
CONTROL_DISABLED = (
    "explicit model load / unload is not allowed if polling is enabled: "
    "hookserve runs with model_control none (every repository model loads at start); "
    "restart it with --model-control explicit to choose which models load"
)
CONTROL_PREFIX = "/v2/repository/models/"
NO_ADMIN_KEY = "the repository routes need the admin key, and none is set (server.auth.admin_key_env)"
Answerer = Callable[[Scope, Receive], Awaitable[object]]


@dataclass(frozen=True)
class RepositorySettings:
    """What the repository routes need, fixed at start-up."""

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


def served_state(unit: int, states: WorkerStates) -> tuple[str, str]:
    """Triton's ``state`` and ``reason`` of a served version, from its workers' states."""
    state = states.unit_state(unit)
    if state == WorkerState.READY:
        return "READY", ""
    if state == WorkerState.STARTING:
        return "LOADING", ""
    if state == WorkerState.DOWN:
        return "UNAVAILABLE", "no live worker: restarting after a crash"
    return "UNAVAILABLE", "every worker crashed too often (server.worker_restarts); load it again"


class RepositoryRoutes:
    """The repository routes of one API-server process."""

    def __init__(self, settings: RepositorySettings, store: TableStore, states: WorkerStates) -> None:
        self.settings = settings
        self.store = store
        self.states = states
        self.control = self._guarded(self._control)

    def table(self) -> dict[str, Handler]:
        """The exact path: the index (load and unload are matched by :meth:`handles`)."""
        return {INDEX_PATH: self._guarded(self.index)}

    @staticmethod
    def handles(path: str) -> bool:
        """``/v2/repository/models/{m}/load`` or ``.../unload``, for any model name."""
        return path.startswith(CONTROL_PREFIX) and path.endswith(("/load", "/unload"))

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
        return index_entries(self.store, self.states, only_ready=_ready_filter(body))

    async def _control(self, scope: Scope, receive: Receive) -> dict:
        body = await read_body(scope, receive, self.settings.max_body_bytes)
        name, _, action = scope["path"].removeprefix(CONTROL_PREFIX).rpartition("/")
        if not name or "/" in name:
            raise ClientError(404, f"{scope['path']} names no model")
        config = _load_config(body) if action == "load" else None
        await control(self.settings.model_control, action, name, config)
        return {}


def index_entries(store: TableStore, states: WorkerStates, only_ready: bool = False) -> list[dict]:
    """The repository index, one entry per version (HTTP and gRPC answer the same)."""
    table = store.current()
    entries = []
    for name in sorted(table.catalog):
        model = table.models.get(name)
        for status in table.catalog[name]:
            served = model.versions.get(status.version) if model is not None else None
            if status.state == "READY" and served is not None:
                state, reason = served_state(served.unit, states)
            else:
                state, reason = status.state, status.reason
            if only_ready and state != "READY":
                continue
            entries.append({"name": name, "version": status.version, "state": state, "reason": reason})
    return entries


async def control(model_control: str, action: str, name: str, config: str | None = None) -> None:
    """Load or unload ``name`` through the main process; a :class:`ClientError` says why not."""
    if model_control == "none":
        raise ClientError(403, CONTROL_DISABLED)
    outcome = await call_control(action, name, config)
    if outcome.status != 200:
        raise ClientError(outcome.status, outcome.error)


def _load_config(body: bytes) -> str | None:
    """A load's ``parameters.config``: the JSON text of model.yaml keys for this load (Triton's)."""
    if not body.strip():
        return None
    try:
        request = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ClientError(400, f"the load request is not valid JSON: {exc}") from exc
    parameters = request.get("parameters", {}) if isinstance(request, dict) else None
    if not isinstance(parameters, dict):
        raise ClientError(400, 'the load request must be {"parameters": {"config": "<JSON>"}}')
    config = parameters.get("config")
    if config is not None and not isinstance(config, str):
        raise ClientError(400, "parameters.config must be a string holding a JSON object")
    return config


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
