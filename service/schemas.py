"""Request and response schemas, derived from each model's input and output spec.

Validation runs in the API server, before a request can reach a batch: one bad instance must never
fail the other requests it would have been batched with. Instances are checked as one numpy array
(shape, numeric type, finiteness, value range) rather than float by float, which keeps validation
cheap for large inputs; the OpenAPI schema still documents the exact nested-array shape.
"""

from __future__ import annotations

from typing import Annotated, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PlainValidator, WithJsonSchema, create_model

from models.base import InputSpec, OutputSpec


def _nested_array_schema(spec: InputSpec) -> dict[str, Any]:
    item: dict[str, Any] = {"type": "number"}
    if spec.min_value is not None:
        item["minimum"] = spec.min_value
    if spec.max_value is not None:
        item["maximum"] = spec.max_value
    for size in reversed(spec.shape):
        item = {"type": "array", "items": item, "minItems": size, "maxItems": size}
    return item


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


def instances_validator(spec: InputSpec, max_instances: int):
    """A pydantic validator that turns ``instances`` into one float32 array or says what is wrong."""

    expected = tuple(spec.shape)

    def validate(value: Any) -> np.ndarray:
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
        array = array.astype(np.float32, copy=False)
        finite = np.isfinite(array)
        if not finite.all():
            raise ValueError(
                f"instance {_first_bad_instance(~finite)}: NaN or infinite values are not allowed"
            )
        if spec.min_value is not None and (low := array < spec.min_value).any():
            raise ValueError(f"instance {_first_bad_instance(low)}: values must be >= {spec.min_value}")
        if spec.max_value is not None and (high := array > spec.max_value).any():
            raise ValueError(f"instance {_first_bad_instance(high)}: values must be <= {spec.max_value}")
        return np.ascontiguousarray(array)

    return validate


def build_request_model(model_name: str, spec: InputSpec, max_instances: int) -> type[BaseModel]:
    """The body of ``POST /v1/models/{name}:predict`` for one model."""
    instances_schema = {
        "type": "array",
        "items": _nested_array_schema(spec),
        "minItems": 1,
        "maxItems": max_instances,
        "description": spec.description or f"Instances shaped {list(spec.shape)}.",
    }
    instances_type = Annotated[
        np.ndarray,
        PlainValidator(instances_validator(spec, max_instances)),
        WithJsonSchema(instances_schema),
    ]
    class_name = (
        "".join(part.capitalize() for part in model_name.replace(".", "-").split("-")) + "PredictRequest"
    )
    return create_model(
        class_name,
        __config__=ConfigDict(extra="forbid", arbitrary_types_allowed=True),
        instances=(instances_type, Field(...)),
    )


class Prediction(BaseModel):
    label: str = Field(description="The most probable class.")
    label_index: int
    score: float = Field(description="Probability of the predicted label.")
    probabilities: list[float] = Field(description="One probability per output label, in label order.")


class PredictResponse(BaseModel):
    model: str
    model_version: str
    predictions: list[Prediction]


class ErrorResponse(BaseModel):
    error: str


def encode_predictions(probabilities: np.ndarray, output_spec: OutputSpec) -> list[dict[str, Any]]:
    """One prediction dict per row of a float32 probability matrix."""
    indices = probabilities.argmax(axis=1)
    rows = probabilities.tolist()
    labels = output_spec.labels
    return [
        {"label": labels[i], "label_index": int(i), "score": row[i], "probabilities": row}
        for i, row in zip(indices.tolist(), rows, strict=True)
    ]
