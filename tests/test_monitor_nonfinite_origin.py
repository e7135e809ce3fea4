"""NaN origin, every time: a request whose output goes non-finite is replayed alone with every module
hooked, counted once at the module where it started, logged in one line under its request id, and
answered 500; the requests batched with it are answered normally. Runs the worker's batching loop and
model worker in-process (tests/test_monitor_live_insight.py does it against a real server)."""

from __future__ import annotations

import contextlib
import itertools
import logging
from collections import defaultdict

import numpy as np
import pytest
import torch
from prometheus_client import REGISTRY

from service.config import ModelServeConfig
from service.messages import PREDICTIONS_JSON, InferRequest
from service.monitoring.origin import ROOT, bad_rows, locate_origins, origin_label
from service.worker.batching import InstanceBatchingLoop
from service.worker.worker import NONFINITE_ERROR, ModelWorker
from tests.fixtures.nan_model import HEALTHY, ORIGIN_BLOCK, POISONED, build

_names = itertools.count()
ORIGIN = "hookserve_nonfinite_origin_total"


def origin_count(model: str, module: str) -> float | None:
    return REGISTRY.get_sample_value(ORIGIN, {"model": model, "module": module})


def test_replay_finds_the_first_non_finite_module_per_instance() -> None:
    model = build()
    x = torch.tensor([HEALTHY, POISONED, HEALTHY])
    with torch.inference_mode():
        found = locate_origins(model, x, contextlib.nullcontext)
    assert found[0] is None and found[2] is None
    assert found[1] is not None and found[1].module == f"{ORIGIN_BLOCK}.act"  # innermost, before its parent
    assert not any(m._forward_hooks for m in model.modules())  # the replay's hooks are gone


def test_origin_labels_map_onto_monitored_modules() -> None:
    monitored = ["blocks.0", "blocks.1", "blocks.10", "head"]
    assert origin_label("blocks.1.act", monitored) == "blocks.1"
    assert origin_label("blocks.10.fc", monitored) == "blocks.10"
    assert origin_label("blocks.1", monitored) == "blocks.1"
    assert origin_label("norm", monitored) == "norm"  # outside every monitored module: itself
    assert origin_label(ROOT, monitored) == ROOT


def test_bad_rows_follow_the_batch_dimension() -> None:
    t = torch.zeros(5, 3, 4)  # sequence-first: 3 instances in dimension 1
    t[2, 1, 0] = float("inf")
    assert bad_rows(t, 3).tolist() == [False, True, False]
    t = torch.zeros(3, 7)
    t[0, 6] = float("nan")
    assert bad_rows(t, 3).tolist() == [True, False, False]
    assert bad_rows(torch.tensor(float("nan")), 2).tolist() == [True, True]


