"""The soak's results: the summary (load, memory, goals and verdict), the CSV and JSON written to ``--out``,
the table printed at the end, and the server log lines worth a look."""

from __future__ import annotations

import argparse
import csv
import json
import math
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.soak.checks import goal_checks
from benchmarks.soak.load import LoadResult
from benchmarks.soak.sampler import Sample, percentile_ms


def baseline_sample(samples: list[Sample], warmup_s: float) -> Sample:
    """The first sample at or after the warm-up (never the final one unless it is the only one)."""
    candidates = samples[:-1] or samples
    return next((s for s in candidates if s.t_s >= warmup_s), candidates[-1])


def rss_slope_mb_per_min(samples: list[Sample]) -> float:
    if len(samples) < 2:
        return 0.0
    t = np.array([s.t_s for s in samples])
    rss = np.array([s.rss_mb for s in samples])
    return float(np.polyfit(t, rss, 1)[0] * 60.0)


def memory_summary(samples: list[Sample], warmup_s: float) -> dict[str, Any]:
    """RSS/USS/fds/processes at the start, after the warm-up and at the end; growth after the warm-up."""
    start, base, end = samples[0], baseline_sample(samples, warmup_s), samples[-1]
    growth = (end.rss_mb - base.rss_mb) / base.rss_mb * 100 if base.rss_mb else math.inf
    steady = [s for s in samples if s.t_s >= base.t_s]
    return {
        "warmup_s": warmup_s,
        "rss_mb": {
            "start": round(start.rss_mb, 1),
            "after_warmup": round(base.rss_mb, 1),
            "end": round(end.rss_mb, 1),
            "after_warmup_t_s": base.t_s,
        },
        "rss_growth_pct": round(growth, 2),
        "rss_slope_mb_per_min_after_warmup": round(rss_slope_mb_per_min(steady), 3),
        "uss_mb": {"after_warmup": round(base.uss_mb, 1), "end": round(end.uss_mb, 1)},
        "fds": {"start": start.fds, "after_warmup": base.fds, "end": end.fds},
        "processes": {"start": start.processes, "end": end.processes},
        "server_cpu_s": round(end.server_cpu_s - start.server_cpu_s, 2),
    }


def load_summary(result: LoadResult) -> dict[str, Any]:
    """Requests, rates, latencies, errors and what the client itself cost."""
    stats, elapsed = result.stats, result.elapsed_s
    totals = stats.totals()
    return {
        "duration_s": round(elapsed, 1),
        "stop_reason": result.stop_reason,
        **totals,
        "req_per_s": round(totals["requests"] / elapsed, 1) if elapsed else 0.0,
        "valid_p50_ms": round(percentile_ms(stats.latencies, 0.50), 2),
        "valid_p99_ms": round(percentile_ms(stats.latencies, 0.99), 2),
        "errors": stats.errors(),
        "connection_errors": stats.connection_errors(),
        "outcomes": stats.outcomes,
        "reference_accuracy": result.reference_accuracy,
        "client_cpu_s": round(result.client_cpu_s, 2),
        "client_cpu_pct_of_core": round(result.client_cpu_s / elapsed * 100, 1) if elapsed else 0.0,
        "client_cpu_us_per_request": round(result.client_cpu_s / max(totals["requests"], 1) * 1e6, 1),
        # samples taken during the load window (not the first, nor the final one after it)
        "sampler_cpu_s": round(sum(s.sample_cpu_ms for s in result.samples[1:-1]) / 1e3, 2),
    }


def summarize(result: LoadResult, args: argparse.Namespace) -> dict[str, Any]:
    summary = {
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "config": str(args.config),
        "models": result.models,
        "concurrency": args.concurrency,
        "invalid_fraction": args.invalid_fraction,
        **load_summary(result),
        **memory_summary(result.samples, min(args.warmup, result.elapsed_s / 2)),
        "goals": {
            "max_rss_growth_pct": args.max_rss_growth,
            "valid": "200, reference answer",
            "invalid": "4xx",
        },
    }
    summary["checks"] = goal_checks(summary, result.interrupted, args.max_rss_growth)
    summary["verdict"] = "PASS" if all(summary["checks"].values()) else "FAIL"
    return summary


