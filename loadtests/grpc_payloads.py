"""Open Inference Protocol V2 over gRPC for load tests: a batch as a ``ModelInferRequest``, the answer's
probabilities, and where the server's gRPC port is.

The messages are hookserve's own generated stubs (``service/grpc/proto``; the compose file mounts that
folder beside ``loadtests/``). Locust runs in its own process, never in the server's, so the stubs'
``inference`` package cannot clash with another copy of it there.
"""

from __future__ import annotations

import os
from urllib.parse import urlparse

import numpy as np

from loadtests.payloads import Batch, ModelSpec
from service.grpc.proto import grpc_predict_v2_pb2 as pb
from service.grpc.proto.grpc_predict_v2_pb2_grpc import GRPCInferenceServiceStub

__all__ = ["GRPCInferenceServiceStub", "grpc_target", "infer_request", "probabilities"]

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
