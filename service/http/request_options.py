"""A request's own deadline and priority, as each protocol carries them, checked against its model.

- Open Inference Protocol V2: Triton's request parameters ``timeout`` (microseconds) and ``priority``
  (1 is the highest; 0 means the model's default, as in Triton).
- V1: the headers ``X-Request-Timeout-Ms`` and ``X-Priority``.

A deadline may only be shorter than the model's ``request_timeout_s``; a priority must be one of the
model's ``priority_levels``. Anything else is a 4xx that says what is allowed.
"""

from __future__ import annotations

import math
from typing import Any

from service.http.asgi import header
from service.http.errors import ClientError


def checked(
    timeout_s: float | None, priority: int | None, timeout_name: str, priority_name: str, settings: Any
) -> tuple[float | None, int | None]:
    """``(timeout_s, priority)`` when both are allowed for the model, else a 400."""
    limit = settings.request_timeout_s
    if timeout_s is not None and not (0 < timeout_s <= limit):
        rule = f"{timeout_name} must be above 0 and at most the model's deadline, {limit:g} s"
        raise ClientError(400, rule)
    if priority is not None and not 1 <= priority <= settings.priority_levels:
        raise ClientError(400, priority_rule(priority_name, settings))
    return timeout_s, priority


def priority_rule(name: str, settings: Any) -> str:
    return f"{name} must be an integer from 1 (highest) to {settings.priority_levels}"


def from_v1_headers(scope: dict, settings: Any) -> tuple[float | None, int | None]:
    """``X-Request-Timeout-Ms`` and ``X-Priority``, when sent."""
    raw_timeout = header(scope, b"x-request-timeout-ms")
    raw_priority = header(scope, b"x-priority")
    if raw_timeout is None and raw_priority is None:
        return None, None
    timeout_s = priority = None
    if raw_timeout is not None:
        try:
            timeout_s = float(raw_timeout) / 1000.0
        except ValueError:
            timeout_s = math.nan
        if not math.isfinite(timeout_s):
            raise ClientError(400, "X-Request-Timeout-Ms must be a number of milliseconds")
    if raw_priority is not None:
        if not raw_priority.isdigit() or len(raw_priority) > 3:
            raise ClientError(400, priority_rule("X-Priority", settings))
        priority = int(raw_priority)
    return checked(timeout_s, priority, "X-Request-Timeout-Ms", "X-Priority", settings)


def from_v2_parameters(parameters: Any, settings: Any) -> tuple[float | None, int | None]:
    """The request-level ``parameters.timeout`` (µs) and ``parameters.priority``, when sent."""
    if not isinstance(parameters, dict) or ("timeout" not in parameters and "priority" not in parameters):
        return None, None
    timeout_s = priority = None
    if "timeout" in parameters:
        value = parameters["timeout"]
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ClientError(400, "parameters.timeout must be a number of microseconds")
        timeout_s = value / 1e6
    if "priority" in parameters:
        value = parameters["priority"]
        if isinstance(value, bool) or not isinstance(value, int):
            raise ClientError(400, priority_rule("parameters.priority", settings))
        priority = value or None  # 0: the model's default priority (Triton's meaning)
    return checked(timeout_s, priority, "parameters.timeout", "parameters.priority", settings)
