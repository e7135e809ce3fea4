"""How the worker forms a batch (:func:`service.worker.batching.collect`) from a queue it cannot wait on:
up to the size cap, in priority order, and only while the batch still meets its requests' deadlines on
the learned cost line (Clipper's b_max, per request)."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from service.messages import PROBABILITIES_F32, InferRequest
from service.worker.batching import collect
from service.worker.pending import PendingRequests


class QueueOnly:
    """An inbox whose requests are all queued already: polling brings nothing new."""

    def __init__(self, requests: list[InferRequest]) -> None:
        self.pending = PendingRequests()
        self.pending.extend((None, r) for r in requests)
        self.waits: list[float | None] = []

    def poll(self, timeout: float | None) -> None:
        self.waits.append(timeout)
        if timeout:
            raise AssertionError(f"collect waited {timeout} s for more requests")


@dataclass
class Line:
    alpha: float
    beta: float


def req(uid: int, instances: int, deadline_in_s: float = 60.0, priority: int = 1) -> InferRequest:
    rows = np.zeros((instances, 1), dtype=np.float32)
    now = time.monotonic()
    return InferRequest(uid, now + deadline_in_s, now, rows, PROBABILITIES_F32, f"r-{uid}", priority=priority)


def uids(batch: list) -> list[int]:
    return [request.uid for _, request in batch]


def test_without_a_cost_line_the_batch_takes_the_queue_up_to_the_cap() -> None:
    inbox = QueueOnly([req(i, 4) for i in range(5)])
    assert uids(collect(inbox, 12, 0.0)) == [0, 1, 2]
    assert uids(collect(inbox, 12, 0.0)) == [3, 4]


def test_far_deadlines_do_not_shrink_the_batch() -> None:
    inbox = QueueOnly([req(i, 4, deadline_in_s=60.0) for i in range(5)])
    assert uids(collect(inbox, 64, 0.0, cost=Line(0.01, 0.1))) == [0, 1, 2, 3, 4]  # 0.3 s << 60 s


def test_the_batch_stops_where_the_heads_deadline_would_be_missed() -> None:
    # 100 ms per instance: the head (deadline in 1 s) can share a batch of at most 9 instances
    inbox = QueueOnly([req(0, 4, deadline_in_s=1.0)] + [req(i, 4, deadline_in_s=60.0) for i in range(1, 5)])
    assert uids(collect(inbox, 64, 0.0, cost=Line(0.1, 0.0))) == [0, 1]  # 8 instances: 0.8 s
    assert uids(collect(inbox, 64, 0.0, cost=Line(0.1, 0.0))) == [2, 3, 4]  # no tight deadline left


def test_a_later_request_with_a_shorter_deadline_does_not_join_a_batch_it_would_make_late() -> None:
    inbox = QueueOnly([req(0, 4), req(1, 4, deadline_in_s=0.5), req(2, 1)])
    batch = collect(inbox, 64, 0.0, cost=Line(0.1, 0.0))  # with request 1: 0.8 s, past its 0.5 s
    assert uids(batch) == [0]
    assert uids(collect(inbox, 64, 0.0, cost=Line(0.1, 0.0))) == [1]  # 0.4 s; with 2: 0.5 s, past it


def test_a_head_already_late_gets_the_full_batch() -> None:
    inbox = QueueOnly([req(0, 4, deadline_in_s=0.05)] + [req(i, 4) for i in range(1, 4)])
    assert uids(collect(inbox, 64, 0.0, cost=Line(0.1, 0.0))) == [0, 1, 2, 3]  # late anyway: throughput


def test_higher_priority_is_batched_first() -> None:
    inbox = QueueOnly([req(0, 4, priority=2), req(1, 4, priority=1), req(2, 4, priority=2)])
    assert uids(collect(inbox, 8, 0.0, cost=Line(0.001, 0.0))) == [1, 0]


def test_the_wait_for_more_requests_ends_before_a_full_batch_would_miss_the_head() -> None:
    # batch_timeout 30 s, but a full batch of 8 costs 0.8 s and the head's deadline is in 0.3 s: no wait
    inbox = QueueOnly([req(0, 1, deadline_in_s=0.3), req(1, 1)])
    assert uids(collect(inbox, 8, 30.0, cost=Line(0.1, 0.0))) == [0, 1]
    assert inbox.waits == [0]  # only the non-blocking read of what had already arrived
