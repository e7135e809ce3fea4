"""Samples of the server's process tree (memory, fds, CPU) and of the load so far, taken during the soak.

psutil runs in a thread, so the clients keep going meanwhile; the sampler's own CPU time is recorded
(reading ``smaps_rollup`` for PSS/USS costs kernel time) so it can be told apart from the client's.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from benchmarks.servers import ServerProcess
from benchmarks.soak.checks import Stats, valid_error_count

MB = 1024 * 1024


@dataclass
class Sample:
    """The server's process tree and the load at ``t_s`` seconds into the load."""

    t_s: float
    requests: int
    interval_req_s: float
    valid_errors: int
    invalid_errors: int
    connection_errors: int
    p50_ms: float
    p99_ms: float
    processes: int
    rss_mb: float
    pss_mb: float
    uss_mb: float
    fds: int
    server_cpu_s: float
    sample_ms: float
    sample_cpu_ms: float  # the sampler's own CPU time (smaps_rollup reads cost kernel time)
    per_process: dict[str, dict[str, Any]] = field(default_factory=dict)

    def row(self) -> dict[str, Any]:
        row = asdict(self)
        del row["per_process"]
        return row


def process_usage(process: Any, role: str, full: bool) -> dict[str, Any] | None:
    """One process's memory (MB), open fds and CPU seconds; None if it is gone."""
    import psutil

    try:
        with process.oneshot():
            memory = process.memory_full_info() if full else process.memory_info()
            fds, cpu = process.num_fds(), process.cpu_times()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None
    return {
        "role": role,
        "rss_mb": memory.rss / MB,
        "pss_mb": getattr(memory, "pss", 0) / MB,
        "uss_mb": getattr(memory, "uss", 0) / MB,
        "fds": fds,
        "cpu_s": cpu.user + cpu.system,
    }


def tree_usage(root_pid: int, roles: dict[int, str], full: bool) -> dict[str, Any]:
    """Summed memory (MB), fds and CPU seconds over ``root_pid`` and all its descendants."""
    import psutil

    try:
        root = psutil.Process(root_pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        processes = []
    usages = {p.pid: process_usage(p, roles.get(p.pid, "other"), full) for p in processes}
    found = {pid: usage for pid, usage in usages.items() if usage is not None}
    totals: dict[str, Any] = {
        key: sum(u[key] for u in found.values()) for key in ("rss_mb", "pss_mb", "uss_mb", "fds")
    }
    totals["processes"] = len(found)
    totals["server_cpu_s"] = sum(u.pop("cpu_s") for u in found.values())
    totals["per_process"] = {
        str(pid): {k: round(v, 1) if isinstance(v, float) else v for k, v in usage.items()}
        for pid, usage in found.items()
    }
    return totals


def timed_tree_usage(root_pid: int, roles: dict[int, str], full: bool) -> dict[str, Any]:
    start = time.thread_time()
    usage = tree_usage(root_pid, roles, full)
    return {**usage, "sample_cpu_ms": (time.thread_time() - start) * 1e3}


def percentile_ms(values: Sequence[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(int(q * len(ordered)), len(ordered) - 1)] * 1e3


class Sampler:
    """Takes samples of ``server``'s tree and of ``stats``; keeps them in ``samples``."""

    def __init__(self, server: ServerProcess, stats: Stats, full_memory: bool) -> None:
        assert server.process is not None
        self.pid = server.process.pid
        self.roles = {pid: role for role, pids in server.roles().items() for pid in pids}
        self.stats = stats
        self.full_memory = full_memory
        self.samples: list[Sample] = []
        self._last = (0.0, 0, 0)  # t_s, requests, latency index

    def load_snapshot(self, load_t_s: float) -> dict[str, Any]:
        """Requests and errors so far; rate and latency since the previous sample."""
        stats, (last_t, last_done, last_latency) = self.stats, self._last
        errors = stats.errors()
        interval = stats.latencies[last_latency:]
        self._last = (load_t_s, stats.done, len(stats.latencies))
        valid_errors = valid_error_count(errors)
        return {
            "requests": stats.done,
            "interval_req_s": (stats.done - last_done) / (load_t_s - last_t) if load_t_s > last_t else 0.0,
            "valid_errors": valid_errors,
            "invalid_errors": sum(errors.values()) - valid_errors,
            "connection_errors": stats.connection_errors(),
            "p50_ms": percentile_ms(interval, 0.50),
            "p99_ms": percentile_ms(interval, 0.99),
        }

    async def take(self, t_s: float, load_end_s: float | None = None) -> Sample:
        """A sample at ``t_s``; ``load_end_s``: when the load stopped, if before ``t_s`` (for the rate).
        Printed to stderr as it is taken."""
        load = self.load_snapshot(load_end_s if load_end_s is not None else t_s)
        start = time.perf_counter()
        usage = await asyncio.to_thread(timed_tree_usage, self.pid, self.roles, self.full_memory)
        sample = Sample(t_s=round(t_s, 2), **load, **usage, sample_ms=(time.perf_counter() - start) * 1e3)
        self.samples.append(sample)
        print(
            f"  t={sample.t_s:6.0f}s  {sample.interval_req_s:7.1f} req/s  requests={sample.requests}  "
            f"errors={sample.valid_errors}+{sample.invalid_errors}  procs={sample.processes}  "
            f"rss={sample.rss_mb:.1f}MB  uss={sample.uss_mb:.1f}MB  fds={sample.fds}",
            file=sys.stderr,
            flush=True,
        )
        return sample
