"""A local multi-replica stack, no containers: N hookserve replicas on loopback ports behind HAProxy, and one
Prometheus that scrapes every replica (file_sd) and evaluates configs/prometheus/alerts.yml.

    python -m benchmarks.replicas --replicas 3 --config configs/default.yaml --port 8080
    # load balancer: http://127.0.0.1:8080   (POST /v1/models/NAME:predict, GET /health)
    # Prometheus:    http://127.0.0.1:9090   (every replica is a target of job "hookserve")
    # HAProxy stats: http://127.0.0.1:8404/stats
    # Ctrl-C (or SIGTERM) stops everything: replicas drain first.

What the balancer does (``haproxy_config``), and why:

- It health-checks each replica on ``GET /health``, which answers 200 only while every model has a
  warmed-up worker and no drain has started: a starting, draining or degraded replica gets no new requests.
- ``retry-on conn-failure empty-response 503`` with ``option redispatch``: a request that could not be
  sent (connection refused: the replica is gone), got no answer at all (the replica died with it in
  flight), or got 503 (the replica is draining or lost its worker) is sent again, to another replica, up
  to ``retries`` times. Predictions are pure functions of the request, so sending one twice is safe.
  What is not retried: a request whose answer had started when the replica died, and a body larger than
  HAProxy's buffer (16 kB by default; raise ``tune.bufsize`` for larger ones).

Needs ``haproxy`` (scripts/install_haproxy.sh) and ``prometheus`` (scripts/install_prometheus.sh).
tests/test_replicas_live.py runs a rolling restart and a SIGKILL under load through this stack.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from benchmarks.servers import REPO_ROOT, ServerProcess, free_port, http_get, read_log

ALERT_RULES = REPO_ROOT / "configs" / "prometheus" / "alerts.yml"
BACKEND = "hookserve"
STARTUP_TIMEOUT_S = 180.0


def require(binary: str, installer: str) -> str:
    path = shutil.which(binary)
    if path is None:
        raise RuntimeError(f"{binary} not found: run {installer}")
    return path


def haproxy_config(
    servers: dict[str, int],
    port: int,
    stats_port: int,
    socket_path: Path,
    check_interval_ms: int = 500,
    retries: int = 3,
) -> str:
    """HAProxy in front of ``servers`` (name -> port on 127.0.0.1), listening on 127.0.0.1:``port``."""
    lines = [
        "global",
        "    maxconn 4096",
        f"    stats socket {socket_path} mode 600 level admin",
        "    log stdout format raw local0",
        "",
        "defaults",
        "    mode http",
        "    log global",
        "    option httplog",
        "    option dontlog-normal          # log only errors, retries and redispatches",
        "    timeout connect 1s",
        "    timeout client 60s",
        "    timeout server 60s",
        "    timeout http-request 10s",
        "    timeout queue 10s",
        f"    retries {retries}",
        "    option redispatch 1            # every retry may go to another replica",
        "    retry-on conn-failure empty-response 503",
        "    option http-buffer-request     # L7 retries resend the buffered request body",
        "",
        "frontend hookserve",
        f"    bind 127.0.0.1:{port}",
        f"    default_backend {BACKEND}",
        "",
        f"backend {BACKEND}",
        "    balance leastconn",
        "    option httpchk GET /health",
        "    http-check expect status 200",
        f"    default-server check inter {check_interval_ms}ms fall 1 rise 1 maxconn 256",
    ]
    lines += [f"    server {name} 127.0.0.1:{p}" for name, p in servers.items()]
    lines += [
        "",
        "frontend stats",
        f"    bind 127.0.0.1:{stats_port}",
        "    stats enable",
        "    stats uri /stats",
        "    stats refresh 2s",
        "",
    ]
    return "\n".join(lines)


def prometheus_config(targets_file: Path, self_address: str, interval: str) -> dict[str, Any]:
    """Scrape every replica listed in ``targets_file`` (file_sd) as job "hookserve", with the alert rules."""
    return {
        "global": {
            "scrape_interval": interval,
            "evaluation_interval": interval,
            "external_labels": {"stack": "hookserve-replicas"},
        },
        "rule_files": [str(ALERT_RULES)],
        "scrape_configs": [
            {
                "job_name": "hookserve",
                "metrics_path": "/metrics",
                "scrape_interval": interval,
                "scrape_timeout": interval,
                "file_sd_configs": [{"files": [str(targets_file)], "refresh_interval": "5s"}],
            },
            {"job_name": "prometheus", "static_configs": [{"targets": [self_address]}]},
        ],
    }


class ReplicaStack:
    """N hookserve replicas (each its own session, on a fixed loopback port so it can be restarted
    there), HAProxy in front and, optionally, Prometheus scraping them. ``start()`` returns once all of
    it is ready; ``stop()`` stops everything (replicas drain)."""

    def __init__(
        self,
        config: dict[str, Any] | Path,
        replicas: int,
        workdir: Path,
        port: int | None = None,
        prometheus: bool = True,
        prometheus_port: int | None = None,
        stats_port: int | None = None,
        scrape_interval: str = "1s",
    ) -> None:
        self.config = yaml.safe_load(config.read_text()) if isinstance(config, Path) else dict(config)
        self.workdir = workdir
        self.lb_port = port or free_port()
        self.stats_port = stats_port or free_port()
        self.with_prometheus = prometheus
        self.prometheus_port = prometheus_port or free_port()
        self.scrape_interval = scrape_interval
        self.socket_path = workdir / "haproxy.sock"
        self.names = [f"r{i}" for i in range(replicas)]
        self.ports = {name: free_port() for name in self.names}
        self.replicas: dict[str, ServerProcess] = {}
        self.haproxy: subprocess.Popen | None = None
        self.prometheus: subprocess.Popen | None = None
        self._logs: list = []

    # --- addresses -----------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.lb_port}"

    @property
    def prometheus_url(self) -> str:
        return f"http://127.0.0.1:{self.prometheus_port}"

    @property
    def stats_url(self) -> str:
        return f"http://127.0.0.1:{self.stats_port}/stats"

    def targets(self) -> list[str]:
        return [f"127.0.0.1:{self.ports[name]}" for name in self.names]

    # --- replicas ------------------------------------------------------------------------------------
    def _replica(self, name: str) -> ServerProcess:
        port = self.ports[name]
        config = dict(self.config)
        # No gRPC unless the config asks: the replicas would otherwise all want its default port.
        config["server"] = {"grpc_port": None, **config.get("server", {}), "host": "127.0.0.1", "port": port}
        config_path = self.workdir / f"{name}.yaml"
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        command = [
            sys.executable,
            "-m",
            "service",
            "serve",
            "--config",
            str(config_path),
            "--port",
            str(port),
        ]
        model = (config.get("models") or [{}])[0].get("name", "")
        log_path = self.workdir / f"{name}.log"
        with contextlib.suppress(FileNotFoundError):  # keep the log of an earlier run of this replica
            log_path.rename(log_path.with_suffix(f".{int(time.time() * 1000)}.log"))
        return ServerProcess(name, command, port, log_path, model)

    def start_replica(self, name: str, wait: bool = True) -> ServerProcess:
        server = self._replica(name)
        server.start()
        self.replicas[name] = server
        if wait and not server.wait_ready(STARTUP_TIMEOUT_S):
            raise RuntimeError(f"replica {name} did not become ready: {server.failure}")
        return server

    def stop_replica(self, name: str, grace_s: float = 40.0) -> int | None:
        """SIGTERM (the replica drains: in-flight requests finish, new ones get 503), wait for it to exit."""
        return self.replicas[name].stop(grace_s=grace_s)

    def kill_replica(self, name: str) -> None:
        """SIGKILL every process of the replica at once, as when a container or its node dies."""
        server = self.replicas[name]
        for pid in server.session_pids():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        assert server.process is not None
        server.process.wait(timeout=10)

    # --- HAProxy -------------------------------------------------------------------------------------
    def haproxy_command(self, command: str) -> str:
        """A command on HAProxy's runtime API (stats socket), e.g. ``show stat``."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(5)
            sock.connect(str(self.socket_path))
            sock.sendall(command.encode() + b"\n")
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def server_stats(self) -> dict[str, dict[str, str]]:
        """Per replica: HAProxy's counters and state (status UP/DOWN, wretr retries, wredis redispatches,
        eresp response errors, econ connection errors, stot sessions), from ``show stat``."""
        text = self.haproxy_command("show stat").lstrip("# ")
        rows = [line.split(",") for line in text.strip().splitlines()]
        header, found = rows[0], {}
        for row in rows[1:]:
            entry = dict(zip(header, row, strict=False))
            if entry.get("pxname") == BACKEND and entry.get("svname") in self.ports:
                found[entry["svname"]] = entry
        return found

    def wait_balancer_state(self, name: str, status: str, timeout_s: float = 30.0) -> None:
        """Wait until HAProxy's health check has marked replica ``name`` ``status`` (UP or DOWN)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.haproxy is not None and self.haproxy.poll() is not None:
                raise RuntimeError(f"haproxy exited:\n{read_log(self.workdir / 'haproxy.log')[-2000:]}")
            try:
                if self.server_stats().get(name, {}).get("status", "").startswith(status):
                    return
            except OSError:  # the stats socket is not there yet (HAProxy starting)
                pass
            time.sleep(0.1)
        raise RuntimeError(f"HAProxy did not mark {name} {status} within {timeout_s:.0f} s")

    def _start_haproxy(self) -> None:
        binary = require("haproxy", "scripts/install_haproxy.sh")
        path = self.workdir / "haproxy.cfg"
        path.write_text(haproxy_config(self.ports, self.lb_port, self.stats_port, self.socket_path))
        check = subprocess.run([binary, "-c", "-f", str(path)], capture_output=True, text=True, timeout=30)
        if check.returncode != 0:
            raise RuntimeError(f"haproxy -c rejected {path}:\n{check.stdout}{check.stderr}")
        log = (self.workdir / "haproxy.log").open("wb")
        self._logs.append(log)
        self.haproxy = subprocess.Popen(
            [binary, "-db", "-f", str(path)], stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        for name in self.names:
            self.wait_balancer_state(name, "UP")

    # --- Prometheus ----------------------------------------------------------------------------------
    def _start_prometheus(self) -> None:
        binary = require("prometheus", "scripts/install_prometheus.sh")
        address = f"127.0.0.1:{self.prometheus_port}"
        targets_file = self.workdir / "targets.json"
        groups = [
            {"targets": [target], "labels": {"replica": name}}
            for name, target in zip(self.names, self.targets(), strict=True)
        ]
        targets_file.write_text(json.dumps(groups, indent=2))
        config_path = self.workdir / "prometheus.yml"
        config_path.write_text(
            yaml.safe_dump(prometheus_config(targets_file, address, self.scrape_interval), sort_keys=False)
        )
        log = (self.workdir / "prometheus.log").open("wb")
        self._logs.append(log)
        self.prometheus = subprocess.Popen(
            [
                binary,
                f"--config.file={config_path}",
                f"--storage.tsdb.path={self.workdir / 'prometheus-data'}",
                f"--web.listen-address={address}",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 30
        while http_get(f"{self.prometheus_url}/-/ready")[0] != 200:
            if self.prometheus.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"prometheus did not start:\n{read_log(self.workdir / 'prometheus.log')}")
            time.sleep(0.2)

    # --- the whole stack -----------------------------------------------------------------------------
    def start(self) -> ReplicaStack:
        try:
            for name in self.names:  # all at once: they load their models in parallel
                self.start_replica(name, wait=False)
            for name in self.names:
                if not self.replicas[name].wait_ready(STARTUP_TIMEOUT_S):
                    raise RuntimeError(f"replica {name} did not become ready: {self.replicas[name].failure}")
            self._start_haproxy()
            if self.with_prometheus:
                self._start_prometheus()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for name in list(self.replicas):
            self.replicas[name].stop(grace_s=40.0)
        for process in (self.haproxy, self.prometheus):
            if process is not None and process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=10)
        for log in self._logs:
            log.close()
        self._logs.clear()

    def __enter__(self) -> ReplicaStack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="N hookserve replicas behind HAProxy, scraped by Prometheus."
    )
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--config", type=Path, default=REPO_ROOT / "configs" / "default.yaml")
    parser.add_argument("--port", type=int, default=8080, help="load balancer port on 127.0.0.1")
    parser.add_argument("--prometheus-port", type=int, default=9090)
    parser.add_argument("--stats-port", type=int, default=8404, help="HAProxy stats page port")
    parser.add_argument("--scrape-interval", default="5s")
    parser.add_argument("--workdir", type=Path, help="configs and logs (default: a new temporary folder)")
    args = parser.parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="hookserve-replicas-"))
    workdir.mkdir(parents=True, exist_ok=True)
    stack = ReplicaStack(
        args.config,
        args.replicas,
        workdir,
        port=args.port,
        prometheus_port=args.prometheus_port,
        stats_port=args.stats_port,
        scrape_interval=args.scrape_interval,
    )
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(
        f"starting {args.replicas} replicas of {args.config} (configs and logs in {workdir}) ...", flush=True
    )
    with stack:
        replicas = ", ".join(f"{name} :{port}" for name, port in stack.ports.items())
        print(
            f"load balancer  {stack.url}\nreplicas       {replicas}\nPrometheus     {stack.prometheus_url}"
            f"\nHAProxy stats  {stack.stats_url}\nCtrl-C stops everything.",
            flush=True,
        )
        try:
            while True:
                time.sleep(1)
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
