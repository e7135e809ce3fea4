"""Triton's repository routes in one API-server process, driven as ASGI (no server, no workers)."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from service.config import ModelServeConfig
from service.http.repository_routes import (
    CONTROL_DISABLED,
    INDEX_PATH,
    RepositoryRoutes,
    RepositorySettings,
)
from service.pool.control import ControlServer
from service.pool.manager import Outcome
from service.pool.table import ModelStatus, ServedModel, ServedVersion, ServingTable, TableStore
from service.worker_states import RUNTIME_DIR_ENV, WorkerState, WorkerStates

# units: digits-cnn version 2 -> 0 (two workers), tabular-mlp version 1 -> 1
CATALOG = {
    "digits-cnn": [ModelStatus("digits-cnn", "2", "READY")],
    "tabular-mlp": [ModelStatus("tabular-mlp", "1", "READY")],
    "unloaded": [ModelStatus("unloaded", "3", "UNAVAILABLE", "not loaded")],
}


def served(name: str, version: str, unit: int) -> ServedModel:
    config = ModelServeConfig(name=name, version=version)
    return ServedModel(name, {version: ServedVersion(unit, config, None)}, version)  # type: ignore[arg-type]


@pytest.fixture(autouse=True)
def runtime_dir(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(RUNTIME_DIR_ENV, str(tmp_path))


class FakeManager:
    """Answers control calls as the main process's manager would, and remembers them."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def load(self, name: str, config: str | None) -> Outcome:
        self.calls.append(("load", name, config))
        return Outcome(400, "failed to load 'broken': bad weights") if name == "broken" else Outcome(200)

    def unload(self, name: str) -> Outcome:
        self.calls.append(("unload", name))
        return Outcome(200)


def routes(
    model_control: str = "none", admin_key: bytes | None = None, api_key: bytes | None = None
) -> tuple[RepositoryRoutes, WorkerStates]:
    states = WorkerStates(4)
    states.assign(0, 2)
    states.assign(1, 1)
    store = TableStore()
    models = {"digits-cnn": served("digits-cnn", "2", 0), "tabular-mlp": served("tabular-mlp", "1", 1)}
    store.publish(ServingTable(1, models, CATALOG))
    settings = RepositorySettings(model_control, admin_key, api_key, max_body_bytes=1024)
    return RepositoryRoutes(settings, store, states), states


def call(
    handler, method: str = "POST", body: bytes = b"", token: bytes | None = None, path: str = "/"
) -> tuple[int, dict[bytes, bytes], object]:
    headers = [(b"authorization", b"Bearer " + token)] if token is not None else []
    scope = {"type": "http", "method": method, "path": path, "headers": headers}
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    asyncio.run(handler(scope, receive, send))
    start, content = sent
    return start["status"], dict(start["headers"]), orjson.loads(content["body"])


def test_the_index_lists_every_known_model_with_its_state() -> None:
    repository, states = routes()
    table = repository.table()
    states.set(1, 0, WorkerState.READY)
    status, _, body = call(table[INDEX_PATH])
    assert status == 200
    assert body == [
        {"name": "digits-cnn", "version": "2", "state": "LOADING", "reason": ""},
        {"name": "tabular-mlp", "version": "1", "state": "READY", "reason": ""},
        {"name": "unloaded", "version": "3", "state": "UNAVAILABLE", "reason": "not loaded"},
    ]
    states.set(0, 1, WorkerState.READY)  # one ready worker makes the version ready
    states.set(1, 0, WorkerState.FAILED)
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
    table = routes()[0].table()
    status, _, answer = call(table[INDEX_PATH], body=body)
    assert status == 400 and message in answer["error"] and answer["request_id"]


def test_the_routes_answer_only_post() -> None:
    table = routes()[0].table()
    status, _, answer = call(table[INDEX_PATH], method="GET")
    assert status == 405 and "POST" in answer["error"]


