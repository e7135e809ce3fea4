"""A dead API server is replaced while the others keep serving, against real hookserve processes.

SIGKILL stands in for any death (segfault, OOM kill). Each API server listens on a socket of its own,
bound to the same port with ``SO_REUSEPORT``: the kernel spreads new connections over the servers that
are listening, so it hands them to whichever server is left; only requests in flight on the killed one
(and connections it had not yet accepted) may fail.
"""

from __future__ import annotations

import http.client
import os
import signal
import threading
import time

import psutil
import pytest
import requests

from benchmarks.metrics_text import samples, sum_samples
from benchmarks.servers import ServerProcess

pytestmark = pytest.mark.slow

TABULAR = [1.0] * 30
CLIENTS = 4
RESTART_METRIC = "hookserve_api_server_restarts_total"


def config(max_restarts: int = 5, backoff_s: float = 0.5) -> dict:
    return {
        "server": {
            "api_servers": 2,
            "request_timeout_s": 10,
            "shutdown_grace_s": 2,
            "api_server_restarts": {
                "max_restarts": max_restarts,
                "window_s": 300,
                "backoff_initial_s": backoff_s,
            },
        },
        "models": [{"name": "tabular-mlp", "torch_threads": 1}],
    }


def api_server_pids(server: ServerProcess) -> set[int]:
    """The main process's forked children that are neither spawned workers nor LitServe's queue manager."""
    assert server.process is not None
    pids = set()
    for child in psutil.Process(server.process.pid).children():
        try:
            command = " ".join(child.cmdline())
            manager = any("listener-" in (c.laddr or "") for c in child.net_connections(kind="unix"))
        except psutil.NoSuchProcess:
            continue
        if "spawn_main" not in command and "resource_tracker" not in command and not manager:
            pids.add(child.pid)
    return pids


def serving_pids(server: ServerProcess, connections: list[http.client.HTTPConnection]) -> set[int]:
    """The processes that hold an accepted connection on the server's port."""
    pids = set()
    for pid in api_server_pids(server):
        try:
            tcp = psutil.Process(pid).net_connections(kind="tcp")
        except psutil.NoSuchProcess:
            continue
        if any(c.status == psutil.CONN_ESTABLISHED and c.laddr.port == server.port for c in tcp):
            pids.add(pid)
    return pids


def listening_sockets(pid: int, port: int) -> set[str]:
    """The listening TCP sockets on ``port`` that ``pid`` holds, by their kernel identity (inode)."""
    tcp = psutil.Process(pid).net_connections(kind="tcp")
    fds = {c.fd for c in tcp if c.status == psutil.CONN_LISTEN and c.laddr.port == port}
    return {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in fds}


def accepted_per_pid(server: ServerProcess) -> dict[int, int]:
    """How many connections on the server's port each API server has accepted."""
    counts = {}
    for pid in api_server_pids(server):
        tcp = psutil.Process(pid).net_connections(kind="tcp")
        counts[pid] = sum(c.status == psutil.CONN_ESTABLISHED and c.laddr.port == server.port for c in tcp)
    return counts


def restarts(server: ServerProcess) -> float:
    return sum_samples(requests.get(f"{server.base_url}/metrics", timeout=5).text, RESTART_METRIC)


def wait_until(condition, timeout_s: float, interval_s: float = 0.05) -> None:
    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < timeout_s, f"not true within {timeout_s} s"
        time.sleep(interval_s)


class Load:
    """``CLIENTS`` threads, each with its own keep-alive session, posting predictions in a loop."""

    def __init__(self, server: ServerProcess) -> None:
        self.url = f"{server.base_url}/v1/models/tabular-mlp:predict"
        self.answers: list[tuple[float, int]] = []  # (when, status code or -1 for a failed connection)
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(CLIENTS)]

    def _run(self) -> None:
        with requests.Session() as session:
            while not self._stop.is_set():
                try:
                    code = session.post(self.url, json={"instances": [TABULAR]}, timeout=10).status_code
                except requests.RequestException:
                    code = -1
                self.answers.append((time.monotonic(), code))

    def codes(self, since: float = 0.0, until: float = float("inf")) -> list[int]:
        return [code for when, code in self.answers if since <= when < until]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=15)


