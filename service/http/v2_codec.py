"""Open Inference Protocol V2 tensors: request bodies to validated float32 arrays, answers to responses.

Both encodings of the protocol are spoken: JSON ``data`` (flat or nested) and the binary tensor
extension (``Inference-Header-Content-Length`` gives the JSON header's length; each binary input says
its ``binary_data_size``, and the raw little-endian tensors follow the header in input order).

Datatypes: the shipped models take FP32. Any other numeric datatype (FP16, FP64, INT*, UINT*) is
converted to FP32, and the converted values then pass the same checks as V1 (finite, within the
model's range); values an FP64 input holds beyond FP32's range are refused, not clipped. BOOL and BYTES
inputs are refused. Every problem a client can fix is a :class:`ClientError` with status 400.

Outputs: ``probabilities`` (FP32 ``[N, C]``), ``label_index`` (INT64 ``[N]``) and ``label`` (BYTES
``[N]``); all of them when the request names none, each in binary or JSON as the request asks.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from models.base import InputSpec, OutputSpec
from service.http.codec import check_instance_count, check_values, depth_limit, parse_json, refuse_too_deep
from service.http.errors import ClientError

INPUT_NAME = "input"
OUTPUTS = ("probabilities", "label_index", "label")
NUMERIC = {
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "INT8": np.dtype("i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "UINT8": np.dtype("u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
}
_LENGTH = struct.Struct("<I")
V2_LEVELS = 4  # {"inputs": [{"data": [ ...N instances... ]}]}: the levels around the instances
MAX_HEADER_DIGITS = 15


@dataclass
class V2Request:
    """What the answer must carry: the client's ``id`` and the outputs it asked for, binary or not."""

    id: str | None
    outputs: dict[str, bool] = field(default_factory=dict)  # name -> binary
    parameters: Any = None  # the request-level parameters (timeout, priority: service/http/request_options)


def bad(message: str) -> ClientError:
    return ClientError(400, message)


def decode_request(
    body: bytes, header_length: bytes | None, spec: InputSpec, max_instances: int
) -> tuple[np.ndarray, V2Request]:
    """The instances (``[N, *spec.shape]`` float32) and the answer's shape, or a 400 saying what is wrong."""
    json_part, binary = _split(body, header_length)
    limit = depth_limit(spec, V2_LEVELS)
    document = _parse(json_part, limit)
    try:
        return decode_document(document, binary, spec, max_instances)
    except ClientError:
        refuse_too_deep(json_part, limit, 400)  # a header deeper than valid is refused for that, first
        raise


def decode_document(
    document: dict[str, Any], binary: bytes, spec: InputSpec, max_instances: int
) -> tuple[np.ndarray, V2Request]:
    """:func:`decode_request` past the JSON parse (gRPC builds the document from its message instead)."""
    inputs = document.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise bad(f"'inputs' must be a list holding one tensor named {INPUT_NAME!r}")
    tensor, used = _decode_input(inputs[0], binary, spec, max_instances)
    if used != len(binary):
        raise bad(f"{len(binary) - used} byte(s) of binary data beyond what the inputs declare")
    request_id = document.get("id")
    if request_id is not None and not (isinstance(request_id, str) and _is_unicode(request_id)):
        raise bad("'id' must be a string of valid Unicode (it is echoed in the answer)")
    return tensor, V2Request(request_id, _requested_outputs(document), document.get("parameters"))


def _split(body: bytes, header_length: bytes | None) -> tuple[bytes, bytes]:
    if header_length is None:
        return body, b""
    if (
        not header_length.isdigit()
        or len(header_length) > MAX_HEADER_DIGITS
        or int(header_length) > len(body)
    ):
        raise bad(
            f"Inference-Header-Content-Length is {header_length[:20].decode(errors='replace')!r} but the "
            f"body has {len(body)} bytes"
        )
    length = int(header_length)
    return body[:length], body[length:]


