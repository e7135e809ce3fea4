"""Load scenarios as data: a scenario is a list of stages, each holding a user count until a time.

Pure Python (no Locust import), so the schedules can be unit-tested without gevent's monkey-patching;
``shapes.py`` turns them into Locust ``LoadTestShape`` classes.

Sizes scale with two environment variables, read when the scenario is built:
``LOADTEST_USERS`` (peak users) and ``LOADTEST_STAGE_S`` (seconds per stage).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Stage:
    """Hold ``users`` users (changing at ``spawn_rate`` users/s) until ``until_s`` seconds into the run."""

    until_s: float
    users: int
    spawn_rate: float


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    return int(value) if value else default


def smoke(users: int | None = None, stage_s: int | None = None) -> list[Stage]:
    """A few users for a short while: does every endpoint answer correctly at all?"""
    users = users or _env_int("LOADTEST_USERS", 4)
    stage_s = stage_s or _env_int("LOADTEST_STAGE_S", 15)
    return [Stage(stage_s, users, users)]


def steady(users: int | None = None, stage_s: int | None = None) -> list[Stage]:
    """Ramp up over about 10 s, then hold: latency and error rate at a fixed, realistic load."""
    users = users or _env_int("LOADTEST_USERS", 20)
    stage_s = stage_s or _env_int("LOADTEST_STAGE_S", 300)
    return [Stage(stage_s, users, max(1.0, users / 10))]


def step_ramp(users: int | None = None, stage_s: int | None = None, steps: int = 5) -> list[Stage]:
    """Add users in ``steps`` equal steps, holding each: where does latency bend (the knee)?"""
    users = users or _env_int("LOADTEST_USERS", 40)
    stage_s = stage_s or _env_int("LOADTEST_STAGE_S", 60)
    return [
        Stage(stage_s * (i + 1), max(1, round(users * (i + 1) / steps)), max(1.0, users / steps))
        for i in range(steps)
    ]


def spike(users: int | None = None, stage_s: int | None = None) -> list[Stage]:
    """Baseline at a fifth of the peak, a sudden jump to the peak for half a stage, then back:
    does the service shed load cleanly (503 + Retry-After) and recover?"""
    users = users or _env_int("LOADTEST_USERS", 40)
    stage_s = stage_s or _env_int("LOADTEST_STAGE_S", 60)
    base = max(1, users // 5)
    return [
        Stage(stage_s, base, base),
        Stage(stage_s * 1.5, users, users),
        Stage(stage_s * 2.5, base, users),
    ]


SCENARIOS: dict[str, Callable[[], list[Stage]]] = {
    "smoke": smoke,
    "steady": steady,
    "ramp": step_ramp,
    "spike": spike,
}


def stage_at(stages: list[Stage], run_time_s: float) -> Stage | None:
    """The stage in force ``run_time_s`` seconds into the run, or None once the last one has ended."""
    for stage in stages:
        if run_time_s < stage.until_s:
            return stage
    return None
