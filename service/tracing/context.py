"""W3C trace context: parsing and writing ``traceparent``, and new trace and span ids.

The API server reads the header a client sent; the worker reads the one the API server put in the
request's frame. Both need only the ids and the sampled flag, so this is the whole propagator.
"""

from __future__ import annotations

import random
import re
from typing import NamedTuple

# version "00" is exactly 55 characters; a later version may append fields after a "-"
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16
_getrandbits = random.getrandbits


class Parent(NamedTuple):
    """A valid incoming ``traceparent``."""

    trace_id: bytes
    span_id: bytes
    sampled: bool


def parse_traceparent(value: str | None) -> Parent | None:
    """The parent it names, or None when it is absent or invalid (then it is ignored, per the W3C spec)."""
    if not value:
        return None
    match = _TRACEPARENT.fullmatch(value.strip())
    if match is None:
        return None
    version, trace_id, span_id, flags, rest = match.groups()
    if version == "ff" or (version == "00" and rest) or trace_id == _ZERO_TRACE or span_id == _ZERO_SPAN:
        return None
    return Parent(bytes.fromhex(trace_id), bytes.fromhex(span_id), bool(int(flags, 16) & 1))


def traceparent(trace_id: bytes, span_id: bytes) -> str:
    """The ``traceparent`` of a sampled span."""
    return f"00-{trace_id.hex()}-{span_id.hex()}-01"


def new_trace_id() -> bytes:
    return (_getrandbits(128) or 1).to_bytes(16, "big")


def new_span_id() -> bytes:
    return (_getrandbits(64) or 1).to_bytes(8, "big")
