"""The mirror: a candidate version compared with the serving one, module by module, in the worker.

Unit level: the comparison itself (which modules differ, agreement, PSI), the sampling and budget of
:class:`RequestMirror`, that a failing mirror never raises into serving, the start-up checks, and how
``mirror:`` resolves to the candidate's config in a repository.
"""

from __future__ import annotations

import itertools
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from prometheus_client import REGISTRY

from models import load_pretrained
from models.datasets import load_dataset
from service.config import HookserveConfig, MirrorConfig, ModelServeConfig
from service.messages import InferReply, InferRequest
from service.monitoring import ModelMonitor, MonitorConfig
from service.monitoring.mirror import MirrorComparator, MirrorWindow
from service.monitoring.shadow import OUTPUT
from service.repository import RepositoryError, mirror_candidate, scan_repository, startup_plans
from service.worker.mirror import MAX_WAIT_S, RequestMirror, start_mirror
from service.worker.runtime import StartupError, serving_mode

MODULES = ["features.conv1", "features.conv2", "features.conv3", "head.fc"]
CPU = torch.device("cpu")
_names = itertools.count()


def cnn(perturb: str | None = None) -> torch.nn.Module:
    """digits-cnn, with one layer's weights shifted when ``perturb`` names it."""
    model = load_pretrained("digits-cnn").eval()
    if perturb is not None:
        with torch.no_grad():
            weight = model.get_submodule(perturb).weight
            weight += (
                0.5 * weight.std() * torch.randn(weight.shape, generator=torch.Generator().manual_seed(1))
            )
    return model


def fp32(model: torch.nn.Module):
    return serving_mode(model, CPU, "fp32")


def digits(n: int) -> torch.Tensor:
    return load_dataset("digits").test_x[:n]


def value(metric: str, **labels: str) -> float | None:
    if metric.startswith(("hookserve_activation", "hookserve_module_forward")):  # they carry the version
        labels = {"version": "1", **labels}
    return REGISTRY.get_sample_value(metric, labels)


def test_a_changed_layer_differs_there_and_downstream_not_upstream() -> None:
    comparator = MirrorComparator(cnn(), cnn(perturb="features.conv2"), MODULES)
    result = comparator.compare(digits(64), fp32)
    diffs = dict(zip([*MODULES, OUTPUT], result.diffs, strict=True))
    assert diffs["features.conv1"] == 0.0
    for module in ["features.conv2", "features.conv3", "head.fc", OUTPUT]:
        assert diffs[module] > 0.0, module
    assert result.instances == 64 and 0 <= result.agreeing <= 64


def test_identical_weights_agree_everywhere() -> None:
    name = f"mirror-same-{next(_names)}"
    comparator = MirrorComparator(cnn(), cnn(), MODULES)
    window = MirrorWindow(name, "2", comparator.names, window_instances=1024, min_instances=100)
    for start in (0, 64):
        window.record(comparator.compare(digits(128)[start : start + 64], fp32))
    assert window.top1_agreement == 1.0
    assert window.max_abs_diff == {module: 0.0 for module in [*MODULES, OUTPUT]}
    assert all(abs(psi) < 1e-6 for psi in window.psi.values()) and set(window.psi) == set(MODULES)
    assert value("hookserve_mirror_top1_agreement", model=name, version="2") == 1.0
    assert value("hookserve_mirror_max_abs_diff", model=name, version="2", module=OUTPUT) == 0.0
    assert value(
        "hookserve_mirror_activation_psi", model=name, version="2", module="head.fc"
    ) == pytest.approx(0.0)


def test_a_different_candidate_shows_in_agreement_and_psi() -> None:
    name = f"mirror-diff-{next(_names)}"
    candidate = cnn()
    with torch.no_grad():
        candidate.head.fc.bias[9] += 50.0  # answers 9 whatever the input
        candidate.features.conv3.weight *= 3.0  # a wider activation distribution from conv3 on
    serving, x = cnn(), digits(256)
    comparator = MirrorComparator(serving, candidate, MODULES)
    window = MirrorWindow(name, "2", comparator.names, window_instances=1024, min_instances=100)
    window.record(comparator.compare(x, fp32))
    with torch.inference_mode():
        expected = (serving(x).argmax(dim=1) == candidate(x).argmax(dim=1)).float().mean().item()
    assert expected < 0.5 and window.top1_agreement == pytest.approx(expected)
    assert window.psi["features.conv1"] == pytest.approx(0.0, abs=1e-6)
    assert window.psi["features.conv3"] > 0.25  # the rule of thumb's "significant shift"
    psi = value("hookserve_mirror_activation_psi", model=name, version="2", module="features.conv3")
    assert psi == pytest.approx(window.psi["features.conv3"])


