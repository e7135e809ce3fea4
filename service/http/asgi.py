"""The few ASGI primitives the hot path needs: read a bounded body, send a whole response.

The predict route is plain ASGI (no FastAPI request object, dependency injection or response class):
per request it costs what HTTP parsing itself costs, plus the work only it can do.
"""

from __future__ import annotations

from collections.abc import Iterable

import orjson
from starlette.types import Receive, Send

from service.http.codec import ClientError

JSON = b"application/json"
Headers = Iterable[tuple[bytes, bytes]]


def header(scope: dict, name: bytes) -> bytes | None:
    """The first value of header ``name`` (lower case), or None."""
    for key, value in scope["headers"]:
        if key == name:
            return value
    return None


async def read_body(scope: dict, receive: Receive, max_bytes: int) -> bytes:
    """The whole request body; 413 as soon as it is known to exceed ``max_bytes`` (declared or streamed)."""
    declared = header(scope, b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise ClientError(413, f"request body of {int(declared)} bytes exceeds {max_bytes}")
    message = await receive()
    body = message.get("body", b"")
    if not message.get("more_body", False):
        return body
    parts = [body]
    received = len(body)
    while message.get("more_body", False):
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientError(400, "client disconnected before sending the whole body")
        chunk = message.get("body", b"")
        received += len(chunk)
        if received > max_bytes:
            raise ClientError(413, f"request body exceeds {max_bytes} bytes")
        parts.append(chunk)
    return b"".join(parts)


async def send_response(
    send: Send, status: int, body: bytes, content_type: bytes = JSON, headers: Headers = ()
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def send_error(send: Send, status: int, message: str, headers: Headers = ()) -> None:
    """``{"error": message}`` with ``status``: the one error format of every route."""
    await send_response(send, status, orjson.dumps({"error": message}), headers=headers)
