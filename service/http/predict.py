"""``POST /v1/models/{name}:predict`` for one model, as a plain ASGI route.

In order: API key (401), content type (415), body size (413), drain (503), body validation (422),
admission (503 + Retry-After), then the request goes to a worker and its answer is framed into the
response without re-serializing it. The whole request is bounded by its deadline (504). Every answer,
whatever its status, is counted in ``hookserve_requests_total`` and timed.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
import time
from dataclasses import dataclass

import numpy as np
from starlette.types import Receive, Send

from models.base import InputSpec
from service.http.admission import AdmissionGate, DrainSwitch
from service.http.asgi import header, read_body, send_error, send_response
from service.http.codec import ClientError, decode_v1
from service.http.worker_client import ModelWorkers, WorkerUnavailable
from service.monitoring.metrics import REJECTED, REQUEST_DURATION, REQUESTS

logger = logging.getLogger(__name__)
RETRY_AFTER = [(b"retry-after", b"1")]
_uids = itertools.count()


def predict_path(model: str) -> str:
    """The one place the V1 predict URL is built."""
    return f"/v1/models/{model}:predict"


def is_json(content_type: bytes | None) -> bool:
    """JSON or unspecified (clients such as curl -d and tritonclient may send none)."""
    if content_type is None:
        return True
    media = content_type.split(b";", 1)[0].strip().lower()
    return media == b"application/json" or media.endswith(b"+json")


@dataclass(frozen=True)
class RouteSettings:
    """What a predict route needs to know, fixed at start-up."""

    model: str
    version: str
    input_spec: InputSpec
    max_instances: int
    request_timeout_s: float
    max_body_bytes: int
    api_key: bytes | None


class RequestCounter:
    """``hookserve_requests_total`` and the request-duration histogram for one model label."""

    def __init__(self, model: str) -> None:
        self.model = model
        self._by_code: dict[int, object] = {}
        self._duration = REQUEST_DURATION.labels(model)

    def record(self, status: int, seconds: float) -> None:
        child = self._by_code.get(status)
        if child is None:
            child = self._by_code[status] = REQUESTS.labels(self.model, str(status))
        child.inc()  # type: ignore[attr-defined]
        self._duration.observe(seconds)


def authorized(scope: dict, api_key: bytes | None) -> bool:
    """``Authorization: Bearer <key>``, compared in constant time; always true when no key is set."""
    if api_key is None:
        return True
    given = header(scope, b"authorization") or b""
    scheme, _, token = given.partition(b" ")
    return scheme.lower() == b"bearer" and secrets.compare_digest(token.strip(), api_key)


UNAUTHORIZED = ClientError(401, "missing or invalid API key: send 'Authorization: Bearer <key>'")


class PredictRoute:
    """The predict route of one model, in one API-server process."""

    def __init__(
        self, settings: RouteSettings, workers: ModelWorkers, gate: AdmissionGate, drain: DrainSwitch
    ) -> None:
        self.settings = settings
        self.workers = workers
        self.gate = gate
        self.drain = drain
        self.counter = RequestCounter(settings.model)
        self._overload = REJECTED.labels(settings.model, "overload")
        self._draining = REJECTED.labels(settings.model, "draining")
        self._prefix = (
            f'{{"model":"{settings.model}","model_version":"{settings.version}","predictions":'
        ).encode()

    async def __call__(self, scope: dict, receive: Receive, send: Send) -> None:
        start = time.perf_counter()
        try:
            status = await self._answer(scope, receive, send)
        except ClientError as error:
            status = error.status
            headers = [(b"www-authenticate", b"Bearer")] if status == 401 else []
            await send_error(send, status, error.message, headers)
        except WorkerUnavailable as error:
            status = 503
            await send_error(send, status, str(error), RETRY_AFTER)
        except Exception:
            logger.exception("predict %s failed in the API server", self.settings.model)
            status = 500
            await send_error(send, status, "internal server error")
        self.counter.record(status, time.perf_counter() - start)

    async def _answer(self, scope: dict, receive: Receive, send: Send) -> int:
        settings = self.settings
        if scope["method"] != "POST":
            raise ClientError(405, "use POST for predictions")
        if not authorized(scope, settings.api_key):
            raise UNAUTHORIZED
        content_type = header(scope, b"content-type")
        if not is_json(content_type):
            found = content_type.decode(errors="replace") if content_type else ""
            raise ClientError(415, f"Content-Type must be application/json, got {found}")
        body = await read_body(scope, receive, settings.max_body_bytes)
        if self.drain.draining:
            self._draining.inc()
            raise WorkerUnavailable("server is shutting down; retry on another replica")
        instances = decode_v1(body, settings.input_spec, settings.max_instances)
        if not self.gate.try_enter():
            self._overload.inc()
            raise WorkerUnavailable(
                f"too many requests queued for {settings.model} (limit {self.gate.limit}); retry"
            )
        try:
            status, payload = await self._run(instances)
        finally:
            self.gate.leave()
        if status == 200:
            await send_response(send, 200, self._prefix + payload + b"}")
        else:
            await send_error(send, status, payload.decode())
        return status

    async def _run(self, instances: np.ndarray) -> tuple[int, bytes]:
        """Send the instances to a worker and wait for its answer, at most until the deadline."""
        timeout = self.settings.request_timeout_s
        now = time.monotonic()
        link = await self.workers.pick()
        future = link.submit((next(_uids), now + timeout, now, instances))
        timer = asyncio.get_running_loop().call_later(timeout, _expire, future, timeout)
        try:
            return await future  # a reply that arrives after the deadline is dropped by the link
        finally:
            timer.cancel()


def _expire(future: asyncio.Future, timeout: float) -> None:
    if not future.done():
        future.set_result((504, f"request exceeded its {timeout:g} s deadline".encode()))
