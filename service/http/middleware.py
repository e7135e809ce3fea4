"""The request-body size limit (``server.max_payload_bytes``): one rule for every route.

The router's inference routes read their bodies with :func:`read_body`; FastAPI's routes sit behind
:class:`BodySizeLimitMiddleware`. Both refuse with 413 as soon as a body is known to be too large:
at once from ``Content-Length``, or while a chunked body streams in.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.http.asgi import header
from service.http.errors import ClientError, request_id_of, send_error

MAX_LENGTH_DIGITS = 18  # more digits than any body can have (and int() of thousands of digits is slow)


def declared_length(declared: bytes | None) -> int | None:
    """A ``Content-Length`` value as a number; None when absent, malformed (the HTTP server refuses it)
    or longer than any body can be (:func:`check_declared` refuses it)."""
    if declared is None or not declared.isdigit() or len(declared) > MAX_LENGTH_DIGITS:
        return None
    return int(declared)


def check_declared(scope: dict, max_bytes: int) -> None:
    """413 when the declared ``Content-Length`` exceeds ``max_bytes``."""
    declared = header(scope, b"content-length")
    length = declared_length(declared)
    if length is None:
        if declared is not None and declared.isdigit():  # more digits than any body can have
            raise ClientError(413, f"request body of {len(declared)}-digit length exceeds {max_bytes} bytes")
        return  # absent or malformed: the streamed count decides
    if length > max_bytes:
        raise ClientError(413, f"request body of {length} bytes exceeds {max_bytes}")


def check_received(received: int, max_bytes: int) -> None:
    """413 once the bytes received so far exceed ``max_bytes``."""
    if received > max_bytes:
        raise ClientError(413, f"request body exceeds {max_bytes} bytes")


async def read_body(scope: dict, receive: Receive, max_bytes: int) -> bytes:
    """The whole request body, within the limit."""
    check_declared(scope, max_bytes)
    message = await receive()
    body = message.get("body", b"")
    if not message.get("more_body", False):
        check_received(len(body), max_bytes)
        return body
    parts = [body]
    received = len(body)
    while message.get("more_body", False):
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientError(400, "client disconnected before sending the whole body")
        chunk = message.get("body", b"")
        received += len(chunk)
        check_received(received, max_bytes)
        parts.append(chunk)
    return b"".join(parts)


class BodySizeLimitMiddleware:
    """The same limit in front of FastAPI's routes (a streamed excess surfaces as a :class:`ClientError`)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            check_declared(scope, self.max_bytes)
        except ClientError as error:
            await send_error(send, error.status, error.message, request_id_of(scope))
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            check_received(received, self.max_bytes)  # FastAPI's ClientError handler answers it
            return message

        await self.app(scope, limited_receive, send)
