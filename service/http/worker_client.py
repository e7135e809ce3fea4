"""The API server's end of the request transport: one connection to each worker of each model.

Requests submitted during one turn of the event loop leave in one frame per worker (a write and a
wake-up per burst, not per request); replies come back the same way and resolve their futures. When a
worker dies, the kernel closes its connections: every request waiting on it fails at once with
:class:`WorkerUnavailable` (answered 503 + Retry-After), and the link reconnects when the restarted
worker is ready — a worker accepts connections only once it is warmed up.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable

from service.messages import FrameDecoder, InferReply, InferRequest, encode_frame
from service.worker_states import WorkerState, WorkerStates

logger = logging.getLogger(__name__)
RECONNECT_INTERVAL_S = 0.1


class WorkerUnavailable(Exception):
    """No live worker could take (or finish) the request; the client may retry shortly."""


class WorkerLink(asyncio.Protocol):
    """One connection to one worker: requests out in batched frames, replies in."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.pending: dict[int, asyncio.Future[tuple[int, bytes]]] = {}
        self.closed = False
        self._transport: asyncio.Transport | None = None
        self._decoder = FrameDecoder()
        self._outbox: list[InferRequest] = []

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        replies: list[InferReply] = self._decoder.feed(data)
        pending = self.pending
        for uid, status, body in replies:
            future = pending.pop(uid, None)
            if future is not None and not future.done():
                future.set_result((status, body))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.pending:
            logger.warning("lost %s with %d request(s) in flight", self.name, len(self.pending))
        failure = WorkerUnavailable(f"the worker ({self.name}) stopped while the request was in flight")
        for future in self.pending.values():
            if not future.done():
                future.set_exception(failure)
        self.pending.clear()

    # requests
    def submit(self, request: InferRequest) -> asyncio.Future[tuple[int, bytes]]:
        """Queue ``request`` for this turn's frame; the future gets ``(status, body)``."""
        future = asyncio.get_running_loop().create_future()
        self.pending[request.uid] = future
        if not self._outbox:
            asyncio.get_running_loop().call_soon(self._flush)
        self._outbox.append(request)
        return future

    def _flush(self) -> None:
        items, self._outbox = self._outbox, []
        if self.closed or self._transport is None:
            return  # connection_lost already failed their futures
        self._transport.write(encode_frame(items))

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


class ModelWorkers:
    """This API server's links to the workers of one unit (a model version); picks the least busy."""

    def __init__(self, unit: int, states: WorkerStates, label: str) -> None:
        self.unit = unit
        self.states = states
        self.label = label  # "digits-cnn" or "digits-cnn version 2", for messages and logs
        self.links: dict[int, WorkerLink] = {}

    def live_links(self) -> Iterable[WorkerLink]:
        return (link for link in self.links.values() if not link.closed)

    async def connect_missing(self) -> None:
        """Connect to every worker that is ready and not yet connected (a no-op when all are)."""
        loop = asyncio.get_running_loop()
        for worker in self.states.workers(self.unit):
            link = self.links.get(worker)
            if link is not None and not link.closed:
                continue
            if self.states.get(self.unit, worker) != WorkerState.READY:
                continue
            path = self.states.socket_path(self.unit, worker)
            try:
                _, link = await loop.create_unix_connection(
                    lambda w=worker: WorkerLink(f"{self.label} worker {w}"), str(path)
                )
            except OSError:
                continue  # not listening yet (restarting) or just died; the next round retries
            self.links[worker] = link

    async def pick(self) -> WorkerLink:
        """The live link with the fewest requests in flight; raises :class:`WorkerUnavailable` if none."""
        best = min(self.live_links(), key=lambda link: len(link.pending), default=None)
        if best is None:
            await self.connect_missing()  # a worker may have become ready since the last round
            best = min(self.live_links(), key=lambda link: len(link.pending), default=None)
        if best is None:
            state = self.states.unit_state(self.unit)
            if state == WorkerState.FAILED:
                raise WorkerUnavailable(
                    f"model {self.label} is down: its worker failed repeatedly (see the server log)"
                )
            raise WorkerUnavailable(f"model {self.label} has no live worker ({state.name.lower()}); retry")
        return best

    def close(self) -> None:
        for link in self.links.values():
            link.close()


async def keep_connected(
    pools: Callable[[], Iterable[ModelWorkers]], interval_s: float = RECONNECT_INTERVAL_S
) -> None:
    """Forever: reconnect to the current units' workers as they become ready (at start-up, after a
    restart, after a load)."""
    while True:
        for pool in list(pools()):
            await pool.connect_missing()
        await asyncio.sleep(interval_s)
