"""hookserve's serving benchmark: served throughput and latency against the in-process limit and a peer.

One command measures, side by side and interleaved round by round (servers run concurrently; windows
rotate between them, so drift in the machine's load hits every server alike):

* ``main``    -- (a) the limit: ``model(x)`` in this process at batch 1, 8, 32, 64; (b) hookserve with
  monitoring on and (c) off, and (d) a plain single-process FastAPI peer with the same JSON contract, at
  1, 8, 32 and 64 concurrent clients (one instance per request);
* ``heavy``   -- a compute-bound model (resnet-bench) at its best batch size: served items/s vs the limit,
  for worker torch threads 1 and 2;
* ``sweep``   -- configurations the service could adopt as defaults (API servers, batch window, torch
  threads, max batch size), each a running hookserve, all interleaved with the peer;
* ``profile`` -- CPU per request by process role, and py-spy samples of every hookserve process under load.

Load comes from wrk (one C thread; a Python client would take CPU the servers need on a small machine),
or from ``benchmarks.loadgen``'s asyncio client when wrk is not installed. Every window records the
CPU the servers, the client and everything else on the machine used, so a noisy window shows as such.

    python -m benchmarks.serving_bench --model digits-cnn --device cpu            # main + heavy
    python -m benchmarks.serving_bench --quick                                    # same, < 5 min
    python -m benchmarks.serving_bench --suite sweep --suite profile              # defaults to adopt
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.util
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import torch

from benchmarks import loadgen, profiling, report
from benchmarks.raw_model import ForwardTiming, input_pool, median_timing, time_forward
from benchmarks.servers import (
    HookserveSettings,
    ServerProcess,
    metric_totals,
    start_hookserve,
    start_peer,
    worker_status,
)
from models.checkpoint import load_pretrained
from models.registry import get_card

SUITES = ("main", "heavy", "sweep", "profile")
STARTUP_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class Plan:
    """How long and how often to measure; ``--quick`` shrinks it."""

    rounds: int
    window_s: float
    warmup_s: float
    raw_window_s: float
    concurrency: tuple[int, ...]
    batch_sizes: tuple[int, ...]
    heavy_batches: tuple[int, ...]
    heavy_threads: tuple[int, ...]
    sweep_concurrency: tuple[int, ...]
    sweep_rounds: int
    sweep_window_s: float
    profile_s: float


FULL = Plan(
    3, 8.0, 2.0, 1.0, (1, 8, 32, 64), (1, 8, 32, 64), (1, 4, 8, 16, 32), (1, 2), (1, 8, 32), 3, 6.0, 12.0
)
QUICK = Plan(2, 3.0, 1.0, 0.5, (1, 8, 32, 64), (1, 8, 32, 64), (1, 8, 16), (1, 2), (1, 32), 1, 3.0, 6.0)


class Bench:
    """One run's shared state: the plan, where files go, how load is made, and what was measured."""

    def __init__(self, args: argparse.Namespace, plan: Plan) -> None:
        self.args = args
        self.plan = plan
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.workdir = Path(tempfile.mkdtemp(prefix="hookserve-bench-"))
        self.tag = f"{args.model}_{args.device}" + ("_quick" if args.quick else "")
        self.load_options: dict[str, Any] = {"cpus": args.client_cpus}
        self.results: dict[str, Any] = {}
        self.monitoring_available = importlib.util.find_spec("service.monitoring.monitor") is not None

    def log(self, message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)

    def bodies(self, model: torch.nn.Module, dataset: str | None, count: int = 32) -> Path:
        """``count`` request bodies of one real (or valid random) instance each."""
        pool = input_pool(model, dataset, size=count)
        rows = np.round(pool.numpy().astype(np.float64), 3)
        bodies = [
            json.dumps({"instances": [rows[i].tolist()]}, separators=(",", ":")).encode()
            for i in range(len(rows))
        ]
        return loadgen.write_bodies(bodies, self.workdir)


# --- measuring --------------------------------------------------------------------------------------
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


