"""gRPC inference messages to and from what the V2 REST codec speaks, so both protocols decode alike.

A ``ModelInferRequest`` is rewritten as the V2 binary-extension request it stands for (the header
REST would parse, built directly as the parsed document, and the raw tensor bytes) and decoded by
:func:`service.http.v2_codec.decode_document`: the same datatype, shape, size and value checks, with
the same messages. Typed ``contents`` are packed to raw little-endian bytes of their datatype first.
The answer's outputs are the REST codec's (:func:`~service.http.v2_codec.output_tensors`), every one
raw in ``raw_output_contents`` (as Triton answers by default), so a gRPC answer holds exactly the bytes
a REST binary answer does. No JSON is written or read on the way: that round trip cost gRPC more CPU
per call than the rest of its codec (docs/architecture.md, "gRPC beside HTTP").
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from service.grpc.proto import grpc_predict_v2_pb2 as pb
from service.http.errors import ClientError
from service.http.inference import Decoded, RouteSettings
from service.http.request_options import from_v2_parameters
from service.http.v2_codec import NUMERIC, binary_output, decode_document, output_tensors
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
OutputTensor = pb.ModelInferResponse.InferOutputTensor
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
        if tensor.parameters:  # an empty map costs one length check (the usual case)
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
    document: dict[str, Any] = {"inputs": inputs}
    if request.outputs:
        outputs = []
        for output in request.outputs:
            if output.parameters:
                _refuse_unsupported(output.parameters, f"output {output.name!r}")
            outputs.append({"name": output.name})
        document["outputs"] = outputs
    # The header REST would parse, built as the parsed document: the same checks, without JSON between.
    binary = blobs[0] if len(blobs) == 1 else b"".join(blobs)
    instances, v2_request = decode_document(document, binary, settings.input_spec, settings.max_instances)
    v2_request.id = request.id or None
    v2_request.outputs = dict.fromkeys(v2_request.outputs, True)  # gRPC answers raw, as Triton does
    timeout_s = priority = None
    if request.parameters:
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
    """The worker's float32 probabilities as the REST codec's binary outputs, in raw_output_contents."""
    probabilities = np.frombuffer(payload, dtype=np.float32).reshape(
        decoded.instances.shape[0], len(settings.output_spec.labels)
    )
    tensors = output_tensors(probabilities, settings.output_spec)
    outputs, raws = [], []
    for name in decoded.context.outputs:
        datatype, shape, data = tensors[name]
        outputs.append(OutputTensor(name=name, datatype=datatype, shape=shape))
        raws.append(binary_output(datatype, data))
    given = decoded.context.id
    return pb.ModelInferResponse(
        model_name=settings.model,
        model_version=settings.version,
        id=given if given is not None else request_id,
        outputs=outputs,
        raw_output_contents=raws,
    )
