"""The soak benchmark: its corpus and verdict as plain Python, and a short valid-only run against a real
server that must PASS (no timing assertions; the RSS goal is relaxed: 10 s say nothing about leaks)."""

from __future__ import annotations

import csv
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.soak.checks import OK, WRONG_ANSWER, Stats, goal_checks
from benchmarks.soak.client import parse_response
from benchmarks.soak.corpus import VALID, Request, build_corpus
from loadtests.payloads import NESTING_DEPTHS, ModelSpec, deep_nesting_requests, invalid_requests

ROOT = Path(__file__).resolve().parent.parent
DIGITS = ModelSpec("digits-cnn", (8, 8), 0.0, 16.0, tuple(str(d) for d in range(10)), 64)


def test_the_invalid_stream_holds_every_client_mistake_and_deep_nesting() -> None:
    corpus = build_corpus([DIGITS], port=8000, invalid_fraction=0.2, seed=0)
    cases = [*invalid_requests(DIGITS, random.Random(0)), *deep_nesting_requests(DIGITS)]
    assert set(corpus.kinds) == {VALID} | {case.case for case in cases}
    assert {request.kind for request in corpus.schedule} == set(corpus.kinds)
    for depth in NESTING_DEPTHS:
        for protocol in ("V1", "V2"):
            for state in ("closed", "unclosed"):
                assert f"{protocol} nested {depth} deep, {state}" in corpus.kinds
    deep = next(r for r in corpus.schedule if r.kind == f"V2 nested {max(NESTING_DEPTHS)} deep, unclosed")
    assert deep.payload.startswith(b"POST /v2/models/digits-cnn/infer HTTP/1.1\r\n")
    assert b"[" * max(NESTING_DEPTHS) in deep.payload


def test_a_5xx_to_an_invalid_body_is_an_error_and_fails_the_soak() -> None:
    kind = "V1 nested 1100 deep, unclosed"
    stats = Stats([VALID, kind, "not JSON"])
    stats.record(Request(kind, "m", b""), "500", b"", 0.0)
    stats.record(Request("not JSON", "m", b""), "422", b"", 0.0)
    answered = Request(VALID, "m", b"", expected=(3,))
    stats.record(answered, OK, json.dumps({"predictions": [{"label_index": 3}]}).encode(), 0.001)
    assert stats.errors() == {f"{kind}:500": 1}
    summary = {"errors": stats.errors(), "rss_growth_pct": 0.0, "requests": stats.done}
    checks = goal_checks(summary, interrupted=False, max_growth=3.0)
    assert checks["every_invalid_request_4xx"] is False and checks["no_valid_request_errors"] is True


def test_a_changed_label_is_a_wrong_answer_unless_it_was_a_near_tie() -> None:
    stats = Stats()
    body = json.dumps({"predictions": [{"label_index": 1}, {"label_index": 2}]}).encode()
    stats.record(Request(VALID, "m", b"", expected=(1, 7), ties=frozenset({1})), OK, body, 0.0)
    stats.record(Request(VALID, "m", b"", expected=(0, 2)), OK, body, 0.0)
    assert stats.outcomes[VALID] == {OK: 1, WRONG_ANSWER: 1}


def test_responses_are_framed_by_length_or_chunks() -> None:
    chunked = bytearray(
        b"HTTP/1.1 422 X\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\nrest"
    )
    assert parse_response(chunked) == (422, b"abcde", False, len(chunked) - 4)
    sized = bytearray(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nConnection: close\r\n\r\nab")
    assert parse_response(sized) is None  # incomplete
    assert parse_response(sized + b"cd") == (200, b"abcd", True, len(sized) + 2)


@pytest.mark.slow
def test_short_valid_only_soak_passes_and_samples_the_server(tmp_path: Path) -> None:
    command = [
        sys.executable, "-m", "benchmarks.soak", "--duration", "10", "--concurrency", "4",
        "--warmup", "3", "--sample-every", "4", "--invalid-fraction", "0", "--max-rss-growth", "25",
        "--out", str(tmp_path),
    ]  # fmt: skip
    run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=270)
    assert run.returncode == 0, run.stdout + run.stderr

    summary = json.loads((tmp_path / "soak_summary.json").read_text())
    assert summary["verdict"] == "PASS" and all(summary["checks"].values()), summary["checks"]
    assert summary["valid"] > 0 and summary["invalid"] == 0
    assert summary["outcomes"][VALID] == {OK: summary["valid"]}
    assert summary["errors"] == {} and summary["connection_errors"] == 0
    assert set(summary["reference_accuracy"]) == set(summary["models"])

    with (tmp_path / "soak_samples.csv").open() as handle:
        samples = list(csv.DictReader(handle))
    assert len(samples) >= 3  # t=0, periodic, final
    for sample in samples:
        assert float(sample["rss_mb"]) > 0 and int(sample["fds"]) > 0 and int(sample["processes"]) > 0
    assert int(samples[-1]["requests"]) == summary["requests"]
