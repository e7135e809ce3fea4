"""What every inference request goes through, whatever its protocol (V1 predict, V2 infer, gRPC).

:class:`InferencePipeline` is the protocol-neutral core, callable without ASGI: drain (503), admission
(503 + Retry-After), a worker, and the deadline (504). :class:`InferenceRoute` puts HTTP around it, in
order: method (405), API key (401), content type (415), body size (413), the protocol's decoding (4xx),
the pipeline, then the protocol encodes the worker's answer.

The deadline (``server.request_timeout_s``) starts when the request arrives, before its body is read,
so it bounds the whole request. Every answer, whatever its status, is counted in
``hookserve_requests_total`` (and by protocol) and timed; every error is written by
:func:`service.http.errors.send_error`.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from starlette.types import Receive, Send

from models.base import InputSpec, OutputSpec
from service.http.admission import LOOP_TURNS, AdmissionGate, DrainSwitch, Rejected
from service.http.asgi import JSON, Headers, header, media_type, send_response
from service.http.auth import require_api_key
from service.http.errors import ClientError, request_id_of, send_error
from service.http.instance_estimate import InstanceEstimate
from service.http.middleware import declared_length, read_body
from service.http.worker_client import ModelWorkers, WorkerUnavailable
from service.messages import InferRequest
from service.monitoring.metrics import PROTOCOL_REQUESTS, REJECTED, REQUEST_DURATION, REQUESTS

if TYPE_CHECKING:
    from service.tracing.request_spans import RequestTrace, RequestTracer

logger = logging.getLogger(__name__)
RETRY_AFTER = (b"retry-after", b"1")
ALLOW_POST = ((b"allow", b"POST"),)
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
    priority_levels: int = 1
    default_priority: int = 1


@dataclass
class Decoded:
    """A protocol's reading of a request: the instances, what to answer in, and what it must echo."""

    instances: np.ndarray
    answer_format: int
    context: Any = None
    timeout_s: float | None = None  # the request's own deadline, shorter than the model's
    priority: int | None = None  # 1 is the highest; None: the model's default


@dataclass(frozen=True)
class Answer:
    body: bytes
    content_type: bytes = JSON
    headers: Headers = ()


class RequestCounter:
    """``hookserve_requests_total``, the duration histogram and the per-protocol count for one model."""

    def __init__(self, model: str, protocol: str, version: str = "") -> None:
        self.model = model
        self.version = version  # "" for requests that reached no served version (unknown model)
        self._by_code: dict[int, Any] = {}
        self._duration = REQUEST_DURATION.labels(model, version)
        self._protocol = PROTOCOL_REQUESTS.labels(model, version, protocol)

    def record(self, status: int, seconds: float) -> None:
        child = self._by_code.get(status)
        if child is None:
            child = self._by_code[status] = REQUESTS.labels(self.model, self.version, str(status))
        child.inc()
        self._protocol.inc()
        self._duration.observe(seconds)


