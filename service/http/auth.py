"""Optional bearer-token auth for the prediction and metadata routes.

No ``from __future__ import annotations`` here: FastAPI reads these signatures at run time.
"""

import secrets
from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, HTTPException
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

_bearer = HTTPBearer(auto_error=False, description="Set when the server runs with an API key.")


def make_auth_dependency(api_key: str | None) -> Callable[..., Awaitable[None]]:
    """A dependency checking ``Authorization: Bearer <key>`` in constant time (a no-op without a key)."""
    expected = api_key.encode() if api_key else None

    async def require_api_key(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> None:
        if expected is None:
            return
        given = credentials.credentials.encode() if credentials else b""
        if not secrets.compare_digest(given, expected):
            raise HTTPException(
                401,
                "missing or invalid API key: send 'Authorization: Bearer <key>'",
                headers={"WWW-Authenticate": "Bearer"},
            )

    return require_api_key
