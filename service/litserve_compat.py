"""The one door to LitServe (pinned: 0.2.19). Every use of something outside its documented API is here.

hookserve uses LitServe for what it does well: forking uvicorn API servers from one FastAPI app, its
start-up order (workers, then API servers) and its shutdown sequence. It does not use LitServe's request
path: predict routes are served by :mod:`service.http.front`, and requests reach workers over
:mod:`service.messages` frames rather than LitServe's queues. Inference workers are spawned by
hookserve's own pool (:mod:`service.pool.workers`), because models are loaded and unloaded while
serving, which LitServe's fixed ``LitAPI`` list cannot express; LitServe is given one placeholder API
and asks hookserve to start the workers at its usual moment. Each touch point below has a test in
``tests/test_litserve_compat.py`` that fails loudly if an upgrade moves it:

1. ``LitServer._start_worker_monitoring`` is replaced: LitServe's monitor shuts the whole server down
   when one worker dies; :mod:`service.supervisor` restarts it instead.
2. ``LitServer.verify_worker_status`` is replaced by nothing: hookserve's pool has waited for every
   worker of every model already (LitServe waits for any one).
3. ``LitServer.launch_inference_worker(lit_api)`` is called by ``run()`` once per ``LitAPI`` (here: the
   placeholder) after ``run()`` set ``self.inference_workers = []``; it is replaced by hookserve's
   start of every start-up model, whose processes go into that list (and later loads' too), which
   LitServe's shutdown stops.
4. ``LitServer._shutdown_event`` ends ``run()`` (our SIGTERM drain sets it). It lives in LitServe's
   queue manager process: when a stop finds that process gone (every process of the group got SIGTERM),
   the wait on it in ``run()`` raises one of :data:`MANAGER_GONE_ERRORS`, and only those.
5. LitServe appends a ``GZipMiddleware`` to every app; it is removed (prediction bodies are small, and
   gzip costs CPU on the hot path).
6. ``RoutelessSpec`` is a ``LitSpec`` without endpoints, so LitServe registers no route of its own for
   the placeholder API.
7. LitServe builds the FastAPI app that uvicorn runs (``LitServer.app``, copied per API server). Its
   class is swapped for a subclass that hands each request to hookserve's router *before* FastAPI's
   own stack (telemetry, error and body-limit middleware, routing): the predict route costs only
   what it needs. Everything the router does not answer goes through FastAPI unchanged.
8. ``LitServer._start_server(port, n, log_level, sockets, worker_type, **kwargs)`` forks ``n`` API
   servers, each a uvicorn server over its own copy of the app and the listening socket that ``run()``
   bound once, and returns them as ``{index: process}``. hookserve keeps its arguments and calls it with
   ``n = 1`` once per API server and once per replacement (LitServe numbers each 0, a number hookserve's
   API servers do not use), each over a listening socket of its own (:func:`reuseport_twins`) rather
   than LitServe's shared one. ``run()`` hands the same ``uvicorn_workers`` dict to
   ``_start_worker_monitoring`` and to its shutdown: a replacement put in that dict is stopped by
   LitServe's shutdown like the original.
The rest of hookserve sees a :class:`CompatLitServer` that takes a function to start the workers and
knows nothing of ``LitAPI``, ``LitLoop`` or ``LitSpec``.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import os
import socket
from collections.abc import Callable
from typing import Any

import litserve as ls
from fastapi import FastAPI
from litserve import LitAPI
from litserve.specs.base import LitSpec
from starlette.middleware.gzip import GZipMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["MANAGER_GONE_ERRORS", "CompatLitServer"]
logger = logging.getLogger(__name__)
# Touch point 4: what a call on the queue manager's proxies raises once the manager process has died.
MANAGER_GONE_ERRORS: tuple[type[Exception], ...] = (EOFError, ConnectionError)
PLACEHOLDER_PATH = "/_hookserve_workers"  # the placeholder API's path: never routed (RoutelessSpec)


class _Placeholder(LitAPI):
    """The one ``LitAPI`` LitServe is given: its workers are hookserve's (touch point 3)."""

    def __init__(self) -> None:
        super().__init__(spec=RoutelessSpec(PLACEHOLDER_PATH))

    def setup(self, device: str) -> None:
        raise RuntimeError("hookserve starts its own workers; LitServe never starts this API's")

    def predict(self, x: Any, **kwargs: Any) -> Any:
        raise RuntimeError("hookserve's workers are served by their own loop, never by LitServe's")


class RoutelessSpec(LitSpec):
    """Names a model's ``api_path`` without registering an endpoint: hookserve's router serves it."""

    def __init__(self, api_path: str) -> None:
        super().__init__()
        self.api_path = api_path

    def decode_request(self, request: Any, context_kwargs: dict | None = None) -> Any:
        return request

    def encode_response(self, output: Any, context_kwargs: dict | None = None) -> Any:
        return output


class _FrontedFastAPI(FastAPI):
    """FastAPI with a front router: ``front_factory(fastapi_call)`` serves every ASGI call first."""

    front_factory: Callable[[ASGIApp], ASGIApp]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        front = self.__dict__.get("_front")
        if front is None:  # built in each API server on its first call (after the fork)
            front = self.__dict__["_front"] = self.front_factory(super().__call__)
        await front(scope, receive, send)


