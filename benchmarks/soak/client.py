"""The soak's load generator: raw HTTP/1.1 keep-alive connections on one asyncio loop.

A Protocol, not StreamReader/Writer: one parse per ``data_received`` and no per-request timer (a single
watchdog enforces the timeout) measured about 30 % less client CPU per request than asyncio streams,
CPU the server under test needs. Only the status line and the framing headers are parsed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

HOST = "127.0.0.1"
CONN_ERROR = "conn_error"
TIMEOUT = "timeout"

Parsed = tuple[int, bytes, bool, int]  # status, body, "Connection: close", bytes consumed


def encode_http(path: str, port: int, body: bytes) -> bytes:
    """A pre-encoded JSON POST, sent as is for every use of the request."""
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def parse_chunked(buffer: bytearray, pos: int) -> tuple[bytes, int] | None:
    """The de-chunked body starting at ``pos`` and where it ends, or None while incomplete."""
    chunks = []
    while (line_end := buffer.find(b"\r\n", pos)) >= 0:
        size = int(bytes(buffer[pos:line_end]).split(b";")[0], 16)
        if size == 0:
            end = buffer.find(b"\r\n\r\n", line_end)  # after the (usually empty) trailer
            return (b"".join(chunks), end + 4) if end >= 0 else None
        pos = line_end + 2 + size + 2
        if len(buffer) < pos:
            return None
        chunks.append(bytes(buffer[line_end + 2 : pos - 2]))
    return None


def parse_response(buffer: bytearray, eof: bool = False) -> Parsed | None:
    """One whole response from the front of ``buffer``, or None while incomplete."""
    head_end = buffer.find(b"\r\n\r\n")
    if head_end < 0:
        return None
    head = bytes(buffer[: head_end + 2]).lower()
    status, close, body_start = int(head[9:12]), b"\r\nconnection: close\r\n" in head, head_end + 4
    start = head.find(b"\r\ncontent-length:")
    if start >= 0:
        body_end = body_start + int(head[start + 17 : head.find(b"\r\n", start + 2)])
        return (
            (status, bytes(buffer[body_start:body_end]), close, body_end) if len(buffer) >= body_end else None
        )
    if b"\r\ntransfer-encoding: chunked\r\n" in head:
        chunked = parse_chunked(buffer, body_start)
        return (status, chunked[0], close, chunked[1]) if chunked else None
    return (status, bytes(buffer[body_start:]), True, len(buffer)) if eof else None  # ends at close


class ClientProtocol(asyncio.Protocol):
    """One HTTP/1.1 connection with at most one request in flight."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future[tuple[int, bytes, bool]] | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def request(self, payload: bytes) -> asyncio.Future[tuple[int, bytes, bool]]:
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(payload)
        return self.waiter

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self._deliver(eof=False)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._deliver(eof=True)
        self.fail(exc or ConnectionResetError("connection closed by the server"))

    def _deliver(self, eof: bool) -> None:
        if self.waiter is None:
            return
        try:
            parsed = parse_response(self.buffer, eof)
        except ValueError as exc:  # not HTTP
            self.fail(exc)
            return
        if parsed is not None:
            status, body, close, used = parsed
            del self.buffer[:used]
            waiter, self.waiter = self.waiter, None
            if not waiter.done():
                waiter.set_result((status, body, close))

    def fail(self, exc: BaseException) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)


class Connection:
    """One keep-alive connection, reopened after an error, a timeout or ``Connection: close``."""

    def __init__(self, port: int, timeout_s: float) -> None:
        self.port = port
        self.timeout_s = timeout_s
        self.protocol: ClientProtocol | None = None
        self.sent_at: float | None = None  # monotonic time of the request in flight, for the watchdog

    async def exchange(self, payload: bytes) -> tuple[str, bytes]:
        """``(outcome, body)``: outcome is the status code, ``conn_error`` or ``timeout``."""
        try:
            if self.protocol is None or self.protocol.closed:
                self.protocol = await asyncio.wait_for(self._connect(), self.timeout_s)
            self.sent_at = time.monotonic()
            status, body, close = await self.protocol.request(payload)
        except TimeoutError:
            self.close()
            return TIMEOUT, b""
        except (OSError, ValueError):
            self.close()
            return CONN_ERROR, b""
        finally:
            self.sent_at = None
        if close:
            self.close()
        return str(status), body

    async def _connect(self) -> ClientProtocol:
        _, protocol = await asyncio.get_running_loop().create_connection(ClientProtocol, HOST, self.port)
        return protocol

    def expire(self, now: float) -> None:
        """Fail the request in flight if it is older than the timeout (called by the watchdog)."""
        if self.sent_at is not None and now - self.sent_at > self.timeout_s and self.protocol is not None:
            self.protocol.fail(TimeoutError())

    def close(self) -> None:
        if self.protocol is not None and self.protocol.transport is not None:
            self.protocol.transport.abort()  # nothing is pending on a connection we drop
        self.protocol = None


async def watchdog(connections: Sequence[Connection], timeout_s: float) -> None:
    """Time requests out: one check a second (or faster for short timeouts), until cancelled."""
    while True:
        await asyncio.sleep(min(1.0, timeout_s / 4))
        now = time.monotonic()
        for connection in connections:
            connection.expire(now)