def test_the_agreement_waits_for_min_instances_and_the_window_rolls() -> None:
    name = f"mirror-window-{next(_names)}"
    comparator = MirrorComparator(cnn(), cnn(perturb="head.fc"), MODULES)
    window = MirrorWindow(name, "3", comparator.names, window_instances=64, min_instances=48)
    window.record(comparator.compare(digits(32), fp32))
    assert (
        window.top1_agreement is None
        and value("hookserve_mirror_top1_agreement", model=name, version="3") is None
    )
    assert window.max_abs_diff[OUTPUT] > 0.0  # differences are published at once
    for start in range(32, 256, 32):
        window.record(comparator.compare(digits(256)[start : start + 32], fp32))
    assert window.instances == 64  # two batches of 32: older ones rolled out
    assert window.top1_agreement is not None


def overflowing(second: float) -> torch.nn.Module:
    """A layer whose first output overflows to +Inf on x = [10, 1], then a softmax (NaN from it)."""
    layer = torch.nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1e38, 0.0], [0.0, second]]))
    return torch.nn.Sequential(layer, torch.nn.Softmax(dim=1)).eval()


def test_non_finite_outputs_follow_the_exact_rule() -> None:
    x = torch.tensor([[10.0, 1.0]])
    same = MirrorComparator(overflowing(1.0), overflowing(1.0), ["0"]).compare(x, fp32)
    assert same.diffs == [0.0, 0.0]  # equal infinities, and NaN on both sides, are no difference
    other = MirrorComparator(overflowing(1.0), overflowing(2.0), ["0"]).compare(x, fp32)
    assert other.diffs[0] == 1.0  # |1 - 2|, the equal infinities aside
    assert other.agreeing == 0  # a NaN answer agrees with nothing


def test_modules_only_one_version_has_are_not_compared() -> None:
    comparator = MirrorComparator(cnn(), cnn(), [*MODULES, "not.there"])
    assert comparator.names == MODULES
    comparator.remove()


# --- the worker's part: sampling, budget, failures ---------------------------------------------------


def requests_of(rows: int, count: int) -> list[InferRequest]:
    x = digits(rows * count).numpy()
    return [
        InferRequest(i, 1e18, 0.0, x[i * rows : (i + 1) * rows], 0, f"r{i}", None, 2) for i in range(count)
    ]


def answered(requests: list[InferRequest], status: int = 200) -> list[InferReply]:
    return [InferReply(request.uid, status, b"") for request in requests]


def request_mirror(
    name: str, candidate: torch.nn.Module, max_rows: int = 64, **mirror: object
) -> RequestMirror:
    config = MirrorConfig.model_validate({"version": "2", **mirror})
    comparator = MirrorComparator(cnn(), candidate, MODULES)
    return RequestMirror(name, config, comparator, CPU, "fp32", max_rows)


def serve(mirror: RequestMirror, batch: list[InferRequest], status: int = 200) -> int:
    """One served batch's replies, then the worker's idle moments until the mirror has no slice to run;
    the slices run."""
    mirror.after_replies(batch, answered(batch, status))
    slices = 0
    while mirror.idle():
        slices += 1
    return slices


def test_every_request_is_mirrored_with_fraction_one_and_no_budget_limit() -> None:
    name = f"mirror-all-{next(_names)}"
    mirror = request_mirror(name, cnn(perturb="features.conv3"), fraction=1.0, budget=1.0, min_instances=1)
    slices = [serve(mirror, requests_of(4, 8)) for _ in range(4)]  # 32 instances a batch; 64 make a run
    assert slices == [0, 2, 0, 2]  # a slice has a served batch's rows
    assert mirror.runs == 2 and mirror.failures == 0
    assert value("hookserve_mirror_requests_total", model=name, version="2") == 32.0
    assert value("hookserve_mirror_max_abs_diff", model=name, version="2", module="features.conv1") == 0.0
    assert value("hookserve_mirror_max_abs_diff", model=name, version="2", module="features.conv3") > 0.0
    assert value("hookserve_monitor_overhead_seconds_total", model=name) > 0.0


