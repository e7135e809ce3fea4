"""Open Inference Protocol V2 over gRPC for load tests: a batch as a ``ModelInferRequest``, the answer's
probabilities, where the server's gRPC port is, and a ``ModelStreamInfer`` stream used one request at
a time (:class:`StreamCall`).

The messages are hookserve's own generated stubs (``service/grpc/proto``; the compose file mounts that
folder beside ``loadtests/``). Locust runs in its own process, never in the server's, so the stubs'
``inference`` package cannot clash with another copy of it there.
"""

from __future__ import annotations

import os
import queue
from urllib.parse import urlparse

import grpc
import numpy as np

from loadtests.payloads import Batch, ModelSpec
from service.grpc.proto import grpc_predict_v2_pb2 as pb
from service.grpc.proto import triton_stream_pb2 as stream_pb
from service.grpc.proto.grpc_predict_v2_pb2_grpc import GRPCInferenceServiceStub

__all__ = [
    "GRPCInferenceServiceStub",
    "StreamCall",
    "StreamError",
    "grpc_target",
    "infer_request",
    "probabilities",
]

DEFAULT_GRPC_PORT = 8001


def grpc_target(http_host: str | None, environ: dict[str, str] | None = None) -> str:
    """``LOADTEST_GRPC_TARGET`` (host:port), else the HTTP host's name on hookserve's default gRPC port."""
    environ = os.environ if environ is None else environ
    given = environ.get("LOADTEST_GRPC_TARGET")
    if given:
        return given
    hostname = urlparse(http_host or "").hostname or "127.0.0.1"
    return f"{hostname}:{DEFAULT_GRPC_PORT}"


def infer_request(spec: ModelSpec, batch: Batch) -> pb.ModelInferRequest:
    """The batch as raw FP32 bytes, as ``tritonclient.grpc`` sends it."""
    tensor = np.asarray(batch.body["instances"], dtype="<f4")
    return pb.ModelInferRequest(
        model_name=spec.name,
        inputs=[pb.ModelInferRequest.InferInputTensor(name="input", datatype="FP32", shape=tensor.shape)],
        outputs=[pb.ModelInferRequest.InferRequestedOutputTensor(name="probabilities")],
        raw_input_contents=[tensor.tobytes()],
    )


def probabilities(response: pb.ModelInferResponse, spec: ModelSpec) -> np.ndarray:
    """The ``probabilities`` output, shaped [N, labels]; ValueError if the answer has none."""
    for output, raw in zip(response.outputs, response.raw_output_contents, strict=True):
        if output.name == "probabilities":
            return np.frombuffer(raw, dtype="<f4").reshape(int(output.shape[0]), len(spec.labels))
    raise ValueError("no probabilities output in the response")


class StreamError(Exception):
    """An answer on the stream that is an error: its ``error_message`` (``"CODE: message ..."``)."""


class StreamCall:
    """One ``ModelStreamInfer`` stream, used like the unary method: send a request, wait for its answer.

    One request in flight, so each answer is the last request's. The requests reach grpc through a queue
    that its sending thread (a greenlet under Locust's gevent) reads until :meth:`close`.
    """

    def __init__(self, channel: grpc.Channel) -> None:
        self._requests: queue.Queue[pb.ModelInferRequest | None] = queue.Queue()
        open_stream = channel.stream_stream(
            "/inference.GRPCInferenceService/ModelStreamInfer",
            request_serializer=pb.ModelInferRequest.SerializeToString,
            response_deserializer=stream_pb.ModelStreamInferResponse.FromString,
        )
        self._answers = open_stream(iter(self._requests.get, None))

    def __call__(self, request: pb.ModelInferRequest) -> pb.ModelInferResponse:
        self._requests.put(request)
        answer = next(self._answers)  # grpc.RpcError if the stream itself ended
        if answer.error_message:
            raise StreamError(answer.error_message)
        return answer.infer_response

    def close(self) -> None:
        self._requests.put(None)  # ends the requests: the server finishes the stream
