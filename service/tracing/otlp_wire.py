"""OTLP spans written straight to protobuf wire format, a span at a time, as bytes.

Why by hand: the SDK's path (a ``Span`` object, a ``ReadableSpan``, then the OTLP encoder building a
protobuf message per span and per attribute) costs ~50 us per span in the process that serves; these
functions cost ~1-2 us and leave no objects for the garbage collector. The field numbers are those of
``opentelemetry/proto/trace/v1/trace.proto`` and ``common.proto`` (stable since OTLP 1.0);
``tests/test_tracing_unit.py`` decodes the output with ``opentelemetry-proto`` to hold them to it.

A span is encoded as one ``ScopeSpans.spans`` entry (tag, length, ``Span``), so an export request is the
concatenation of buffered spans inside a fixed envelope (:func:`export_request`).
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence

INTERNAL = 1  # Span.SpanKind
SERVER = 2
_FIXED64 = struct.Struct("<Q").pack
_DOUBLE = struct.Struct("<d").pack
_ERROR_STATUS = b"\x7a\x02\x18\x02"  # Span.status (15) = Status{code (3): STATUS_CODE_ERROR (2)}
_KINDS = {INTERNAL: b"\x30\x01", SERVER: b"\x30\x02"}  # Span.kind (6), varint


def varint(value: int) -> bytes:
    """Base-128 varint; negative numbers as 64-bit two's complement (protobuf's int64)."""
    if 0 <= value < 0x80:
        return bytes((value,))
    if value < 0:
        value += 1 << 64
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (string, bytes or message)."""
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def name_field(name: str) -> bytes:
    """``Span.name`` (field 5), encoded once per name by callers that reuse it."""
    return field(5, name.encode())


def any_value(value: object) -> bytes:
    """An ``AnyValue`` message: bool, int, float, a sequence of those, or anything else as a string."""
    if isinstance(value, bool):
        return b"\x10\x01" if value else b"\x10\x00"
    if isinstance(value, int):
        return b"\x18" + varint(value)
    if isinstance(value, float):
        return b"\x21" + _DOUBLE(value)
    if isinstance(value, (list, tuple)):
        return field(5, b"".join(field(1, any_value(item)) for item in value))  # ArrayValue
    return field(1, str(value).encode())


def attributes(values: Mapping[str, object], number: int = 9) -> bytes:
    """Repeated ``KeyValue`` entries as field ``number``: 9 in a ``Span``, 1 in a ``Resource``."""
    return b"".join(
        field(number, field(1, key.encode()) + field(2, any_value(value))) for key, value in values.items()
    )


def span(
    trace_id: bytes,
    span_id: bytes,
    parent_id: bytes | None,
    name: bytes,
    kind: int,
    start_ns: int,
    end_ns: int,
    attrs: bytes = b"",
    error: bool = False,
    trace_state: str | None = None,
) -> bytes:
    """One span as a ``ScopeSpans.spans`` entry. ``name`` comes from :func:`name_field`, ``attrs`` from
    :func:`attributes`; ids are 16 and 8 raw bytes; times are Unix epoch nanoseconds."""
    body = b"".join((
        b"\x0a\x10", trace_id,
        b"\x12\x08", span_id,
        field(3, trace_state.encode()) if trace_state else b"",
        b"\x22\x08" + parent_id if parent_id else b"",
        name,
        _KINDS[kind],
        b"\x39", _FIXED64(start_ns),
        b"\x41", _FIXED64(end_ns),
        attrs,
        _ERROR_STATUS if error else b"",
    ))  # fmt: skip
    return b"\x12" + varint(len(body)) + body


def scope(name: str, version: str = "") -> bytes:
    """An ``InstrumentationScope`` message."""
    return field(1, name.encode()) + (field(2, version.encode()) if version else b"")


def export_request(resource: bytes, scope_message: bytes, spans: Sequence[bytes]) -> bytes:
    """An ``ExportTraceServiceRequest`` holding ``spans`` (from :func:`span`) of one resource and scope;
    ``resource`` is a ``Resource`` message (``attributes(values, 1)``)."""
    scope_spans = field(1, scope_message) + b"".join(spans)
    return field(1, field(1, resource) + field(2, scope_spans))
