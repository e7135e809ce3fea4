"""What every inference route does, whatever its protocol (V1 predict, Open Inference Protocol V2 infer).

In order: request id, API key (401), body size (413), drain (503), the protocol's decoding (4xx),
admission (503 + Retry-After), then the instances go to a worker and its answer is encoded by the
protocol. The whole request is bounded by its deadline (504). Every answer, whatever its status, is
counted in ``hookserve_requests_total`` (and by protocol) and timed; every error body is
``{"error": ..., "request_id": ...}``, and the request id is echoed in ``X-Request-ID``.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson
from starlette.types import Receive, Send

from models.base import InputSpec, OutputSpec
from service.http.admission import AdmissionGate, DrainSwitch, Rejected
from service.http.asgi import Headers, header, read_body, send_response
from service.http.codec import ClientError
from service.http.worker_client import ModelWorkers, WorkerUnavailable
from service.messages import InferRequest
from service.monitoring.metrics import PROTOCOL_REQUESTS, REJECTED, REQUEST_DURATION, REQUESTS

if TYPE_CHECKING:
    from service.tracing.request_spans import RequestTrace, RequestTracer

logger = logging.getLogger(__name__)
RETRY_AFTER = (b"retry-after", b"1")
MAX_REQUEST_ID = 128
_uids = itertools.count()


@dataclass(frozen=True)
class RouteSettings:
    """What an inference route needs to know about its model, fixed at start-up."""

    model: str
    version: str
    input_spec: InputSpec
    output_spec: OutputSpec
    max_instances: int
    request_timeout_s: float
    max_body_bytes: int
    api_key: bytes | None


@dataclass
class Decoded:
    """A protocol's reading of a request: the instances, what to answer in, and what it must echo."""

    instances: np.ndarray
    answer_format: int
    context: Any = None


@dataclass(frozen=True)
class Answer:
    body: bytes
    content_type: bytes = b"application/json"
    headers: Headers = ()


class RequestCounter:
    """``hookserve_requests_total``, the duration histogram and the per-protocol count for one model."""

    def __init__(self, model: str, protocol: str) -> None:
        self.model = model
        self._by_code: dict[int, Any] = {}
        self._duration = REQUEST_DURATION.labels(model)
        self._protocol = PROTOCOL_REQUESTS.labels(model, protocol)

    def record(self, status: int, seconds: float) -> None:
        child = self._by_code.get(status)
        if child is None:
            child = self._by_code[status] = REQUESTS.labels(self.model, str(status))
        child.inc()
        self._protocol.inc()
        self._duration.observe(seconds)


def request_id_of(scope: dict) -> str:
    """The client's ``X-Request-ID`` when it is sane (printable ASCII, at most 128 bytes), else a new one."""
    given = header(scope, b"x-request-id")
    if given and len(given) <= MAX_REQUEST_ID and given.isascii() and given.decode().isprintable():
        return given.decode()
    return uuid.uuid4().hex


def authorized(scope: dict, api_key: bytes | None) -> bool:
    """``Authorization: Bearer <key>``, compared in constant time; always true when no key is set."""
    if api_key is None:
        return True
    given = header(scope, b"authorization") or b""
    scheme, _, token = given.partition(b" ")
    return scheme.lower() == b"bearer" and secrets.compare_digest(token.strip(), api_key)


async def send_error(send: Send, status: int, message: str, request_id: str, headers: Headers = ()) -> None:
    body = orjson.dumps({"error": message, "request_id": request_id})
    await send_response(send, status, body, headers=[(b"x-request-id", request_id.encode()), *headers])