class CompatLitServer(ls.LitServer):
    """A LitServer whose worker monitoring, start-up check and stop are hookserve's."""

    def __init__(
        self,
        *,
        launch_workers: Callable[[list], None] = lambda processes: None,
        on_serving: Callable[[], None] | None = None,
        **kwargs: Any,
    ) -> None:
        """``launch_workers(processes)`` starts every start-up worker, waits until they are ready (or
        raises), and keeps their processes in ``processes``, the list LitServe's shutdown stops."""
        super().__init__(_Placeholder(), accelerator="cpu", devices=1, workers_per_device=1, **kwargs)
        self._launch_workers = launch_workers
        self._on_serving = on_serving
        self._api_servers: dict[int, Any] = {}
        self._api_server_launch: tuple[tuple, dict] | None = None
        self.app.user_middleware = [m for m in self.app.user_middleware if m.cls is not GZipMiddleware]

    # -- touch point 7
    def serve_first(self, front_factory: Callable[[ASGIApp], ASGIApp]) -> None:
        """Route every request through ``front_factory(fastapi_app)`` in each API server."""
        self.app.__class__ = _FrontedFastAPI
        self.app.front_factory = front_factory

    # -- touch point 1: called by run() once the API servers are up
    def _start_worker_monitoring(self, manager: Any, uvicorn_workers: dict) -> None:
        self._api_servers = uvicorn_workers  # touch point 8: the dict run()'s shutdown stops
        if self._on_serving is not None:
            self._on_serving()

    # -- touch point 2
    def verify_worker_status(self) -> None:
        """Nothing left to wait for: :meth:`launch_inference_worker` returned once all were ready."""

    # -- touch point 3
    def launch_inference_worker(self, lit_api: LitAPI) -> list:
        self._launch_workers(self.inference_workers)
        return []  # already in self.inference_workers

    # -- touch point 4
    def request_stop(self) -> bool:
        """End ``run()`` gracefully. False while it is still starting (the event does not exist yet)."""
        event = getattr(self, "_shutdown_event", None)
        if event is None:
            return False
        # If the manager process holding the event is gone (or shut down, its socket file removed),
        # run()'s wait on it has failed or ended already.
        with contextlib.suppress(OSError, EOFError):
            event.set()
        return True

    # -- touch point 8
    def api_server_processes(self) -> dict[int, mp.Process]:
        """The API-server processes LitServe forked (and will stop at shutdown), by index."""
        return {i: p for i, p in self._api_servers.items() if isinstance(p, mp.process.BaseProcess)}

    def _start_server(
        self, port: int, count: int, log_level: str, sockets: list, *args: Any, **kwargs: Any
    ) -> dict:
        self._api_server_launch = ((port, 1, log_level, sockets, *args), kwargs)
        servers = {index: self._fork_api_server() for index in range(count)}
        for index, process in servers.items():
            process.name = f"LitServer-{index}"
        return servers

    def _fork_api_server(self) -> Any:
        """Fork one API server with LitServe's call; over a socket of its own where the kernel allows."""
        if self._api_server_launch is None:
            raise RuntimeError("no API server was started yet")
        (port, _, log_level, sockets, *args), kwargs = self._api_server_launch
        own = reuseport_twins(sockets) if reuseport_wanted(sockets) else []
        try:
            forked = super()._start_server(port, 1, log_level, own or sockets, *args, **kwargs)
            return next(iter(forked.values()))
        finally:
            for sock in own:  # the child has its copy; later forks must not inherit this one
                sock.close()

    def relaunch_api_server(self, index: int, dead: mp.Process) -> mp.Process:
        """Fork API server ``index`` anew, as LitServe forked it: the same app, a socket of its own."""
        process = self._fork_api_server()
        process.name = dead.name
        self._api_servers[index] = process
        return process


def reuseport_wanted(sockets: list[socket.socket]) -> bool:
    """Whether each API server gets its own ``SO_REUSEPORT`` socket (``HOOKSERVE_REUSEPORT=0``: no)."""
    return (
        hasattr(socket, "SO_REUSEPORT")
        and os.environ.get("HOOKSERVE_REUSEPORT") != "0"
        and all(
            isinstance(sock, socket.socket) and sock.family in (socket.AF_INET, socket.AF_INET6)
            for sock in sockets
        )
    )


def reuseport_twins(sockets: list[socket.socket]) -> list[socket.socket]:
    """New sockets bound with ``SO_REUSEPORT`` to the addresses of ``sockets``, for one API server.

    Why: over one shared listening socket, whichever API server wakes first accepts every pending
    connection (uvloop drains the queue), so a burst of clients lands mostly on one process: 237 of 256
    connections in one measured flood, one server at 100 % CPU while the other idled. With a socket per
    server the kernel spreads connections over them by their address hash. LitServe's shared socket
    stays bound and never listens; it is marked ``SO_REUSEPORT`` so that the twins can bind beside it.
    The cost: connections still in a dying server's accept queue are reset, where a shared queue would
    have handed them to a sibling (Linux ≥ 5.14 migrates them with ``net.ipv4.tcp_migrate_req=1``).
    """
    twins = []
    for shared in sockets:
        shared.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        twin = socket.socket(shared.family, shared.type)
        twin.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        twin.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if shared.family == socket.AF_INET6:  # as uvicorn bound the shared one
            twin.setsockopt(
                socket.IPPROTO_IPV6,
                socket.IPV6_V6ONLY,
                shared.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY),
            )
        twin.bind(shared.getsockname())
        twin.set_inheritable(True)
        twins.append(twin)
    return twins
