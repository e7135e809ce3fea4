"""``inference.GRPCInferenceService``: the Open Inference Protocol V2 over gRPC, on the REST routes' models.

Health, readiness and metadata say what their REST twins say (``/v2/health/*``, ``/v2``,
``/v2/models/{m}``); ``ModelInfer`` decodes with the REST codec (:mod:`service.grpc.tensors`) and
sends the instances down the same pipeline, so gRPC requests batch with V1 and V2 REST ones.
``ModelStreamInfer`` (Triton's, not in KServe's proto) answers each request of a stream the same way.

Errors are gRPC status codes carrying the message REST would send, mapped from the HTTP status
hookserve uses internally (which is also what ``hookserve_requests_total``'s ``code`` records):
INVALID_ARGUMENT for anything wrong with a request, NOT_FOUND for an unknown model or version,
UNAUTHENTICATED without the key, UNAVAILABLE for overload, drain or no live worker, DEADLINE_EXCEEDED
past the server's deadline or the client's own, INTERNAL only for a fault of the server. The request
id (the client's ``x-request-id`` metadata, else a new one) comes back as the answer's ``id`` when
the request had none, and in the trailing metadata of an error.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import grpc
from google.protobuf.message import DecodeError

from service.grpc.proto import grpc_predict_v2_pb2 as pb
from service.grpc.proto import grpc_predict_v2_pb2_grpc as pb_grpc
from service.grpc.proto import triton_stream_pb2 as stream_pb
from service.grpc.tensors import decode_infer_request, encode_infer_response
from service.http.auth import credential_matches
from service.http.errors import ClientError, sane_request_id
from service.http.inference import InferencePipeline, RequestCounter, RouteSettings
from service.http.v2 import model_metadata
from service.http.worker_client import WorkerUnavailable

if TYPE_CHECKING:
    from service.http.route_table import RouteTable
    from service.pool.table import ServedModel
    from service.tracing.request_spans import RequestTrace, RequestTracer

logger = logging.getLogger(__name__)
PROTOCOL = "grpc"
UNKNOWN_MODEL = "unknown"  # the model label of requests for models that are not served (as for REST)
SERVICE_NAME = "inference.GRPCInferenceService"
CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.INVALID_ARGUMENT,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}
FINAL_RESPONSE = "triton_final_response"  # Triton's answer parameter: no more answers to this request
STREAM_IN_FLIGHT = 64  # requests of one ModelStreamInfer stream in progress at once
AUTH_MESSAGE = "missing or invalid API key: send the metadata 'authorization: Bearer <key>'"


def inference_handlers(service: InferenceService) -> dict[str, grpc.RpcMethodHandler]:
    """The two inference methods, taking the request's bytes: the service parses them itself, so a
    corrupt message is INVALID_ARGUMENT (grpc's own deserializer would answer UNKNOWN). KServe's proto
    (the generated servicer) has no ``ModelStreamInfer``."""
    return {
        "ModelInfer": grpc.unary_unary_rpc_method_handler(
            service.infer_bytes, response_serializer=pb.ModelInferResponse.SerializeToString
        ),
        "ModelStreamInfer": grpc.stream_stream_rpc_method_handler(
            service.ModelStreamInfer, response_serializer=stream_pb.ModelStreamInferResponse.SerializeToString
        ),
    }


def grpc_code(status: int) -> grpc.StatusCode:
    """The gRPC code of an HTTP status: any other 4xx is the client's to fix, any other 5xx the server's."""
    code = CODES.get(status)
    if code is not None:
        return code
    return grpc.StatusCode.INVALID_ARGUMENT if 400 <= status < 500 else grpc.StatusCode.INTERNAL


@dataclass(frozen=True)
class GrpcModel:
    """One served model as gRPC sees it: its settings, its pipeline and its counters."""

    settings: RouteSettings
    pipeline: InferencePipeline
    counter: RequestCounter
    metadata: pb.ModelMetadataResponse
    unit: int

    @classmethod
    def build(
        cls, settings: RouteSettings, pipeline: InferencePipeline, unit: int, model: ServedModel
    ) -> GrpcModel:
        meta = model_metadata(settings, model.sorted_versions())
        metadata = pb.ModelMetadataResponse(
            name=meta["name"], versions=meta["versions"], platform=meta["platform"]
        )
        for kind in ("inputs", "outputs"):
            for tensor in meta[kind]:
                getattr(metadata, kind).add(**tensor)
        return cls(
            settings, pipeline, RequestCounter(settings.model, PROTOCOL, settings.version), metadata, unit
        )


class _Failed(Exception):
    """The request's answer is an error: ``status`` (HTTP) and a message for the client."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class InferenceService(pb_grpc.GRPCInferenceServiceServicer):
    """The V2 gRPC methods over the models one API-server process serves."""

    def __init__(
        self,
        routes: RouteTable,
        unit_ready: Callable[[int], bool],
        server_ready: Callable[[], bool],
        version: str,
        api_key: bytes | None,
    ) -> None:
        self.routes = routes  # the API server's, kept current by its router
        self.unit_ready = unit_ready
        self.server_ready = server_ready
        self.version = version
        self.api_key = api_key
        self._models: dict[tuple[int, str], GrpcModel] = {}  # by (unit, version), for the current table
        self._generation = -1
        self._unknown = RequestCounter(UNKNOWN_MODEL, PROTOCOL)
        self.tracer: RequestTracer | None = None  # set when tracing is on (traceparent in the metadata)

    # -- health (always open, like /v2/health/* and /health)
    async def ServerLive(self, request: pb.ServerLiveRequest, context) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: pb.ServerReadyRequest, context) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.server_ready())

    async def ModelReady(self, request: pb.ModelReadyRequest, context) -> pb.ModelReadyResponse:
        model = await self._model_or_abort(request.name, request.version, context)
        return pb.ModelReadyResponse(ready=self.unit_ready(model.unit))

    # -- metadata (needs the key when auth is on, like V1 metadata)
    async def ServerMetadata(self, request: pb.ServerMetadataRequest, context) -> pb.ServerMetadataResponse:
        await self._authorize_or_abort(context)
        return pb.ServerMetadataResponse(name="hookserve", version=self.version, extensions=[])

    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context) -> pb.ModelMetadataResponse:
        model = await self._model_or_abort(request.name, request.version, context)
        await self._authorize_or_abort(context)
        return model.metadata

    # -- inference
    async def ModelInfer(self, request: pb.ModelInferRequest, context) -> pb.ModelInferResponse:
        request_id = request_id_of(context)
        try:
            return await self._answer(request, context, request_id, "ModelInfer")
        except _Failed as failure:
            await context.abort(grpc_code(failure.status), failure.message, (("x-request-id", request_id),))
            raise  # abort raises; this line only tells type checkers so

    async def infer_bytes(self, data: bytes, context) -> pb.ModelInferResponse:
        """``ModelInfer`` as served: the message parsed here (see :func:`inference_handlers`)."""
        try:
            request = self._parse(data)
        except _Failed as failure:
            trailing = (("x-request-id", request_id_of(context)),)
            await context.abort(grpc_code(failure.status), failure.message, trailing)
            raise  # abort raises; this line only tells type checkers so
        return await self.ModelInfer(request, context)

    async def ModelStreamInfer(self, requests: AsyncIterator[bytes], context) -> None:
        """Triton's bidirectional stream: every request on it is answered on it as soon as its answer is
        ready, so answers may overtake each other (a client matches them by ``id``).

        Why it is here: one stream carries many requests without a call each, which is most of grpcio's
        per-request cost. Each request gets exactly one answer, marked ``triton_final_response`` as Triton
        marks a request's last. A failed request is answered in ``error_message`` (``"CODE: message
        (request id ID)"``, with the code its unary twin would get) and the stream goes on; only a missing
        key ends it (UNAUTHENTICATED). At most ``STREAM_IN_FLIGHT`` requests of one stream are in progress
        at once; past that the stream is not read, and HTTP/2's flow control holds the client back.
        """
        await self._authorize_or_abort(context)
        slots = asyncio.Semaphore(STREAM_IN_FLIGHT)
        writing = asyncio.Lock()  # one write at a time on a call

        async def answer(data: bytes) -> None:
            try:
                message = await self._stream_answer(data, context)
                async with writing:
                    await context.write(message)
            finally:
                slots.release()

        async with asyncio.TaskGroup() as group:  # the client leaving cancels what is still running
            async for data in requests:
                await slots.acquire()
                group.create_task(answer(data))

    async def _stream_answer(self, data: bytes, context) -> stream_pb.ModelStreamInferResponse:
        """The one answer to one request of a stream: its response, or its error in ``error_message``."""
        request, request_id = pb.ModelInferRequest(), ""
        try:
            request = self._parse(data)
            request_id = sane_request_id(request.id.encode(errors="replace") if request.id else None)
            response = await self._answer(request, context, request_id, "ModelStreamInfer")
            message = stream_pb.ModelStreamInferResponse(infer_response=response)
        except _Failed as failure:
            request_id = request_id or sane_request_id(None)
            message = stream_pb.ModelStreamInferResponse(
                error_message=f"{grpc_code(failure.status).name}: {failure.message} "
                f"(request id {request_id})",
                infer_response=pb.ModelInferResponse(
                    model_name=request.model_name,
                    model_version=request.model_version,
                    id=request.id or request_id,  # the id the client matches on, as for an answer
                ),
            )
        # Every answer is its request's last (no decoupled models): Triton's flag says so.
        message.infer_response.parameters[FINAL_RESPONSE].bool_param = True
        return message

    def _parse(self, data: bytes) -> pb.ModelInferRequest:
        """The request message, or :class:`_Failed` (400, counted) when its encoding is corrupt."""
        try:
            return pb.ModelInferRequest.FromString(data)
        except DecodeError:
            self._unknown.record(400, 0.0)
            raise _Failed(
                400, "the message is not a valid ModelInferRequest: its encoding is corrupt"
            ) from None

    async def _answer(
        self, request: pb.ModelInferRequest, context, request_id: str, method: str
    ) -> pb.ModelInferResponse:
        """One inference, counted and traced: the answer, or :class:`_Failed` (counted already)."""
        started, arrived = time.perf_counter(), time.monotonic()
        traced = None
        if self.tracer is not None:
            traced = self._start_trace(request.model_name, context, request_id, method)
        counter = self._unknown
        try:
            model = self._model(request.model_name, request.model_version, request_id)
            counter = model.counter
            response = await self._infer(model, request, context, request_id, arrived, traced)
        except _Failed as failure:
            counter.record(failure.status, time.perf_counter() - started)
            if traced is not None:
                traced.finish(failure.status, **{"rpc.grpc.status_code": grpc_code(failure.status).value[0]})
            raise
        counter.record(200, time.perf_counter() - started)
        if traced is not None:
            traced.finish(200, **{"rpc.grpc.status_code": 0})
        return response

    def _start_trace(self, model: str, context, request_id: str, method: str) -> RequestTrace | None:
        carrier = {}
        for key in ("traceparent", "tracestate"):
            if value := metadata_value(context, key):
                carrier[key] = value

        def attributes() -> dict[str, object]:  # built only for a sampled request
            return {
                "rpc.system": "grpc",
                "rpc.service": SERVICE_NAME,
                "rpc.method": method,
                "hookserve.request_id": request_id,
                "hookserve.model": model,
                "hookserve.protocol": PROTOCOL,
            }

        return self.tracer.start(f"{SERVICE_NAME}/{method}", carrier, attributes)

    async def _infer(
        self,
        model: GrpcModel,
        request: pb.ModelInferRequest,
        context,
        request_id: str,
        arrived: float,
        traced: RequestTrace | None = None,
    ) -> pb.ModelInferResponse:
        """The answer, or :class:`_Failed` saying what went wrong."""
        try:
            if not self._authorized(context):
                raise ClientError(401, AUTH_MESSAGE)
            decoded = decode_infer_request(request, model.settings)
            remaining = context.time_remaining()  # the client's deadline, if it set one
            if remaining is None:
                status, payload = await model.pipeline.infer(decoded, request_id, arrived, traced)
            else:
                async with asyncio.timeout(remaining):
                    status, payload = await model.pipeline.infer(decoded, request_id, arrived, traced)
            if status != 200:
                raise _Failed(status, payload.decode(errors="replace"))
            return encode_infer_response(payload, decoded, model.settings, request_id)
        except ClientError as error:
            raise _Failed(error.status, error.message) from None
        except WorkerUnavailable as error:
            raise _Failed(503, str(error)) from None
        except TimeoutError:
            raise _Failed(504, "the request did not finish within the client's deadline") from None
        except _Failed:
            raise
        except Exception:
            name = model.settings.model
            logger.exception("gRPC request %s to %s failed in the API server", request_id, name)
            raise _Failed(500, "internal server error") from None

    # -- helpers
    def _model(self, name: str, version: str, request_id: str = "") -> GrpcModel:
        """The served version a call names, or the one its model's split picks (by request id)."""
        table = self.routes
        if table.generation != self._generation:
            self._models, self._generation = {}, table.generation
        model = table.models.get(name)
        if model is None:
            raise _Failed(404, f"model {name!r} is not served; served: {table.served}")
        if not version:
            version = model.pick(request_id).version
        routes = table.versions.get((name, version))
        if routes is None:
            served = model.sorted_versions()
            raise _Failed(404, f"model {name!r} has no version {version!r}; it serves {served}")
        key = (routes.unit, version)
        grpc_model = self._models.get(key)
        if grpc_model is None:
            grpc_model = self._models[key] = GrpcModel.build(routes.settings, routes.v2, routes.unit, model)
        return grpc_model

    async def _model_or_abort(self, name: str, version: str, context) -> GrpcModel:
        try:
            return self._model(name, version)
        except _Failed as failure:
            await context.abort(grpc_code(failure.status), failure.message)
            raise  # abort raises; this line only tells type checkers so

    def _authorized(self, context) -> bool:
        """``authorization: Bearer <key>`` metadata, compared in constant time; true when no key is set."""
        if self.api_key is None:
            return True
        given = metadata_value(context, "authorization")
        return credential_matches(given.encode(errors="replace") if given else None, self.api_key)

    async def _authorize_or_abort(self, context) -> None:
        if not self._authorized(context):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, AUTH_MESSAGE)


def metadata_value(context, key: str) -> str | None:
    """The first value of ``key`` in the call's metadata (keys arrive lower-case)."""
    for item in context.invocation_metadata() or ():
        if item[0] == key:
            value = item[1]
            return value if isinstance(value, str) else None
    return None


def request_id_of(context) -> str:
    """The client's ``x-request-id`` when it is sane (printable ASCII, at most 128 bytes), else a new one."""
    given = metadata_value(context, "x-request-id")
    return sane_request_id(given.encode(errors="replace") if given else None)
