"""Every error answer of every route, in one shape: ``{"error": "...", "request_id": "..."}``.

The request id (the client's sane ``X-Request-ID``, else a new one) is also echoed in ``X-Request-ID``.
The plain-ASGI routes write errors with :func:`send_error`; FastAPI's routes (metadata, ``/metrics``)
get the same body from the handlers installed by :func:`install_error_handlers`. Never a stack trace.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable, Mapping

import orjson
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Send

from service.http.asgi import JSON, Headers, header, send_response

logger = logging.getLogger(__name__)
MAX_REQUEST_ID = 128


class ClientError(Exception):
    """A request the client must fix: answered with ``status``, the error body and ``headers``."""

    def __init__(self, status: int, message: str, headers: Headers = ()) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


def request_id_of(scope: dict) -> str:
    """The request's ``X-Request-ID`` (:func:`sane_request_id`)."""
    return sane_request_id(header(scope, b"x-request-id"))


def sane_request_id(given: bytes | None) -> str:
    """A client's request id when it is sane (printable ASCII, at most 128 bytes), else a new one: the
    one rule for every protocol (HTTP header, gRPC metadata)."""
    if given and len(given) <= MAX_REQUEST_ID and given.isascii() and given.decode().isprintable():
        return given.decode()
    return uuid.uuid4().hex


def error_body(message: str, request_id: str | None) -> bytes:
    """The one error body: ``{"error": message}``, plus ``"request_id"`` when one is known."""
    document = {"error": message} if request_id is None else {"error": message, "request_id": request_id}
    try:
        return orjson.dumps(document)
    except orjson.JSONEncodeError:  # a lone surrogate quoted from the request: escape it, do not fail
        document["error"] = message.encode("utf-8", "backslashreplace").decode()
        return orjson.dumps(document)


async def send_error(
    send: Send, status: int, message: str, request_id: str | None, headers: Headers = ()
) -> None:
    """Answer ``status`` with the error body, echoing the request id in ``X-Request-ID``."""
    extra = [(b"x-request-id", request_id.encode()), *headers] if request_id is not None else headers
    await send_response(send, status, error_body(message, request_id), headers=extra)


def error_response(
    request: Request, status: int, message: str, headers: Headers | Mapping[str, str] | None = None
) -> Response:
    """:func:`send_error`'s answer as a Starlette response, for FastAPI's exception handlers."""
    request_id = request_id_of(request.scope)
    pairs: Iterable = headers.items() if isinstance(headers, Mapping) else headers or ()
    extra = {_text(name): _text(value) for name, value in pairs}
    return Response(
        error_body(message, request_id),
        status_code=status,
        headers={**extra, "x-request-id": request_id},
        media_type=JSON.decode(),
    )


def _text(value: str | bytes) -> str:
    return value.decode("latin-1") if isinstance(value, bytes) else value


def _location(loc: tuple | list) -> str:
    return ".".join(str(part) for part in loc if part != "body") or "body"


async def client_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ClientError)
    return error_response(request, exc.status, exc.message, exc.headers)


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    return error_response(request, exc.status_code, str(exc.detail), exc.headers)


async def validation_error(request: Request, exc: Exception) -> Response:
    # Never echo the input back: it can be megabytes, and it is the client's own data anyway.
    assert isinstance(exc, RequestValidationError)
    summary = "; ".join(
        f"{_location(e.get('loc', ()))}: {str(e.get('msg', '')).removeprefix('Value error, ')}"
        for e in exc.errors()
    )
    return error_response(request, 422, summary or "invalid request")


async def internal_error(request: Request, exc: Exception) -> Response:
    logger.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(request, 500, "internal server error")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ClientError, client_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(Exception, internal_error)