def write_results(out: Path, summary: dict[str, Any], samples: list[Sample]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    rows = [s.row() for s in samples]
    with (out / "soak_samples.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({k: round(v, 2) if isinstance(v, float) else v for k, v in r.items()} for r in rows)
    detail = [{"t_s": s.t_s, "per_process": s.per_process} for s in samples]
    (out / "soak_summary.json").write_text(json.dumps({**summary, "samples": detail}, indent=2) + "\n")


TABLE = "{:>7} {:>8} {:>9} {:>6} {:>6} {:>5} {:>7} {:>5} {:>8} {:>8} {:>5}"


def sample_table(samples: list[Sample]) -> list[str]:
    header = (
        "t_s",
        "req/s",
        "requests",
        "v.err",
        "i.err",
        "conn",
        "p99ms",
        "procs",
        "rss_MB",
        "uss_MB",
        "fds",
    )
    lines = [TABLE.format(*header)]
    for s in samples:
        values = (s.t_s, s.interval_req_s, s.requests, s.valid_errors, s.invalid_errors, s.connection_errors)
        values += (s.p99_ms, s.processes, s.rss_mb, s.uss_mb, s.fds)
        lines.append(TABLE.format(*(f"{v:.1f}" if isinstance(v, float) else v for v in values)))
    return lines


def summary_lines(summary: dict[str, Any]) -> list[str]:
    s, rss, fds, procs = summary, summary["rss_mb"], summary["fds"], summary["processes"]
    checks = "  ".join(f"{name}={'ok' if ok else 'FAIL'}" for name, ok in s["checks"].items())
    return [
        f"{s['duration_s']} s, {s['requests']} requests ({s['valid']} valid, {s['invalid']} invalid), "
        f"{s['req_per_s']} req/s, valid p50/p99 {s['valid_p50_ms']}/{s['valid_p99_ms']} ms",
        f"errors: {s['errors'] or 'none'} (connection errors/timeouts: {s['connection_errors']})",
        f"RSS {rss['start']} MB at start, {rss['after_warmup']} MB at t={rss['after_warmup_t_s']:.0f}s, "
        f"{rss['end']} MB at the end: {s['rss_growth_pct']:+.2f} % after warm-up "
        f"(goal < {s['goals']['max_rss_growth_pct']} %)",
        f"fds {fds['start']} -> {fds['after_warmup']} -> {fds['end']}, processes {procs['start']} -> "
        f"{procs['end']}",
        f"client CPU {s['client_cpu_s']} s ({s['client_cpu_pct_of_core']} % of a core, "
        f"{s['client_cpu_us_per_request']} us/request, sampler {s['sampler_cpu_s']} s of it); "
        f"server tree CPU {s['server_cpu_s']} s",
        checks,
        s["verdict"],
    ]


def print_table(summary: dict[str, Any], samples: list[Sample]) -> None:
    print("\n".join([*sample_table(samples), "", *summary_lines(summary)]))


ACCESS_LOG = re.compile(r'^INFO:\s+\S+ - "')
NOTABLE = re.compile(r"WARNING|ERROR|CRITICAL|Traceback|Error|Warning|Exception|exit", re.IGNORECASE)


def notable_log_lines(log_path: Path, limit: int = 500) -> list[str]:
    """Server log lines worth a look: not access-log lines, and naming a warning, error or exit."""
    found = []
    with log_path.open(errors="replace") as handle:
        for line in handle:
            if not ACCESS_LOG.match(line) and NOTABLE.search(line):
                found.append(line.rstrip("\n"))
                if len(found) >= limit:
                    break
    return found