def raw_limits(
    bench: Bench,
    model: torch.nn.Module,
    pool: torch.Tensor,
    batches: tuple[int, ...],
    threads: int,
    suite: str,
    r: int,
) -> list[dict]:
    rows = []
    for b in batches:
        timing = time_forward(model, pool, b, threads, window_s=bench.plan.raw_window_s)
        rows.append({**timing.to_dict(), "suite": suite, "round": r})
    return rows


def median_raw(rows: list[dict]) -> dict[tuple[int, int], ForwardTiming]:
    grouped: dict[tuple[int, int], list[ForwardTiming]] = {}
    for row in rows:
        timing = ForwardTiming(**{k: row[k] for k in ForwardTiming.__dataclass_fields__})
        grouped.setdefault((timing.batch_size, timing.torch_threads), []).append(timing)
    return {key: median_timing(group) for key, group in grouped.items()}


def limit_for(
    raw: dict[tuple[int, int], ForwardTiming], concurrency: int, threads: int
) -> ForwardTiming | None:
    """The limit a server at ``concurrency`` one-instance clients could reach: the largest batch <= c."""
    batches = sorted(b for b, t in raw if t == threads and b <= concurrency)
    return raw[(batches[-1], threads)] if batches else None


# --- suites -----------------------------------------------------------------------------------------
def run_main(bench: Bench) -> dict:
    args, plan = bench.args, bench.plan
    card = get_card(args.model)
    model = load_pretrained(args.model).eval()
    pool = input_pool(model, card.dataset)
    bodies = bench.bodies(model, card.dataset)
    base = HookserveSettings(model=args.model, device=args.device, torch_threads=args.threads)
    starters: dict[str, Callable[[], ServerProcess]] = {}
    wanted = args.servers.split(",")
    if bench.monitoring_available and "on" in wanted:
        starters["hookserve monitoring on"] = lambda: start_hookserve("main-mon-on", base, bench.workdir)
    if "off" in wanted:
        starters["hookserve monitoring off"] = lambda: start_hookserve(
            "main-mon-off", replace(base, monitoring=False), bench.workdir
        )
    if "peer" in wanted:
        starters["fastapi peer"] = lambda: start_peer(
            "main-peer", args.model, bench.workdir, args.threads, args.device
        )
    bench.log(
        f"main: {args.model} on {args.device}, torch threads {args.threads}; starting {', '.join(starters)}"
    )
    if not bench.monitoring_available:
        bench.log(
            "  monitoring is not available (service.monitoring.monitor missing): measured with it off only"
        )
    raws: list[dict] = []
    with running(bench, starters) as servers:
        failed = sorted(set(starters) - set(servers))
        workers = {label: worker_status(s) for label, s in servers.items()}
        warm_up(bench, servers, bodies)
        windows = interleave(
            bench,
            servers,
            bodies,
            plan.concurrency,
            plan.rounds,
            "main",
            between_rounds=lambda r: raws.extend(
                raw_limits(bench, model, pool, plan.batch_sizes, args.threads, "main", r)
            ),
        )
    raw = median_raw(raws)
    served = report.median_by(windows, ("server", "concurrency"), report.SUMMARY_FIELDS)
    for row in served:
        limit = limit_for(raw, row["concurrency"], args.threads)
        row["limit_batch"] = limit.batch_size if limit else None
        row["limit_items_per_s"] = limit.items_per_s if limit else None
        row["served_over_limit"] = row["items_per_s"] / limit.items_per_s if limit else None
    labels = list(starters)
    report.plot_serving(
        bench.out / f"serving_{bench.tag}.png",
        f"{args.model} on {args.device} ({platform_line()}), torch threads {args.threads}; "
        f"medians of {plan.rounds} rounds",
        served,
        {b: t.items_per_s for (b, t_), t in raw.items() if t_ == args.threads},
        labels,
    )
    return {
        "model": args.model,
        "threads": args.threads,
        "servers": labels,
        "failed": failed,
        "workers": workers,
        "raw": [t.to_dict() for t in raw.values()],
        "served": served,
        "windows": windows,
        "raw_windows": raws,
    }


