"""``python -m benchmarks.serving_bench``: run the chosen suites, print their tables and write the CSV,
JSON and plot to ``--out``."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
import time
from dataclasses import replace
from datetime import UTC, datetime

import psutil

from benchmarks import loadgen, report
from benchmarks.serving_bench.bench import FULL, QUICK, SUITES, Bench
from benchmarks.serving_bench.printing import print_goals, print_heavy, print_main, print_profile, print_sweep
from benchmarks.serving_bench.provenance import code_fingerprint, cpu_model, tool_versions
from benchmarks.serving_bench.suite_heavy import run_heavy
from benchmarks.serving_bench.suite_main import run_main
from benchmarks.serving_bench.suite_profile import run_profile
from benchmarks.serving_bench.suite_sweep import run_sweep


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
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.serving_bench",
        description="hookserve serving benchmark (see the package docstring)",
    )
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
