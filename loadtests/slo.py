"""The service-level objectives a load test run must meet, and the verdict on one run.

Thresholds come from environment variables (defaults in brackets):
``LOADTEST_SLO_FAIL_RATIO`` [0.01] the largest share of failed requests,
``LOADTEST_SLO_P95_MS`` [500] the largest 95th-percentile response time over all requests,
``LOADTEST_MIN_ACCURACY`` [0.9] the smallest share of correct answers per model with labelled data.

Pure Python (no Locust import); ``locustfile.py`` feeds it the run's numbers when Locust quits.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class Objectives:
    max_fail_ratio: float = 0.01
    max_p95_ms: float = 500.0
    min_accuracy: float = 0.9

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Objectives:
        env = os.environ if env is None else env
        defaults = cls()
        return cls(
            max_fail_ratio=float(env.get("LOADTEST_SLO_FAIL_RATIO") or defaults.max_fail_ratio),
            max_p95_ms=float(env.get("LOADTEST_SLO_P95_MS") or defaults.max_p95_ms),
            min_accuracy=float(env.get("LOADTEST_MIN_ACCURACY") or defaults.min_accuracy),
        )


@dataclass
class Verdict:
    objectives: Objectives
    requests: int
    fail_ratio: float
    p95_ms: float
    accuracy: dict[str, float | None]
    violations: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.violations

    def to_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed}


def judge(
    objectives: Objectives, requests: int, fail_ratio: float, p95_ms: float, accuracy: dict[str, float | None]
) -> Verdict:
    """Compare one run's totals with the objectives; every miss becomes a violation message."""
    verdict = Verdict(objectives, requests, fail_ratio, p95_ms, accuracy)
    if requests == 0:
        verdict.violations.append("no requests were made")
    if fail_ratio > objectives.max_fail_ratio:
        verdict.violations.append(f"fail ratio {fail_ratio:.2%} > {objectives.max_fail_ratio:.2%}")
    if p95_ms > objectives.max_p95_ms:
        verdict.violations.append(f"p95 response time {p95_ms:.0f} ms > {objectives.max_p95_ms:.0f} ms")
    for model, value in sorted(accuracy.items()):
        if value is not None and value < objectives.min_accuracy:
            verdict.violations.append(f"{model}: accuracy {value:.1%} < {objectives.min_accuracy:.0%}")
    return verdict