def best_batch(raw: dict[tuple[int, int], ForwardTiming], threads: int, tolerance: float = 0.03) -> int:
    """The smallest batch within ``tolerance`` of the best items/s: more batch buys latency, not speed."""
    points = {b: t.items_per_s for (b, t_), t in raw.items() if t_ == threads}
    best = max(points.values())
    return min(b for b, rate in points.items() if rate >= (1 - tolerance) * best)


def run_heavy(bench: Bench) -> dict:
    args, plan = bench.args, bench.plan
    overrides = {"width": args.heavy_width} if args.heavy_width else {}
    model = load_pretrained(args.heavy_model, **overrides).eval()
    card = get_card(args.heavy_model)
    pool = input_pool(model, card.dataset)
    bench.log(f"heavy: {args.heavy_model} {overrides or '(default width)'}: finding the best batch")
    search = []
    for threads in plan.heavy_threads:
        search += raw_limits(bench, model, pool, plan.heavy_batches, threads, "heavy-search", 0)
    searched = median_raw(search)
    best = {threads: best_batch(searched, threads) for threads in plan.heavy_threads}
    for (b, threads), t in sorted(searched.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        bench.log(
            f"  raw b={b:<3} threads={threads}: {t.items_per_s:7.1f} items/s, p50 {t.latency_ms_p50:.1f} ms"
        )
    batch = best[1]
    bench.log(f"  best batch (threads 1): {batch}; served with max_batch_size={batch}, {2 * batch} clients")
    bodies = bench.bodies(model, card.dataset, count=16)
    base = HookserveSettings(
        model=args.heavy_model,
        device=args.device,
        monitoring=False,
        torch_threads=1,
        max_batch_size=batch,
        overrides=overrides,
    )
    starters: dict[str, Callable[[], ServerProcess]] = {}
    for threads in plan.heavy_threads:
        settings = replace(base, torch_threads=threads)
        starters[f"hookserve off, threads {threads}"] = lambda s=settings, t=threads: start_hookserve(
            f"heavy-off-t{t}", s, bench.workdir
        )
    if bench.monitoring_available:
        starters["hookserve on, threads 1"] = lambda: start_hookserve(
            "heavy-on-t1", replace(base, monitoring=True), bench.workdir
        )
    if not overrides:
        starters["fastapi peer, threads 1"] = lambda: start_peer(
            "heavy-peer", args.heavy_model, bench.workdir, 1
        )
    raws: list[dict] = []

    def measure_limits(r: int) -> None:
        for threads in plan.heavy_threads:
            raws.extend(raw_limits(bench, model, pool, (batch,), threads, "heavy", r))

    with running(bench, starters) as servers:
        failed = sorted(set(starters) - set(servers))
        warm_up(bench, servers, bodies, concurrency=2 * batch)
        windows = interleave(
            bench,
            servers,
            bodies,
            (2 * batch,),
            plan.rounds,
            "heavy",
            between_rounds=measure_limits,
        )
    raw = median_raw(raws)
    served = report.median_by(windows, ("server", "concurrency"), report.SUMMARY_FIELDS)
    for row in served:
        threads = 2 if "threads 2" in row["server"] else 1
        limit = raw[(batch, threads)]
        row["limit_batch"] = batch
        row["limit_threads"] = threads
        row["limit_items_per_s"] = limit.items_per_s
        row["served_over_limit"] = row["items_per_s"] / limit.items_per_s
    return {
        "model": args.heavy_model,
        "overrides": overrides,
        "best_batch": best,
        "search": [t.to_dict() for t in searched.values()],
        "raw": [t.to_dict() for t in raw.values()],
        "served": served,
        "windows": windows,
        "failed": failed,
    }


def sweep_variants(bench: Bench) -> dict[str, HookserveSettings]:
    base = HookserveSettings(
        model=bench.args.model,
        device=bench.args.device,
        monitoring=bench.monitoring_available,
        torch_threads=1,
    )
    return {
        "base (api 1, window 0, threads 1, batch 64)": base,
        "api_servers=2": replace(base, api_servers=2),
        "batch_timeout_ms=2": replace(base, batch_timeout_ms=2.0),
        "torch_threads=2 (= unset here)": replace(base, torch_threads=2),
        "max_batch_size=8": replace(base, max_batch_size=8),
        "max_batch_size=1": replace(base, max_batch_size=1),
    }


def run_sweep(bench: Bench) -> dict:
    args, plan = bench.args, bench.plan
    card = get_card(args.model)
    model = load_pretrained(args.model).eval()
    bodies = bench.bodies(model, card.dataset)
    variants = sweep_variants(bench)
    starters: dict[str, Callable[[], ServerProcess]] = {
        label: (lambda s=settings, i=i: start_hookserve(f"sweep-{i}", s, bench.workdir))
        for i, (label, settings) in enumerate(variants.items())
    }
    starters["fastapi peer"] = lambda: start_peer("sweep-peer", args.model, bench.workdir, 1, args.device)
    monitoring = "on" if bench.monitoring_available else "off"
    bench.log(f"sweep: {args.model}, monitoring {monitoring}; {len(starters)} servers")
    with running(bench, starters) as servers:
        warm_up(bench, servers, bodies)
        windows = interleave(
            bench,
            servers,
            bodies,
            plan.sweep_concurrency,
            plan.sweep_rounds,
            "sweep",
            window_s=plan.sweep_window_s,
        )
    served = report.median_by(windows, ("server", "concurrency"), report.SUMMARY_FIELDS)
    return {
        "model": args.model,
        "monitoring": monitoring,
        "variants": {
            label: s.config(0)["models"][0] | {"api_servers": s.api_servers} for label, s in variants.items()
        },
        "served": served,
        "windows": windows,
    }


def run_profile(bench: Bench) -> dict:
    args = bench.args
    card = get_card(args.model)
    model = load_pretrained(args.model).eval()
    bodies = bench.bodies(model, card.dataset)
    settings = HookserveSettings(model=args.model, device=args.device, monitoring=bench.monitoring_available)
    concurrency = 32
    results: dict[str, Any] = {
        "model": args.model,
        "concurrency": concurrency,
        "monitoring": settings.monitoring,
    }
    with running(
        bench, {"hookserve": lambda: start_hookserve("profile", settings, bench.workdir)}
    ) as servers:
        if not servers:
            return {**results, "error": "hookserve did not start"}
        server = servers["hookserve"]
        warm_up(bench, servers, bodies)
        # 1) CPU per request by role, no profiler attached.
        results["cpu_window"] = measure_window(bench, server, bodies, concurrency, suite="profile")
        # 2) py-spy on every process while the same load runs.
        if not profiling.py_spy_available():
            results["py_spy"] = "py-spy not installed (pip install py-spy)"
            return results
        for mode in ("wall", "gil"):
            results[f"py_spy_{mode}"] = [s.to_dict() for s in profile_under_load(bench, server, bodies, mode)]
    return results


def profile_under_load(bench: Bench, server: ServerProcess, bodies: Path, mode: str) -> list:
    """py-spy on every hookserve process at once while c=32 load runs; ``mode`` "gil": GIL holders only."""
    sample_s, rate, concurrency = bench.plan.profile_s, 100, 32
    loader = threading.Thread(
        target=loadgen.run_load,
        args=(server.predict_url, bodies, concurrency, sample_s + 3),
        kwargs=bench.load_options,
    )
    loader.start()
    time.sleep(1.0)
    recordings = []
    for role, pids in server.roles().items():
        for pid in pids if role != "tracker" else ():
            path = bench.out / f"profile_{bench.tag}_{mode}_{role}.txt"
            process = profiling.start_recording(pid, sample_s, path, rate, gil_only=mode == "gil")
            recordings.append((role, pid, path, process))
    summaries = []
    for role, pid, path, process in recordings:
        _, err = process.communicate(timeout=sample_s + 60)
        if process.returncode != 0:
            bench.log(f"  py-spy on {role} {pid} failed: {err.strip()[-300:]}")
        summaries.append(profiling.summarize(role, pid, path, rate, sample_s))
    loader.join()
    return summaries


# --- reporting --------------------------------------------------------------------------------------
def platform_line() -> str:
    return f"{cpu_model()}, {os.cpu_count()} cores"


def cpu_model() -> str:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def code_fingerprint() -> dict[str, str]:
    """Which service code was measured: the commit plus a hash of every file under service/ and models/
    as it is on disk (uncommitted edits included), so a run that straddles an edit shows it."""
    root = Path(__file__).resolve().parent.parent
    digest = hashlib.sha256()
    for path in sorted([*root.glob("service/**/*.py"), *root.glob("models/**/*.py")]):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    commit = ""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10
        ).stdout.strip()
    return {"commit": commit, "service_models_sha256": digest.hexdigest()[:16]}


