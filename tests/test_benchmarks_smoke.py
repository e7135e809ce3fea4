"""The benchmark entry points run end to end with minimal settings (no timing assertions)."""

from __future__ import annotations

import json

import pytest
import torch

from benchmarks import gpu_precision, serving_bench
from benchmarks.profiling import parse_collapsed, summarize


@pytest.mark.slow
def test_serving_bench_main_suite_measures_hookserve_and_the_peer(tmp_path):
    argv = [
        "--suite", "main", "--servers", "on,peer", "--quick", "--rounds", "1", "--window", "1",
        "--concurrency", "1", "--batch-sizes", "1", "--out", str(tmp_path),
    ]  # fmt: skip
    assert serving_bench.main(argv) == 0
    result = json.loads((tmp_path / "serving_digits-cnn_cpu_quick.json").read_text())
    main = result["main"]
    assert main["failed"] == []
    served = {r["server"]: r for r in main["served"]}
    assert {(r["server"], r["concurrency"]) for r in main["served"]} == {
        ("hookserve monitoring on", 1),
        ("fastapi peer", 1),
    }
    for row in served.values():
        assert row["errors"] == 0 and row["ok_per_s"] > 0, row
    hookserve = served["hookserve monitoring on"]
    # Read from hookserve's own /metrics and process tree: only a served hookserve has them.
    assert hookserve["mean_batch"] is not None and hookserve["mean_batch"] >= 1
    assert hookserve["cpu_ms_per_req_worker"] > 0
    assert [w["pid"] for w in main["workers"]["hookserve monitoring on"]]
    assert main["workers"]["fastapi peer"] == []
    assert result["meta"]["goals"]["c1_p50_gap_ms"]["server"] == "hookserve monitoring on"
    assert (tmp_path / "serving_digits-cnn_cpu_quick.csv").exists()
    assert (tmp_path / "serving_digits-cnn_cpu_quick.png").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA guard")
def test_gpu_precision_exits_cleanly_without_cuda(tmp_path, capsys):
    assert gpu_precision.main(["--out", str(tmp_path)]) == 2
    assert "CUDA is not available" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_profile_summary_separates_waiting_from_work(tmp_path):
    raw = tmp_path / "api.txt"
    raw.write_text(
        "run (threading.py:1);Condition.wait (threading.py:327) 90\n"
        "handle (starlette/routing.py:1);check_instances (service/http/codec.py:72) 6\n"
        "put (multiprocessing/managers.py:1);Connection._send (multiprocessing/connection.py:384) 4\n"
    )
    assert sum(parse_collapsed(raw.read_text()).values()) == 100
    summary = summarize("api", 1, raw, rate_hz=100, duration_s=1.0)
    shares = dict(summary.categories)
    assert shares["waiting: lock, condition or queue"] == pytest.approx(0.90)
    assert shares["request validation (pydantic/numpy)"] == pytest.approx(0.06)
    assert summary.busy_fraction == pytest.approx(0.10)
