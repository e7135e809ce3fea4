"""Request and response schemas of the predict route, derived from each model's input and output spec.

They document the route in ``/openapi.json`` (the exact nested-array shape and value range) and can
validate a body with pydantic; the route itself decodes bodies with :mod:`service.http.codec`, whose
checks the request model reuses, so the two cannot disagree.
"""

from __future__ import annotations

from typing import Annotated, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PlainValidator, WithJsonSchema, create_model

from models.base import InputSpec
from service.http.codec import check_instances


def _nested_array_schema(spec: InputSpec) -> dict[str, Any]:
    item: dict[str, Any] = {"type": "number"}
    if spec.min_value is not None:
        item["minimum"] = spec.min_value
    if spec.max_value is not None:
        item["maximum"] = spec.max_value
    for size in reversed(spec.shape):
        item = {"type": "array", "items": item, "minItems": size, "maxItems": size}
    return item


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
        PlainValidator(lambda value: check_instances(value, spec, max_instances)),
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