def tool_versions() -> dict[str, str]:
    versions = {"python": platform.python_version(), "torch": torch.__version__}
    with contextlib.suppress(Exception):
        import litserve

        versions["litserve"] = litserve.__version__
    if loadgen.wrk_available():
        out = subprocess.run(["wrk", "--version"], capture_output=True, text=True).stdout
        versions["wrk"] = out.split("[")[0].replace("wrk", "").strip()
    return versions


# (header, record key, decimals) of the served tables
SERVED_COLUMNS = {
    "server": ("server", "server", 0),
    "c": ("c", "concurrency", 0),
    "req/s": ("req/s", "ok_per_s", 0),
    "items/s": ("items/s", "items_per_s", 1),
    "p50": ("p50 ms", "p50_ms", 2),
    "p99": ("p99 ms", "p99_ms", 2),
    "errors": ("errors", "errors", 0),
    "ratio": ("served/limit", "served_over_limit", 3),
    "limit": ("limit items/s", "limit_items_per_s", 1),
    "batch": ("mean batch", "mean_batch", 1),
    "cpu": ("CPU ms/req", "server_cpu_ms_per_req", 2),
    "client": ("client cores", "client_cpu_cores", 2),
    "other": ("other cores", "foreign_cpu_cores", 2),
}


def served_table(rows: list[dict], columns: list[str]) -> str:
    specs = [SERVED_COLUMNS[c] for c in columns]
    return report.text_table(
        [header for header, _, _ in specs],
        [[report.fmt(row.get(key), digits) for _, key, digits in specs] for row in rows],
    )


