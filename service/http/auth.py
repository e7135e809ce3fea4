"""Optional bearer-token auth: one check, :func:`require_api_key`, for every route that needs a key.

The router's inference routes (V1 predict, V2 infer) call it directly; FastAPI's routes (model list and
metadata, ``/metrics`` when ``protect_metrics`` is set) call it through :func:`make_auth_dependency`,
which also documents the bearer scheme in ``/openapi.json``. Probes (``/health``, V2 health, ``/``)
are never protected.

No ``from __future__ import annotations`` here: FastAPI reads these signatures at run time.
"""

import secrets
from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.http.asgi import header
from service.http.errors import ClientError

UNAUTHORIZED = "missing or invalid API key: send 'Authorization: Bearer <key>'"
CHALLENGE = ((b"www-authenticate", b"Bearer"),)

_bearer = HTTPBearer(auto_error=False, description="Set when the server runs with an API key.")


def bearer_matches(scope: dict, key: bytes) -> bool:
    """The request's ``Authorization`` header carries ``key`` (:func:`credential_matches`)."""
    return credential_matches(header(scope, b"authorization"), key)


def credential_matches(authorization: bytes | None, key: bytes) -> bool:
    """``Bearer <key>``, compared in constant time: the one credential check of every protocol."""
    scheme, _, token = (authorization or b"").partition(b" ")
    return scheme.lower() == b"bearer" and secrets.compare_digest(token.strip(), key)


def require_api_key(scope: dict, api_key: bytes | None) -> None:
    """401 unless the request carries ``api_key`` (:func:`bearer_matches`); a no-op without a key."""
    if api_key is not None and not bearer_matches(scope, api_key):
        raise ClientError(401, UNAUTHORIZED, CHALLENGE)


def make_auth_dependency(api_key: str | None) -> Callable[..., Awaitable[None]]:
    """A FastAPI dependency running :func:`require_api_key` (the bearer parameter documents the scheme)."""
    expected = api_key.encode() if api_key else None

    async def api_key_required(
        request: Request,
        _credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> None:
        require_api_key(request.scope, expected)

    return api_key_required
