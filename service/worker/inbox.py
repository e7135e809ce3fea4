"""The worker's end of the request transport: a Unix socket that every API server connects to.

Each API server keeps one connection to each worker and writes framed batches of requests
(:mod:`service.messages`). The worker reads whatever is ready on all connections in one wake-up,
queues the requests in arrival order, and answers each connection with one frame per batch.
The socket is bound only once the model is warmed up, so a connection means a worker ready to serve;
when the worker dies, the kernel closes every connection and the API servers know at once.
"""

from __future__ import annotations

import logging
import selectors
import socket
from pathlib import Path

from service.messages import FrameDecoder, InferReply, encode_frame
from service.worker.pending import PendingRequests, Predict

logger = logging.getLogger(__name__)
READ_CHUNK = 1 << 20


class Connection:
    """One API server's connection: a blocking socket (for whole writes) read only when ready."""

    __slots__ = ("decoder", "name", "sock")

    def __init__(self, sock: socket.socket, name: str) -> None:
        self.sock = sock
        self.decoder = FrameDecoder()
        self.name = name


class Inbox:
    """Accepts API-server connections and queues their requests; sends replies back on the same one."""

    def __init__(self, path: Path, predict: Predict | None = None) -> None:
        """``predict``: see :class:`~service.worker.pending.PendingRequests`."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)  # left by a predecessor that died
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(str(path))
        self._listener.listen(64)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ, None)
        self._accepted = 0
        self.pending = PendingRequests(predict)

    def poll(self, timeout: float | None) -> None:
        """Wait up to ``timeout`` seconds (``0``: not at all) for data, then queue every complete request."""
        for key, _ in self._selector.select(timeout):
            if key.data is None:
                self._accept()
            else:
                self._read(key.data)

    def _accept(self) -> None:
        sock, _ = self._listener.accept()
        self._accepted += 1
        connection = Connection(sock, f"api-connection-{self._accepted}")
        self._selector.register(sock, selectors.EVENT_READ, connection)

    def _read(self, connection: Connection) -> None:
        try:
            data = connection.sock.recv(READ_CHUNK)
        except OSError:
            data = b""
        if not data:  # the API server went away; its requests can no longer be answered
            self._close(connection)
            return
        try:
            requests = connection.decoder.feed(data)
        except Exception:
            logger.exception("unreadable frame from %s; closing it", connection.name)
            self._close(connection)
            return
        self.pending.extend((connection, request) for request in requests)

    def send(self, connection: Connection, replies: list[InferReply]) -> None:
        """One frame with every reply for ``connection``; a closed connection drops them (nobody waits)."""
        try:
            connection.sock.sendall(encode_frame(replies))
        except OSError:
            self._close(connection)

    def _close(self, connection: Connection) -> None:
        try:
            self._selector.unregister(connection.sock)
        except (KeyError, ValueError):
            return  # already closed
        connection.sock.close()
        self.pending.drop_connection(connection)

    def close(self) -> None:
        for key in list(self._selector.get_map().values()):
            key.fileobj.close()
        self._selector.close()