def print_main(result: dict) -> None:
    print(f"\n## main: {result['model']}, torch threads {result['threads']}\n")
    limits = [
        [f"batch {r['batch_size']}", report.fmt(r["items_per_s"], 0), report.fmt(r["latency_ms_p50"], 3),
         report.fmt(r["latency_ms_p99"], 3)]
        for r in sorted(result["raw"], key=lambda r: r["batch_size"])
    ]  # fmt: skip
    print(report.text_table(["in-process limit", "items/s", "p50 ms", "p99 ms"], limits))
    rows = sorted(result["served"], key=lambda r: (result["servers"].index(r["server"]), r["concurrency"]))
    columns = ["server", "c", "req/s", "p50", "p99", "errors", "ratio", "batch", "cpu", "client", "other"]
    print()
    print(served_table(rows, columns))
    print("served/limit: served items/s over the in-process limit at batch = c")
    for label in result["failed"]:
        print(f"  {label}: did not start (see the log above)")


def print_heavy(result: dict) -> None:
    print(f"\n## heavy: {result['model']} {result['overrides'] or ''}, best batch {result['best_batch']}\n")
    columns = ["server", "c", "items/s", "limit", "ratio", "p50", "p99", "errors", "batch", "cpu", "other"]
    print(served_table(result["served"], columns))


def print_sweep(result: dict) -> None:
    print(f"\n## sweep: {result['model']}, monitoring {result['monitoring']}\n")
    rows = sorted(result["served"], key=lambda r: (r["concurrency"], r["server"]))
    print(served_table(rows, ["server", "c", "req/s", "p50", "p99", "errors", "batch", "cpu", "other"]))


