"""The batch policy on synthetic cost curves: the largest batch on a linear curve, an interior size on a
curve whose per-instance cost rises, deadlines that cap the batch (Clipper's b_max), whole requests only,
and waiting for more work only while the deadlines allow it."""

from __future__ import annotations

import itertools

import pytest

from service.scheduling.batch_policy import QueuedRequest, best_size, choose_batch, throughput


def linear(b: float) -> float:
    return 0.01 + 0.001 * b  # 10 ms per batch + 1 ms per instance: bigger is always better


def convex(b: float) -> float:
    return 0.01 + 0.0005 * b + 0.00005 * b * b  # throughput peaks at b = sqrt(0.01 / 0.00005) ~ 14


def queue(*sizes: int, deadline: float = 10.0, now: float = 0.0) -> list[QueuedRequest]:
    return [QueuedRequest(size, now, deadline) for size in sizes]


def test_an_empty_queue_runs_nothing() -> None:
    choice = choose_batch([], linear, 64, now=0.0)
    assert choice.requests == 0 and choice.wait_s == 0


def test_a_linear_curve_takes_everything_up_to_the_maximum() -> None:
    choice = choose_batch(queue(*[4] * 20), linear, 64, now=0.0)
    assert (choice.requests, choice.instances) == (16, 64)
    assert choice.predicted_s == pytest.approx(linear(64))


def test_requests_are_never_split_or_reordered() -> None:
    choice = choose_batch(queue(30, 30, 8), linear, 64, now=0.0)
    assert (choice.requests, choice.instances) == (2, 60)  # the 8 behind would overflow: it waits


def test_an_oversized_first_request_still_runs_alone() -> None:
    choice = choose_batch(queue(100, 1), linear, 64, now=0.0)
    assert (choice.requests, choice.instances) == (1, 100)


def test_a_convex_curve_stops_at_its_interior_optimum() -> None:
    choice = choose_batch(queue(*[1] * 64), convex, 64, now=0.0)
    assert 12 <= choice.instances <= 16
    assert throughput(convex, choice.instances) > throughput(convex, 64) * 1.5
    assert best_size(convex, 64) == 14


def test_the_oldest_deadline_caps_the_batch_like_clippers_b_max() -> None:
    # 1 instance per request; the oldest must be answered within 40 ms: b_max = (0.040 - 0.01) / 0.001 = 30.
    requests = [QueuedRequest(1, 0.0, 0.04), *queue(*([1] * 63), deadline=10.0)]
    choice = choose_batch(requests, linear, 64, now=0.0)
    assert choice.instances == 30 and choice.predicted_s <= 0.040


def test_a_deadline_anywhere_in_the_batch_counts() -> None:
    requests = [*queue(1, 1, 1), QueuedRequest(1, 0.0, 0.0145), *queue(1, 1)]
    choice = choose_batch(requests, linear, 64, now=0.0)
    assert choice.instances == 4  # a 5th would make the 4th miss its deadline (10 + 5 ms > 14.5 ms)...


def test_when_the_oldest_is_late_anyway_the_best_throughput_runs() -> None:
    requests = [QueuedRequest(1, 0.0, 0.001), *queue(*([1] * 20))]
    choice = choose_batch(requests, linear, 64, now=0.0)
    assert choice.instances == 21  # ...but a lost cause does not shrink the batch


def test_waiting_for_more_work_only_while_the_deadlines_allow() -> None:
    few = queue(1, 1, deadline=1.0)
    patient = choose_batch(few, linear, 64, now=0.0, max_wait_s=0.005)
    assert patient.requests == 0 and patient.wait_s == pytest.approx(0.005)
    urgent = queue(1, 1, deadline=0.07)  # best size 64 runs 74 ms: no time to wait for it
    assert choose_batch(urgent, linear, 64, now=0.0, max_wait_s=0.005).requests == 2
    # The wait is counted from the oldest request's arrival, like Triton's max_queue_delay.
    waited = choose_batch(few, linear, 64, now=0.005, max_wait_s=0.005)
    assert waited.requests == 2
    # At the curve's best size there is nothing to wait for.
    assert choose_batch(queue(*[1] * 14, deadline=1.0), convex, 64, now=0.0, max_wait_s=0.005).requests > 0


def test_best_size_with_knots_matches_the_exhaustive_search_on_a_piecewise_linear_curve() -> None:
    knots = [(1, 0.011), (8, 0.02), (16, 0.03), (32, 0.08), (64, 0.2)]

    def piecewise(b: float) -> float:
        for (b0, t0), (b1, t1) in itertools.pairwise(knots):
            if b <= b1:
                return t0 + (t1 - t0) * (b - b0) / (b1 - b0)
        return knots[-1][1]

    assert best_size(piecewise, 64, [k for k, _ in knots]) == best_size(piecewise, 64) == 16