def test_a_due_batch_runs_in_slices_of_the_last_served_batch() -> None:
    name = f"mirror-slices-{next(_names)}"
    mirror = request_mirror(name, cnn(), max_rows=64, fraction=1.0, budget=1.0)
    assert mirror.due_in() == math.inf  # nothing kept: the worker may wait for requests as long as it likes
    mirror.after_replies(*served(requests_of(8, 4)))  # 32 of the 64 rows a mirrored batch waits for
    assert 0.0 < mirror.due_in() <= MAX_WAIT_S and not mirror.idle()
    mirror.after_replies(*served(requests_of(8, 4)))  # 64 kept: due, but nothing runs on the served path
    assert mirror.runs == 0 and mirror.due_in() == 0.0
    mirror.slice_rows = 16
    assert [mirror.idle() for _ in range(5)] == [True, True, True, True, False]  # 4 slices of 16 rows
    assert mirror.runs == 1 and mirror.window.instances == 64
    assert value("hookserve_mirror_requests_total", model=name, version="2") == 8.0


def test_an_overdue_batch_advances_a_slice_per_served_batch_without_idle_moments(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("service.worker.mirror.MAX_WAIT_S", 0.0)  # every kept request is overdue at once
    mirror = request_mirror(f"mirror-busy-{next(_names)}", cnn(), max_rows=64, fraction=1.0, budget=1.0)
    for served_batch in range(1, 4):
        mirror.after_replies(*served(requests_of(4, 1)))  # never idle: the slices run here, 4 rows each
        assert mirror.runs == served_batch and mirror.window.instances == 4 * served_batch


def served(batch: list[InferRequest]) -> tuple[list[InferRequest], list[InferReply]]:
    return batch, answered(batch)


def test_only_answered_requests_are_mirrored() -> None:
    name = f"mirror-failed-{next(_names)}"
    mirror = request_mirror(name, cnn(), max_rows=8, fraction=1.0, budget=1.0)
    assert serve(mirror, requests_of(1, 8), status=500) == 0
    assert mirror.runs == 0 and not mirror._kept
    assert value("hookserve_mirror_requests_total", model=name, version="2") == 0.0  # exported from the start
    assert value("hookserve_mirror_passed_over_total", model=name, version="2") == 0.0  # failures: not picked


def test_about_fraction_of_the_requests_are_kept() -> None:
    random.seed(7)
    mirror = request_mirror(f"mirror-fraction-{next(_names)}", cnn(), max_rows=10**9, fraction=0.05)
    batch = requests_of(1, 32)
    kept = 0
    for _ in range(500):  # 16,000 requests
        mirror.offer(batch, answered(batch))
        kept, mirror._kept = kept + len(mirror._kept), []
    assert 650 < kept < 950  # 800 expected; binomial sd ~28


def test_over_budget_the_mirror_waits() -> None:
    name = f"mirror-budget-{next(_names)}"
    mirror = request_mirror(name, cnn(), max_rows=8, fraction=1.0, budget=0.001)
    batch = requests_of(8, 1)
    assert serve(mirror, batch) == 1  # the first run is free: the credit starts at 0
    assert mirror.runs == 1
    assert mirror.due_in() > 0.0
    assert serve(mirror, batch) == 0  # now in debt by the run's cost, repaid at 0.1 %
    assert serve(mirror, batch) == 0
    assert mirror.runs == 1 and mirror._kept_rows == 8  # kept up to max_rows, no more
    # The third request found the kept batch full: passed over, and counted so an operator sees why.
    assert value("hookserve_mirror_passed_over_total", model=name, version="2") == 1.0
    assert value("hookserve_mirror_requests_total", model=name, version="2") == 1.0


def test_a_failing_mirror_is_counted_and_never_raises() -> None:
    name = f"mirror-broken-{next(_names)}"
    mirror = request_mirror(name, cnn(), max_rows=8, fraction=1.0, budget=1.0)

    def broken(x: torch.Tensor, run_mode: object) -> None:
        raise RuntimeError("candidate exploded")

    mirror.comparator.compare = broken  # type: ignore[method-assign]
    for _ in range(2):
        serve(mirror, requests_of(8, 1))
    assert mirror.failures == 2 and mirror.runs == 0
    assert value("hookserve_mirror_failures_total", model=name, version="2") == 2.0
    assert value("hookserve_mirror_requests_total", model=name, version="2") == 0.0


def test_the_monitors_hooks_sit_out_the_mirrors_passes() -> None:
    name = f"mirror-monitored-{next(_names)}"
    model = cnn()
    config = MonitorConfig.model_validate(
        {"guard_every": 1, "publish_interval_s": 0, "drift": {"enabled": False}}
    )
    monitor = ModelMonitor(model, name, config)
    monitor.attach()
    with torch.inference_mode(), monitor.observe_batch():
        model(digits(8))
    mirror = RequestMirror(
        name, MirrorConfig(version="2", fraction=1.0, budget=1.0), MirrorComparator(model, cnn(), MODULES),
        CPU, "fp32", 8, monitor,
    )  # fmt: skip
    serve(mirror, requests_of(8, 1))
    monitor.detach()
    assert mirror.runs == 1
    # one served batch: the mirror's re-run of the serving model is not counted as one
    assert value("hookserve_module_forward_seconds_count", model=name, module="features.conv1") == 1.0


# --- start-up and configuration ------------------------------------------------------------------------


def served_config(**keys: object) -> ModelServeConfig:
    return ModelServeConfig.model_validate(
        {"name": "digits-cnn", "version": "1", "mirror": {"version": "2", "fraction": 0.05}, **keys}
    )


def test_start_mirror_refuses_a_candidate_with_other_inputs() -> None:
    candidate = ModelServeConfig(name="digits-cnn", source="tabular-mlp", version="2")
    with pytest.raises(StartupError, match=r"mirror version 2 takes input .* a mirror runs both"):
        start_mirror(served_config(), candidate, cnn(), CPU)


def test_start_mirror_compares_the_shared_monitored_modules() -> None:
    served = served_config()
    model = cnn()
    monitor = ModelMonitor(model, f"mirror-start-{next(_names)}", MonitorConfig())
    mirror = start_mirror(served, ModelServeConfig(name="digits-cnn", version="2"), model, CPU, monitor)
    assert mirror.comparator.names == MODULES and mirror.max_rows == 64


def write_model(repo: Path, keys: dict, versions: tuple[int, ...] = (1, 2)) -> None:
    folder = repo / "digits-cnn"
    folder.mkdir(parents=True)
    (folder / "model.yaml").write_text(yaml.safe_dump(keys))
    for version in versions:
        (folder / str(version)).mkdir()


def test_mirror_in_model_yaml_resolves_to_the_candidates_config(tmp_path: Path) -> None:
    write_model(tmp_path, {"versions": [1], "precision": "bf16", "mirror": {"version": "2", "fraction": 0.1}})
    (tmp_path / "digits-cnn" / "2" / "model.yaml").write_text(yaml.safe_dump({"max_batch_size": 16}))
    model = scan_repository(tmp_path).models["digits-cnn"]
    served = model.versions[1]
    assert served.version == "1" and served.mirror == MirrorConfig(version="2", fraction=0.1)
    assert model.plan().mirrors == {"1": mirror_candidate(model, served)}  # what the serving table gets
    candidate = mirror_candidate(model, served)
    assert candidate is not None
    assert (candidate.version, candidate.max_batch_size, candidate.precision) == ("2", 16, "bf16")
    assert candidate.mirror is None
    assert mirror_candidate(model, served.model_copy(update={"mirror": None})) is None


def test_a_mirror_of_a_missing_version_is_a_clear_error(tmp_path: Path) -> None:
    write_model(tmp_path, {"versions": [1], "mirror": {"version": "3", "fraction": 0.1}})
    with pytest.raises(
        RepositoryError, match=r"mirror.version 3 has no version folder .* found versions \[1, 2\]"
    ):
        scan_repository(tmp_path)  # checked when the repository (or the model, at a load) is read


def test_a_version_cannot_mirror_itself(tmp_path: Path) -> None:
    write_model(tmp_path, {"mirror": {"version": "2", "fraction": 0.1}})
    with pytest.raises(RepositoryError, match="version 2 mirrors itself"):
        scan_repository(tmp_path)


def test_a_models_entry_cannot_mirror(tmp_path: Path) -> None:
    config = HookserveConfig.model_validate(
        {"models": [{"name": "digits-cnn", "mirror": {"version": "2", "fraction": 0.5}}]}
    )
    with pytest.raises(
        RepositoryError, match="mirror compares versions of a model from the model repository"
    ):
        startup_plans(config)


@pytest.mark.parametrize("mirror", [{"version": "2", "fraction": 0}, {"version": "v2", "fraction": 0.1},
                                    {"version": "2", "fraction": 0.1, "budget": 2}])  # fmt: skip
def test_bad_mirror_settings_are_refused(mirror: dict) -> None:
    with pytest.raises(ValueError, match="mirror"):
        ModelServeConfig.model_validate({"name": "digits-cnn", "mirror": mirror})


def test_mirror_rows_keep_their_inputs_without_copying() -> None:
    mirror = request_mirror(f"mirror-ref-{next(_names)}", cnn(), max_rows=10**6, fraction=1.0)
    batch = requests_of(2, 3)
    mirror.offer(batch, answered(batch))
    assert all(kept is request.instances for kept, request in zip(mirror._kept, batch, strict=True))
    assert isinstance(mirror._kept[0], np.ndarray)
