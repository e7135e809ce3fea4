"""Shared fixtures: real hookserve processes on 127.0.0.1, started and stopped by the tests.

Servers are started by :mod:`benchmarks.servers`, the one launcher the benchmarks use too: each runs in
its own session (``session_pids()`` shows what is left of it), logs to a file (``log()``) and is stopped
with SIGTERM, then SIGKILL for whatever remains (``stop()`` returns the exit code).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.servers import ServerProcess, start_hookserve

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = ROOT / "configs" / "default.yaml"
STOP_GRACE_S = 40.0


def start_server(
    config: dict | Path,
    tmp_dir: Path,
    env: dict[str, str] | None = None,
    wait: bool = True,
    timeout_s: float = 180.0,
) -> ServerProcess:
    """hookserve with ``config`` (a dict or a file); with ``wait``, returns once ``/health`` answers 200."""
    server = start_hookserve(None, config, tmp_dir, env=env)
    if wait and not server.wait_ready(timeout_s):
        raise RuntimeError(f"hookserve did not become ready: {server.failure}\n{server.log()[-4000:]}")
    return server


@pytest.fixture(scope="session")
def server_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """Start servers on demand; every one of them is stopped at the end of the session."""
    started: list[ServerProcess] = []
    tmp_dir = tmp_path_factory.mktemp("servers")

    def factory(config: dict | Path, **kwargs) -> ServerProcess:
        server = start_server(config, tmp_dir, **kwargs)
        started.append(server)
        return server

    yield factory
    for server in started:
        server.stop(grace_s=STOP_GRACE_S)


@pytest.fixture(scope="session")
def live_server_process(server_factory) -> ServerProcess:
    """hookserve with configs/default.yaml (the shipped models on CPU)."""
    return server_factory(DEFAULT_CONFIG)


@pytest.fixture(scope="session")
def live_server(live_server_process: ServerProcess) -> str:
    """Base URL of a running hookserve with the default config, e.g. ``http://127.0.0.1:PORT``."""
    return live_server_process.base_url