def test_load_and_unload_are_refused_with_tritons_message_under_model_control_none() -> None:
    repository, _ = routes("none")
    for path in ("/v2/repository/models/digits-cnn/load", "/v2/repository/models/unloaded/unload"):
        assert repository.handles(path)
        status, _, answer = call(repository.control, body=b'{"parameters": {"config": "{}"}}', path=path)
        assert status == 403 and answer["error"] == CONTROL_DISABLED
        assert answer["error"].startswith("explicit model load / unload is not allowed")


def test_under_explicit_control_the_main_process_is_asked_and_its_answer_returned() -> None:
    repository, _ = routes("explicit")
    manager = FakeManager()
    ControlServer(manager).start()  # type: ignore[arg-type]
    config = '{"versions": [1, 2]}'
    body = orjson.dumps({"parameters": {"config": config}})
    status, _, answer = call(repository.control, body=body, path="/v2/repository/models/new-model/load")
    assert status == 200 and answer == {}
    status, _, _ = call(repository.control, path="/v2/repository/models/digits-cnn/unload")
    assert status == 200
    status, _, answer = call(repository.control, path="/v2/repository/models/broken/load")
    assert status == 400 and answer["error"] == "failed to load 'broken': bad weights"
    assert manager.calls == [
        ("load", "new-model", config),
        ("unload", "digits-cnn"),
        ("load", "broken", None),
    ]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{", "not valid JSON"),
        (b'{"parameters": 3}', '{"parameters": {"config": "<JSON>"}}'),
        (b'{"parameters": {"config": {"versions": [1]}}}', "must be a string holding a JSON object"),
    ],
)
def test_a_bad_load_body_is_a_400(body: bytes, message: str) -> None:
    repository, _ = routes("explicit")
    status, _, answer = call(repository.control, body=body, path="/v2/repository/models/x/load")
    assert status == 400 and message in answer["error"]


def test_load_and_unload_paths_are_matched_for_any_model_name() -> None:
    repository, _ = routes()
    assert repository.handles("/v2/repository/models/not-yet-known/load")
    assert repository.handles("/v2/repository/models/digits-cnn/unload")
    assert not repository.handles("/v2/repository/models/digits-cnn/reload")
    assert not repository.handles("/v2/models/digits-cnn/load")
    assert list(repository.table()) == [INDEX_PATH]


def test_with_auth_on_only_the_admin_key_opens_the_routes() -> None:
    repository, _ = routes(admin_key=b"admin", api_key=b"inference")
    table = repository.table()
    status, headers, answer = call(table[INDEX_PATH])
    assert status == 401 and headers[b"www-authenticate"] == b"Bearer" and "admin key" in answer["error"]
    status, _, _ = call(table[INDEX_PATH], token=b"wrong")
    assert status == 401
    status, _, answer = call(table[INDEX_PATH], token=b"inference")
    assert status == 403 and "inference key does not open" in answer["error"]
    status, _, body = call(table[INDEX_PATH], token=b"admin")
    assert status == 200 and len(body) == len(CATALOG)
    load = "/v2/repository/models/digits-cnn/load"
    status, _, _ = call(repository.control, token=b"inference", path=load)
    assert status == 403
    status, _, answer = call(repository.control, token=b"admin", path=load)
    assert status == 403 and answer["error"] == CONTROL_DISABLED  # past auth: model control is off


def test_with_only_an_api_key_the_routes_stay_closed() -> None:
    table = routes(api_key=b"inference")[0].table()
    status, _, answer = call(table[INDEX_PATH], token=b"inference")
    assert status == 403 and "server.auth.admin_key_env" in answer["error"]
    status, _, answer = call(table[INDEX_PATH])
    assert status == 401 and "server.auth.admin_key_env" in answer["error"]


def test_with_only_an_admin_key_it_is_required() -> None:
    table = routes(admin_key=b"admin")[0].table()
    assert call(table[INDEX_PATH])[0] == 401
    assert call(table[INDEX_PATH], token=b"admin")[0] == 200
