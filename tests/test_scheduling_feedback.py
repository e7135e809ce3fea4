"""The admission budget's AIMD and the event-loop lag probe, driven by hand (no timing)."""

from __future__ import annotations

import asyncio

import pytest

from service.scheduling.budget import TargetBudget
from service.scheduling.loop_lag import LoopLag


def test_a_late_answer_cuts_the_budget_once_per_cooldown() -> None:
    budget = TargetBudget(0.5, cut=0.1, cooldown_s=1.0)
    budget.observe(0.8, now=10.0)
    assert budget.budget_s == pytest.approx(0.45)
    budget.observe(0.8, now=10.5)  # the same late burst: no second cut
    assert budget.budget_s == pytest.approx(0.45)
    budget.observe(0.8, now=11.0)
    assert budget.budget_s == pytest.approx(0.405)


def test_on_time_answers_raise_the_budget_additively_up_to_the_target() -> None:
    budget = TargetBudget(1.0, step=0.01, cooldown_s=0.0)
    budget.observe(2.0, now=0.0)
    assert budget.budget_s == pytest.approx(0.9)
    for _ in range(5):
        budget.observe(0.1)
    assert budget.budget_s == pytest.approx(0.95)
    for _ in range(100):
        budget.observe(0.1)
    assert budget.budget_s == 1.0


def test_the_budget_never_falls_below_its_floor() -> None:
    budget = TargetBudget(1.0, floor=0.2, cooldown_s=0.0)
    for i in range(100):
        budget.observe(5.0, now=float(i))
    assert budget.budget_s == pytest.approx(0.2)


def test_loop_lag_is_zero_outside_a_loop_and_averages_probe_lateness() -> None:
    lag = LoopLag(weight=0.5)
    assert lag.seconds() == 0.0  # no running loop: nothing started, nothing measured
    lag.record(0.1)
    lag.record(0.1)
    assert lag.lag_s == pytest.approx(0.075)


def test_loop_lag_probe_runs_inside_a_loop() -> None:
    lag = LoopLag(interval_s=0.001)

    async def main() -> int:
        lag.seconds()  # starts the probe
        ticks = 0
        original = lag.record

        def counting(late_s: float) -> None:
            nonlocal ticks
            ticks += 1
            original(late_s)

        lag.record = counting  # type: ignore[method-assign]
        while ticks < 3:
            await asyncio.sleep(0.001)
        return ticks

    assert asyncio.run(main()) >= 3
    assert lag.lag_s >= 0.0


def test_loop_lag_probe_stops_when_idle_and_restarts_on_the_next_read() -> None:
    lag = LoopLag(interval_s=0.001, idle_after_s=0.01)

    async def main() -> tuple[bool, bool, bool]:
        lag.seconds()
        busy = True
        deadline = asyncio.get_running_loop().time() + 0.03
        while asyncio.get_running_loop().time() < deadline:  # reads keep it running
            lag.seconds()
            busy = busy and lag.running
            await asyncio.sleep(0.001)
        for _ in range(200):  # no reads: it stops after about ten probes
            if not lag.running:
                break
            await asyncio.sleep(0.001)
        stopped = not lag.running
        lag.seconds()
        return busy, stopped, lag.running

    busy, stopped, restarted = asyncio.run(main())
    assert busy, "the probe stopped while requests were being read"
    assert stopped, "the probe kept running with no reads"
    assert restarted, "a read did not start the probe again"
