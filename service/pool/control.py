"""The control channel: an API server asks the main process to load or unload a model.

Only the main process can start and stop workers, and a repository call may reach any API server. The
main process listens on a Unix socket in the private runtime folder; a call is one JSON line each way
(``{"action": "load", "model": ..., "config": ...}`` → ``{"status": 200, "error": ""}``). Calls are served
one after another by one thread that lives as long as the process: the manager runs one change at a
time anyway, and Linux sends a child its parent-death signal (:mod:`service.orphans`) when the *thread*
that started it exits, so workers must not be spawned from a short-lived thread.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import threading
from pathlib import Path

from service.pool.manager import ModelManager, Outcome
from service.worker_states import RUNTIME_DIR_ENV

logger = logging.getLogger(__name__)
MAX_CALL_BYTES = 1 << 20


def control_path() -> Path:
    return Path(os.environ[RUNTIME_DIR_ENV]) / "control.sock"


class ControlServer:
    """The main process's end: accepts calls and answers each from the manager."""

    def __init__(self, manager: ModelManager) -> None:
        self.manager = manager
        self._listener: socket.socket | None = None

    def start(self) -> None:
        """Listen, and serve calls on a thread that lives as long as the process (see the module doc)."""
        path = control_path()
        path.unlink(missing_ok=True)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(path))
        listener.listen(16)
        self._listener = listener
        threading.Thread(target=self._accept_forever, name="hookserve-control", daemon=True).start()

    def _accept_forever(self) -> None:
        assert self._listener is not None
        while True:
            connection, _ = self._listener.accept()
            try:
                self._serve(connection)
            except OSError as exc:  # the caller went away (its API server died): nothing to answer
                logger.warning("control call lost: %s", exc)

    def _serve(self, connection: socket.socket) -> None:
        with connection, connection.makefile("rwb") as stream:
            line = stream.readline(MAX_CALL_BYTES)
            outcome = self._answer(line)
            stream.write(json.dumps({"status": outcome.status, "error": outcome.error}).encode() + b"\n")
            stream.flush()

    def _answer(self, line: bytes) -> Outcome:
        try:
            call = json.loads(line)
            action, model = call["action"], call["model"]
        except (ValueError, KeyError, TypeError):
            return Outcome(400, "malformed control call")
        try:
            if action == "load":
                return self.manager.load(model, call.get("config"))
            if action == "unload":
                return self.manager.unload(model)
        except Exception:  # a bug, not the caller's: logged with its cause, answered 500
            logger.exception("%s of %s failed", action, model)
            return Outcome(500, f"{action} of {model!r} failed in the server (see its log)")
        return Outcome(400, f"unknown control action {action!r}")


async def call_control(action: str, model: str, config: str | None = None) -> Outcome:
    """The API server's end: ask the main process, wait for its answer (a load may take minutes)."""
    reader, writer = await asyncio.open_unix_connection(str(control_path()), limit=MAX_CALL_BYTES)
    try:
        call = {"action": action, "model": model, "config": config}
        writer.write(json.dumps(call).encode() + b"\n")
        await writer.drain()
        answer = json.loads(await reader.readline())
        return Outcome(int(answer["status"]), str(answer.get("error", "")))
    finally:
        writer.close()
