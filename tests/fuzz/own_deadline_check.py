"""A schemathesis check for the fuzzing test: no 5xx, except the answer a request's own deadline asks for.

A request that sets its own deadline (V1 ``X-Request-Timeout-Ms``, V2 ``parameters.timeout``) shorter
than the server can meet is refused with 503 (predicted to miss it) or ends in 504 (it expired): that is
the documented answer, not a server error. Any other 5xx, and a 503/504 without an own deadline, fails.
Loaded by ``SCHEMATHESIS_HOOKS`` (a file path) in ``tests/test_fuzz_openapi.py``.
"""

from __future__ import annotations

from typing import Any

import schemathesis
from schemathesis.core.failures import ServerError


def _own_deadline(case: Any) -> bool:
    headers = {name.lower() for name in (case.headers or {})}
    body = case.body if isinstance(case.body, dict) else {}
    parameters = body.get("parameters")
    return "x-request-timeout-ms" in headers or (isinstance(parameters, dict) and "timeout" in parameters)


@schemathesis.check
def not_a_server_error_but_own_deadline(ctx: Any, response: Any, case: Any) -> bool | None:
    """``not_a_server_error``, except 503/504 for a request that set its own deadline."""
    status = response.status_code
    if status < 500 or (status in (503, 504) and _own_deadline(case)):
        return None
    raise ServerError(operation=case.operation.label, status_code=status)