def print_profile(result: dict) -> None:
    print(
        f"\n## profile: {result['model']} at c={result['concurrency']}, monitoring {result['monitoring']}\n"
    )
    window = result.get("cpu_window")
    if window:
        roles = {k[len("cpu_ms_per_req_") :]: v for k, v in window.items() if k.startswith("cpu_ms_per_req_")}
        print(
            f"{window['ok_per_s']:.0f} req/s; "
            f"server CPU per request: {window['server_cpu_ms_per_req']:.3f} ms = "
            + ", ".join(f"{role} {ms:.3f}" for role, ms in sorted(roles.items(), key=lambda kv: -kv[1]))
        )
    if isinstance(result.get("py_spy"), str):
        print(result["py_spy"])
        return
    for mode, title in (("wall", "all threads, waits marked"), ("gil", "GIL holder only: Python CPU")):
        print(f"\npy-spy, {title}:")
        for s in result.get(f"py_spy_{mode}", []):
            top = ", ".join(f"{c['category']} {c['share']:.0%}" for c in s["categories"][:5])
            print(f"- {s['role']}: {s['samples']} samples, active {s['busy_fraction']:.2f} cores; {top}")


def print_goals(results: dict) -> dict:
    goals: dict[str, Any] = {}
    main = results.get("main")
    if main:
        served = {(r["server"], r["concurrency"]): r for r in main["served"]}
        label = (
            "hookserve monitoring on"
            if ("hookserve monitoring on", 32) in served
            else "hookserve monitoring off"
        )
        hs, peer = served.get((label, 32)), served.get(("fastapi peer", 32))
        if hs and peer:
            goals["c32_vs_peer"] = {
                "server": label,
                "hookserve": hs["ok_per_s"],
                "peer": peer["ok_per_s"],
                "ratio": hs["ok_per_s"] / peer["ok_per_s"],
                "met": hs["ok_per_s"] >= peer["ok_per_s"],
            }
        raw1 = next((r for r in main["raw"] if r["batch_size"] == 1), None)
        c1 = served.get((label, 1))
        if raw1 and c1:
            gap = c1["p50_ms"] - raw1["latency_ms_p50"]
            goals["c1_p50_gap_ms"] = {
                "server": label,
                "p50_ms": c1["p50_ms"],
                "raw_ms": raw1["latency_ms_p50"],
                "gap_ms": gap,
                "met": gap <= 1.5,
            }
    heavy = results.get("heavy")
    if heavy:
        row = next((r for r in heavy["served"] if r["server"] == "hookserve off, threads 1"), None)
        if row:
            goals["heavy_vs_limit"] = {
                "server": row["server"],
                "ratio": row["served_over_limit"],
                "met": row["served_over_limit"] >= 0.85,
            }
    if goals:
        print("\n## goals\n")
        for name, goal in goals.items():
            shown = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in goal.items()}
            print(f"- {name}: {shown}")
    return goals


