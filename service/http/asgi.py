"""The few ASGI primitives the hot path needs: read a header, parse a media type, send a whole response.

The inference routes are plain ASGI (no FastAPI request object, dependency injection or response
class): per request they cost what HTTP parsing itself costs, plus the work only they can do.
"""

from __future__ import annotations

from collections.abc import Iterable

from starlette.types import Send

JSON = b"application/json"
Headers = Iterable[tuple[bytes, bytes]]


def header(scope: dict, name: bytes) -> bytes | None:
    """The first value of header ``name`` (lower case), or None."""
    for key, value in scope["headers"]:
        if key == name:
            return value
    return None


def media_type(scope: dict) -> bytes | None:
    """The request's media type, lower case and without parameters (``; charset=...``); None if unsent."""
    content_type = header(scope, b"content-type")
    if content_type is None:
        return None
    return content_type.split(b";", 1)[0].strip().lower()


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