class InferencePipeline:
    """One model's path from decoded instances to the worker's answer, in one API-server process."""

    def __init__(
        self, settings: RouteSettings, workers: ModelWorkers, gate: AdmissionGate, drain: DrainSwitch
    ) -> None:
        self.settings = settings
        self.workers = workers
        self.gate = gate
        self.drain = drain
        self._draining = REJECTED.labels(settings.model, "draining")

    def bind(self, settings: RouteSettings, workers: ModelWorkers, gate: AdmissionGate) -> None:
        """Serve from now on through another unit of the same model version (a reload)."""
        self.settings, self.workers, self.gate = settings, workers, gate

    async def infer(
        self, decoded: Decoded, request_id: str, arrived: float, traced: RequestTrace | None = None
    ) -> tuple[int, bytes]:
        """The worker's ``(status, payload)``: its answer for 200, else an error message (UTF-8).

        ``arrived`` is the ``time.monotonic()`` at which the request arrived: its deadline (the model's
        ``request_timeout_s``, or the request's own shorter one) runs from there (504 past it). Raises
        :class:`WorkerUnavailable` (503) when draining or without a live worker, and :class:`Rejected`
        (503 + ``Retry-After``) when admission refuses it. Records nothing: the caller counts the answer.
        """
        if self.drain.draining:
            self._draining.inc()
            raise WorkerUnavailable("server is shutting down; retry on another replica")
        # The gate and workers are read together, in one step of the event loop: a reload that rebinds
        # this route to a new version's unit (service.pool.manager) sends this request to one unit,
        # whose gate counts it until it is answered, so the old unit is stopped only after it.
        gate, workers = self.gate, self.workers
        priority = decoded.priority or self.settings.default_priority
        instances = len(decoded.instances)
        if traced is None:
            self._admit(gate, instances, priority, decoded.timeout_s, arrived)
        else:
            with traced.phase("admission"):
                self._admit(gate, instances, priority, decoded.timeout_s, arrived)
        status = 0
        try:
            status, payload = await self._run(workers, decoded, request_id, arrived, priority, traced)
            return status, payload
        finally:
            # a request the worker shed (503: it could not meet the target) counts as a late answer
            answered_s = math.inf if status == 503 else time.monotonic() - arrived
            gate.leave(instances, priority, answered_s)

    @staticmethod
    def _admit(
        gate: AdmissionGate, instances: int, priority: int, timeout_s: float | None, arrived: float
    ) -> None:
        waited_s = time.monotonic() - arrived
        if (rejection := gate.admit(instances, priority, timeout_s, waited_s)) is not None:
            raise rejection  # counted by the gate, by reason

    def _answer_by(self, arrived: float) -> float:
        """When the worker must be done for the answer to meet the latency target: the target from the
        arrival, less this API server's own two loop turns (before the request was read, while its
        answer is written). Past it the worker sheds the request. ``inf`` without a target."""
        gate = self.gate
        if gate.latency_target_s is None:
            return math.inf
        return arrived + gate.latency_target_s - LOOP_TURNS * gate.loop_lag.seconds()

    async def _run(
        self,
        workers: ModelWorkers,
        decoded: Decoded,
        request_id: str,
        arrived: float,
        priority: int,
        traced: RequestTrace | None,
    ) -> tuple[int, bytes]:
        """Send the instances to a worker and wait for its answer, at most until the deadline."""
        timeout = decoded.timeout_s or self.settings.request_timeout_s
        deadline = arrived + timeout
        link = await workers.pick()
        remaining = deadline - time.monotonic()
        if remaining <= 0:  # the body took the whole deadline to arrive: no worker time for it
            return _past_deadline(timeout)
        request = InferRequest(
            uid=next(_uids),
            deadline=deadline,
            enqueued_at=arrived,
            instances=decoded.instances,
            answer_format=decoded.answer_format,
            request_id=request_id,
            trace=None if traced is None else traced.traceparent(),
            priority=priority,
            answer_by=self._answer_by(arrived),
        )
        future = link.submit(request)
        timer = asyncio.get_running_loop().call_later(remaining, _expire, future, timeout)
        try:
            return await future  # a reply that arrives after the deadline is dropped by the link
        finally:
            timer.cancel()


def _past_deadline(timeout: float) -> tuple[int, bytes]:
    return 504, f"request exceeded its {timeout:g} s deadline".encode()


def _expire(future: asyncio.Future, timeout: float) -> None:
    if not future.done():
        future.set_result(_past_deadline(timeout))


