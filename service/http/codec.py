"""Request bodies to validated float32 arrays, in the API server, before a request can join a batch.

One bad instance must never fail the requests it would have been batched with, so everything a
client can get wrong is caught here and answered with a message that says what is wrong. The body
is parsed with orjson and checked as one numpy array (shape, numeric type, finite, in range) rather
than value by value; the slow paths below run only for invalid requests.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import orjson

from models.base import InputSpec


class ClientError(Exception):
    """A request the client must fix: answered with ``status`` and ``{"error": message}``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def parse_json(body: bytes) -> Any:
    """The JSON document in ``body``. NaN and Infinity literals parse (so validation can name them)."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        pass
    try:  # the standard parser accepts NaN/Infinity, which orjson rejects as malformed
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ClientError(422, f"body is not valid JSON: {exc}") from None


def decode_v1(body: bytes, spec: InputSpec, max_instances: int) -> np.ndarray:
    """``{"instances": [...]}`` to an array shaped ``[n, *spec.shape]``, or a 422 naming the problem."""
    document = parse_json(body)
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
    if not 1 <= len(value) <= max_instances:
        raise ValueError(f"instances must hold 1 to {max_instances} items, got {len(value)}")
    try:
        array = np.asarray(value)
    except ValueError:
        array = None
    if array is None or array.dtype == object or array.shape[1:] != expected:
        raise ValueError(_describe_bad_instance(value, expected))
    if array.dtype.kind not in "iuf":
        found = {"U": "strings", "S": "strings", "b": "booleans"}.get(array.dtype.kind, array.dtype.name)
        raise ValueError(f"instances must contain numbers only, got {found}")
    with np.errstate(over="ignore"):  # beyond float32's range becomes inf, refused just below
        array = array.astype(np.float32, copy=False)
    return check_values(array, spec)


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
        try:
            array = np.asarray(instance)
        except ValueError:
            return f"instance {index}: expected shape {list(expected)}, got a ragged array"
        if array.shape != expected:
            return f"instance {index}: expected shape {list(expected)}, got {list(array.shape)}"
        if array.dtype == object:
            return f"instance {index}: values must be numbers (found null or another non-number)"
    return f"every instance must be an array of numbers shaped {list(expected)}"
