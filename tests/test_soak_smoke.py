"""The soak benchmark runs end to end against a real server (no timing or memory-growth assertions:
a 15 s run on a shared 2-core machine says nothing about leaks)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.soak import INVALID_KINDS

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_short_soak_answers_valid_200_invalid_4xx_and_samples_the_server(tmp_path):
    command = [
        sys.executable, "-m", "benchmarks.soak", "--duration", "15", "--concurrency", "4",
        "--warmup", "5", "--sample-every", "5", "--out", str(tmp_path),
    ]  # fmt: skip
    run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=270)
    # 0 (PASS) or 1 (FAIL, e.g. RSS noise in 15 s); 2 would mean the soak could not run at all.
    assert run.returncode in (0, 1), run.stdout + run.stderr

    summary = json.loads((tmp_path / "soak_summary.json").read_text())
    outcomes = summary["outcomes"]
    assert summary["valid"] > 0 and summary["invalid"] > 0
    assert set(outcomes["valid"]) == {"200"}, outcomes["valid"]
    for kind in INVALID_KINDS:
        assert outcomes[kind], f"no {kind} request was sent"
        assert all(status.startswith("4") for status in outcomes[kind]), (kind, outcomes[kind])
    assert summary["errors"] == {} and summary["connection_errors"] == 0

    with (tmp_path / "soak_samples.csv").open() as handle:
        samples = list(csv.DictReader(handle))
    assert len(samples) >= 3  # t=0, periodic, final
    for sample in samples:
        assert float(sample["rss_mb"]) > 0 and int(sample["fds"]) > 0 and int(sample["processes"]) > 0
    assert int(samples[-1]["requests"]) == summary["requests"]
