"""The worker's batch runner: one reply per request in order, 504 for the expired, failure isolation, and
queue-wait / batch-size metrics recorded once per request and batch, however the batch was retried."""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import numpy as np
from prometheus_client import REGISTRY

from service.messages import PROBABILITIES_F32, InferRequest
from service.worker.batching import EXPIRED, INTERNAL_ERROR, BatchRunner

_names = itertools.count()


class FakeRunner:
    """Doubles each instance's single feature; a batch holding a negative instance fails as a whole."""

    def __init__(self) -> None:
        self.model_name = f"batching-{next(_names)}"
        self.config = SimpleNamespace(version="1", latency_target_ms=250.0)
        self.forwards: list[int] = []

    def predict(self, instances: np.ndarray) -> np.ndarray:
        self.forwards.append(len(instances))
        if (instances < 0).any():
            raise ValueError("negative input")
        return instances * 2

    def encode(self, probabilities: np.ndarray, answer_format: int) -> bytes:
        return probabilities.tobytes()


def request(uid: int, values: list[float], deadline: float = float("inf")) -> InferRequest:
    instances = np.asarray(values, dtype=np.float32).reshape(-1, 1)
    return InferRequest(uid, deadline, 0.0, instances, PROBABILITIES_F32, f"r-{uid}")


def count(metric: str, model: str) -> float:
    return REGISTRY.get_sample_value(f"{metric}_count", {"model": model, "version": "1"}) or 0.0


def test_each_request_gets_its_own_rows_in_order() -> None:
    runner = FakeRunner()
    replies = BatchRunner(runner).run_batch([request(7, [1, 2]), request(7, [3]), request(1, [4, 5, 6])])
    assert [r.uid for r in replies] == [7, 7, 1]  # uids repeat across API-server links: order matters
    assert [np.frombuffer(r.body, np.float32).tolist() for r in replies] == [[2, 4], [6], [8, 10, 12]]
    assert runner.forwards == [6]  # one forward pass for the whole batch


def test_a_failing_batch_is_retried_alone_and_metrics_count_once() -> None:
    runner = FakeRunner()
    wait_before = count("hookserve_queue_wait_seconds", runner.model_name)
    size_before = count("hookserve_batch_size", runner.model_name)
    replies = BatchRunner(runner).run_batch([request(1, [1]), request(2, [-1]), request(3, [3])])
    assert [(r.uid, r.status) for r in replies] == [(1, 200), (2, 500), (3, 200)]
    assert replies[1].body == INTERNAL_ERROR
    assert runner.forwards == [3, 1, 1, 1]
    assert count("hookserve_queue_wait_seconds", runner.model_name) - wait_before == 3
    assert count("hookserve_batch_size", runner.model_name) - size_before == 1


def test_expired_requests_get_504_without_running() -> None:
    runner = FakeRunner()
    replies = BatchRunner(runner).run_batch([request(1, [1], deadline=0.0), request(2, [2])])
    assert [(r.uid, r.status) for r in replies] == [(1, 504), (2, 200)]
    assert replies[0].body == EXPIRED
    assert runner.forwards == [1]
    assert BatchRunner(runner).run_batch([request(3, [1], deadline=0.0)])[0].status == 504
    assert runner.forwards == [1]


def test_pending_requests_serve_higher_priority_first_then_arrival_order() -> None:
    from service.worker.pending import PendingRequests

    pending = PendingRequests()
    arrivals = [(uid, priority) for uid, priority in [(1, 2), (2, 1), (3, 2), (4, 1), (5, 3)]]
    for uid, priority in arrivals:
        pending.append(("conn-a" if uid % 2 else "conn-b", request(uid, [1])._replace(priority=priority)))
    assert len(pending) == 5 and pending[0][1].uid == 2
    assert [r.uid for _, r in pending] == [2, 4, 1, 3, 5]
    pending.drop_connection("conn-b")  # uids 2 and 4 came on it
    assert len(pending) == 3
    assert [pending.popleft()[1].uid for _ in range(3)] == [1, 3, 5]
    assert not pending


