"""Request bodies to validated float32 arrays, in the API server, before a request can join a batch.

One bad instance must never fail the requests it would have been batched with, so everything a
client can get wrong is caught here and answered with a message that says what is wrong. The body
is parsed with orjson and checked as one numpy array (shape, numeric type, finite, in range) rather
than value by value; the slow paths below run only for invalid requests.
"""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np
import orjson

from models.base import InputSpec
from service.http.errors import ClientError

V1_LEVELS = 2  # {"instances": [ ...instances... ]}: the levels around the instances
DEPTH_MARGIN = 4  # a little deeper than valid still gets the precise message (wrong shape, ...)
_ESCAPE = re.compile(rb"\\.", re.DOTALL)
_STEPS = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")  # open +1, close -1 (int8); quotes stay
_NOT_STRUCTURE = bytes(sorted(set(range(256)) - set(b'[]{}"')))


def depth_limit(spec: InputSpec, envelope_levels: int) -> int:
    """The deepest JSON a request for ``spec`` may nest: its rank, the protocol's envelope, a margin."""
    return len(spec.shape) + envelope_levels + DEPTH_MARGIN


def nesting_depth(text: bytes) -> int:
    """The deepest nesting of arrays and objects in JSON ``text`` (brackets inside strings do not count).

    Vectorized (a regex, two translations, one cumulative sum) so that even megabytes of ``[`` cost
    milliseconds; used only for bodies that are already being refused or that orjson could not parse.
    """
    structure = _ESCAPE.sub(b"", text).translate(_STEPS, _NOT_STRUCTURE)
    outside_strings = b"".join(structure.split(b'"')[::2])
    steps = np.frombuffer(outside_strings, dtype=np.int8)
    return int(steps.cumsum(dtype=np.int64).max(initial=0))


def refuse_too_deep(text: bytes, limit: int, status: int = 422) -> None:
    """A :class:`ClientError` when ``text`` nests deeper than ``limit`` (saying so)."""
    depth = nesting_depth(text)
    if depth > limit:
        raise ClientError(
            status,
            f"body is nested {depth} levels deep; a valid request to this model nests at most {limit} "
            "(arrays and objects)",
        )


def parse_json(body: bytes, max_depth: int) -> Any:
    """The JSON document in ``body``. NaN and Infinity literals parse (so validation can name them).

    On the hot path this is one ``orjson.loads``: orjson refuses more than 1024 levels by itself, and the
    decoders' shape checks refuse any deeper document it accepts (see :func:`refuse_too_deep`).
    """
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        pass
    refuse_too_deep(body, max_depth)  # before the recursive standard parser sees a deep body
    try:  # the standard parser accepts NaN/Infinity, which orjson rejects as malformed
        return json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise ClientError(422, f"body is not valid JSON: {exc}") from None


def decode_v1(body: bytes, spec: InputSpec, max_instances: int) -> np.ndarray:
    """``{"instances": [...]}`` to an array shaped ``[n, *spec.shape]``, or a 422 naming the problem."""
    limit = depth_limit(spec, V1_LEVELS)
    document = parse_json(body, limit)
    try:
        return _decode_document(document, spec, max_instances)
    except ClientError:
        refuse_too_deep(body, limit)  # a body deeper than valid is refused for that, first
        raise


def _decode_document(document: Any, spec: InputSpec, max_instances: int) -> np.ndarray:
    if not isinstance(document, dict):
        raise ClientError(422, 'body must be a JSON object: {"instances": [...]}')
    if "instances" not in document:
        raise ClientError(422, 'instances: field required (body: {"instances": [...]})')
    unknown = sorted(set(document) - {"instances"})
    if unknown:
        raise ClientError(422, f"unknown field(s) {unknown}: the body holds only 'instances'")
    return validate_instances(document["instances"], spec, max_instances, "instances")


def validate_instances(value: Any, spec: InputSpec, max_instances: int, field: str) -> np.ndarray:
    """A list of instances to one contiguous float32 array, or a 422 naming the first bad instance."""
    try:
        return check_instances(value, spec, max_instances)
    except ValueError as exc:
        raise ClientError(422, f"{field}: {exc}") from None


def check_instances(value: Any, spec: InputSpec, max_instances: int) -> np.ndarray:
    """Like :func:`validate_instances`, raising ``ValueError`` (also usable as a pydantic validator)."""
    expected = tuple(spec.shape)
    if not isinstance(value, list):
        raise ValueError("instances must be a JSON array of instances")
    check_instance_count(len(value), max_instances)
    array = _as_array(value)
    if array is None or array.dtype == object or array.shape[1:] != expected:
        raise ValueError(_describe_bad_instance(value, expected))
    if array.dtype.kind not in "iuf":
        found = {"U": "strings", "S": "strings", "b": "booleans"}.get(array.dtype.kind, array.dtype.name)
        raise ValueError(f"instances must contain numbers only, got {found}")
    with np.errstate(over="ignore"):  # beyond float32's range becomes inf, refused just below
        array = array.astype(np.float32, copy=False)
    return check_values(array, spec)


def check_instance_count(count: int, max_instances: int) -> None:
    """The one instance-count rule of every protocol: 1 to ``max_instances`` per request."""
    if not 1 <= count <= max_instances:
        raise ValueError(f"instances must hold 1 to {max_instances} items, got {count}")


def _as_array(value: Any) -> np.ndarray | None:
    """``np.asarray(value)``, or None for what numpy cannot make one array of (ragged, huge integers)."""
    try:
        return np.asarray(value)
    except (ValueError, TypeError, OverflowError):
        return None


def check_values(array: np.ndarray, spec: InputSpec) -> np.ndarray:
    """Finite and within the spec's range, as a C-contiguous float32 array."""
    finite = np.isfinite(array)
    if not finite.all():
        raise ValueError(
            f"instance {_first_bad_instance(~finite)}: NaN or infinite values (or values beyond float32's "
            "range) are not allowed"
        )
    if spec.min_value is not None and (low := array < spec.min_value).any():
        raise ValueError(f"instance {_first_bad_instance(low)}: values must be >= {spec.min_value}")
    if spec.max_value is not None and (high := array > spec.max_value).any():
        raise ValueError(f"instance {_first_bad_instance(high)}: values must be <= {spec.max_value}")
    return np.ascontiguousarray(array)


def _first_bad_instance(mask: np.ndarray) -> int:
    """Index of the first instance with any True in ``mask`` (shape: instances x ...)."""
    return int(np.flatnonzero(mask.reshape(mask.shape[0], -1).any(axis=1))[0])


def _describe_bad_instance(instances: list, expected: tuple[int, ...]) -> str:
    """The slow path, only for invalid requests: find the first instance that is wrong, and how."""
    for index, instance in enumerate(instances):
        array = _as_array(instance)
        if array is None:
            return f"instance {index}: expected shape {list(expected)}, got a ragged array"
        if array.shape != expected:
            return f"instance {index}: expected shape {list(expected)}, got {list(array.shape)}"
        if array.dtype == object:
            return f"instance {index}: values must be numbers (found null or another non-number)"
    return f"every instance must be an array of numbers shaped {list(expected)}"
