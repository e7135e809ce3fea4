"""The one door to LitServe (pinned: 0.2.19). Every use of something outside its documented API is here.

hookserve uses LitServe for what it does well: spawning inference workers (``LitAPI`` + ``LitLoop``),
forking uvicorn API servers from one FastAPI app, and its shutdown sequence. It does not use
LitServe's request path: predict routes are served by :mod:`service.http.front`, and requests reach
workers over :mod:`service.messages` frames rather than LitServe's queues. Each touch point below has
a test in ``tests/test_litserve_compat.py`` that fails loudly if an upgrade moves it:

1. ``LitServer._start_worker_monitoring`` is replaced: LitServe's monitor shuts the whole server down
   when one worker dies; :mod:`service.supervisor` restarts it instead.
2. ``LitServer.verify_worker_status`` is replaced: start-up waits for every worker of every model
   (LitServe waits for any one).
3. ``LitServer.launch_single_inference_worker`` and ``LitServer.inference_workers`` let the
   supervisor start a replacement worker that LitServe's shutdown will also stop.
4. ``LitServer._shutdown_event`` ends ``run()`` (our SIGTERM drain sets it). It lives in LitServe's
   queue manager process: when a stop finds that process gone (every process of the group got SIGTERM),
   the wait on it in ``run()`` raises one of :data:`MANAGER_GONE_ERRORS`, and only those.
5. LitServe appends a ``GZipMiddleware`` to every app; it is removed (prediction bodies are small, and
   gzip costs CPU on the hot path).
6. ``RoutelessSpec`` is a ``LitSpec`` without endpoints, so LitServe registers no route of its own for
   a model's ``api_path``; the ``LITSERVE_WORKER_ID`` variable names the worker inside its process.
7. LitServe builds the FastAPI app that uvicorn runs (``LitServer.app``, copied per API server). Its
   class is swapped for a subclass that hands each request to hookserve's router *before* FastAPI's
   own stack (telemetry, error and body-limit middleware, routing): the predict route costs only
   what it needs. Everything the router does not answer goes through FastAPI unchanged.
8. ``LitServer._start_server(port, n, log_level, sockets, worker_type, **kwargs)`` forks ``n`` API
   servers, each a uvicorn server over its own copy of the app and the listening socket that ``run()``
   bound once, and returns them as ``{index: process}``. Its arguments are kept, so that a replacement is
   started by the same call with ``n = 1`` (same app, same socket; LitServe numbers it 0, a number
   hookserve's API servers do not use). ``run()`` hands the same ``uvicorn_workers`` dict to
   ``_start_worker_monitoring`` and to its shutdown: a replacement put in that dict is stopped by
   LitServe's shutdown like the original.
9. LitServe's worker process calls ``lit_api.setup(device)`` and then the API's loop as
   ``loop(lit_api, <its private queues and status objects>...)``. :class:`_WorkerLoop` takes only
   ``lit_api`` (whatever else is passed), so hookserve's worker (:class:`ServedWorker`: ``setup`` and
   ``serve``) is shaped by nothing of LitServe. LitServe's own queues are never read.

The rest of hookserve sees a :class:`CompatLitServer` that takes :class:`ServedWorker` objects and knows
nothing of ``LitAPI``, ``LitLoop`` or ``LitSpec``.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import os
import time
from collections.abc import Callable
from typing import Any, Protocol

import litserve as ls
from fastapi import FastAPI
from litserve import LitAPI
from litserve.loops.base import LitLoop
from litserve.specs.base import LitSpec
from litserve.utils import WorkerSetupStatus
from starlette.middleware.gzip import GZipMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["MANAGER_GONE_ERRORS", "CompatLitServer", "ServedWorker"]
logger = logging.getLogger(__name__)
WORKER_ID_ENV = "LITSERVE_WORKER_ID"
# Touch point 4: what a call on the queue manager's proxies raises once the manager process has died.
MANAGER_GONE_ERRORS: tuple[type[Exception], ...] = (EOFError, ConnectionError)


class ServedWorker(Protocol):
    """What hookserve hands LitServe to run in each inference-worker process (pickled into it)."""

    model_name: str

    def setup(self, worker_id: int) -> None:
        """Load and warm up; raising marks the worker failed."""

    def serve(self) -> None:
        """Serve requests until the process is stopped."""


def _worker_id() -> int:
    """This inference worker's index among its model's workers (LitServe sets it before ``setup``)."""
    return int(os.environ.get(WORKER_ID_ENV, "0"))


class _WorkerLoop(LitLoop):
    """Touch point 9: LitServe's entry into the worker once setup is done; only ``lit_api`` is used."""

    def __call__(self, lit_api: _LitWorker, *_litserve_internals: Any, **_more: Any) -> None:
        lit_api.worker.serve()


class _LitWorker(LitAPI):
    """A ``LitAPI`` that runs a :class:`ServedWorker`; LitServe's batching settings are unused."""

    def __init__(self, worker: ServedWorker, api_path: str) -> None:
        super().__init__(spec=RoutelessSpec(api_path), loop=_WorkerLoop())
        self.worker = worker

    def setup(self, device: str) -> None:
        self.worker.setup(_worker_id())  # each worker places itself on its configured device

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

    startup_timeout_s = 600.0

    def __init__(
        self,
        workers: list[tuple[ServedWorker, str]],
        *,
        on_serving: Callable[[], None] | None = None,
        **kwargs: Any,
    ) -> None:
        """``workers``: each served worker with the route name that groups its processes."""
        self._lit_apis = {id(worker): _LitWorker(worker, path) for worker, path in workers}
        super().__init__(list(self._lit_apis.values()), **kwargs)
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
        deadline = time.monotonic() + self.startup_timeout_s
        while True:
            states = dict(self.workers_setup_status)
            failed = sorted(k for k, v in states.items() if v == WorkerSetupStatus.ERROR)
            if failed:
                raise RuntimeError(
                    f"worker(s) failed to start: {', '.join(failed)} (the cause is logged above)"
                )
            if states and all(v == WorkerSetupStatus.READY for v in states.values()):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"workers not ready after {self.startup_timeout_s:.0f} s: {states}")
            time.sleep(0.05)

    # -- touch point 3
    def worker_processes(self) -> list[mp.Process]:
        """The inference worker processes LitServe started (and will stop at shutdown)."""
        return list(getattr(self, "inference_workers", []))

    def relaunch_worker(self, served: ServedWorker, worker: int, dead: mp.Process) -> mp.Process:
        """Start a new process for worker ``worker`` of ``served`` in place of ``dead``."""
        process = self.launch_single_inference_worker(self._lit_apis[id(served)], worker)
        workers = self.inference_workers
        workers[workers.index(dead)] = process
        return process

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
        return super()._start_server(port, count, log_level, sockets, *args, **kwargs)

    def relaunch_api_server(self, index: int, dead: mp.Process) -> mp.Process:
        """Fork API server ``index`` anew, as LitServe forked it: the same app on the same socket."""
        if self._api_server_launch is None:
            raise RuntimeError("no API server was started yet")
        args, kwargs = self._api_server_launch
        (process,) = super()._start_server(*args, **kwargs).values()
        process.name = dead.name
        self._api_servers[index] = process
        return process
