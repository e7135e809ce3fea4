"""gRPC inference messages to and from what the V2 REST codec speaks, so both protocols decode alike.

A ``ModelInferRequest`` is rewritten as the V2 binary-extension body it stands for (a small JSON
header, then the raw tensor bytes) and decoded by :func:`service.http.v2_codec.decode_request`: the
same datatype, shape, size and value checks, with the same messages. Typed ``contents`` are packed to
raw little-endian bytes of their datatype first. The answer is :func:`~service.http.v2_codec.encode_response`
with every output binary, split back into ``outputs`` and ``raw_output_contents`` (as Triton answers
by default), so a gRPC answer holds exactly the bytes a REST binary answer does.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import orjson

from service.grpc.proto import grpc_predict_v2_pb2 as pb
from service.http.errors import ClientError
from service.http.inference import Decoded, RouteSettings
from service.http.request_options import from_v2_parameters
from service.http.v2_codec import NUMERIC, decode_request, encode_response
from service.messages import PROBABILITIES_F32

# The typed-contents field of each numeric datatype (FP16 has none: raw only, as the protocol says).
CONTENTS_FIELD = {
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
}
WIDE = {"f": np.float64, "i": np.int64, "u": np.uint64}  # what a typed-contents field holds at most
UNSUPPORTED_PARAMETERS = {
    "shared_memory_region": "shared-memory tensors are not supported; send the tensor in the request",
    "classification": "the classification extension is not supported; read the 'label' output instead",
}


def bad(message: str) -> ClientError:
    return ClientError(400, message)


def decode_infer_request(request: pb.ModelInferRequest, settings: RouteSettings) -> Decoded:
    """The request's instances, validated as V2 REST validates them, or a 400 :class:`ClientError`."""
    raws = request.raw_input_contents
    if raws and len(raws) != len(request.inputs):
        raise bad(f"raw_input_contents holds {len(raws)} tensor(s) for {len(request.inputs)} input(s)")
    inputs, blobs = [], []
    for index, tensor in enumerate(request.inputs):
        _refuse_unsupported(tensor.parameters, f"input {tensor.name!r}")
        if raws:
            if tensor.HasField("contents"):
                raise bad(f"input {tensor.name!r}: send raw_input_contents or contents, not both")
            blob = raws[index]
        else:
            blob = _typed_contents(tensor)
        entry: dict[str, Any] = {"name": tensor.name, "shape": list(tensor.shape)}
        entry["datatype"] = tensor.datatype
        if blob is not None:
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        inputs.append(entry)
    outputs = []
    for output in request.outputs:
        _refuse_unsupported(output.parameters, f"output {output.name!r}")
        outputs.append({"name": output.name})
    document: dict[str, Any] = {"inputs": inputs}
    if outputs:
        document["outputs"] = outputs
    header = orjson.dumps(document)
    body = b"".join([header, *blobs])
    instances, v2_request = decode_request(
        body, str(len(header)).encode(), settings.input_spec, settings.max_instances
    )
    v2_request.id = request.id or None
    v2_request.outputs = dict.fromkeys(v2_request.outputs, True)  # gRPC answers raw, as Triton does
    timeout_s, priority = from_v2_parameters(_scheduling_parameters(request.parameters), settings)
    return Decoded(instances, PROBABILITIES_F32, v2_request, timeout_s, priority)


def _scheduling_parameters(parameters: Any) -> dict[str, Any]:
    """Triton's request parameters ``timeout`` (µs) and ``priority`` as plain values, when sent."""
    found: dict[str, Any] = {}
    for name in ("timeout", "priority"):
        if name in parameters:
            choice = parameters[name].WhichOneof("parameter_choice")
            found[name] = getattr(parameters[name], choice) if choice else None
    return found


def _refuse_unsupported(parameters: Any, what: str) -> None:
    for name, message in UNSUPPORTED_PARAMETERS.items():
        if name in parameters:
            raise bad(f"{what}: {message}")


def _typed_contents(tensor: pb.ModelInferRequest.InferInputTensor) -> bytes | None:
    """The typed contents as raw bytes of the tensor's datatype; None when it holds none at all."""
    datatype, name = tensor.datatype, tensor.name
    if datatype == "FP16":
        raise bad(f"input {name!r}: FP16 tensors must be sent in raw_input_contents")
    if not tensor.HasField("contents"):
        if datatype in NUMERIC:
            raise bad(f"input {name!r}: neither raw_input_contents nor contents holds its data")
        return None  # an unsupported datatype: the codec names it
    field = CONTENTS_FIELD.get(datatype)
    if field is None:
        return None
    values = getattr(tensor.contents, field)
    shape = list(tensor.shape)
    if all(d >= 0 for d in shape) and len(values) != math.prod(shape):
        needed = math.prod(shape)
        raise bad(f"input {name!r}: contents hold {len(values)} value(s), shape {shape} needs {needed}")
    dtype = NUMERIC[datatype]
    wide = np.array(values, dtype=WIDE[dtype.kind])
    if dtype.kind in "iu" and wide.size:
        info = np.iinfo(dtype)
        if wide.min() < info.min or wide.max() > info.max:
            raise bad(f"input {name!r}: contents hold values outside {datatype}'s range")
    return wide.astype(dtype).tobytes()


def encode_infer_response(
    payload: bytes, decoded: Decoded, settings: RouteSettings, request_id: str
) -> pb.ModelInferResponse:
    """The worker's float32 probabilities as the REST codec's binary answer, split per output."""
    probabilities = np.frombuffer(payload, dtype=np.float32).reshape(
        decoded.instances.shape[0], len(settings.output_spec.labels)
    )
    body, header_length = encode_response(
        probabilities, decoded.context, settings.model, settings.version, request_id, settings.output_spec
    )
    if header_length is None:
        raise RuntimeError("the V2 codec answered JSON although every output was asked in binary")
    header = orjson.loads(body[:header_length])
    response = pb.ModelInferResponse(
        model_name=header["model_name"], model_version=header["model_version"], id=header["id"]
    )
    offset = header_length
    for output in header["outputs"]:
        size = output["parameters"]["binary_data_size"]
        response.outputs.add(name=output["name"], datatype=output["datatype"], shape=output["shape"])
        response.raw_output_contents.append(body[offset : offset + size])
        offset += size
    return response
