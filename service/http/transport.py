"""One socket write per response: uvicorn's HTTP protocol with writes gathered per event-loop step.

uvicorn writes a response's head (``http.response.start``) and its body (``http.response.body``) with two
``transport.write`` calls, so two ``send`` syscalls; on loopback each one also delivers the bytes to the
reader. Under a flood of refusals (small 503s) those two sends were 58 % of an API server's samples
(py-spy, docs/scheduling.md). :class:`GatheringHttpToolsProtocol` hands uvicorn a transport whose writes
made in one step of the event loop go out together at the end of that step: one syscall per response,
the same bytes in the same order, nothing held past the step.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class GatheredWrites:
    """A transport whose writes in one event-loop step are sent as one; everything else is delegated."""

    __slots__ = ("_loop", "_pending", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] | None = None

    def write(self, data: bytes) -> None:
        if self._pending is None:
            self._pending = [data]
            self._loop.call_soon(self._flush)
        else:
            self._pending.append(data)

    def _flush(self) -> None:
        pending, self._pending = self._pending, None
        if pending and not self._transport.is_closing():
            self._transport.write(pending[0] if len(pending) == 1 else b"".join(pending))

    def close(self) -> None:
        self._flush()  # what was written before the close still goes out, as with the plain transport
        self._transport.close()

    def abort(self) -> None:
        self._pending = None
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:  # get_extra_info, is_closing, pause_reading, set_protocol...
        return getattr(self._transport, name)


class GatheringHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol over :class:`GatheredWrites` (``uvicorn.Config(http=...)``)."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(GatheredWrites(transport, self.loop))  # type: ignore[arg-type]


def http_protocol() -> type[HttpToolsProtocol] | str:
    """uvicorn's ``http`` setting: the gathering protocol (``HOOKSERVE_GATHER_WRITES=0``: uvicorn's own)."""
    import os

    return "auto" if os.environ.get("HOOKSERVE_GATHER_WRITES") == "0" else GatheringHttpToolsProtocol
