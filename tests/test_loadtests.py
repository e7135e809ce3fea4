"""The load tests themselves: scenarios, payloads and the SLO gate as plain Python, the locustfile as
Locust loads it, and a short headless smoke run against a live hookserve that must pass its gate.

Locust runs in a subprocess only: importing it monkey-patches this process with gevent.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest
import requests

from loadtests import grpc_payloads, payloads, scenarios
from loadtests.payloads import AccuracyTally, ModelSpec, check_predictions, invalid_requests, valid_batch
from loadtests.slo import Objectives, judge
from models.datasets import load_dataset

ROOT = Path(__file__).resolve().parent.parent
LOCUSTFILE = ROOT / "loadtests" / "locustfile.py"
SMOKE_USERS, SMOKE_SECONDS = 5, 15  # 5: every user class gets one (locust spreads users by weight)

DIGITS_METADATA = {
    "name": "digits-cnn",
    "input": {"shape": [8, 8], "dtype": "float32", "min_value": 0.0, "max_value": 16.0},
    "output": {"labels": [str(d) for d in range(10)]},
    "batching": {"max_instances_per_request": 8},
}


def locust(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("LOADTEST_", "LOCUST_"))}
    return subprocess.run(
        [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**clean, **(env or {})},
        timeout=timeout,
    )


# --- scenarios ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(scenarios.SCENARIOS))
def test_scenario_stages_move_forward_in_time_and_end(name: str) -> None:
    stages = scenarios.SCENARIOS[name]()
    ends = [stage.until_s for stage in stages]
    assert ends == sorted(ends) and len(set(ends)) == len(ends)
    assert all(stage.users >= 1 and stage.spawn_rate > 0 for stage in stages)
    assert scenarios.stage_at(stages, 0) == stages[0]
    assert scenarios.stage_at(stages, ends[-1]) is None


def test_smoke_is_small_and_short() -> None:
    (stage,) = scenarios.smoke()
    assert stage.users <= 10 and stage.until_s <= 20


def test_step_ramp_climbs_to_the_peak_in_equal_steps() -> None:
    users = [stage.users for stage in scenarios.step_ramp(users=40, stage_s=10)]
    assert users == [8, 16, 24, 32, 40]


def test_spike_jumps_to_the_peak_and_returns_to_the_baseline() -> None:
    base, peak, after = scenarios.spike(users=40, stage_s=10)
    assert (base.users, peak.users, after.users) == (8, 40, 8)
    assert peak.spawn_rate == 40


def test_scenario_sizes_follow_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOADTEST_USERS", "12")
    monkeypatch.setenv("LOADTEST_STAGE_S", "7")
    assert scenarios.steady() == [scenarios.Stage(7, 12, 1.2)]


# --- payloads -----------------------------------------------------------------------------------------


def test_digits_models_get_real_labelled_digits_in_their_shape() -> None:
    spec = ModelSpec.from_metadata(DIGITS_METADATA)
    batch = valid_batch(spec, random.Random(0), 3)
    array = np.asarray(batch.body["instances"])
    assert array.shape == (3, 8, 8) and array.min() >= 0 and array.max() <= 16
    data = payloads.digits()
    for instance, label in zip(array, batch.expected, strict=True):
        rows = np.flatnonzero((data.features == instance.reshape(-1)).all(axis=1))
        assert label in {data.labels[data.targets[r]] for r in rows}


@pytest.mark.parametrize(
    ("load", "dataset"), [(payloads.digits, "digits"), (payloads.breast_cancer, "breast_cancer")]
)
def test_payload_rows_are_exactly_the_models_held_out_split(load, dataset: str) -> None:
    data, split = load(), load_dataset(dataset)
    held_out = split.test_x.reshape(len(split.test_x), -1).numpy()
    np.testing.assert_array_equal(data.features.astype(np.float32), held_out)
    np.testing.assert_array_equal(data.targets, split.test_y.numpy())
    assert data.labels == split.labels


def test_valid_bodies_only_hold_held_out_rows() -> None:
    held_out = {row.tobytes() for row in load_dataset("digits").test_x.reshape(-1, 64).numpy()}
    spec, rng = ModelSpec.from_metadata(DIGITS_METADATA), random.Random(0)
    sent = np.concatenate([valid_batch(spec, rng, 8).body["instances"] for _ in range(100)])
    assert {row.tobytes() for row in sent.reshape(-1, 64).astype(np.float32)} <= held_out


def test_instances_per_request_respect_the_model_limit() -> None:
    spec = ModelSpec.from_metadata(DIGITS_METADATA)
    assert len(valid_batch(spec, random.Random(0), 100).body["instances"]) == 8


def test_models_without_a_matching_data_set_get_values_in_range_and_no_expected_labels() -> None:
    metadata = {
        "name": "other",
        "input": {"shape": [3, 2], "min_value": -2.0, "max_value": 5.0},
        "output": {"labels": ["a", "b"]},
        "batching": {"max_instances_per_request": 2},
    }
    batch = valid_batch(ModelSpec.from_metadata(metadata), random.Random(0), 2)
    array = np.asarray(batch.body["instances"])
    assert array.shape == (2, 3, 2) and array.min() >= -2 and array.max() <= 5
    assert batch.expected is None


def test_invalid_requests_cover_each_client_mistake() -> None:
    cases = invalid_requests(ModelSpec.from_metadata(DIGITS_METADATA), random.Random(0))
    names = {case.case for case in cases}
    expected = {"wrong shape", "NaN value", "infinite value", "not JSON", "above max_value", "unknown field"}
    assert expected <= names
    assert len(names) == len(cases)
    by_name = {case.case: case for case in cases}
    assert b"NaN" in by_name["NaN value"].body and b"Infinity" in by_name["infinite value"].body
    with pytest.raises(json.JSONDecodeError):
        json.loads(by_name["not JSON"].body)
    too_many = json.loads(by_name["too many instances"].body)
    assert len(too_many["instances"]) == 9
    assert json.loads(by_name["unknown field"].body)["unknown_field"] == 1


def test_deep_nesting_bodies_are_as_deep_as_they_say() -> None:
    cases = payloads.deep_nesting_requests(ModelSpec.from_metadata(DIGITS_METADATA))
    assert len(cases) == 2 * 2 * len(payloads.NESTING_DEPTHS)  # V1 and V2, closed and unclosed
    assert min(payloads.NESTING_DEPTHS) > sys.getrecursionlimit()
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(payloads.NESTING_DEPTHS) + 1_000)
    try:
        for case in cases:
            protocol, _, depth, _, state = case.case.replace(",", "").split()
            assert case.path.startswith("/v1/" if protocol == "V1" else "/v2/"), case.case
            assert max(len(run) for run in re.findall(rb"\[+", case.body)) == int(depth), case.case
            if state == "closed":
                json.loads(case.body)  # well-formed: only its depth is wrong
            else:
                with pytest.raises(json.JSONDecodeError):
                    json.loads(case.body)
    finally:
        sys.setrecursionlimit(limit)


def test_prediction_checks_catch_wrong_answers_in_form() -> None:
    spec = ModelSpec.from_metadata(DIGITS_METADATA)
    good = {"label": "3", "probabilities": [0.1] * 10}

    def problem(*predictions: dict) -> str | None:
        return check_predictions(spec, {"model": "digits-cnn", "predictions": list(predictions)}, 1)

    assert problem(good) is None
    assert "predictions" in problem()
    assert "label" in problem({**good, "label": "x"})
    assert "sum" in problem({**good, "probabilities": [0.5] * 10})


@pytest.mark.parametrize(
    ("correct", "total", "clearly_below"),
    [
        (48, 54, False),  # 88.9 %: a 96 %-accurate model on a short run (seen failing a smoke run)
        (0, 0, False),
        (20, 50, True),  # a broken model: 40 %
        (800, 1000, True),  # 80 % over many predictions
        (890, 1000, False),  # 89 %: within the noise of 90 %
    ],
)
def test_accuracy_fails_requests_only_when_clearly_below_the_minimum(
    correct: int, total: int, clearly_below: bool
) -> None:
    tally = AccuracyTally()
    tally.record("m", correct, total)
    assert tally.clearly_below("m", 0.9) is clearly_below


def test_accuracy_tallies_merge_across_workers() -> None:
    master, worker = AccuracyTally(), AccuracyTally()
    master.record("m", 9, 10)
    worker.record("m", 1, 10)
    master.merge(worker.snapshot())
    assert math.isclose(master.accuracy("m"), 0.5)
    assert master.accuracy("unknown") is None


# --- SLO gate -----------------------------------------------------------------------------------------


def test_slo_gate_passes_a_clean_run() -> None:
    assert judge(Objectives(), requests=100, fail_ratio=0.0, p95_ms=50, accuracy={"m": 0.97}).passed


def test_slo_gate_names_every_miss() -> None:
    verdict = judge(Objectives(), requests=100, fail_ratio=0.2, p95_ms=900, accuracy={"m": 0.5, "n": None})
    assert len(verdict.violations) == 3 and not verdict.passed


def test_slo_gate_fails_a_run_without_requests() -> None:
    assert not judge(Objectives(), requests=0, fail_ratio=0.0, p95_ms=0, accuracy={}).passed


def test_slo_thresholds_come_from_the_environment() -> None:
    env = {"LOADTEST_SLO_FAIL_RATIO": "0.2", "LOADTEST_SLO_P95_MS": "50", "LOADTEST_MIN_ACCURACY": ""}
    assert Objectives.from_env(env) == Objectives(max_fail_ratio=0.2, max_p95_ms=50, min_accuracy=0.9)


# --- the locustfile as Locust loads it ----------------------------------------------------------------


def test_locustfile_loads_and_lists_every_user_class() -> None:
    result = locust("--list")
    assert result.returncode == 0, result.stderr
    users = ("PredictUser", "V2BinaryUser", "GrpcUser", "InvalidPayloadUser")
    assert all(user in result.stdout for user in users)


def test_an_unknown_scenario_is_refused() -> None:
    result = locust("--list", env={"LOADTEST_SHAPE": "nope"})
    assert result.returncode != 0 and "LOADTEST_SHAPE" in result.stderr


@pytest.mark.slow
def test_headless_smoke_run_passes_its_slo_gate(live_server_process, tmp_path: Path) -> None:
    live_server = live_server_process.base_url
    assert urlparse(live_server).hostname == "127.0.0.1", "load-test only the local test server"
    prefix = tmp_path / "smoke"
    env = {
        "LOADTEST_SHAPE": "smoke",
        "LOADTEST_USERS": str(SMOKE_USERS),
        "LOADTEST_STAGE_S": str(SMOKE_SECONDS),
        "LOADTEST_GRPC_TARGET": f"127.0.0.1:{live_server_process.grpc_port}",
    }
    result = locust(
        "--headless",
        "-H",
        live_server,
        "--csv",
        str(prefix),
        "--html",
        f"{prefix}.html",
        "--json-file",
        str(prefix),
        "--only-summary",
        env=env,
        timeout=SMOKE_SECONDS + 45,
    )
    log = result.stdout[-3000:] + result.stderr[-3000:]
    assert result.returncode == 0, log

    stats = {entry["name"]: entry for entry in json.loads(prefix.with_suffix(".json").read_text())}
    failed = {name: entry["num_failures"] for name, entry in stats.items() if entry["num_failures"]}
    assert not failed, f"unexpected failures {failed}:\n{log}"
    models = requests.get(f"{live_server}/v1/models", timeout=10).json()["models"]
    served = {model["name"] for model in models}
    assert {name.removeprefix("predict ") for name in stats if name.startswith("predict ")} == served
    assert any(name.startswith("invalid: ") for name in stats), "no invalid payloads were sent"
    assert {name.removeprefix("grpc infer ") for name in stats if name.startswith("grpc infer ")} == served
    assert "GET /v1/models/[name]" in stats

    verdict = json.loads(Path(f"{prefix}_slo.json").read_text())
    assert verdict["passed"] and verdict["fail_ratio"] == 0
    assert verdict["accuracy"] and all(value >= 0.9 for value in verdict["accuracy"].values())
    assert (tmp_path / "smoke.html").stat().st_size > 0


def test_grpc_payloads_round_trip_a_batch() -> None:
    spec = ModelSpec.from_metadata(DIGITS_METADATA)
    batch = valid_batch(spec, random.Random(0), 3)
    request = grpc_payloads.infer_request(spec, batch)
    assert request.model_name == "digits-cnn" and list(request.inputs[0].shape) == [3, 8, 8]
    sent = np.frombuffer(request.raw_input_contents[0], "<f4").reshape(3, 8, 8)
    np.testing.assert_array_equal(sent, np.asarray(batch.body["instances"], np.float32))
    response = grpc_payloads.pb.ModelInferResponse(
        outputs=[{"name": "probabilities", "datatype": "FP32", "shape": [3, 10]}],
        raw_output_contents=[np.eye(3, 10, dtype="<f4").tobytes()],
    )
    assert grpc_payloads.probabilities(response, spec).argmax(axis=1).tolist() == [0, 1, 2]
    assert grpc_payloads.grpc_target("http://hookserve:8000", {}) == "hookserve:8001"
    assert grpc_payloads.grpc_target("http://x:1", {"LOADTEST_GRPC_TARGET": "127.0.0.1:9"}) == "127.0.0.1:9"


@pytest.mark.slow
@pytest.mark.parametrize(("stream", "kind"), [("0", "grpc infer"), ("1", "grpc stream infer")])
def test_grpc_user_alone_runs_clean_and_bounded(
    live_server_process, tmp_path: Path, stream: str, kind: str
) -> None:
    """Only ``GrpcUser``, a few seconds, unary or on a stream: every gRPC answer 200 and right. One
    model, digits-cnn, whose accuracy (~99 %) a few dozen rows cannot push under the gate's 90 % by chance."""
    assert urlparse(live_server_process.base_url).hostname == "127.0.0.1", "load-test only the local server"
    prefix = tmp_path / "grpc"
    env = {
        "LOADTEST_GRPC_TARGET": f"127.0.0.1:{live_server_process.grpc_port}",
        "LOADTEST_MODELS": "digits-cnn",
        "LOADTEST_GRPC_STREAM": stream,
    }
    result = locust(
        "GrpcUser",
        "--headless",
        "-H",
        live_server_process.base_url,
        "-u",
        "2",
        "-r",
        "2",
        "-t",
        "6s",
        "--json-file",
        str(prefix),
        "--only-summary",
        env=env,
        timeout=60,
    )
    log = result.stdout[-3000:] + result.stderr[-3000:]
    assert result.returncode == 0, log
    stats = {entry["name"]: entry for entry in json.loads(prefix.with_suffix(".json").read_text())}
    grpc_stats = {name: entry for name, entry in stats.items() if name.startswith("grpc ")}
    assert list(grpc_stats) == [f"{kind} digits-cnn"]
    assert grpc_stats[f"{kind} digits-cnn"]["num_requests"] > 0
    assert all(entry["num_failures"] == 0 for entry in stats.values()), log
    verdict = json.loads(Path(f"{prefix}_slo.json").read_text())
    assert verdict["passed"] and verdict["accuracy"]["digits-cnn"] >= 0.9
