"""Admission at the door, in-process: the hard cap, the latency target from the published cost line, what
a refusal carries (reason, Retry-After), the refusal before a body is read (sized from its length), and
that the shared queue counts stay right across processes."""

from __future__ import annotations

import asyncio
import multiprocessing as mp

import pytest
from prometheus_client import REGISTRY

from models.base import InputSpec, OutputSpec
from service.http.admission import AdmissionGate, DrainSwitch, Rejected
from service.http.inference import RouteSettings
from service.http.instance_estimate import InstanceEstimate
from service.http.middleware import declared_length
from service.http.predict import PredictRoute
from service.scheduling.board import CostBoard


def rejected_count(model: str, reason: str) -> float:
    labels = {"model": model, "reason": reason}
    return REGISTRY.get_sample_value("hookserve_rejected_total", labels) or 0


def gate_with_cost(model: str, target_s: float | None, limit: int = 1000) -> tuple[AdmissionGate, CostBoard]:
    board = CostBoard(1)
    gate = AdmissionGate(limit, model, latency_target_s=target_s, costs=board.costs(0), max_batch_size=8)
    return gate, board


def admit_until_refused(gate: AdmissionGate, instances: int) -> tuple[int, Rejected]:
    admitted = 0
    while (rejection := gate.admit(instances)) is None:
        admitted += 1
        assert admitted < 10_000
    return admitted, rejection


def test_the_hard_cap_refuses_with_overload() -> None:
    gate = AdmissionGate(3, "capped")
    before = rejected_count("capped", "overload")
    admitted, rejection = admit_until_refused(gate, 1)
    assert admitted == 3 and rejection.reason == "overload" and rejection.retry_after_s == 1
    assert "too many requests queued for capped (limit 3)" in str(rejection)
    assert rejected_count("capped", "overload") == before + 1
    gate.leave(1)
    assert gate.admit(1) is None


def test_the_latency_target_admits_while_the_predicted_answer_meets_it() -> None:
    gate, board = gate_with_cost("targeted", target_s=0.2)
    board.publish(0, 0, 0.001, 0.02)  # t(b) = 1 ms * b + 20 ms, batches of at most 8
    # 4-instance requests: with q queued, ahead = q + 4, predicted = ahead * 1 ms + ceil(ahead / 8) * 20 ms.
    # ahead 56 -> 56 + 140 = 196 ms (admitted); ahead 60 -> 60 + 160 = 220 ms (refused): 14 fit.
    before = rejected_count("targeted", "latency_target")
    admitted, rejection = admit_until_refused(gate, 4)
    assert admitted == 14 and gate.queued_instances == 56 and gate.in_flight == 14
    assert rejection.reason == "latency_target" and rejection.retry_after_s == 1
    assert "220 ms, over the 200 ms it may admit under its latency target of 200 ms" in str(rejection)
    assert rejection.headers == [(b"retry-after", b"1")]
    assert rejected_count("targeted", "latency_target") == before + 1


def test_a_smaller_request_can_fit_where_a_larger_one_does_not() -> None:
    gate, board = gate_with_cost("sizes", target_s=0.2)
    board.publish(0, 0, 0.001, 0.02)
    for _ in range(13):
        assert gate.admit(4) is None  # 52 queued
    assert gate.admit(8) is not None  # ahead 60: 220 ms
    assert gate.admit(4) is None  # ahead 56: 196 ms


def test_retry_after_grows_with_the_excess_over_the_target() -> None:
    gate, board = gate_with_cost("slowpoke", target_s=0.5)
    board.publish(0, 0, 0.1, 0.0)  # 100 ms per instance
    rejection = gate.admit(40)  # 4 s predicted, 3.5 s over the target
    assert rejection is not None and rejection.retry_after_s == 4


def test_without_a_published_cost_or_a_target_only_the_cap_applies() -> None:
    unseeded, _ = gate_with_cost("unseeded", target_s=0.001)  # no worker has warmed up yet
    assert admit_until_refused(unseeded, 64)[1].reason == "overload"
    untargeted, board = gate_with_cost("untargeted", target_s=None)
    board.publish(0, 0, 1.0, 1.0)  # whatever it costs
    assert admit_until_refused(untargeted, 64)[1].reason == "overload"


