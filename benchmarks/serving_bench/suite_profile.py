"""The ``profile`` suite: CPU per request by process role, then py-spy on every hookserve process while
the same load runs (all threads, and GIL holders only)."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from benchmarks import loadgen, profiling
from benchmarks.servers import HookserveSettings, ServerProcess, start_hookserve
from benchmarks.serving_bench.bench import Bench
from benchmarks.serving_bench.measure import measure_window, running, warm_up
from models.checkpoint import load_pretrained
from models.registry import get_card


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
