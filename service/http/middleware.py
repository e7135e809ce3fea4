"""ASGI middleware on the request path: body-size limit and request metrics.

Both are plain ASGI (no ``BaseHTTPMiddleware``) to keep per-request overhead small.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterable

from fastapi import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.monitoring.metrics import REQUEST_DURATION, REQUESTS

_PREDICT_PATH = re.compile(r"^/v1/models/([^/]+):predict$")
UNKNOWN_MODEL = "unknown"


async def _send_json_error(send: Send, status: int, message: str) -> None:
    body = json.dumps({"error": message}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


class BodySizeLimitMiddleware:
    """413 for bodies over ``max_bytes``: at once from Content-Length, or while streaming a chunked body."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await _send_json_error(
                send, 413, f"request body of {int(declared)} bytes exceeds {self.max_bytes}"
            )
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                # FastAPI re-raises HTTPExceptions raised while it reads the body.
                raise HTTPException(413, f"request body exceeds {self.max_bytes} bytes")
            return message

        await self.app(scope, limited_receive, send)


class JsonContentTypeMiddleware:
    """415 for a prediction body declared as anything but JSON (else FastAPI says "not an object")."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and _PREDICT_PATH.match(scope["path"]):
            content_type = (
                dict(scope["headers"]).get(b"content-type", b"application/json").split(b";")[0].strip()
            )
            if content_type != b"application/json" and not content_type.endswith(b"+json"):
                await _send_json_error(
                    send,
                    415,
                    f"Content-Type must be application/json, got {content_type.decode(errors='replace')}",
                )
                return
        await self.app(scope, receive, send)


class RequestMetricsMiddleware:
    """Counts every prediction request by model and status code (422, 413 and 401 included) and times it."""

    def __init__(self, app: ASGIApp, model_names: Iterable[str]) -> None:
        self.app = app
        self.model_names = frozenset(model_names)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        match = _PREDICT_PATH.match(scope.get("path", "")) if scope["type"] == "http" else None
        if match is None:
            await self.app(scope, receive, send)
            return
        model = match.group(1) if match.group(1) in self.model_names else UNKNOWN_MODEL
        start = time.perf_counter()
        status = 500

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            REQUESTS.labels(model, str(status)).inc()
            REQUEST_DURATION.labels(model).observe(time.perf_counter() - start)
