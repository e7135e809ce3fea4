"""``/openapi.json`` and ``/docs`` for routes FastAPI does not serve itself (the plain-ASGI predict routes).

Each model's request schema (the exact nested-array shape, value range and instance limit) comes from
:func:`service.http.schemas.build_request_model`, so the documentation is the validation's own.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from service.http.inference import RouteSettings
from service.http.predict import predict_path
from service.http.schemas import ErrorResponse, V2InferenceRequest, V2InferenceResponse, build_request_model
from service.http.v1_answer import PredictResponse
from service.http.v2 import model_paths

REF = "#/components/schemas/{model}"
ERRORS = {
    "401": "Missing or wrong API key (when the server has one).",
    "404": "The model is not served.",
    "413": "The body is larger than server.max_payload_bytes.",
    "415": "Content-Type is not JSON.",
    "422": "Malformed JSON, wrong shape, non-numbers, NaN/Infinity, values out of range, too many instances.",
    "503": "Overloaded, predicted to miss the model's latency target or the request's own timeout, draining, "
    "or the model has no live worker; retry after Retry-After seconds.",
    "504": "The request outlived its deadline (server.request_timeout_s, or its own shorter timeout).",
}
OPTIONS_400 = "X-Request-Timeout-Ms or X-Priority is not allowed for this model (the message says why)."


def _schema(model: type, components: dict[str, Any]) -> dict[str, Any]:
    schema = model.model_json_schema(ref_template=REF)
    components.update(schema.pop("$defs", {}))
    components[model.__name__] = schema
    return {"$ref": REF.format(model=model.__name__)}


def _v1_option_headers(settings: RouteSettings) -> list[dict[str, Any]]:
    """The V1 headers that carry a request's own deadline and priority (service.http.request_options)."""
    return [
        {
            "name": "X-Request-Timeout-Ms",
            "in": "header",
            "required": False,
            "description": "This request's own deadline in milliseconds, counted from its arrival; only "
            "shorter than the model's request_timeout_s. A request predicted to miss it is refused at once "
            "(503 + Retry-After); one that expires in the queue is a 504, never a late 200.",
            "schema": {"type": "number", "exclusiveMinimum": 0, "maximum": settings.request_timeout_s * 1000},
        },
        {
            "name": "X-Priority",
            "in": "header",
            "required": False,
            "description": f"1 is the highest; default {settings.default_priority}. Higher priorities are "
            "batched first; lower ones are refused first under overload.",
            "schema": {"type": "integer", "minimum": 1, "maximum": settings.priority_levels},
        },
    ]


def _v2_parameters(settings: RouteSettings) -> dict[str, Any]:
    """The V2 request's ``parameters`` with Triton's ``timeout`` and ``priority`` for this model."""
    return {
        "type": "object",
        "description": "Request parameters; binary_data_output: true for every output in binary.",
        "properties": {
            "timeout": {
                "type": "number",
                "exclusiveMinimum": 0,
                "maximum": settings.request_timeout_s * 1e6,
                "description": "This request's own deadline in microseconds (Triton's meaning), only "
                "shorter than the model's request_timeout_s; predicted to miss it: 503 + Retry-After.",
            },
            "priority": {
                "type": "integer",
                "minimum": 0,
                "maximum": settings.priority_levels,
                "description": "1 is the highest; 0 or absent: the model's default "
                f"({settings.default_priority}). Higher priorities are batched first and shed last.",
            },
        },
        "additionalProperties": True,
    }


def _predict_operation(settings: RouteSettings, components: dict[str, Any]) -> dict[str, Any]:
    request = build_request_model(settings.model, settings.input_spec, settings.max_instances)
    error = {"content": {"application/json": {"schema": _schema(ErrorResponse, components)}}}
    responses = {
        "200": {
            "description": "One prediction per instance, in order.",
            "content": {"application/json": {"schema": _schema(PredictResponse, components)}},
        },
        "400": {"description": OPTIONS_400, **error},
        **{code: {"description": text, **error} for code, text in ERRORS.items()},
    }
    return {
        "tags": ["predict"],
        "summary": f"Predict with {settings.model}",
        "operationId": f"predict_{settings.model.replace('-', '_').replace('.', '_')}",
        "parameters": _v1_option_headers(settings),
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": _schema(request, components)}},
        },
        "responses": responses,
    }


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _v2_operations(settings: RouteSettings, components: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The V2 paths of one model (without and with its version)."""
    error = _schema(ErrorResponse, components)
    name = settings.model.replace("-", "_").replace(".", "_")
    body = {
        "allOf": [
            _schema(V2InferenceRequest, components),
            {"properties": {"parameters": _v2_parameters(settings)}},
        ]
    }
    infer = {
        "tags": ["v2"],
        "summary": f"Open Inference Protocol V2 inference with {settings.model} (JSON or binary tensors)",
        "requestBody": {"required": True, "content": {"application/json": {"schema": body}}},
        "responses": {
            "200": _json(_schema(V2InferenceResponse, components), "The requested outputs."),
            "400": _json(
                error,
                "Malformed request, wrong shape, datatype or binary sizes, bad values, or parameters.timeout"
                " or parameters.priority out of range.",
            ),
            **{code: _json(error, ERRORS[code]) for code in ("401", "404", "413", "503", "504")},
        },
    }
    paths = {}
    for index, prefix in enumerate(model_paths(settings.model, settings.version)):
        suffix = "_version" if index else ""
        paths[f"{prefix}/infer"] = {"post": {**infer, "operationId": f"v2_infer_{name}{suffix}"}}
        paths[prefix] = {
            "get": {
                "tags": ["v2"],
                "summary": f"V2 metadata of {settings.model}",
                "operationId": f"v2_metadata_{name}{suffix}",
                "responses": {"200": {"description": "name, versions, platform, inputs, outputs"}},
            }
        }
        paths[f"{prefix}/ready"] = {
            "get": {
                "tags": ["v2"],
                "summary": f"Is {settings.model} ready (200) or not (503)",
                "operationId": f"v2_ready_{name}{suffix}",
                "responses": {"200": {"description": "ready"}, "503": {"description": "not ready"}},
            }
        }
    return paths


V2_SERVER_PATHS = {
    "/v2": ("v2_server_metadata", "Server metadata: name, version, extensions"),
    "/v2/health/live": ("v2_live", 'Liveness: {"live": true}'),
    "/v2/health/ready": ("v2_ready", 'Readiness: {"ready": true} (200) or false (503)'),
}


def document_predict_routes(app: FastAPI, served: Callable[[], tuple[int, list[RouteSettings]]]) -> None:
    """Make ``app.openapi()`` include the inference routes (V1 predict, V2) that the router serves.

    ``served()`` gives the serving table's generation and its models' default versions: the document is
    built again when the generation moved, so a model loaded or unloaded while serving is in it or not."""
    built_for = [-1]

    def openapi() -> dict[str, Any]:
        generation, routes = served()
        if app.openapi_schema is None or generation != built_for[0]:
            built_for[0] = generation
            schema = get_openapi(title="hookserve", version=app.version, routes=app.routes)
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for settings in routes:
                schema["paths"][predict_path(settings.model)] = {
                    "post": _predict_operation(settings, components)
                }
                schema["paths"].update(_v2_operations(settings, components))
            for path, (operation, summary) in V2_SERVER_PATHS.items():
                schema["paths"][path] = {
                    "get": {
                        "tags": ["v2"],
                        "summary": summary,
                        "operationId": operation,
                        "responses": {"200": {"description": summary}},
                    }
                }
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