def _is_unicode(text: str) -> bool:
    """False for a string holding lone surrogates (JSON escapes can spell them; UTF-8 cannot)."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _parse(json_part: bytes, max_depth: int) -> dict[str, Any]:
    try:
        document = parse_json(json_part, max_depth)
    except ClientError as error:
        raise bad(error.message) from None
    if not isinstance(document, dict):
        raise bad("the inference request must be a JSON object")
    return document


def _decode_input(
    tensor: dict[str, Any], binary: bytes, spec: InputSpec, max_instances: int
) -> tuple[np.ndarray, int]:
    name, shape, datatype = tensor.get("name"), tensor.get("shape"), tensor.get("datatype")
    if name != INPUT_NAME:
        raise bad(f"unknown input {name!r}: the model takes one input named {INPUT_NAME!r}")
    expected = list(spec.shape)
    if (
        not isinstance(shape, list)
        or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape)
        or shape[1:] != expected
        or len(shape) != len(expected) + 1
    ):
        raise bad(f"input {name!r}: shape must be [N, {', '.join(map(str, expected))}], got {shape}")
    try:
        check_instance_count(shape[0], max_instances)
    except ValueError as error:
        raise bad(f"input {name!r}: {error} (N, the first dimension)") from None
    if datatype not in NUMERIC:
        raise bad(f"input {name!r}: datatype {datatype!r} is not supported; use FP32 or another numeric type")
    dtype = NUMERIC[datatype]
    count = math.prod(shape)
    parameters = tensor.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise bad(f"input {name!r}: 'parameters' must be an object")
    if "binary_data_size" in parameters:
        size = parameters["binary_data_size"]
        if not isinstance(size, int) or size != count * dtype.itemsize:
            raise bad(
                f"input {name!r}: binary_data_size {size} does not match shape {shape} of {datatype} "
                f"({count * dtype.itemsize} bytes)"
            )
        if len(binary) < size:
            raise bad(f"input {name!r}: {size} bytes of binary data declared, the body holds {len(binary)}")
        array = np.frombuffer(binary, dtype=dtype, count=count).reshape(shape)
        used = size
    else:
        array = _from_json_data(tensor.get("data"), name, dtype, count).reshape(shape)
        used = 0
    with np.errstate(over="ignore"):  # beyond float32's range becomes inf, which check_values refuses
        array = array.astype(np.float32)
    try:
        return check_values(array, spec), used
    except ValueError as error:
        raise bad(f"input {name!r}: {error}") from None


def _from_json_data(data: Any, name: str, dtype: np.dtype, count: int) -> np.ndarray:
    if not isinstance(data, list):
        raise bad(f"input {name!r}: 'data' (or parameters.binary_data_size) is required")
    try:
        array = np.asarray(data)
    except (ValueError, TypeError, OverflowError):
        raise bad(f"input {name!r}: 'data' is a ragged array or holds integers too large") from None
    if array.dtype.kind not in "iuf" or array.dtype == object:
        raise bad(f"input {name!r}: 'data' must hold numbers only")
    if array.size != count:
        raise bad(f"input {name!r}: 'data' holds {array.size} values, its shape needs {count}")
    return array.reshape(-1)


def _requested_outputs(document: dict[str, Any]) -> dict[str, bool]:
    parameters = document.get("parameters") or {}
    binary_default = bool(isinstance(parameters, dict) and parameters.get("binary_data_output", False))
    outputs = document.get("outputs")
    if outputs is None:
        return dict.fromkeys(OUTPUTS, binary_default)
    if not isinstance(outputs, list) or not outputs:
        raise bad("'outputs' must be a non-empty list of {\"name\": ...}")
    requested = {}
    for output in outputs:
        name = output.get("name") if isinstance(output, dict) else None
        if name not in OUTPUTS:
            raise bad(f"unknown output {name!r}; the model has {list(OUTPUTS)}")
        params = output.get("parameters") or {}
        if not isinstance(params, dict):
            raise bad(f"output {name!r}: 'parameters' must be an object")
        requested[name] = bool(params.get("binary_data", binary_default))
    return requested


def output_tensors(probabilities: np.ndarray, labels: OutputSpec) -> dict[str, tuple[str, list[int], Any]]:
    """Every output the model answers: name -> (datatype, shape, data), for REST and gRPC alike."""
    n = probabilities.shape[0]
    index = probabilities.argmax(axis=1)
    return {
        "probabilities": ("FP32", list(probabilities.shape), probabilities),
        "label_index": ("INT64", [n], index.astype("<i8")),
        "label": ("BYTES", [n], [labels.labels[i] for i in index.tolist()]),
    }


def binary_output(datatype: str, data: Any) -> bytes:
    """One output's bytes as the binary extension (and gRPC's raw_output_contents) carries them."""
    return _bytes_tensor(data) if datatype == "BYTES" else np.ascontiguousarray(data).tobytes()


def _bytes_tensor(values: list[str]) -> bytes:
    encoded = [v.encode() for v in values]
    return b"".join(_LENGTH.pack(len(v)) + v for v in encoded)


def encode_response(
    probabilities: np.ndarray,
    request: V2Request,
    model: str,
    version: str,
    request_id: str,
    labels: OutputSpec,
) -> tuple[bytes, int | None]:
    """The response body and, when any output is binary, the length of its JSON header."""
    tensors = output_tensors(probabilities, labels)
    outputs, blobs = [], []
    for name, binary in request.outputs.items():
        datatype, shape, data = tensors[name]
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": shape}
        if binary:
            blob = binary_output(datatype, data)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = data if datatype == "BYTES" else data.reshape(-1)
        outputs.append(entry)
    header = orjson.dumps(
        {
            "model_name": model,
            "model_version": version,
            "id": request.id if request.id is not None else request_id,
            "outputs": outputs,
        },
        option=orjson.OPT_SERIALIZE_NUMPY,
    )
    if not blobs:
        return header, None
    return header + b"".join(blobs), len(header)
