"""Start, watch and stop the servers under test: hookserve (any config) and the FastAPI peer.

Every server runs on 127.0.0.1 on a free port, in its own session and process group (so stopping it
reaches every process it forked or spawned, orphans included), with its log in a file. The tests start
their servers with this module too (tests/conftest.py). CPU time is read per process
and grouped by role (hookserve: main, api, worker, manager), which is how a report attributes the cost
of a request to the process that pays it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from benchmarks.metrics_text import samples

REPO_ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http_get(url: str, timeout_s: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (urllib.error.URLError, OSError):
        return 0, b""


@dataclass(frozen=True)
class HookserveSettings:
    """The knobs a benchmark varies; everything else is hookserve's default."""

    model: str
    device: str = "cpu"
    precision: str = "fp32"
    monitoring: bool = True
    api_servers: int = 1
    max_batch_size: int = 64
    batch_timeout_ms: float = 0.0
    torch_threads: int | None = 1
    workers: int = 1
    max_instances_per_request: int = 64
    overrides: dict[str, Any] = field(default_factory=dict)
    # Any other per-model key of hookserve's config, e.g. {"min_precision_agreement": 0.0}.
    model_extra: dict[str, Any] = field(default_factory=dict)

    def config(self, port: int) -> dict[str, Any]:
        model: dict[str, Any] = {
            "name": self.model,
            "device": self.device,
            "precision": self.precision,
            "workers": self.workers,
            "max_batch_size": self.max_batch_size,
            "batch_timeout_ms": self.batch_timeout_ms,
            "max_instances_per_request": self.max_instances_per_request,
            "max_queued_requests": 4096,
            "monitoring": {"enabled": self.monitoring},
        }
        if self.torch_threads:
            model["torch_threads"] = self.torch_threads
        if self.overrides:
            model["overrides"] = dict(self.overrides)
        model.update(self.model_extra)
        server = {
            "host": "127.0.0.1",
            "port": port,
            "api_servers": self.api_servers,
            "log_level": "warning",  # no access log on the hot path
            "shutdown_grace_s": 2,
            "request_timeout_s": 30,
        }
        return {"server": server, "models": [model]}


def poll_until_ok(url: str, process: subprocess.Popen, timeout_s: float) -> str | None:
    """Poll ``url`` until it answers 200. None once it does; otherwise why not (``process`` exited, or
    ``timeout_s`` passed)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return f"exited with {process.returncode}"
        if http_get(url, timeout_s=1.0)[0] == 200:
            return None
        time.sleep(0.2)
    return f"not answering 200 on {url} after {timeout_s:.0f} s"


def wait_for_ok(url: str, process: subprocess.Popen, log_path: Path, timeout_s: float, what: str) -> None:
    """Like :func:`poll_until_ok`, but raise RuntimeError, with the tail of ``log_path``, if it fails."""
    problem = poll_until_ok(url, process, timeout_s)
    if problem is not None:
        raise RuntimeError(f"{what} {problem}:\n{read_log(log_path)[-4000:]}")


def read_log(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def session_pids(session_id: int) -> list[int]:
    """Every live (not zombie) process whose session is ``session_id``."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.getsid(int(entry.name)) == session_id:
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
                if state != "Z":
                    pids.append(int(entry.name))
        except (ProcessLookupError, PermissionError, FileNotFoundError):
            continue
    return pids


