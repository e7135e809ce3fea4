"""``python -m benchmarks.soak``: start hookserve, run one soak against it, stop it, write and print the
results. The options and the exit status are described in the package docstring."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import benchmarks.soak
from benchmarks.servers import REPO_ROOT, ServerProcess, start_hookserve
from benchmarks.soak.corpus import SetupError
from benchmarks.soak.load import run_load
from benchmarks.soak.report import notable_log_lines, print_table, summarize, write_results

DEFAULT_CONFIG = REPO_ROOT / "configs" / "default.yaml"
DEFAULT_OUT = REPO_ROOT / "benchmarks" / "results" / "soak"


def raise_interrupt(signum: int, frame: object) -> None:
    """SIGTERM outside the load: unwind like Ctrl-C, so the server is stopped on the way out."""
    raise KeyboardInterrupt


def stop_server(server: ServerProcess) -> dict[str, Any]:
    start = time.monotonic()
    code = server.stop()
    return {"exit_code": code, "stop_s": round(time.monotonic() - start, 1)}


def soak(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="soak-") as workdir:
        server = start_hookserve("soak", args.config, Path(workdir))
        try:
            if not server.wait_ready(args.startup_timeout):
                raise SetupError(f"hookserve did not start: {server.failure}")
            print(f"hookserve ready on {server.base_url} after {server.startup_s:.1f} s", file=sys.stderr)
            result = asyncio.run(run_load(server, args))
        finally:
            stopped = stop_server(server)
            notable = notable_log_lines(server.log_path)
    summary = {**summarize(result, args), "server_stop": stopped, "server_log_notable_lines": len(notable)}
    write_results(args.out, summary, result.samples)
    (args.out / "server_log_notable.txt").write_text("".join(line + "\n" for line in notable))
    print_table(summary, result.samples)
    print(f"results in {args.out}", file=sys.stderr)
    return 0 if summary["verdict"] == "PASS" else 1


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.soak",
        description=(benchmarks.soak.__doc__ or "").splitlines()[0],
        epilog="Exit status: 0 PASS, 1 FAIL, 2 the soak could not run, 130 interrupted before the load.",
    )
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of load (default 600)")
    parser.add_argument("--concurrency", type=int, default=32, help="closed-loop clients (default 32)")
    parser.add_argument("--invalid-fraction", type=float, default=0.2, help="share of invalid requests")
    parser.add_argument("--sample-every", type=float, default=10.0, help="seconds between samples")
    parser.add_argument(
        "--warmup",
        type=float,
        default=60.0,
        help="seconds before the RSS baseline sample (at most half the run)",
    )
    parser.add_argument("--max-rss-growth", type=float, default=3.0, help="goal, %% after warm-up")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for CSV and JSON results")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="hookserve config")
    parser.add_argument("--request-timeout", type=float, default=30.0, help="client timeout, seconds")
    parser.add_argument("--startup-timeout", type=float, default=180.0, help="seconds to wait for /health")
    parser.add_argument("--seed", type=int, default=0, help="seed of the request mix")
    parser.add_argument("--no-uss", action="store_true", help="RSS only (skip PSS/USS from smaps_rollup)")
    args = parser.parse_args(argv)
    if not 0.0 <= args.invalid_fraction <= 1.0 or args.concurrency < 1 or args.sample_every <= 0:
        parser.error("need 0 <= --invalid-fraction <= 1, --concurrency >= 1, --sample-every > 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, raise_interrupt)
    try:
        return soak(args)
    except SetupError as exc:
        print(f"soak could not run: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("soak interrupted; server stopped", file=sys.stderr)
        return 130
