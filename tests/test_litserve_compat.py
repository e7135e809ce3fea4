"""Each LitServe internal that service/litserve_compat.py relies on is still where it expects it.

If a LitServe upgrade moves one of these, this file fails and names it; the live tests would fail too,
but less clearly. One test per touch point, numbered as in the compat module's docstring.
"""

from __future__ import annotations

import asyncio
import copy
import inspect
import multiprocessing as mp
import os
import signal
import threading

import httpx
import litserve as ls
import pytest
from litserve import server as litserve_server
from litserve.loops import loops as litserve_loops
from litserve.server import _Server as LitServeUvicornServer
from litserve.utils import WorkerSetupStatus
from starlette.middleware.gzip import GZipMiddleware

from service.litserve_compat import (
    MANAGER_GONE_ERRORS,
    WORKER_ID_ENV,
    CompatLitServer,
    RoutelessSpec,
    _LitWorker,
    _WorkerLoop,
)


class EchoWorker:
    """A served worker that does nothing: enough for LitServe to build a server around it."""

    model_name = "echo"

    def setup(self, worker_id: int) -> None:
        pass

    def serve(self) -> None:
        self.served = True


def compat_server(path: str = "/echo") -> CompatLitServer:
    return CompatLitServer([(EchoWorker(), path)])


class EchoAPI(ls.LitAPI):
    def setup(self, device: str) -> None:
        pass

    def predict(self, x: object) -> object:
        return x


def run_source() -> str:
    return inspect.getsource(ls.LitServer.run)


def routed_paths(server: ls.LitServer) -> set[str]:
    return {getattr(route, "path", "") for route in server.app.routes}


def test_1_run_calls_the_worker_monitor_hook_that_the_supervisor_replaces() -> None:
    assert "self._start_worker_monitoring(" in run_source()
    params = list(inspect.signature(ls.LitServer._start_worker_monitoring).parameters)
    assert params == ["self", "manager", "uvicorn_workers"]
    assert CompatLitServer._start_worker_monitoring is not ls.LitServer._start_worker_monitoring


def test_2_run_waits_on_verify_worker_status_over_workers_setup_status() -> None:
    assert "self.verify_worker_status()" in run_source()
    assert WorkerSetupStatus.READY != WorkerSetupStatus.ERROR  # both names still exist
    assert "self.workers_setup_status = " in inspect.getsource(ls.LitServer._init_manager)


def test_3_a_single_worker_can_be_relaunched_and_run_keeps_the_process_list() -> None:
    params = list(inspect.signature(ls.LitServer.launch_single_inference_worker).parameters)
    assert params == ["self", "lit_api", "worker_id"]
    assert "return process" in inspect.getsource(ls.LitServer.launch_single_inference_worker)
    assert "self.inference_workers = []" in run_source()
    assert "self.inference_workers" in inspect.getsource(ls.LitServer._perform_graceful_shutdown)


def test_4_run_ends_when_the_shutdown_event_is_set() -> None:
    assert "self._shutdown_event.wait()" in run_source()
    assert "self._shutdown_event = " in inspect.getsource(ls.LitServer._init_manager)
    server = compat_server()
    assert server.request_stop() is False, "before run() there is no event to set"


def test_4_a_wait_on_the_shutdown_event_of_a_dead_manager_raises_only_manager_gone_errors() -> None:
    manager = mp.Manager()
    event = manager.Event()  # what LitServe's _init_manager makes its _shutdown_event
    raised: list[BaseException] = []

    def wait() -> None:
        try:
            event.wait()
        except BaseException as exc:
            raised.append(exc)

    waiter = threading.Thread(target=wait)
    waiter.start()
    try:
        event.is_set()  # the manager answers
        os.kill(manager._process.pid, signal.SIGTERM)  # as when every process of the group gets SIGTERM
        waiter.join(timeout=10)
        assert len(raised) == 1 and isinstance(raised[0], MANAGER_GONE_ERRORS), raised
        with pytest.raises(MANAGER_GONE_ERRORS):
            event.set()  # a call after the manager died
    finally:
        manager.shutdown()


def test_5_litserve_adds_gzip_and_the_compat_server_removes_it() -> None:
    plain = ls.LitServer(EchoAPI())
    assert any(m.cls is GZipMiddleware for m in plain.app.user_middleware), "LitServe no longer adds gzip"
    compat = compat_server()
    assert not any(m.cls is GZipMiddleware for m in compat.app.user_middleware)


def test_6_a_routeless_spec_keeps_litserve_from_registering_a_route() -> None:
    path = "/v1/models/echo:predict"
    with_route = ls.LitServer(EchoAPI(api_path=path))
    assert path in routed_paths(with_route)
    without = compat_server(path)
    assert path not in routed_paths(without)
    assert without.litapi_connector.lit_apis[0].api_path == path