class InferenceRoute(InferencePipeline):
    """The pipeline as one model's HTTP route (plain ASGI); a protocol subclass decodes and encodes."""

    protocol = "v1"
    accepted_types: tuple[bytes, ...] = (JSON,)  # besides none at all and any ``+json`` type

    def __init__(
        self, settings: RouteSettings, workers: ModelWorkers, gate: AdmissionGate, drain: DrainSwitch
    ) -> None:
        super().__init__(settings, workers, gate, drain)
        self.counter = RequestCounter(settings.model, self.protocol, settings.version)
        self.sizes = InstanceEstimate(settings.max_instances)  # for the refusal before the body is read
        self.tracer: RequestTracer | None = None  # set in each API server when tracing is on

    def bind(self, settings: RouteSettings, workers: ModelWorkers, gate: AdmissionGate) -> None:
        super().bind(settings, workers, gate)
        self.sizes.max_instances = settings.max_instances  # a reload may change it; the bytes stay alike

    # -- the protocol's part
    def decode(self, scope: dict, body: bytes) -> Decoded:
        raise NotImplementedError

    def encode(self, decoded: Decoded, payload: bytes, request_id: str) -> Answer:
        raise NotImplementedError

    # -- HTTP around the pipeline
    async def __call__(self, scope: dict, receive: Receive, send: Send) -> None:
        arrived = time.monotonic()
        request_id = request_id_of(scope)
        traced = None if self.tracer is None else self._start_trace(scope, request_id)
        try:
            status = await self._answer(scope, receive, send, request_id, arrived, traced)
        except ClientError as error:
            status = error.status
            await send_error(send, status, error.message, request_id, error.headers)
        except Rejected as rejection:  # refused at the door: Retry-After from the prediction
            status = 503
            await send_error(send, status, str(rejection), request_id, rejection.headers)
        except WorkerUnavailable as error:
            status = 503
            await send_error(send, status, str(error), request_id, [RETRY_AFTER])
        except Exception:
            logger.exception("request %s to %s failed in the API server", request_id, self.settings.model)
            status = 500
            await send_error(send, status, "internal server error", request_id)
        self.counter.record(status, time.monotonic() - arrived)
        if traced is not None:
            traced.finish(status)

    def _start_trace(self, scope: dict, request_id: str) -> RequestTrace | None:
        def attributes() -> dict[str, object]:  # built only for a sampled request
            return {
                "http.request.method": scope["method"],
                "url.path": scope["path"],
                "hookserve.request_id": request_id,
                "hookserve.model": self.settings.model,
                "hookserve.protocol": self.protocol,
            }

        return self.tracer.start_http(scope, attributes)

    async def _answer(
        self,
        scope: dict,
        receive: Receive,
        send: Send,
        request_id: str,
        arrived: float,
        traced: RequestTrace | None,
    ) -> int:
        settings = self.settings
        if scope["method"] != "POST":
            raise ClientError(405, "use POST for inference", ALLOW_POST)
        require_api_key(scope, settings.api_key)
        self.check_content_type(scope)
        # Refused before its body is read and decoded when the queue ahead and the request's likely size
        # miss the target: under a flood, refusals then cost no decoding (an unread body is discarded; the
        # connection stays open).
        likely = self.sizes.instances(declared_length(header(scope, b"content-length")))
        early = self.gate.refuse_early(self.priority_hint(scope), time.monotonic() - arrived, likely)
        if early is not None:
            raise early
        body = await read_body(scope, receive, settings.max_body_bytes)
        if traced is None:
            decoded = self.decode(scope, body)
        else:
            with traced.phase("decode"):
                decoded = self.decode(scope, body)
        self.sizes.learn(len(body), len(decoded.instances))
        status, payload = await self.infer(decoded, request_id, arrived, traced)
        if status != 200:  # a worker's 503 is a shed request: it may be retried
            headers = (RETRY_AFTER,) if status == 503 else ()
            await send_error(send, status, payload.decode(errors="replace"), request_id, headers)
            return status
        if traced is None:
            answer = self.encode(decoded, payload, request_id)
        else:
            with traced.phase("answer"):
                answer = self.encode(decoded, payload, request_id)
        headers = [(b"x-request-id", request_id.encode()), *answer.headers]
        await send_response(send, 200, answer.body, answer.content_type, headers)
        return 200

    def priority_hint(self, scope: dict) -> int:
        """The request's priority as known before its body is read; 1 (the least work ahead) unless the
        protocol carries it in a header."""
        return 1

    def check_content_type(self, scope: dict) -> None:
        """415 unless the body is one of :attr:`accepted_types`, any ``+json``, or untyped (tritonclient)."""
        media = media_type(scope)
        if media is None or media in self.accepted_types or media.endswith(b"+json"):
            return
        accepted = " or ".join(t.decode() for t in self.accepted_types)
        raise ClientError(415, f"Content-Type must be {accepted}, got {media.decode(errors='replace')}")