class InferenceRoute:
    """One model's inference route in one API-server process; a protocol subclass decodes and encodes."""

    protocol = "v1"

    def __init__(
        self, settings: RouteSettings, workers: ModelWorkers, gate: AdmissionGate, drain: DrainSwitch
    ) -> None:
        self.settings = settings
        self.workers = workers
        self.gate = gate
        self.drain = drain
        self.counter = RequestCounter(settings.model, self.protocol)
        self.tracer: RequestTracer | None = None  # set in each API server when tracing is on
        self._draining = REJECTED.labels(settings.model, "draining")

    # -- the protocol's part
    def check_request(self, scope: dict) -> None:
        """Raise :class:`ClientError` for what the headers alone show is wrong (e.g. content type)."""

    def decode(self, scope: dict, body: bytes) -> Decoded:
        raise NotImplementedError

    def encode(self, decoded: Decoded, payload: bytes, request_id: str) -> Answer:
        raise NotImplementedError

    # -- the pipeline
    async def __call__(self, scope: dict, receive: Receive, send: Send) -> None:
        start = time.perf_counter()
        request_id = request_id_of(scope)
        traced = None if self.tracer is None else self._start_trace(scope, request_id)
        try:
            status = await self._answer(scope, receive, send, request_id, traced)
        except ClientError as error:
            status = error.status
            extra = [(b"www-authenticate", b"Bearer")] if status == 401 else []
            await send_error(send, status, error.message, request_id, extra)
        except Rejected as rejection:  # refused at the door (issue 17): Retry-After from the prediction
            status = 503
            await send_error(send, status, str(rejection), request_id, rejection.headers)
        except WorkerUnavailable as error:
            status = 503
            await send_error(send, status, str(error), request_id, [RETRY_AFTER])
        except Exception:
            logger.exception("request %s to %s failed in the API server", request_id, self.settings.model)
            status = 500
            await send_error(send, status, "internal server error", request_id)
        self.counter.record(status, time.perf_counter() - start)
        if traced is not None:
            traced.finish(status)

    def _start_trace(self, scope: dict, request_id: str) -> RequestTrace | None:
        attributes = {
            "http.request.method": scope["method"],
            "url.path": scope["path"],
            "hookserve.request_id": request_id,
            "hookserve.model": self.settings.model,
            "hookserve.protocol": self.protocol,
        }
        return self.tracer.start_http(scope, attributes)

    async def _answer(
        self, scope: dict, receive: Receive, send: Send, request_id: str, traced: RequestTrace | None
    ) -> int:
        settings = self.settings
        if scope["method"] != "POST":
            raise ClientError(405, "use POST for inference")
        if not authorized(scope, settings.api_key):
            raise ClientError(401, "missing or invalid API key: send 'Authorization: Bearer <key>'")
        self.check_request(scope)
        body = await read_body(scope, receive, settings.max_body_bytes)
        if self.drain.draining:
            self._draining.inc()
            raise WorkerUnavailable("server is shutting down; retry on another replica")
        if traced is None:
            decoded = self.decode(scope, body)
            instances = self._admit(decoded)
        else:
            with traced.phase("decode"):
                decoded = self.decode(scope, body)
            with traced.phase("admission"):
                instances = self._admit(decoded)
        try:
            status, payload = await self._run(decoded, request_id, traced)
        finally:
            self.gate.leave(instances)
        if status != 200:
            await send_error(send, status, payload.decode(), request_id)
            return status
        if traced is not None:
            with traced.phase("answer"):
                answer = self.encode(decoded, payload, request_id)
        else:
            answer = self.encode(decoded, payload, request_id)
        headers = [(b"x-request-id", request_id.encode()), *answer.headers]
        await send_response(send, 200, answer.body, answer.content_type, headers)
        return 200

    def _admit(self, decoded: Decoded) -> int:
        """Admission by predicted completion (the gate counts refusals); the instances admitted."""
        instances = len(decoded.instances)
        if (rejection := self.gate.admit(instances)) is not None:
            raise rejection
        return instances

    async def _run(self, decoded: Decoded, request_id: str, traced: RequestTrace | None) -> tuple[int, bytes]:
        """Send the instances to a worker and wait for its answer, at most until the deadline."""
        timeout = self.settings.request_timeout_s
        now = time.monotonic()
        link = await self.workers.pick()
        trace = None if traced is None else traced.traceparent()
        request = InferRequest(
            next(_uids), now + timeout, now, decoded.instances, decoded.answer_format, request_id, trace
        )
        future = link.submit(request)
        timer = asyncio.get_running_loop().call_later(timeout, _expire, future, timeout)
        try:
            return await future  # a reply that arrives after the deadline is dropped by the link
        finally:
            timer.cancel()


def _expire(future: asyncio.Future, timeout: float) -> None:
    if not future.done():
        future.set_result((504, f"request exceeded its {timeout:g} s deadline".encode()))
