"""``/openapi.json`` and ``/docs`` for routes FastAPI does not serve itself (the plain-ASGI predict routes).

Each model's request schema (the exact nested-array shape, value range and instance limit) comes from
:func:`service.http.schemas.build_request_model`, so the documentation is the validation's own.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from service.http.inference import RouteSettings
from service.http.predict import predict_path
from service.http.schemas import ErrorResponse, PredictResponse, build_request_model

REF = "#/components/schemas/{model}"
ERRORS = {
    "401": "Missing or wrong API key (when the server has one).",
    "404": "The model is not served.",
    "413": "The body is larger than server.max_payload_bytes.",
    "415": "Content-Type is not JSON.",
    "422": "Malformed JSON, wrong shape, non-numbers, NaN/Infinity, values out of range, too many instances.",
    "503": "Overloaded, draining, or the model has no live worker; retry after Retry-After seconds.",
    "504": "The request outlived server.request_timeout_s.",
}


def _schema(model: type, components: dict[str, Any]) -> dict[str, Any]:
    schema = model.model_json_schema(ref_template=REF)
    components.update(schema.pop("$defs", {}))
    components[model.__name__] = schema
    return {"$ref": REF.format(model=model.__name__)}


def _predict_operation(settings: RouteSettings, components: dict[str, Any]) -> dict[str, Any]:
    request = build_request_model(settings.model, settings.input_spec, settings.max_instances)
    error = {"content": {"application/json": {"schema": _schema(ErrorResponse, components)}}}
    responses = {
        "200": {
            "description": "One prediction per instance, in order.",
            "content": {"application/json": {"schema": _schema(PredictResponse, components)}},
        },
        **{code: {"description": text, **error} for code, text in ERRORS.items()},
    }
    return {
        "tags": ["predict"],
        "summary": f"Predict with {settings.model}",
        "operationId": f"predict_{settings.model.replace('-', '_').replace('.', '_')}",
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": _schema(request, components)}},
        },
        "responses": responses,
    }


def document_predict_routes(app: FastAPI, routes: list[RouteSettings]) -> None:
    """Make ``app.openapi()`` include a POST operation for each model's predict route."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title="hookserve", version=app.version, routes=app.routes)
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for settings in routes:
                schema["paths"][predict_path(settings.model)] = {
                    "post": _predict_operation(settings, components)
                }
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