def test_the_model_code_itself_is_the_origin_when_no_submodule_went_non_finite() -> None:
    class Divide(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(2, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x) / 0.0

    with torch.inference_mode():
        found = locate_origins(Divide(), torch.ones(1, 2), contextlib.nullcontext)
    assert found[0] is not None and found[0].module == ROOT


def make_worker(name: str, precision: str = "fp32") -> ModelWorker:
    """A model worker set up by hand (no process, no LitServe server) around the NaN fixture."""
    config = ModelServeConfig(
        name=name, source="tests.fixtures.nan_model:build", precision=precision, max_batch_size=64,
        monitoring={
            "drift": {"enabled": False}, "guard_every": 1, "shadow": {"every": 1, "min_instances": 1}
        },
    )  # fmt: skip
    worker = ModelWorker(config, states=None)
    worker.torch_device = torch.device("cpu")
    worker.model = build()
    worker.monitor = worker._attach_monitor()  # with the fp32 shadow on every batch for bf16
    return worker


def request(uid: int, instances: list[list[float]]) -> InferRequest:
    return InferRequest(
        uid, float("inf"), 0.0, np.asarray(instances, dtype=np.float32), PREDICTIONS_JSON, f"req-{uid}"
    )


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_poisoned_request_is_counted_at_its_origin_once_and_fails_alone(
    precision: str, caplog: pytest.LogCaptureFixture
) -> None:
    name = f"nan-origin-{precision}-{next(_names)}"
    worker = make_worker(name, precision)
    for module in worker.monitor.module_names:  # exported at 0 from attach
        assert origin_count(name, module) == 0.0
    batch = [
        ("a", request(1, [HEALTHY])),
        ("a", request(2, [POISONED])),
        ("b", request(3, [HEALTHY, POISONED, POISONED])),  # two poisoned instances, one request
        ("b", request(4, [HEALTHY, HEALTHY])),
    ]
    replies: dict = defaultdict(list)
    with caplog.at_level(logging.INFO):
        InstanceBatchingLoop().process(worker, batch, replies)
    codes = {uid: code for answers in replies.values() for uid, code, _ in answers}
    assert codes == {1: 200, 2: 500, 3: 500, 4: 200}
    bodies = {uid: body for answers in replies.values() for uid, _, body in answers}
    assert bodies[2] == bodies[3] == NONFINITE_ERROR
    assert b"NaN" not in NONFINITE_ERROR

    assert origin_count(name, ORIGIN_BLOCK) == 2.0  # once per poisoned request, not per instance
    for module in worker.monitor.module_names:
        if module != ORIGIN_BLOCK:
            assert origin_count(name, module) == 0.0, module
    assert REGISTRY.get_sample_value("hookserve_output_nonfinite_total", {"model": name}) == 3.0

    lines = [r for r in caplog.records if "non-finite" in r.getMessage()]
    assert len(lines) == 2, [r.getMessage() for r in lines]  # one line per poisoned request
    for uid, record in zip((2, 3), lines, strict=True):
        message = record.getMessage()
        assert f"req-{uid}" in message and name in message and f"'{ORIGIN_BLOCK}'" in message
        assert record.exc_info is None  # one line, no traceback
    assert not any(r.getMessage().startswith(f"model {name}: cannot answer") for r in caplog.records)

    if precision == "bf16":  # the shadow of the same batch compares the answered (finite) rows only
        worker.after_replies()
        shadow = worker.monitor.shadow
        assert shadow.batches == 1 and shadow._window_instances == 4 and shadow.top1_agreement == 1.0

    # The monitor's own hooks sat the replay out, and monitoring carries on.
    with torch.inference_mode(), worker.monitor.observe_batch():
        worker.model(torch.tensor([HEALTHY]))
    worker.monitor.detach()
    assert not any(m._forward_hooks for m in worker.model.modules())


def test_healthy_batches_never_replay(monkeypatch: pytest.MonkeyPatch) -> None:
    worker = make_worker(f"nan-healthy-{next(_names)}")
    monkeypatch.setattr(worker.monitor, "locate_nonfinite", lambda *a: pytest.fail("replayed"))
    replies: dict = defaultdict(list)
    InstanceBatchingLoop().process(worker, [("a", request(i, [HEALTHY] * 3)) for i in range(4)], replies)
    assert [code for _, code, _ in replies["a"]] == [200] * 4
    worker.monitor.detach()


def test_without_a_monitor_the_request_still_fails_alone(caplog: pytest.LogCaptureFixture) -> None:
    worker = make_worker(f"nan-unmonitored-{next(_names)}")
    worker.monitor.detach()
    worker.monitor = None
    replies: dict = defaultdict(list)
    with caplog.at_level(logging.ERROR):
        InstanceBatchingLoop().process(
            worker, [("a", request(1, [POISONED])), ("a", request(2, [HEALTHY]))], replies
        )
    assert {uid: code for uid, code, _ in replies["a"]} == {1: 500, 2: 200}
    assert any("req-1" in r.getMessage() and "not located" in r.getMessage() for r in caplog.records)