def write_outputs(bench: Bench, meta: dict) -> None:
    rows: list[dict] = []
    windows: list[dict] = []
    for suite in SUITES:
        result = bench.results.get(suite)
        if not result:
            continue
        rows += [{"suite": suite, "kind": "served", **r} for r in result.get("served", [])]
        rows += [{"suite": suite, "kind": "limit", **r} for r in result.get("raw", [])]
        windows += result.get("windows", []) + result.get("raw_windows", [])
    report.write_csv(bench.out / f"serving_{bench.tag}.csv", rows)
    report.write_csv(bench.out / f"serving_{bench.tag}_windows.csv", windows)
    (bench.out / f"serving_{bench.tag}.json").write_text(
        json.dumps({"meta": meta, **bench.results}, indent=1, default=str)
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="hookserve serving benchmark (see the module docstring)")
    parser.add_argument("--model", default="digits-cnn")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch threads: limit, hookserve worker, peer")
    parser.add_argument("--suite", action="append", choices=[*SUITES, "all"], help="default: main and heavy")
    parser.add_argument("--quick", action="store_true", help="short windows and fewer rounds (< 5 min)")
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--heavy-model", default="resnet-bench")
    parser.add_argument(
        "--heavy-width", type=int, default=None, help="override resnet-bench's width (slow CPUs)"
    )
    parser.add_argument("--client-cpus", default=None, help="pin the load generator with taskset, e.g. '1'")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--window", type=float, default=None, help="seconds per measured window")
    parser.add_argument("--concurrency", default=None, help="comma list, e.g. 1,32 (main suite)")
    parser.add_argument("--batch-sizes", default=None, help="comma list for the limit, e.g. 1,8 (main suite)")
    parser.add_argument("--servers", default="on,off,peer", help="main suite: hookserve on/off, FastAPI peer")
    args = parser.parse_args(argv)
    suites = SUITES if "all" in (args.suite or []) else tuple(args.suite or ("main", "heavy"))
    plan = QUICK if args.quick else FULL
    plan = replace(
        plan,
        rounds=args.rounds or plan.rounds,
        sweep_rounds=args.rounds or plan.sweep_rounds,
        window_s=args.window or plan.window_s,
        concurrency=_ints(args.concurrency) or plan.concurrency,
        batch_sizes=_ints(args.batch_sizes) or plan.batch_sizes,
    )
    bench = Bench(args, plan)
    started = time.monotonic()
    meta = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "python -m benchmarks.serving_bench "
        + shlex.join(argv if argv is not None else sys.argv[1:]),
        "machine": {
            "cpu": cpu_model(),
            "cores": os.cpu_count(),
            "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        },
        "versions": tool_versions(),
        "load_generator": "wrk -t1 (Lua: rotating bodies, percentiles)"
        if loadgen.wrk_available()
        else "python asyncio",
        "plan": plan.__dict__,
        "loadavg_before": os.getloadavg(),
        "monitoring_available": bench.monitoring_available,
        "code_before": code_fingerprint(),
    }
    bench.log(
        f"{meta['machine']}, load average {meta['loadavg_before']}, load generator: {meta['load_generator']}"
    )
    runners = {"main": run_main, "heavy": run_heavy, "sweep": run_sweep, "profile": run_profile}
    try:
        for suite in suites:
            try:
                bench.results[suite] = runners[suite](bench)
            except Exception as exc:  # one broken suite must not lose the others' numbers
                bench.log(f"{suite} failed: {exc!r}")
                bench.results[suite] = {"error": repr(exc)}
    finally:
        meta["loadavg_after"] = os.getloadavg()
        meta["code_after"] = code_fingerprint()
        meta["elapsed_s"] = round(time.monotonic() - started, 1)
        shutil.rmtree(bench.workdir, ignore_errors=True)
    printers = {"main": print_main, "heavy": print_heavy, "sweep": print_sweep, "profile": print_profile}
    for suite in suites:
        if "error" in bench.results[suite]:
            print(f"\n## {suite}: failed: {bench.results[suite]['error']}")
        else:
            printers[suite](bench.results[suite])
    meta["goals"] = print_goals({k: v for k, v in bench.results.items() if "error" not in v})
    write_outputs(bench, meta)
    print(
        f"\nload average before {meta['loadavg_before']}, after {meta['loadavg_after']}; "
        f"{meta['elapsed_s']} s"
    )
    if meta["code_after"] != meta["code_before"]:
        print(
            "WARNING: service/ or models/ changed during the run: "
            f"{meta['code_before']} -> {meta['code_after']}"
        )
    print(f"code measured: {meta['code_before']}")
    print(f"results: {bench.out}/serving_{bench.tag}.{{csv,json,png}}")
    failed = [suite for suite in suites if "error" in bench.results[suite]]
    return 1 if failed else 0


def _ints(text: str | None) -> tuple[int, ...] | None:
    return tuple(int(v) for v in text.split(",")) if text else None


if __name__ == "__main__":
    sys.exit(main())
