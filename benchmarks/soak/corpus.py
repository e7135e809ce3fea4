"""The soak's requests, built once before the load and pre-encoded: valid bodies of every served model and
the invalid stream, from ``loadtests.payloads`` (the Locust load tests use the same bodies)."""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from benchmarks.servers import http_get
from benchmarks.soak.client import encode_http
from loadtests.payloads import ModelSpec, deep_nesting_requests, invalid_requests, valid_batch

VALID = "valid"
SCHEDULE_SIZE = 4096  # requests in the rotation every client walks through (from its own offset)
VALID_BODIES_PER_MODEL = 48  # distinct valid bodies per model, each checked in the reference pass
INVALID_VARIANTS = 4  # distinct bodies per model and client mistake (deep nesting has one each)
INSTANCE_COUNTS = (1, 1, 1, 2, 4, 8)


class SetupError(RuntimeError):
    """The soak cannot run (server not ready, metadata unreadable, reference pass failed)."""


@dataclass(eq=False)
class Request:
    """One pre-encoded request. ``truth``: true labels, where the data set is known; ``expected``: labels
    from the reference pass; ``ties``: positions exempt from the comparison."""

    kind: str
    model: str
    payload: bytes
    truth: tuple[str, ...] | None = None
    expected: tuple[int, ...] | None = None
    ties: frozenset[int] = frozenset()


def get_json(url: str) -> Any:
    status, body = http_get(url, timeout_s=10.0)
    if status != 200:
        raise SetupError(f"GET {url} answered {status or 'nothing'}")
    return json.loads(body)


def served_models(base_url: str) -> list[ModelSpec]:
    """Every served model, described by its own metadata."""
    entries = get_json(f"{base_url}/v1/models")["models"]
    return [ModelSpec.from_metadata(get_json(f"{base_url}{entry['metadata']}")) for entry in entries]


def valid_requests(spec: ModelSpec, port: int, rng: random.Random) -> list[Request]:
    path, requests = f"/v1/models/{spec.name}:predict", []
    for _ in range(VALID_BODIES_PER_MODEL):
        batch = valid_batch(spec, rng, rng.choice(INSTANCE_COUNTS))
        body = json.dumps(batch.body, separators=(",", ":")).encode()
        truth = tuple(batch.expected) if batch.expected is not None else None
        requests.append(Request(VALID, spec.name, encode_http(path, port, body), truth))
    return requests


def invalid_kinds(spec: ModelSpec, port: int, rng: random.Random) -> dict[str, list[Request]]:
    """Invalid requests by kind: every client mistake, ``INVALID_VARIANTS`` times, and the deep nesting."""
    cases = [case for _ in range(INVALID_VARIANTS) for case in invalid_requests(spec, rng)]
    kinds: dict[str, list[Request]] = {}
    for case in [*cases, *deep_nesting_requests(spec)]:
        request = Request(case.case, spec.name, encode_http(case.path, port, case.body))
        kinds.setdefault(case.case, []).append(request)
    return kinds


@dataclass
class Corpus:
    """The rotation the clients walk, the valid bodies in it (for the reference pass) and every kind."""

    schedule: list[Request]
    valid: list[Request]
    kinds: list[str]


def build_corpus(models: Sequence[ModelSpec], port: int, invalid_fraction: float, seed: int) -> Corpus:
    """Models in turn; ``invalid_fraction`` of the slots invalid, evenly over the invalid kinds."""
    rng = random.Random(seed)
    valid = {m.name: valid_requests(m, port, rng) for m in models}
    invalid = {m.name: invalid_kinds(m, port, rng) for m in models}
    invalid_slots = set(rng.sample(range(SCHEDULE_SIZE), round(SCHEDULE_SIZE * invalid_fraction)))
    schedule = []
    for slot in range(SCHEDULE_SIZE):
        model = models[slot % len(models)].name
        if slot in invalid_slots:
            schedule.append(rng.choice(invalid[model][rng.choice(sorted(invalid[model]))]))
        else:
            schedule.append(rng.choice(valid[model]))
    kinds = [VALID, *sorted({kind for by_kind in invalid.values() for kind in by_kind})]
    return Corpus(schedule, [r for requests in valid.values() for r in requests], kinds)
