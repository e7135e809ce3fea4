"""What tracing costs when served: req/s and latency with tracing off, and on at 0 %, 1 % and 100 %.

``python -m benchmarks.tracing_cost [--model tiny] [--concurrency 32] [--duration 8] [--repeats 3]
[--modes off,0%,1%,100%]``

Four hookserve servers (1 API server, 1 worker, monitoring on) serve the same model, one per mode; the
traced ones export OTLP/HTTP to a sink in its own process that answers without decoding (a collector
runs elsewhere; decoding here would take the 2 cores from the servers measured). Windows rotate
through the modes, each cycle starting one mode later (no mode always follows another, e.g. the 100 %
one still exporting), so each sees the same machine; the table shows medians, each mode's ratio to
"off" (the median of the cycles' ratios), and the CPU time per request of the API server and the
worker (less sensitive to a busy machine than req/s). "0 %" is tracing on with nothing sampled: the cost of
being ready to trace. A cost of a percent or two is within one window's noise on 2 cores: for it, run two
modes (``--modes off,1%``) over many short cycles, and read the 90 % interval the table gives for the
median ratio (a bootstrap over the cycles); ``--modes off,off2,1%`` adds a second untraced server, whose
ratio to the first is what two alike servers differ by in this run. Run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import orjson

from benchmarks.loadgen import run_load, write_bodies
from benchmarks.servers import REPO_ROOT, HookserveSettings, free_port, start_hookserve

PLUGINS = REPO_ROOT / "benchmarks" / "peers" / "servers"
MODES = {"off": None, "0%": 0.0, "1%": 0.01, "100%": 1.0}
A_A = {"off2": None}  # a second untraced server, asked for by name: what two alike servers differ by
RECEIVER = """
import sys, time
from benchmarks.otlp_receiver import OtlpReceiver
with OtlpReceiver(port=int(sys.argv[1]), keep=False) as receiver:
    while True:
        time.sleep(60)
"""


def server_config(model: str, ratio: float | None) -> dict:
    source = f"hookserve_plugin:{model}" if model in ("tiny", "mid") else model
    settings = HookserveSettings(model=model, model_extra={"source": source})
    config = settings.config(port=0)
    del config["server"]["port"]  # start_hookserve passes the port
    # Explicit on both sides: the OTLP endpoint variable, set for every server, would turn "off" on too.
    if ratio is None:
        config["server"]["tracing"] = {"enabled": False}
    else:
        config["server"]["tracing"] = {"enabled": True, "sample_ratio": ratio}  # the default export interval
    return config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--modes", default=",".join(MODES), help="which of off,0%%,1%%,100%%,off2 to run")
    args = parser.parse_args(argv)
    modes_run = {mode: (MODES | A_A)[mode] for mode in args.modes.split(",")}
    if "off" not in modes_run or len(modes_run) < 2:
        parser.error("--modes needs off and at least one traced mode")

    workdir = Path(tempfile.mkdtemp(prefix="tracing-cost-"))
    receiver_port = free_port()
    receiver = subprocess.Popen(
        [sys.executable, "-c", RECEIVER, str(receiver_port)],
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    env = {
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), str(PLUGINS)]),
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"http://127.0.0.1:{receiver_port}/v1/traces",
    }
    servers = {}
    try:
        for mode, ratio in modes_run.items():
            servers[mode] = start_hookserve(
                f"tracing-{mode.rstrip('%')}", server_config(args.model, ratio), workdir, env
            )
        for mode, server in servers.items():
            if not server.wait_ready(180):
                raise SystemExit(f"{mode}: hookserve did not start: {server.failure}\n{server.log()[-2000:]}")
        shape = (64,) if args.model == "tiny" else (3, 32, 32)
        x = np.random.default_rng(0).standard_normal((1, *shape), dtype=np.float32)
        bodies = write_bodies([orjson.dumps({"instances": x.tolist()})], workdir)
        results: dict[str, list] = {mode: [] for mode in modes_run}
        cpu: dict[str, list[dict[str, float]]] = {mode: [] for mode in modes_run}
        for server in servers.values():  # warm-up
            run_load(server.predict_url, bodies, args.concurrency, 2)
        modes = list(servers)
        for cycle in range(args.repeats):  # each cycle starts one mode later: none always follows another
            for mode in modes[cycle % len(modes) :] + modes[: cycle % len(modes)]:
                server = servers[mode]
                before = server.cpu_seconds()
                result = run_load(server.predict_url, bodies, args.concurrency, args.duration)
                results[mode].append(result)
                cpu[mode].append(cpu_per_request(before, server.cpu_seconds(), result.requests))
                time.sleep(0.5)
    finally:
        for server in servers.values():
            server.stop()
        receiver.kill()
    windows = f"{args.repeats} x {args.duration:g} s windows (medians; x off: of each cycle's ratio)"
    print(f"model {args.model}, {args.concurrency} clients, {windows}")
    columns = "req/s | x off | 90 % interval | p50 ms | p99 ms | errors | API CPU us/req | worker CPU us/req"
    print(f"| tracing | {columns} |")
    print("|---|---|---|---|---|---|---|---|---|")
    for mode, windows in results.items():
        rate = statistics.median(r.ok_per_s for r in windows)
        pairs = zip(windows, results["off"], strict=True)
        ratios = [r.ok_per_s / off.ok_per_s for r, off in pairs if off.ok_per_s]
        ratio = statistics.median(ratios)
        low, high = median_interval(ratios)
        p50 = statistics.median(r.p50_ms for r in windows)
        p99 = statistics.median(r.p99_ms for r in windows)
        errors = sum(r.errors for r in windows)
        api = statistics.median(c.get("api", 0.0) for c in cpu[mode])
        worker = statistics.median(c.get("worker", 0.0) for c in cpu[mode])
        print(
            f"| {mode} | {rate:,.0f} | {ratio:.3f} | {low:.3f}-{high:.3f} | {p50:.2f} | {p99:.2f} | {errors} "
            f"| {api:.1f} | {worker:.1f} |"
        )
    return 0


def median_interval(values: list[float], level: float = 0.9, resamples: int = 2000) -> tuple[float, float]:
    """A bootstrap ``level`` interval of the median of ``values`` (the cycles' ratios)."""
    data = np.asarray(values)
    rng = np.random.default_rng(0)
    medians = np.median(rng.choice(data, size=(resamples, len(data))), axis=1)
    tail = (1 - level) / 2
    return float(np.quantile(medians, tail)), float(np.quantile(medians, 1 - tail))


def cpu_per_request(before: dict[str, float], after: dict[str, float], requests: int) -> dict[str, float]:
    """Microseconds of CPU per answered request, by process role, over one window."""
    return {role: (after[role] - before.get(role, 0.0)) / max(requests, 1) * 1e6 for role in after}


if __name__ == "__main__":
    sys.exit(main())
