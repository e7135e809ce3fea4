"""Measuring served throughput: start servers side by side, warm them up, and run closed-loop windows
interleaved round by round (so drift in the machine's load hits every server alike), recording the CPU
every party used during each window."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psutil

from benchmarks import loadgen
from benchmarks.servers import ServerProcess, metric_totals
from benchmarks.serving_bench.bench import STARTUP_TIMEOUT_S, Bench


def _busy_cpu_s() -> float:
    t = psutil.cpu_times()
    return (
        t.user
        + t.nice
        + t.system
        + getattr(t, "irq", 0.0)
        + getattr(t, "softirq", 0.0)
        + getattr(t, "steal", 0.0)
    )


def measure_window(
    bench: Bench,
    server: ServerProcess,
    bodies: Path,
    concurrency: int,
    window_s: float | None = None,
    **tags: Any,
) -> dict:
    """One closed-loop window against ``server``, with the CPU every party used during it."""
    metrics_before = metric_totals(server)
    cpu_before, busy_before, t0 = server.cpu_seconds(), _busy_cpu_s(), time.monotonic()
    duration = window_s or bench.plan.window_s
    result = loadgen.run_load(server.predict_url, bodies, concurrency, duration, **bench.load_options)
    cpu_after, busy_after, wall = server.cpu_seconds(), _busy_cpu_s(), time.monotonic() - t0
    metrics_after = metric_totals(server)
    by_role = {role: cpu_after.get(role, 0.0) - cpu_before.get(role, 0.0) for role in cpu_after}
    server_cpu = sum(by_role.values())
    ok = max(result.requests - result.errors, 1)
    record = {
        **tags,
        "server": server.label,
        "concurrency": concurrency,
        "ok_per_s": result.ok_per_s,
        "items_per_s": result.ok_per_s * tags.get("instances_per_request", 1),
        "p50_ms": result.p50_ms,
        "p90_ms": result.p90_ms,
        "p99_ms": result.p99_ms,
        "errors": result.errors,
        "requests": result.requests,
        "tool": result.tool,
        "server_cpu_ms_per_req": server_cpu * 1e3 / ok,
        "server_cpu_cores": server_cpu / wall,
        "client_cpu_cores": result.client_cpu_s / wall,
        "foreign_cpu_cores": max(
            (busy_after - busy_before) / wall - server_cpu / wall - result.client_cpu_s / wall, 0
        ),
    }
    record.update({f"cpu_ms_per_req_{role}": seconds * 1e3 / ok for role, seconds in sorted(by_role.items())})
    record.update(_serving_means(metrics_before, metrics_after, wall))
    return record


def _serving_means(before: dict[str, float], after: dict[str, float], wall: float) -> dict[str, float | None]:
    """Mean batch size, forward time and queue wait over a window, from hookserve's own histograms."""

    def mean(name: str, scale: float = 1.0) -> float | None:
        count = after.get(f"{name}_count", 0.0) - before.get(f"{name}_count", 0.0)
        total = after.get(f"{name}_sum", 0.0) - before.get(f"{name}_sum", 0.0)
        return total / count * scale if count > 0 else None

    forwards = after.get("hookserve_batch_size_count", 0.0) - before.get("hookserve_batch_size_count", 0.0)
    return {
        "mean_batch": mean("hookserve_batch_size"),
        "forward_ms_mean": mean("hookserve_model_forward_seconds", 1e3),
        "queue_wait_ms_mean": mean("hookserve_queue_wait_seconds", 1e3),
        "forwards_per_s": forwards / wall if after else None,
    }


@contextlib.contextmanager
def running(
    bench: Bench, starters: dict[str, Callable[[], ServerProcess]]
) -> Iterator[dict[str, ServerProcess]]:
    """Start every server at once, yield the ones that became healthy (failures are logged), stop all."""
    servers = {label: start() for label, start in starters.items()}
    for label, server in servers.items():
        server.label = label  # tables name servers by role, log files by their short name
    ready: dict[str, ServerProcess] = {}
    try:
        with ThreadPoolExecutor(len(servers)) as pool:
            healthy = dict(
                zip(
                    servers,
                    pool.map(lambda s: s.wait_ready(STARTUP_TIMEOUT_S), servers.values()),
                    strict=True,
                )
            )
        for label, server in servers.items():
            if healthy[label]:
                ready[label] = server
                bench.log(f"  {label}: ready in {server.startup_s:.1f} s on :{server.port}")
            else:
                bench.log(f"  {label}: FAILED -- {server.failure}")
        yield ready
    finally:
        with ThreadPoolExecutor(len(servers)) as pool:
            list(pool.map(lambda s: s.stop(), servers.values()))


def warm_up(bench: Bench, servers: dict[str, ServerProcess], bodies: Path, concurrency: int = 8) -> None:
    for server in servers.values():
        loadgen.run_load(server.predict_url, bodies, concurrency, bench.plan.warmup_s, **bench.load_options)


def rotated(labels: list[str], round_index: int) -> list[str]:
    """The interleaving order for one round: rotate so no server is always measured first."""
    if not labels:
        return labels
    k = round_index % len(labels)
    return labels[k:] + labels[:k]


def interleave(
    bench: Bench,
    servers: dict[str, ServerProcess],
    bodies: Path,
    concurrencies: tuple[int, ...],
    rounds: int,
    suite: str,
    between_rounds: Callable[[int], None] | None = None,
    window_s: float | None = None,
) -> list[dict]:
    windows = []
    for r in range(rounds):
        if between_rounds:
            between_rounds(r)
        for c in concurrencies:
            for label in rotated(list(servers), r):
                record = measure_window(bench, servers[label], bodies, c, window_s, suite=suite, round=r)
                windows.append(record)
                bench.log(
                    f"  r{r} c={c:<3} {label:28s} {record['ok_per_s']:8.1f} req/s  "
                    f"p50 {record['p50_ms']:7.2f} ms  "
                    f"p99 {record['p99_ms']:7.2f} ms  errors {record['errors']}"
                )
    return windows