class ServerProcess:
    """One server under test, started in its own session (and so its own process group): stopping it
    reaches every process it forked or spawned, and ``session_pids()`` shows whether any is left.

    ``label`` names it in tables; ``wait_ready()`` polls ``/health`` until 200; ``log()`` is its output.
    """

    def __init__(
        self,
        label: str,
        command: list[str],
        port: int,
        log_path: Path,
        model: str = "",
        env: dict[str, str] | None = None,
    ) -> None:
        self.label = label
        self.command = command
        self.port = port
        self.log_path = log_path
        self.model = model
        self.extra_env = dict(env or {})
        self.process: subprocess.Popen | None = None
        self.failure: str | None = None
        self.grpc_port: int | None = None  # hookserve's gRPC port, when it serves one
        self.startup_s: float | None = None
        self._roles: dict[str, list[int]] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def predict_url(self) -> str:
        return f"{self.base_url}/v1/models/{self.model}:predict"

    def start(self) -> None:
        """Start the command. The environment is this process's without hookserve's own settings
        (``HOOKSERVE_*``) or a multiprocess metrics folder, plus ``env``."""
        env = {
            k: v for k, v in os.environ.items() if not k.startswith(("HOOKSERVE_", "PROMETHEUS_MULTIPROC"))
        }
        env["PYTHONUNBUFFERED"] = "1"
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        env.update(self.extra_env)
        self._started_at = time.monotonic()
        with self.log_path.open("wb") as log:  # the child keeps its own descriptor
            self.process = subprocess.Popen(
                self.command,
                cwd=REPO_ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # own session and process group: stop() reaches every descendant
            )

    def wait_ready(self, timeout_s: float) -> bool:
        """Poll ``/health`` until 200. False, with ``failure`` set and the server stopped, if it exits or
        time runs out first."""
        assert self.process is not None
        problem = poll_until_ok(f"{self.base_url}/health", self.process, timeout_s)
        if problem is None:
            self.startup_s = time.monotonic() - self._started_at
            return True
        self.failure = f"{problem}: {self.log_tail()}"
        self.stop()
        return False

    def log(self) -> str:
        """Everything the server has written to stdout and stderr so far."""
        return read_log(self.log_path)

    def log_tail(self, lines: int = 6) -> str:
        return " | ".join(line.strip() for line in self.log().strip().splitlines()[-lines:])

    def session_pids(self) -> list[int]:
        """Every live process of the server's session: the server itself and whatever it started."""
        return session_pids(self.process.pid) if self.process is not None else []

    def stop(self, grace_s: float = 15.0) -> int | None:
        """SIGTERM (hookserve drains, then stops its children), up to ``grace_s`` to exit, then SIGKILL
        whatever is left in the session. Returns the exit code (None if never started or not reaped)."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=grace_s)
        for pid in self.session_pids():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5)
        return self.process.poll()

    # --- CPU accounting by role ------------------------------------------------------------------
    def roles(self) -> dict[str, list[int]]:
        """Process ids by role, read once the server is ready (its process tree is fixed by then)."""
        if self._roles is None:
            self._roles = self._classify()
        return self._roles

    def _classify(self) -> dict[str, list[int]]:
        """hookserve's children: the spawned worker(s), the multiprocessing manager (it owns the queues'
        unix listener), LitServe's resource tracker, and the forked API servers (the rest: they, like the
        manager, inherit the TCP listening socket, so that alone does not tell them apart)."""
        import psutil  # only the CPU accounting needs it; the GPU benchmark does without

        assert self.process is not None
        root = psutil.Process(self.process.pid)
        roles: dict[str, list[int]] = {"main": [root.pid]}
        for child in root.children(recursive=True):
            try:
                cmdline = " ".join(child.cmdline())
                sockets = child.net_connections(kind="unix")
                unix_listener = any("listener-" in (c.laddr or "") for c in sockets)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            if "resource_tracker" in cmdline:
                role = "tracker"
            elif "spawn_main" in cmdline:
                role = "worker"
            elif unix_listener:
                role = "manager"
            else:
                role = "api"
            roles.setdefault(role, []).append(child.pid)
        return roles

    def cpu_seconds(self) -> dict[str, float]:
        """Cumulative user+system CPU seconds per role."""
        import psutil

        totals: dict[str, float] = {}
        for role, pids in self.roles().items():
            for pid in pids:
                try:
                    times = psutil.Process(pid).cpu_times()
                except psutil.NoSuchProcess:
                    continue
                totals[role] = totals.get(role, 0.0) + times.user + times.system
        return totals


def start_hookserve(
    label: str | None,
    config: HookserveSettings | dict[str, Any] | Path,
    workdir: Path,
    env: dict[str, str] | None = None,
    port: int | None = None,
) -> ServerProcess:
    """Start ``python -m service serve`` on 127.0.0.1 with ``config``: a benchmark's settings, a config
    dict or a config file; gRPC on another free port unless the config sets ``server.grpc_port: null``.
    ``port``: a free one unless given (a replica restarts on its own). Its config (if written here) and
    log go to ``workdir`` as ``LABEL.yaml`` and ``LABEL.log`` (label ``hookserve-PORT`` by default).
    Does not wait: call ``wait_ready``."""
    port = port or free_port()
    label = label or f"hookserve-{port}"
    if isinstance(config, HookserveSettings):
        config = config.config(port)
    if isinstance(config, dict):
        config_path = workdir / f"{label}.yaml"
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    else:
        config_path = Path(config)
        config = yaml.safe_load(config_path.read_text()) or {}
    models = config.get("models") or [{}]
    command = [sys.executable, "-m", "service", "serve", "--config", str(config_path)]
    command += ["--host", "127.0.0.1", "--port", str(port)]
    grpc_port = None  # the config turns gRPC off (server.grpc_port: null)
    if (config.get("server") or {}).get("grpc_port", 0) is not None:
        # A free port rather than the config's (8001): servers under test must not share one.
        grpc_port = next(p for p in iter(free_port, None) if p != port)
        command += ["--grpc-port", str(grpc_port)]
    server = ServerProcess(label, command, port, workdir / f"{label}.log", models[0].get("name", ""), env)
    server.grpc_port = grpc_port
    server.start()
    return server


def start_peer(
    label: str, model: str, workdir: Path, torch_threads: int = 1, device: str = "cpu"
) -> ServerProcess:
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "benchmarks.fastapi_peer",
        "--model",
        model,
        "--port",
        str(port),
        "--threads",
        str(torch_threads),
        "--device",
        device,
    ]
    server = ServerProcess(label, command, port, workdir / f"{label}.log", model)
    server.start()
    return server


# Histograms whose _sum/_count deltas over a window give mean batch size, forward time and queue wait.
SERVING_HISTOGRAMS = (
    "hookserve_batch_size",
    "hookserve_model_forward_seconds",
    "hookserve_queue_wait_seconds",
)


def metric_totals(server: ServerProcess) -> dict[str, float]:
    """``{name_sum, name_count}`` of hookserve's serving histograms for the server's model; empty if none."""
    status, body = http_get(f"{server.base_url}/metrics")
    if status != 200:
        return {}
    text = body.decode(errors="replace")
    totals: dict[str, float] = {}
    for name in SERVING_HISTOGRAMS:
        for suffix in ("_sum", "_count"):
            if found := samples(text, name + suffix, model=server.model):
                totals[name + suffix] = sum(sample.value for sample in found)
    return totals


def worker_status(server: ServerProcess) -> list[dict[str, Any]]:
    """hookserve's own account of its workers (pid, threads, device); empty for the peer."""
    status, body = http_get(f"{server.base_url}/v1/models/{server.model}")
    if status != 200:
        return []
    return json.loads(body).get("workers", [])