def test_each_api_server_listens_on_its_own_socket_and_a_burst_of_connections_spreads(
    server_factory,
) -> None:
    server = server_factory(config())
    pids = api_server_pids(server)
    listening = {pid: listening_sockets(pid, server.port) for pid in pids}
    assert all(len(sockets) == 1 for sockets in listening.values()), listening
    assert len(set.union(*listening.values())) == 2, "two sockets, not one shared by both servers"
    # 64 connections at once: over one shared socket, the server that woke first took nearly all.
    connections = [http.client.HTTPConnection("127.0.0.1", server.port, timeout=10) for _ in range(64)]
    try:
        for connection in connections:
            connection.connect()
        for connection in connections:
            connection.request("GET", "/health")
            response = connection.getresponse()
            assert response.status == 200 and response.read()
        counts = accepted_per_pid(server)
        assert sum(counts.values()) == 64, counts
        # The kernel hashes each connection's addresses: below 16 of 64 has a chance under 1e-4.
        assert min(counts.values()) >= 16, f"connections did not spread: {counts}"
    finally:
        for connection in connections:
            connection.close()


def test_a_killed_api_server_is_replaced_while_the_other_keeps_serving(server_factory) -> None:
    server = server_factory(config())
    before = api_server_pids(server)
    assert len(before) == 2, before
    assert restarts(server) == 0 and samples(
        requests.get(f"{server.base_url}/metrics", timeout=5).text, RESTART_METRIC
    ), "the counter is exported at 0 from the start"
    victim = min(before)
    with Load(server) as load:
        time.sleep(1.0)
        killed_at = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: len(api_server_pids(server) - before) == 1, 30)
        replaced_at = time.monotonic()
        time.sleep(1.0)
    failed = [code for code in load.codes() if code != 200]
    assert len(load.codes(until=killed_at)) > 20 and set(load.codes(until=killed_at)) == {200}
    assert all(code == -1 for code in failed), f"no error status, only dropped connections: {failed}"
    assert len(failed) <= CLIENTS, "only the requests in flight on the killed server failed"
    meanwhile = load.codes(since=killed_at + 0.2, until=replaced_at)
    assert meanwhile.count(200) > 0, "the other API server answered while the dead one was down"
    assert load.codes(since=replaced_at).count(200) > 0
    after = api_server_pids(server)
    assert victim not in after and len(after) == 2
    assert restarts(server) == 1
    log = server.log()
    assert f"(pid {victim}) died with exit code -9; restarting it" in log
    assert "API servers (pids" in log and "restarted (pid" in log

    # Both serve: hold fresh connections open until each API server has accepted one.
    connections: list[http.client.HTTPConnection] = []
    try:
        while serving_pids(server, connections) != after and len(connections) < 200:
            connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
            connection.request("GET", "/health")
            assert connection.getresponse().status == 200
            connections.append(connection)
        assert serving_pids(server, connections) == after, "the replacement accepts connections too"
    finally:
        for connection in connections:
            connection.close()
    (replacement,) = after - before
    assert server.stop(grace_s=30) == 0
    assert f"Finished server process [{replacement}]" in server.log(), "a drain stops it gracefully"


def test_api_servers_that_cannot_be_kept_alive_stop_the_service_with_an_error(server_factory) -> None:
    server = server_factory(config(max_restarts=1, backoff_s=0.1))
    assert server.process is not None
    first = api_server_pids(server)
    os.kill(min(first), signal.SIGKILL)
    wait_until(lambda: len(api_server_pids(server) - first) == 1, 30)
    (replacement,) = api_server_pids(server) - first
    os.kill(replacement, signal.SIGKILL)
    assert server.process.wait(timeout=60) == 1
    assert "API servers cannot be kept alive" in server.log()
    assert "hookserve stopped: API server" in server.log()
    wait_until(lambda: server.session_pids() == [], 10, interval_s=0.2)


def test_sigterm_to_every_process_of_the_group_is_still_a_clean_stop(server_factory) -> None:
    """systemd's default stop: the queue manager dies with the rest, and that alone is no error."""
    server = server_factory(config())
    assert server.process is not None
    os.killpg(server.process.pid, signal.SIGTERM)
    assert server.process.wait(timeout=60) == 0, server.log()[-3000:]
    stopping = server.log().split("SIGTERM received", 1)[1]
    assert "hookserve stopped: " not in stopping and "ERROR" not in stopping
    assert "restarted (pid" not in stopping, "no replacement while stopping"


def test_a_replacement_api_server_dies_with_the_main_process(server_factory) -> None:
    """It is forked by the supervisor thread, which must outlive it for PR_SET_PDEATHSIG to wait for the
    whole main process (service/orphans.py)."""
    server = server_factory(config(backoff_s=0.1))
    assert server.process is not None
    first = api_server_pids(server)
    os.kill(min(first), signal.SIGKILL)
    wait_until(lambda: len(api_server_pids(server) - first) == 1, 30)
    (replacement,) = api_server_pids(server) - first
    time.sleep(1.0)
    assert psutil.pid_exists(replacement), "alive while the main process is"
    server.process.send_signal(signal.SIGKILL)
    server.process.wait(timeout=10)
    wait_until(lambda: server.session_pids() == [], 5, interval_s=0.2)
