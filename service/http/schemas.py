"""Schemas of the inference routes, for ``/openapi.json``: V1 predict (derived from each model's input
spec) and V2 infer.

The V1 request model documents the exact nested-array shape and value range and can validate a body
with pydantic; the route itself decodes bodies with :mod:`service.http.codec`, whose checks the request
model reuses, so the two cannot disagree. The V1 answer's schema lives with the code that builds the
answer (:mod:`service.http.v1_answer`).
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


class ErrorResponse(BaseModel):
    """Every error answer (:mod:`service.http.errors`); the request id is also in ``X-Request-ID``."""

    error: str
    request_id: str | None = None


class V2RequestTensor(BaseModel):
    """One input tensor of an Open Inference Protocol V2 request (JSON encoding)."""

    name: str = Field(description="The model's input name: 'input'.")
    shape: list[int] = Field(description="[N, *instance shape]; N from 1 to max_instances_per_request.")
    datatype: str = Field(description="FP32 (other numeric types are converted; BOOL and BYTES are refused).")
    data: list[Any] | None = Field(default=None, description="Row-major values, flat or nested.")
    parameters: dict[str, Any] | None = Field(
        default=None, description="binary_data_size: the tensor's bytes follow the JSON header instead."
    )


class V2RequestedOutput(BaseModel):
    name: str = Field(description="probabilities, label_index or label.")
    parameters: dict[str, Any] | None = Field(default=None, description="binary_data: true for binary.")


class V2InferenceRequest(BaseModel):
    """The JSON header of a V2 inference request (with the binary extension, raw tensors follow it)."""

    id: str | None = None
    parameters: dict[str, Any] | None = Field(
        default=None, description="binary_data_output: true for every output in binary."
    )
    inputs: list[V2RequestTensor]
    outputs: list[V2RequestedOutput] | None = Field(default=None, description="Default: every output.")


class V2ResponseTensor(BaseModel):
    name: str
    datatype: str
    shape: list[int]
    data: list[Any] | None = None
    parameters: dict[str, Any] | None = None


class V2InferenceResponse(BaseModel):
    model_name: str
    model_version: str
    id: str = Field(description="The request's id, or the request id (X-Request-ID) when it sent none.")
    outputs: list[V2ResponseTensor]