def test_6_litserve_names_the_worker_in_its_environment() -> None:
    source = inspect.getsource(litserve_loops.inference_worker)
    assert f'os.environ["{WORKER_ID_ENV}"] = str(worker_id)' in source


def test_9_the_worker_process_sets_up_then_calls_the_loop_with_lit_api_first() -> None:
    source = inspect.getsource(litserve_loops.inference_worker)
    assert "lit_api.setup(device)" in source
    assert "loop: LitLoop = lit_api.loop" in source
    call = source.split("    loop(\n", 1)[1]
    assert call.lstrip().startswith("lit_api,"), "LitServe no longer passes lit_api first to the loop"
    worker = EchoWorker()
    lit_api = _LitWorker(worker, "/echo")
    assert isinstance(lit_api.loop, _WorkerLoop) and isinstance(lit_api.spec, RoutelessSpec)
    lit_api.loop(lit_api, "cpu", 0, None, None, {}, None)  # LitServe's arguments today, ignored
    assert worker.served


def test_7_uvicorn_runs_a_copy_of_litservers_app() -> None:
    source = inspect.getsource(ls.LitServer._start_server)
    assert "app: FastAPI = copy.copy(self.app)" in source
    assert "app=app," in source


def test_7_the_front_router_answers_first_and_passes_the_rest_to_fastapi() -> None:
    class Front:
        def __init__(self, app) -> None:
            self.app = app

        async def __call__(self, scope, receive, send) -> None:
            if scope["type"] == "http" and scope["path"] == "/front":
                await send({"type": "http.response.start", "status": 200, "headers": []})
                await send({"type": "http.response.body", "body": b"front"})
                return
            await self.app(scope, receive, send)

    server = compat_server()
    server.serve_first(Front)
    app = copy.copy(server.app)  # as LitServe hands it to uvicorn

    async def get(path: str) -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
            return await client.get(path)

    assert asyncio.run(get("/front")).text == "front"
    assert asyncio.run(get("/info")).status_code == 200, "FastAPI (LitServe's /info) still answers"


def test_8_litserve_forks_api_servers_over_one_socket_bound_before_the_fork() -> None:
    params = list(inspect.signature(ls.LitServer._start_server).parameters)
    assert params == [
        "self", "port", "num_uvicorn_servers", "log_level", "sockets", "uvicorn_worker_type", "kwargs"
    ]
    assert "self._start_server(\n                port, num_api_servers, log_level, sockets," in run_source()
    assert "sockets = [config.bind_socket()]" in run_source(), "one listening socket, bound before the fork"
    source = inspect.getsource(ls.LitServer._start_server)
    assert "for response_queue_id in range(num_uvicorn_servers):" in source
    assert 'ctx = mp.get_context("fork")' in source
    assert "target=server.run, args=(response_queue_id, sockets)" in source
    assert "return dict(enumerate(workers))" in source


def test_8_run_stops_the_same_api_server_dict_it_hands_to_the_monitor_hook() -> None:
    assert "self._start_worker_monitoring(manager, uvicorn_workers)" in run_source()
    assert "self._perform_graceful_shutdown(manager, uvicorn_workers, shutdown_reason)" in run_source()
    assert "uvicorn_workers.items()" in inspect.getsource(ls.LitServer._perform_graceful_shutdown)


def test_8_a_relaunched_api_server_serves_the_same_app_on_the_same_socket(monkeypatch) -> None:
    forked: list[tuple] = []

    class FakeProcess:
        def __init__(self, target, args, name) -> None:
            self.target, self.args, self.name = target, args, name

        def start(self) -> None:
            forked.append((self.target, self.args))

    class FakeContext:
        Process = FakeProcess

    monkeypatch.setattr(litserve_server.mp, "get_context", lambda method: FakeContext)
    server = compat_server()
    sockets = [object()]  # stands for the socket run() bound
    uvicorn_workers = server._start_server(8123, 2, "warning", sockets, "process")
    server._start_worker_monitoring(None, uvicorn_workers)  # as run() calls it
    dead = uvicorn_workers[1]
    replacement = server.relaunch_api_server(1, dead)
    assert uvicorn_workers == {0: uvicorn_workers[0], 1: replacement}, "LitServe's shutdown stops it"
    assert replacement is not dead and replacement.name == dead.name
    target, args = forked[-1]
    assert args[1] is sockets, "the replacement accepts on the same listening socket"
    assert isinstance(target.__self__, LitServeUvicornServer)
    config = target.__self__.config
    assert config.port == 8123 and config.app.__class__ is server.app.__class__
    assert config.app.__dict__.keys() == server.app.__dict__.keys(), "a copy of the same app"
