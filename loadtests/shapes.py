"""Locust load shapes, one per scenario in ``scenarios.py``: smoke, steady, step ramp, spike.

``locustfile.py`` exposes only the shape named by ``LOADTEST_SHAPE`` (Locust runs the first shape it
finds), or all of them for ``--class-picker`` (the web UI then offers them in a drop-down).
"""

from __future__ import annotations

from locust import LoadTestShape

from loadtests.scenarios import SCENARIOS, Stage, stage_at


class StagedShape(LoadTestShape):
    """Run the stages of one scenario, then stop the test."""

    abstract = True
    scenario = ""

    def __init__(self) -> None:
        super().__init__()
        self.stages: list[Stage] = SCENARIOS[self.scenario]()

    def tick(self) -> tuple[int, float] | None:
        stage = stage_at(self.stages, self.get_run_time())
        return None if stage is None else (stage.users, stage.spawn_rate)


class SmokeShape(StagedShape):
    """A few users for 15 s: a correctness check, not a capacity test."""

    scenario = "smoke"


class SteadyShape(StagedShape):
    """Fixed load held for 5 minutes: the service's steady-state latency and errors."""

    scenario = "steady"


class StepRampShape(StagedShape):
    """Five equal steps up to the peak, a minute each: find the knee of the latency curve."""

    scenario = "ramp"


class SpikeShape(StagedShape):
    """Baseline, a sudden burst to the peak, baseline again: load shedding and recovery."""

    scenario = "spike"


SHAPES: dict[str, type[StagedShape]] = {
    shape.scenario: shape for shape in (SmokeShape, SteadyShape, StepRampShape, SpikeShape)
}


def selected_shapes(name: str) -> list[type[StagedShape]]:
    """The shapes to expose for ``LOADTEST_SHAPE=name``: none for "" (plain -u/-r/-t), all for "all"."""
    name = name.strip().lower()
    if not name:
        return []
    if name == "all":
        return list(SHAPES.values())
    if name not in SHAPES:
        raise SystemExit(f"LOADTEST_SHAPE={name!r}: choose one of {', '.join(SHAPES)} or 'all'")
    return [SHAPES[name]]
