"""The batch cost model: it converges on a synthetic cost curve with noise and outliers, follows a change
of the curve, keeps its slope when traffic brings one batch size only, and its table sees a curve whose
throughput peaks inside the range. The formula admission uses, and the shared board, are checked too."""

from __future__ import annotations

import multiprocessing as mp
import random

import pytest

from service.scheduling.batch_policy import best_size
from service.scheduling.board import CostBoard
from service.scheduling.cost_model import CostModel, bucket_of, bucket_sizes
from service.scheduling.prediction import predicted_answer_s, retry_after_s

SIZES = (1, 4, 8, 16, 32, 64)


def linear(alpha: float, beta: float):
    return lambda b: alpha * b + beta


def feed(model: CostModel, curve, batches: int, rng: random.Random, outliers: float = 0.02) -> None:
    """Random batch sizes, +-10 % noise, and a few 10x spikes (a GC pause, a noisy neighbour)."""
    for _ in range(batches):
        b = rng.randint(1, 64)
        seconds = curve(b) * rng.uniform(0.9, 1.1)
        if rng.random() < outliers:
            seconds *= 10
        model.observe(b, seconds)


def worst_relative_error(model: CostModel, curve) -> float:
    return max(abs(model.predict(b) - curve(b)) / curve(b) for b in SIZES)


def seeded(curve) -> CostModel:
    model = CostModel()
    for b in (1, 8, 64):  # what the worker's warm-up observes
        model.seed(b, curve(b))
    return model


def test_the_warm_up_alone_gives_the_line_through_its_points() -> None:
    model = seeded(linear(0.002, 0.01))
    assert model.alpha == pytest.approx(0.002) and model.beta == pytest.approx(0.01)


def test_it_converges_on_a_noisy_curve_with_outliers() -> None:
    truth = linear(0.001, 0.02)
    model = seeded(linear(0.003, 0.005))  # a warm-up that was off (cold caches)
    feed(model, truth, 600, random.Random(7))
    assert model.alpha == pytest.approx(0.001, rel=0.15)
    assert model.beta == pytest.approx(0.02, rel=0.15)
    assert worst_relative_error(model, truth) < 0.1


def test_it_tracks_a_change_of_the_curve() -> None:
    rng = random.Random(11)
    before, after = linear(0.001, 0.02), linear(0.003, 0.004)  # e.g. another tenant took the GPU
    model = seeded(before)
    feed(model, before, 400, rng)
    assert worst_relative_error(model, after) > 0.5  # the change is large...
    feed(model, after, 600, rng)
    assert worst_relative_error(model, after) < 0.1  # ...and followed
    assert model.alpha == pytest.approx(0.003, rel=0.15)


def test_a_single_spike_moves_the_prediction_little() -> None:
    truth = linear(0.001, 0.02)
    model = seeded(truth)
    for _ in range(200):
        model.observe(16, truth(16))
    before = model.predict(16)
    model.observe(16, 100 * truth(16))
    assert model.predict(16) == pytest.approx(before, rel=0.05)


def test_one_batch_size_only_keeps_the_slope_from_the_warm_up() -> None:
    model = seeded(linear(0.002, 0.01))
    for _ in range(1000):  # low load: every batch has one instance, and the model got slower
        model.observe(1, 0.05)
    assert model.line(1) == pytest.approx(0.05, rel=0.02)
    assert model.alpha > 0.001  # not flattened to "every size costs the same"


def test_bad_observations_are_ignored() -> None:
    model = seeded(linear(0.002, 0.01))
    for batch_size, seconds in [(0, 0.1), (4, float("nan")), (4, -1.0), (4, float("inf"))]:
        model.observe(batch_size, seconds)
    assert model.alpha == pytest.approx(0.002) and model.beta == pytest.approx(0.01)


def test_the_table_finds_an_interior_throughput_optimum() -> None:
    curve = lambda b: 0.01 + 0.0005 * b + 0.00005 * b * b  # noqa: E731  throughput peaks near b = 14
    model = seeded(curve)
    feed(model, curve, 800, random.Random(3), outliers=0.0)
    best = best_size(model.predict, 64, model.knots())
    true_best = max(range(1, 65), key=lambda b: b / curve(b))
    assert 4 < best < 32 and best / curve(best) > 0.95 * true_best / curve(true_best)
    assert best_size(model.line, 64) == 64  # a line alone always says "as large as possible"


def test_buckets() -> None:
    assert [bucket_of(b) for b in (1, 2, 3, 4, 7, 8, 63, 64, 65)] == [1, 2, 2, 4, 4, 8, 32, 64, 64]
    assert bucket_sizes(64) == [1, 2, 4, 8, 16, 32, 64]
    assert bucket_sizes(48) == [1, 2, 4, 8, 16, 32, 48]
    assert bucket_sizes(1) == [1]


def test_predicted_answer_time() -> None:
    # Empty queue: the request's own batch.
    assert predicted_answer_s(0, 4, 0.001, 0.02, 1, 8) == pytest.approx(0.004 + 0.02)
    # 60 instances ahead + 4 = 64 = 8 full batches.
    assert predicted_answer_s(60, 4, 0.001, 0.02, 1, 8) == pytest.approx(0.064 + 8 * 0.02)
    # Two workers share the queue: 30 ahead + 4 = 34 -> 5 batches.
    assert predicted_answer_s(60, 4, 0.001, 0.02, 2, 8) == pytest.approx(0.034 + 5 * 0.02)
    assert retry_after_s(0.3, 0.2) == 1  # never below 1
    assert retry_after_s(5.2, 0.2) == 5


def _publish(board: CostBoard) -> None:
    board.publish(1, 1, 0.004, 0.03)


def test_the_board_is_shared_with_a_spawned_worker() -> None:
    board = CostBoard(2)  # units 0 ("a") and 1 ("b")
    costs = board.costs(1)
    assert costs.line() == (0.0, 0.0, 0)  # nothing published: no worker has warmed up
    board.publish(1, 0, 0.002, 0.01)
    child = mp.get_context("spawn").Process(target=_publish, args=(board,))
    child.start()
    child.join(60)
    assert child.exitcode == 0
    alpha, beta, workers = costs.line()
    assert workers == 2 and alpha == pytest.approx(0.003) and beta == pytest.approx(0.02)
    assert board.costs(0).line() == (0.0, 0.0, 0)
    board.clear(1)  # a released unit: its next owner starts from nothing
    assert costs.line() == (0.0, 0.0, 0)
