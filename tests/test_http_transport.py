"""Gathered writes: what uvicorn writes in one event-loop step leaves in one ``transport.write``, in order;
a close sends what was written first; an abort drops it. And a live server answers through it."""

from __future__ import annotations

import asyncio

import requests

from service.http.transport import GatheredWrites, GatheringHttpToolsProtocol, http_protocol


class RecordingTransport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = self.aborted = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closed or self.aborted

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True

    def get_extra_info(self, name: str, default: object = None) -> object:
        return ("127.0.0.1", 8000) if name == "sockname" else default


def test_writes_in_one_step_leave_as_one_write_in_order() -> None:
    async def scenario() -> RecordingTransport:
        inner = RecordingTransport()
        gathered = GatheredWrites(inner, asyncio.get_running_loop())  # type: ignore[arg-type]
        gathered.write(b"HTTP/1.1 503 Service Unavailable\r\n\r\n")
        gathered.write(b"body")
        assert inner.writes == []  # nothing leaves before the step ends
        await asyncio.sleep(0)
        gathered.write(b"next")
        await asyncio.sleep(0)
        return inner

    inner = asyncio.run(scenario())
    assert inner.writes == [b"HTTP/1.1 503 Service Unavailable\r\n\r\nbody", b"next"]


def test_close_sends_what_was_written_and_abort_drops_it() -> None:
    async def scenario() -> tuple[RecordingTransport, RecordingTransport]:
        loop = asyncio.get_running_loop()
        closed, aborted = RecordingTransport(), RecordingTransport()
        for inner in (closed, aborted):
            GatheredWrites(inner, loop).write(b"last answer")  # type: ignore[arg-type]
        gathered_closed = GatheredWrites(closed, loop)  # type: ignore[arg-type]
        gathered_closed.write(b"then close")
        gathered_closed.close()
        gathered_aborted = GatheredWrites(aborted, loop)  # type: ignore[arg-type]
        gathered_aborted.write(b"never sent")
        gathered_aborted.abort()
        await asyncio.sleep(0)
        return closed, aborted

    closed, aborted = asyncio.run(scenario())
    assert closed.closed and b"then close" in closed.writes
    assert aborted.aborted and b"never sent" not in aborted.writes


def test_everything_else_is_the_real_transport() -> None:
    inner = RecordingTransport()
    gathered = GatheredWrites(inner, asyncio.new_event_loop())  # type: ignore[arg-type]
    assert gathered.get_extra_info("sockname") == ("127.0.0.1", 8000)
    assert gathered.is_closing() is False


def test_the_server_uses_it_unless_turned_off(monkeypatch) -> None:
    assert http_protocol() is GatheringHttpToolsProtocol
    monkeypatch.setenv("HOOKSERVE_GATHER_WRITES", "0")
    assert http_protocol() == "auto"


def test_a_live_server_answers_whole_responses_on_one_keep_alive_connection(live_server) -> None:
    with requests.Session() as session:
        for _ in range(20):
            ok = session.get(f"{live_server}/health", timeout=10)
            missing = session.get(f"{live_server}/v1/models/no-such-model", timeout=10)
            assert ok.status_code == 200 and ok.json()
            assert missing.status_code == 404 and "no-such-model" in missing.text
