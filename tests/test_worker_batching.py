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
        self.config = SimpleNamespace(version="1")
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


def test_batches_stop_at_the_learned_throughput_peak() -> None:
    from service.scheduling.tracker import CostTracker

    tracker = CostTracker(f"peak-{next(_names)}", max_batch_size=64, export_interval_s=0.0)
    # per-instance cost rises past 8 (the `mid` peer's shape): 8 instances/ms at b8, fewer beyond
    curve = {1: 0.5e-3, 2: 0.6e-3, 4: 0.8e-3, 8: 1.0e-3, 16: 2.6e-3, 32: 6.0e-3, 64: 13e-3}
    for _ in range(60):
        for size, seconds in curve.items():
            tracker.observe(size, seconds)
    assert tracker.best_batch_size == 8
