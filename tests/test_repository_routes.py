"""Triton's repository routes in one API-server process, driven as ASGI (no server, no workers)."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from service.http.repository_routes import (
    CONTROL_DISABLED,
    INDEX_PATH,
    RepositoryRoutes,
    RepositorySettings,
)
from service.repository import CatalogEntry
from service.worker_states import WorkerState, WorkerStates

CATALOG = [
    CatalogEntry("digits-cnn", "2", loaded=True),
    CatalogEntry("tabular-mlp", "1", loaded=True),
    CatalogEntry("unloaded", "3", loaded=False),
]


def routes(
    model_control: str = "none", admin_key: bytes | None = None, api_key: bytes | None = None
) -> tuple[dict, WorkerStates]:
    states = WorkerStates({"digits-cnn": 2, "tabular-mlp": 1})
    settings = RepositorySettings(CATALOG, model_control, admin_key, api_key, max_body_bytes=1024)
    return RepositoryRoutes(settings, states).table(), states


def call(
    handler, method: str = "POST", body: bytes = b"", token: bytes | None = None
) -> tuple[int, dict[bytes, bytes], object]:
    headers = [(b"authorization", b"Bearer " + token)] if token is not None else []
    scope = {"type": "http", "method": method, "path": "/", "headers": headers}
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    asyncio.run(handler(scope, receive, send))
    start, content = sent
    return start["status"], dict(start["headers"]), orjson.loads(content["body"])


def test_the_index_lists_every_known_model_with_its_state() -> None:
    table, states = routes()
    states.set("digits-cnn", 0, WorkerState.STARTING)
    states.set("digits-cnn", 1, WorkerState.STARTING)
    states.set("tabular-mlp", 0, WorkerState.READY)
    status, _, body = call(table[INDEX_PATH])
    assert status == 200
    assert body == [
        {"name": "digits-cnn", "version": "2", "state": "LOADING", "reason": ""},
        {"name": "tabular-mlp", "version": "1", "state": "READY", "reason": ""},
        {"name": "unloaded", "version": "3", "state": "UNAVAILABLE", "reason": "not loaded at start"},
    ]
    states.set("digits-cnn", 1, WorkerState.READY)  # one ready worker makes the model ready
    states.set("tabular-mlp", 0, WorkerState.FAILED)
    status, _, body = call(table[INDEX_PATH], body=b'{"ready": true}')
    assert status == 200 and body == [{"name": "digits-cnn", "version": "2", "state": "READY", "reason": ""}]
    _, _, body = call(table[INDEX_PATH], body=b'{"ready": false}')
    failed = next(entry for entry in body if entry["name"] == "tabular-mlp")
    assert failed["state"] == "UNAVAILABLE" and "crashed too often" in failed["reason"]


@pytest.mark.parametrize(
    ("body", "message"),
    [(b"{", "not valid JSON"), (b"[1]", "must be a JSON object"), (b'{"ready": "yes"}', "true or false")],
)
def test_a_bad_index_request_is_a_400(body: bytes, message: str) -> None:
    table, _ = routes()
    status, _, answer = call(table[INDEX_PATH], body=body)
    assert status == 400 and message in answer["error"] and answer["request_id"]


def test_the_routes_answer_only_post() -> None:
    table, _ = routes()
    status, _, answer = call(table[INDEX_PATH], method="GET")
    assert status == 405 and "POST" in answer["error"]


def test_load_and_unload_are_refused_with_tritons_message_under_model_control_none() -> None:
    table, _ = routes("none")
    for path in ("/v2/repository/models/digits-cnn/load", "/v2/repository/models/unloaded/unload"):
        status, _, answer = call(table[path], body=b'{"parameters": {"config": "{}"}}')
        assert status == 403 and answer["error"] == CONTROL_DISABLED
        assert answer["error"].startswith("explicit model load / unload is not allowed")


def test_live_load_and_unload_under_explicit_say_they_are_not_built_yet() -> None:
    table, _ = routes("explicit")
    status, _, answer = call(table["/v2/repository/models/unloaded/load"])
    assert status == 501 and "live model loading is not built yet" in answer["error"]
    status, _, answer = call(table["/v2/repository/models/digits-cnn/unload"])
    assert status == 501 and "live model unloading is not built yet" in answer["error"]


def test_only_known_models_get_load_and_unload_paths() -> None:
    table, _ = routes()
    assert "/v2/repository/models/unknown/load" not in table  # falls through to the V2 404
    assert {path for path in table if path.startswith("/v2/repository/models/")} == {
        f"/v2/repository/models/{entry.name}/{action}" for entry in CATALOG for action in ("load", "unload")
    }


def test_with_auth_on_only_the_admin_key_opens_the_routes() -> None:
    table, _ = routes(admin_key=b"admin", api_key=b"inference")
    status, headers, answer = call(table[INDEX_PATH])
    assert status == 401 and headers[b"www-authenticate"] == b"Bearer" and "admin key" in answer["error"]
    status, _, _ = call(table[INDEX_PATH], token=b"wrong")
    assert status == 401
    status, _, answer = call(table[INDEX_PATH], token=b"inference")
    assert status == 403 and "inference key does not open" in answer["error"]
    status, _, body = call(table[INDEX_PATH], token=b"admin")
    assert status == 200 and len(body) == len(CATALOG)
    status, _, _ = call(table["/v2/repository/models/digits-cnn/load"], token=b"inference")
    assert status == 403
    status, _, answer = call(table["/v2/repository/models/digits-cnn/load"], token=b"admin")
    assert status == 403 and answer["error"] == CONTROL_DISABLED  # past auth: model control is off


def test_with_only_an_api_key_the_routes_stay_closed() -> None:
    table, _ = routes(api_key=b"inference")
    status, _, answer = call(table[INDEX_PATH], token=b"inference")
    assert status == 403 and "server.auth.admin_key_env" in answer["error"]
    status, _, answer = call(table[INDEX_PATH])
    assert status == 401 and "server.auth.admin_key_env" in answer["error"]


def test_with_only_an_admin_key_it_is_required() -> None:
    table, _ = routes(admin_key=b"admin")
    assert call(table[INDEX_PATH])[0] == 401
    assert call(table[INDEX_PATH], token=b"admin")[0] == 200
