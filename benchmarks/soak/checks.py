"""What the soak counts as right: every valid request answered 200 with the reference pass's labels, every
invalid one 4xx; anything else (a 2xx or 5xx to an invalid body, a wrong answer, a connection error, a
timeout) is an error, and any error fails the soak."""

from __future__ import annotations

import asyncio
import json
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from benchmarks.soak.client import CONN_ERROR, TIMEOUT, Connection, watchdog
from benchmarks.soak.corpus import VALID, Request, SetupError

OK = "200"
WRONG_ANSWER = "wrong_answer"
BAD_BODY = "bad_body"
TIE_MARGIN = 1e-3  # top-1 minus top-2 probability below which a flipped label is not an error


def parse_predictions(body: bytes) -> list[dict[str, Any]] | None:
    try:
        predictions = json.loads(body)["predictions"]
    except (ValueError, KeyError, TypeError):
        return None
    return predictions if isinstance(predictions, list) else None


def check_answer(request: Request, body: bytes) -> str:
    """``200`` if the answer matches the reference pass, else what is wrong with it."""
    predictions = parse_predictions(body)
    if predictions is None or len(predictions) != len(request.expected or ()):
        return BAD_BODY
    for position, (prediction, expected) in enumerate(zip(predictions, request.expected, strict=True)):
        label = prediction.get("label_index") if isinstance(prediction, dict) else None
        if label != expected and position not in request.ties:
            return WRONG_ANSWER
    return OK


def top2_margin(probabilities: list[float]) -> float:
    first, second = sorted(probabilities, reverse=True)[:2]
    return first - second


async def reference_pass(port: int, requests: Sequence[Request], timeout_s: float) -> dict[str, float]:
    """Answer every valid body once, one at a time; fill ``expected``/``ties``. Accuracy per model."""
    connection = Connection(port, timeout_s)
    guard = asyncio.create_task(watchdog([connection], timeout_s))
    hits: dict[str, list[int]] = {}
    try:
        for request in requests:
            outcome, body = await connection.exchange(request.payload)
            predictions = parse_predictions(body) if outcome == OK else None
            if predictions is None:
                raise SetupError(
                    f"reference pass: a valid {request.model} request got {outcome}: {body[:200]!r}"
                )
            request.expected = tuple(int(p["label_index"]) for p in predictions)
            request.ties = frozenset(
                i for i, p in enumerate(predictions) if top2_margin(p["probabilities"]) < TIE_MARGIN
            )
            if request.truth is not None:
                counts = hits.setdefault(request.model, [0, 0])
                labels = [p["label"] for p in predictions]
                counts[0] += sum(a == b for a, b in zip(labels, request.truth, strict=True))
                counts[1] += len(request.truth)
    finally:
        guard.cancel()
        connection.close()
    return {model: round(right / total, 4) for model, (right, total) in hits.items()}


def is_expected(kind: str, outcome: str) -> bool:
    return outcome == OK if kind == VALID else outcome.startswith("4")


@dataclass
class Stats:
    """Outcome counts per request kind and valid-request latencies (seconds)."""

    kinds: Sequence[str] = (VALID,)
    outcomes: dict[str, dict[str, int]] = field(default_factory=dict)
    latencies: array = field(default_factory=lambda: array("d"))
    done: int = 0

    def __post_init__(self) -> None:
        for kind in self.kinds:
            self.outcomes.setdefault(kind, {})

    def record(self, request: Request, outcome: str, body: bytes, latency_s: float) -> None:
        self.done += 1
        if request.kind == VALID:
            self.latencies.append(latency_s)
            if outcome == OK and request.expected is not None:
                outcome = check_answer(request, body)
        counts = self.outcomes.setdefault(request.kind, {})
        counts[outcome] = counts.get(outcome, 0) + 1

    def errors(self) -> dict[str, int]:
        """``kind:outcome`` -> count, for every outcome that misses its goal."""
        found = {}
        for kind, counts in self.outcomes.items():
            for outcome, count in counts.items():
                if not is_expected(kind, outcome):
                    found[f"{kind}:{outcome}"] = count
        return found

    def totals(self) -> dict[str, int]:
        valid = sum(self.outcomes.get(VALID, {}).values())
        return {"requests": self.done, "valid": valid, "invalid": self.done - valid}

    def connection_errors(self) -> int:
        return sum(c.get(CONN_ERROR, 0) + c.get(TIMEOUT, 0) for c in self.outcomes.values())


def valid_error_count(errors: dict[str, int]) -> int:
    return sum(v for k, v in errors.items() if k.startswith(VALID + ":"))


def goal_checks(summary: dict[str, Any], interrupted: bool, max_growth: float) -> dict[str, bool]:
    """Each goal of the soak, met or not; the verdict is PASS only when every one is met."""
    valid_errors = valid_error_count(summary["errors"])
    return {
        "rss_growth_below_goal": summary["rss_growth_pct"] < max_growth,
        "no_valid_request_errors": valid_errors == 0,
        "every_invalid_request_4xx": sum(summary["errors"].values()) == valid_errors,
        "ran_to_the_end": not interrupted and summary["requests"] > 0,
    }
