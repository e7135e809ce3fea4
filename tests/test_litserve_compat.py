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
import socket
import threading

import httpx
import litserve as ls
import pytest
import uvicorn
from litserve import server as litserve_server
from litserve.server import _Server as LitServeUvicornServer
from litserve.utils import WorkerSetupStatus
from starlette.middleware.gzip import GZipMiddleware

from service.litserve_compat import (
    MANAGER_GONE_ERRORS,
    PLACEHOLDER_PATH,
    CompatLitServer,
    RoutelessSpec,
    reuseport_twins,
)


def compat_server(launch_workers=lambda processes: None) -> CompatLitServer:
    return CompatLitServer(launch_workers=launch_workers)


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


def test_3_run_asks_for_each_apis_workers_into_the_list_its_shutdown_stops() -> None:
    params = list(inspect.signature(ls.LitServer.launch_inference_worker).parameters)
    assert params == ["self", "lit_api"]
    source = run_source()
    assert "self.inference_workers = []" in source
    launch = source.index("_inference_workers = self.launch_inference_worker(lit_api)")
    assert source.index("self.inference_workers = []") < launch < source.index("self.verify_worker_status()")
    assert source.index("self.verify_worker_status()") < source.index("uvicorn_workers = self._start_server(")
    assert "self.inference_workers" in inspect.getsource(ls.LitServer._perform_graceful_shutdown)


def test_3_hookserves_launch_fills_litserves_list_and_litserve_starts_no_worker() -> None:
    started: list[list] = []

    def launch(processes: list) -> None:
        processes.append("a worker process")
        started.append(processes)

    server = compat_server(launch)
    server.inference_workers = []  # what run() does first
    assert server.launch_inference_worker(server.litapi_connector.lit_apis[0]) == []
    assert started == [server.inference_workers] and server.inference_workers == ["a worker process"]
    server.verify_worker_status()  # nothing left to wait for
    with pytest.raises(RuntimeError, match="hookserve starts its own workers"):
        server.litapi_connector.lit_apis[0].setup("cpu")


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
    with_route = ls.LitServer(EchoAPI(api_path=PLACEHOLDER_PATH))
    assert PLACEHOLDER_PATH in routed_paths(with_route)
    without = compat_server()
    assert PLACEHOLDER_PATH not in routed_paths(without)
    (placeholder,) = without.litapi_connector.lit_apis
    assert placeholder.api_path == PLACEHOLDER_PATH and isinstance(placeholder.spec, RoutelessSpec)


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
        "self",
        "port",
        "num_uvicorn_servers",
        "log_level",
        "sockets",
        "uvicorn_worker_type",
        "kwargs",
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


class _FakeFork:
    """Stands for LitServe's fork context: records (target, args) instead of starting a process."""

    def __init__(self, monkeypatch) -> None:
        self.forked: list[tuple] = []
        forked = self.forked

        class FakeProcess:
            def __init__(self, target, args, name) -> None:
                self.target, self.args, self.name = target, args, name

            def start(self) -> None:
                forked.append((self.target, self.args))

        class FakeContext:
            Process = FakeProcess

        monkeypatch.setattr(litserve_server.mp, "get_context", lambda method: FakeContext)


def test_8_each_api_server_gets_a_reuseport_socket_of_its_own_beside_litserves(monkeypatch) -> None:
    fork = _FakeFork(monkeypatch)
    shared = uvicorn.Config(app=None, host="127.0.0.1", port=0).bind_socket()  # as run() binds it
    try:
        server = compat_server()
        servers = server._start_server(shared.getsockname()[1], 2, "warning", [shared], "process")
        assert [p.name for p in servers.values()] == ["LitServer-0", "LitServer-1"]
        owns = [args[1] for _, args in fork.forked]
        assert len(owns) == 2 and all(len(own) == 1 and own[0] is not shared for own in owns)
        assert owns[0][0] is not owns[1][0], "one socket per API server"
        assert all(own[0].fileno() == -1 for own in owns), "closed in the parent once forked"
        assert shared.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 1
        replacement = server.relaunch_api_server(1, servers[1])
        assert fork.forked[-1][1][0] is not shared and replacement.name == "LitServer-1"
        # A twin binds beside the others while they are open (the kernel's reuseport group).
        first, second = reuseport_twins([shared]), reuseport_twins([shared])
        assert first[0].getsockname() == second[0].getsockname() == shared.getsockname()
        for sock in first + second:
            sock.close()
    finally:
        shared.close()


def test_8_with_hookserve_reuseport_0_the_api_servers_share_litserves_socket(monkeypatch) -> None:
    fork = _FakeFork(monkeypatch)
    monkeypatch.setenv("HOOKSERVE_REUSEPORT", "0")
    shared = uvicorn.Config(app=None, host="127.0.0.1", port=0).bind_socket()
    try:
        compat_server()._start_server(shared.getsockname()[1], 2, "warning", [shared], "process")
        assert [args[1] for _, args in fork.forked] == [[shared], [shared]]
    finally:
        shared.close()


def test_8_a_relaunched_api_server_serves_the_same_app(monkeypatch) -> None:
    forked = _FakeFork(monkeypatch).forked
    server = compat_server()
    sockets = [object()]  # stands for the socket run() bound
    uvicorn_workers = server._start_server(8123, 2, "warning", sockets, "process")
    server._start_worker_monitoring(None, uvicorn_workers)  # as run() calls it
    dead = uvicorn_workers[1]
    replacement = server.relaunch_api_server(1, dead)
    assert uvicorn_workers == {0: uvicorn_workers[0], 1: replacement}, "LitServe's shutdown stops it"
    assert replacement is not dead and replacement.name == dead.name
    target, args = forked[-1]
    assert args[1] is sockets, "not sockets that LitServe bound: the replacement shares them"
    assert isinstance(target.__self__, LitServeUvicornServer)
    config = target.__self__.config
    assert config.port == 8123 and config.app.__class__ is server.app.__class__
    assert config.app.__dict__.keys() == server.app.__dict__.keys(), "a copy of the same app"