def test_a_request_that_can_no_longer_meet_the_target_is_shed_not_starved_until_its_deadline() -> None:
    """Strict priority would keep it until its deadline (a 504 after seconds); run late, it would be the
    slowest answer. Target 0.5 s: ``answer_by`` is arrival + 0.5 s."""
    import time

    from service.worker.pending import PendingRequests

    now = time.monotonic()

    def queued(uid: int, priority: int, waited_s: float, deadline_s: float = 10.0) -> tuple:
        arrived = now - waited_s
        return ("conn", InferRequest(uid, arrived + deadline_s, arrived, np.zeros((1, 1), np.float32),
                                     PROBABILITIES_F32, f"r-{uid}", priority=priority,
                                     answer_by=arrived + 0.5))  # fmt: skip

    def no_time(ahead: int, own: int) -> float:
        return 0.0

    within = PendingRequests(no_time)
    within.extend([queued(1, 2, 0.4), queued(2, 1, 0.1), queued(3, 1, 0.0)])
    assert within.take_late() == []
    assert [within.popleft()[1].uid for _ in range(3)] == [2, 3, 1]  # 0.4 s < 0.5 s: it waits its turn

    overdue = PendingRequests(no_time)
    overdue.extend([queued(1, 2, 0.7), queued(4, 2, 0.6), queued(5, 2, 0.1), queued(2, 1, 0.1)])
    assert [r.uid for _, r in overdue.take_late()] == [1, 4]
    assert len(overdue) == 2 and [overdue.popleft()[1].uid for _ in range(2)] == [2, 5]

    # With the cost line: 0.1 s per instance. Two priority-1 instances ahead (0.2 s) and its own
    # (0.1 s): one that waited 0.25 s would answer at 0.55 s, past 0.5 s: shed now, not at 0.5 s.
    predicted = PendingRequests(lambda ahead, own: 0.1 * (ahead + own))
    predicted.extend([queued(1, 2, 0.25), queued(3, 2, 0.05), queued(2, 1, 0.0), queued(4, 1, 0.0)])
    assert [r.uid for _, r in predicted.take_late()] == [1]  # 0.05 + 0.3 < 0.5: uid 3 stays
    assert [predicted.popleft()[1].uid for _ in range(3)] == [2, 4, 3]

    front = PendingRequests(no_time)  # late at the front of the queue: shed too, not run late
    front.extend([queued(1, 1, 0.55), queued(2, 1, 0.2), queued(3, 2, 0.1)])
    assert [r.uid for _, r in front.take_late()] == [1]
    assert [front.popleft()[1].uid for _ in range(2)] == [2, 3]

    without_target = PendingRequests()  # no shedding; it goes first after half of its own deadline
    without_target.extend([queued(1, 2, 4.0), queued(2, 1, 0.0), queued(3, 2, 6.0)])
    assert without_target.take_late() == []
    assert [without_target.popleft()[1].uid for _ in range(3)] == [2, 1, 3]
    starving = PendingRequests()
    starving.extend([queued(1, 1, 0.0), queued(2, 2, 5.5)])
    assert starving.popleft()[1].uid == 2


def test_shed_requests_get_503_and_count_as_latency_target_refusals() -> None:
    runner = FakeRunner()
    labels = {"model": runner.model_name, "reason": "latency_target"}
    before = REGISTRY.get_sample_value("hookserve_rejected_total", labels) or 0
    replies = BatchRunner(runner).shed([request(5, [1]), request(6, [2])])
    assert [(r.uid, r.status) for r in replies] == [(5, 503), (6, 503)]
    assert b"latency target of 250 ms" in replies[0].body and runner.forwards == []
    after = REGISTRY.get_sample_value("hookserve_rejected_total", labels)
    assert after == before + 2


def test_batches_stop_at_the_learned_throughput_peak() -> None:
    from service.scheduling.tracker import CostTracker

    tracker = CostTracker(f"peak-{next(_names)}", max_batch_size=64, export_interval_s=0.0)
    # per-instance cost rises past 8 (the `mid` peer's shape): 8 instances/ms at b8, fewer beyond
    curve = {1: 0.5e-3, 2: 0.6e-3, 4: 0.8e-3, 8: 1.0e-3, 16: 2.6e-3, 32: 6.0e-3, 64: 13e-3}
    for _ in range(60):
        for size, seconds in curve.items():
            tracker.observe(size, seconds)
    assert tracker.best_batch_size == 8