def test_leave_gives_the_room_back() -> None:
    gate, board = gate_with_cost("cycle", target_s=0.2)
    board.publish(0, 0, 0.001, 0.02)
    admitted, _ = admit_until_refused(gate, 4)
    for _ in range(admitted):
        gate.leave(4)
    assert gate.in_flight == 0 and gate.queued_instances == 0
    assert admit_until_refused(gate, 4)[0] == admitted


def _churn(gate: AdmissionGate, rounds: int) -> None:
    for _ in range(rounds):
        if gate.admit(3) is None:
            gate.leave(3)


@pytest.mark.skipif("fork" not in mp.get_all_start_methods(), reason="API servers are forked (POSIX)")
def test_counts_stay_exact_with_several_api_server_processes() -> None:
    gate, board = gate_with_cost("shared", target_s=0.2, limit=50)
    board.publish(0, 0, 0.001, 0.02)
    processes = [mp.get_context("fork").Process(target=_churn, args=(gate, 2000)) for _ in range(4)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(60)
    assert [p.exitcode for p in processes] == [0] * 4
    assert gate.in_flight == 0 and gate.queued_instances == 0


def test_a_request_waits_only_for_its_own_and_higher_priorities() -> None:
    board = CostBoard(1)
    gate = AdmissionGate(1000, "prio", 0.2, board.costs(0), max_batch_size=8, priority_levels=2)
    board.publish(0, 0, 0.001, 0.02)  # the same curve as above: 14 requests of 4 fit in 200 ms
    admitted_low, refused_low = 0, None
    while (refused_low := gate.admit(4, priority=2)) is None:
        admitted_low += 1
    assert admitted_low == 14 and refused_low.reason == "latency_target"  # priority 2 is now shed...
    admitted_high = 0
    while gate.admit(4, priority=1) is None:
        admitted_high += 1
    assert admitted_high == 14  # ...while priority 1 still gets in: the low queue is not ahead of it
    assert gate.admit(4, priority=2) is not None  # and priority 2 waits behind both
    for _ in range(admitted_high):
        gate.leave(4, priority=1)
    assert gate.queued_instances == 56 and gate.admit(4, priority=1) is None


def test_a_request_predicted_to_miss_its_own_timeout_is_refused_at_once() -> None:
    gate, board = gate_with_cost("own-deadline", target_s=None)
    board.publish(0, 0, 0.001, 0.02)
    before = rejected_count("own-deadline", "deadline")
    assert gate.admit(4, timeout_s=0.05) is None  # ahead 4: 4 ms + 20 ms
    for _ in range(10):
        assert gate.admit(4) is None  # no target: the queue grows
    rejection = gate.admit(4, timeout_s=0.05)
    assert rejection is not None and rejection.reason == "deadline"
    assert "after the request's own timeout of 50 ms" in str(rejection)
    assert rejected_count("own-deadline", "deadline") == before + 1


def test_time_already_spent_in_the_api_server_counts_against_the_target() -> None:
    gate, board = gate_with_cost("waited", target_s=0.2)
    board.publish(0, 0, 0.001, 0.02)  # a lone 4-instance request: 24 ms of forward time
    assert gate.admit(4, waited_s=0.1) is None
    gate.leave(4)
    rejection = gate.admit(4, waited_s=0.19)  # 190 ms already waited + 24 ms > 200 ms
    assert rejection is not None and rejection.reason == "latency_target"


def test_the_early_refusal_needs_only_the_queue_ahead_and_counts_nothing_in_it() -> None:
    gate, board = gate_with_cost("early", target_s=0.2)
    board.publish(0, 0, 0.001, 0.02)
    assert gate.refuse_early() is None  # an empty queue: the body is worth reading
    for _ in range(13):
        assert gate.admit(4) is None  # 52 queued
    before = rejected_count("early", "latency_target")
    assert gate.refuse_early() is None  # 52 queued plus one instance: 53 + 7 * 20 = 193 ms
    assert gate.admit(4) is None  # 56 queued
    rejection = gate.refuse_early()  # 57 + 8 * 20 = 217 ms
    assert rejection is not None and rejection.reason == "latency_target"
    assert rejected_count("early", "latency_target") == before + 1
    assert gate.in_flight == 14 and gate.queued_instances == 56  # refusals added nothing to the queue


def test_no_early_refusal_without_a_target() -> None:
    gate = AdmissionGate(1, "untargeted")
    assert gate.admit(1) is None
    assert gate.refuse_early() is None  # the hard cap is decided at admission, with the instance count


def test_late_answers_shrink_the_admitted_work_and_on_time_ones_restore_it() -> None:
    gate, board = gate_with_cost("budgeted", target_s=0.2)
    board.publish(0, 0, 0.001, 0.02)
    first, _ = admit_until_refused(gate, 4)
    for _ in range(first):
        gate.leave(4, answered_s=0.5)  # every answer late: the budget is cut (once per cooldown)
    assert gate.budget is not None and gate.budget.budget_s < 0.2
    shrunk, _ = admit_until_refused(gate, 4)
    assert shrunk < first
    for _ in range(shrunk):
        gate.leave(4, answered_s=0.05)
    for _ in range(1000):
        gate.budget.observe(0.05)
    assert gate.budget.budget_s == pytest.approx(0.2)


def test_the_early_refusal_counts_the_request_s_likely_instances() -> None:
    gate, board = gate_with_cost("early-sized", target_s=0.2)
    board.publish(0, 0, 0.001, 0.02)
    for _ in range(13):
        assert gate.admit(4) is None  # 52 queued: one more instance fits (193 ms), four more do not
    assert gate.refuse_early() is None
    assert gate.admit(4) is None  # 56 queued
    gate.leave(4)  # 52 again
    rejection = gate.refuse_early(instances=8)  # 60 + 8 * 20 = 220 ms: refused before its body is read
    assert rejection is not None and rejection.reason == "latency_target" and "220 ms" in str(rejection)


def test_the_instance_estimate_learns_bytes_per_instance_and_guesses_low() -> None:
    estimate = InstanceEstimate(max_instances=64, slack=1.15)
    assert estimate.instances(80000) == 1  # nothing learned yet: as if one instance
    estimate.learn(79_000, 64)  # ~1,234 bytes per instance
    assert estimate.instances(79000) == 55  # 64 / 1.15: held low, so a request that fits is read
    assert estimate.instances(1234) == 1 and estimate.instances(10) == 1  # at least one
    assert estimate.instances(10**12) == 64  # at most the model's limit (decoding answers the rest)
    assert estimate.instances(None) == 1  # no usable length
    for unknown in (None, b"12x", b"9" * 40):  # no length, a malformed one, one no body can have
        assert declared_length(unknown) is None
    assert declared_length(b"79000") == 79000
    for _ in range(100):
        estimate.learn(2_000, 1)  # another client's bodies: the mean moves to them
    assert estimate.instances(2000) == 1 and estimate.instances(20000) == 8
    estimate.learn(0, 0)  # an empty request teaches nothing
    assert estimate.instances(20000) == 8


def route_for_early_refusal(model: str) -> tuple[PredictRoute, AdmissionGate, CostBoard]:
    gate, board = gate_with_cost(model, target_s=0.2)
    settings = RouteSettings(
        model=model,
        version="1",
        input_spec=InputSpec(shape=(4,)),
        output_spec=OutputSpec(labels=("a", "b")),
        max_instances=64,
        request_timeout_s=5.0,
        max_body_bytes=1 << 20,
        api_key=None,
    )
    return PredictRoute(settings, None, gate, DrainSwitch()), gate, board  # type: ignore[arg-type]


def test_a_flooded_route_refuses_a_large_body_unread_and_reads_a_small_one() -> None:
    route, gate, board = route_for_early_refusal("early-route")
    board.publish(0, 0, 0.001, 0.02)
    route.sizes.learn(2_400, 100)  # 24 bytes per instance, as this client's bodies were
    for _ in range(13):
        assert gate.admit(4) is None  # 52 queued: one instance still fits, eight do not
    reads: list[int] = []
    sent: list[dict] = []

    async def receive() -> dict:
        reads.append(1)
        return {"type": "http.request", "body": b"not json", "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    def post(length: int) -> int:
        reads.clear()
        sent.clear()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(length).encode())]
        asyncio.run(route({"type": "http", "method": "POST", "path": "/", "headers": headers}, receive, send))
        return sent[0]["status"]

    assert post(24 * 10) == 503 and reads == []  # likely 8 instances: refused before the body is read
    assert post(24) == 422 and reads == [1]  # likely one: read and decoded (and found malformed)
