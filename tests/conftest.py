"""Shared fixtures: real hookserve processes on 127.0.0.1, started and stopped by the tests."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
import yaml

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = ROOT / "configs" / "default.yaml"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class RunningServer:
    """A hookserve process in its own session (so the test can signal and reap the whole group)."""

    process: subprocess.Popen
    base_url: str
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def session_pids(self) -> list[int]:
        """Every live process in the server's session (the server, its API servers, workers, manager)."""
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                if os.getsid(int(entry.name)) == self.process.pid:
                    stat = (entry / "stat").read_text()
                    if stat.rsplit(")", 1)[1].split()[0] != "Z":
                        pids.append(int(entry.name))
            except (ProcessLookupError, PermissionError, FileNotFoundError):
                continue
        return pids

    def stop(self, timeout_s: float = 40.0) -> int | None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout_s)
        for pid in self.session_pids():
            os.kill(pid, signal.SIGKILL)
        return self.process.poll()


def start_server(
    config: dict | Path,
    tmp_dir: Path,
    env: dict[str, str] | None = None,
    wait: bool = True,
    timeout_s: float = 180.0,
) -> RunningServer:
    port = free_port()
    if isinstance(config, dict):
        config_path = tmp_dir / f"config-{port}.yaml"
        config_path.write_text(yaml.safe_dump(config))
    else:
        config_path = config
    log_path = tmp_dir / f"server-{port}.log"
    process_env = {**os.environ, "HOOKSERVE_SERVER__PORT": str(port), **(env or {})}
    process_env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "service", "serve", "--config", str(config_path)],
            cwd=ROOT,
            env=process_env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = RunningServer(process, f"http://127.0.0.1:{port}", log_path)
    if wait:
        wait_ready(server, timeout_s)
    return server


def wait_for_ok(url: str, process: subprocess.Popen, log_path: Path, timeout_s: float, what: str) -> None:
    """Poll ``url`` until it answers 200; raise with the log's tail if ``process`` exits or time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}:\n{log_path.read_text()[-4000:]}")
        try:
            if requests.get(url, timeout=1).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{what} not ready after {timeout_s} s:\n{log_path.read_text()[-4000:]}")


def wait_ready(server: RunningServer, timeout_s: float) -> None:
    try:
        wait_for_ok(f"{server.base_url}/health", server.process, server.log_path, timeout_s, "hookserve")
    except RuntimeError:
        server.stop()
        raise


@pytest.fixture(scope="session")
def server_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """Start servers on demand; every one of them is stopped at the end of the session."""
    started: list[RunningServer] = []
    tmp_dir = tmp_path_factory.mktemp("servers")

    def factory(config: dict | Path, **kwargs) -> RunningServer:
        server = start_server(config, tmp_dir, **kwargs)
        started.append(server)
        return server

    yield factory
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def live_server_process(server_factory) -> RunningServer:
    """hookserve with configs/default.yaml (the shipped models on CPU)."""
    return server_factory(DEFAULT_CONFIG)


@pytest.fixture(scope="session")
def live_server(live_server_process: RunningServer) -> str:
    """Base URL of a running hookserve with the default config, e.g. ``http://127.0.0.1:PORT``."""
    return live_server_process.base_url
