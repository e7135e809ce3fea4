"""Request bodies for load tests, built from each model's metadata (``GET /v1/models/{name}``).

Valid bodies come from real held-out data when a labelled data set fits the model's input spec: the rows
of scikit-learn's bundled digits and breast-cancer sets (no download) that the shipped models never
trained on, so every answer can be checked against the true label and accuracy means what the model
cards say. Otherwise values are drawn uniformly within the spec's range and only the response's form is
checked. Invalid bodies cover what clients get wrong: each must be answered 4xx.

Pure Python + numpy (no Locust import), so this module is unit-tested directly.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from functools import cache

import numpy as np


@dataclass(frozen=True)
class ModelSpec:
    """What a load test needs to know about one served model."""

    name: str
    shape: tuple[int, ...]
    min_value: float | None
    max_value: float | None
    labels: tuple[str, ...]
    max_instances: int

    @classmethod
    def from_metadata(cls, metadata: dict) -> ModelSpec:
        spec, output = metadata["input"], metadata.get("output", {})
        return cls(
            name=metadata["name"],
            shape=tuple(int(size) for size in spec["shape"]),
            min_value=spec.get("min_value"),
            max_value=spec.get("max_value"),
            labels=tuple(output.get("labels", ())),
            max_instances=int(metadata.get("batching", {}).get("max_instances_per_request") or 1),
        )

    @property
    def size(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class LabelledData:
    """Held-out feature rows with their true labels, named as the model names its outputs."""

    name: str
    features: np.ndarray  # (rows, features), float
    targets: np.ndarray  # (rows,), index into labels
    labels: tuple[str, ...]

    def fits(self, spec: ModelSpec) -> bool:
        """True when the model takes these rows as they are and names the same classes."""
        if spec.size != self.features.shape[1] or spec.labels != self.labels:
            return False
        low_ok = spec.min_value is None or self.features.min() >= spec.min_value
        high_ok = spec.max_value is None or self.features.max() <= spec.max_value
        return bool(low_ok and high_ok)


# The held-out (test) split of models/datasets.py, rebuilt here because this module runs in the Locust
# image, which has scikit-learn and numpy but neither torch nor the models package. Same seed, fraction
# and stratification; tests/test_loadtests.py checks that the rows are exactly that split.
SPLIT_SEED = 0
TEST_FRACTION = 0.2


def held_out_rows(targets: np.ndarray) -> np.ndarray:
    """Indices of the held-out rows, in the order models/datasets.py puts them in ``test_x``."""
    from sklearn.model_selection import train_test_split

    _, test = train_test_split(
        np.arange(len(targets)), test_size=TEST_FRACTION, random_state=SPLIT_SEED, stratify=targets
    )
    return test


@cache
def digits() -> LabelledData:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    rows = held_out_rows(bunch.target)
    labels = tuple(str(d) for d in bunch.target_names)
    return LabelledData("digits", bunch.data[rows].astype(float), bunch.target[rows], labels)


@cache
def breast_cancer() -> LabelledData:
    from sklearn.datasets import load_breast_cancer

    bunch = load_breast_cancer()
    rows = held_out_rows(bunch.target)
    labels = tuple(str(name) for name in bunch.target_names)
    return LabelledData("breast-cancer", bunch.data[rows].astype(float), bunch.target[rows], labels)


DATASETS = (digits, breast_cancer)


def dataset_for(spec: ModelSpec) -> LabelledData | None:
    """The labelled data set that fits ``spec``, if any."""
    for load in DATASETS:
        data = load()
        if data.fits(spec):
            return data
    return None


@dataclass
class Batch:
    """One request body and, when known, the true label of each instance."""

    body: dict
    expected: list[str] | None


def _nested(rows: np.ndarray, shape: tuple[int, ...]) -> list:
    return rows.reshape((rows.shape[0], *shape)).tolist()


def valid_batch(spec: ModelSpec, rng: random.Random, instances: int) -> Batch:
    """A body with ``instances`` valid instances for ``spec``: real labelled rows where possible."""
    instances = max(1, min(instances, spec.max_instances))
    data = dataset_for(spec)
    if data is not None:
        rows = [rng.randrange(len(data.targets)) for _ in range(instances)]
        body = {"instances": _nested(data.features[rows], spec.shape)}
        return Batch(body, [data.labels[data.targets[r]] for r in rows])
    low = spec.min_value if spec.min_value is not None else -1.0
    high = spec.max_value if spec.max_value is not None else 1.0
    values = np.array([[rng.uniform(low, high) for _ in range(spec.size)] for _ in range(instances)])
    return Batch({"instances": _nested(values.round(4), spec.shape)}, None)


def check_predictions(spec: ModelSpec, response: dict, sent: int) -> str | None:
    """What is wrong with a 200 response to a valid body of ``sent`` instances, or None."""
    if response.get("model") != spec.name:
        return f"response names model {response.get('model')!r}, not {spec.name!r}"
    predictions = response.get("predictions")
    if not isinstance(predictions, list) or len(predictions) != sent:
        got = len(predictions) if isinstance(predictions, list) else None
        return f"expected {sent} predictions, got {got}"
    for prediction in predictions:
        if prediction.get("label") not in spec.labels:
            return f"unknown label {prediction.get('label')!r}"
        probabilities = prediction.get("probabilities")
        if not isinstance(probabilities, list) or len(probabilities) != len(spec.labels):
            return "probabilities must hold one value per label"
        if not math.isclose(sum(probabilities), 1.0, abs_tol=1e-3):
            return f"probabilities sum to {sum(probabilities):.4f}, not 1"
    return None


@dataclass(frozen=True)
class InvalidRequest:
    """A request a correct server must refuse with a 4xx status."""

    case: str
    path: str
    body: bytes


def _encode(body: dict) -> bytes:
    # allow_nan: the point of some cases is to put NaN/Infinity tokens on the wire.
    return json.dumps(body, allow_nan=True).encode()


def invalid_requests(spec: ModelSpec, rng: random.Random) -> list[InvalidRequest]:
    """One request per way of getting ``spec`` wrong (each must get a 4xx)."""
    path = f"/v1/models/{spec.name}:predict"
    good = valid_batch(spec, rng, 1).body["instances"][0]
    flat = np.asarray(good, dtype=float).reshape(-1)

    def with_value(value: float) -> bytes:
        changed = flat.copy()
        changed[rng.randrange(spec.size)] = value
        return _encode({"instances": [_nested(changed[None, :], spec.shape)[0]]})

    wrong_shape = (*spec.shape[:-1], spec.shape[-1] + 1)
    text_body = _encode({"instances": [np.full(spec.shape, "x").tolist()]})
    cases = [
        InvalidRequest("wrong shape", path, _encode({"instances": [np.zeros(wrong_shape).tolist()]})),
        InvalidRequest("NaN value", path, with_value(float("nan"))),
        InvalidRequest("infinite value", path, with_value(float("inf"))),
        InvalidRequest("non-numeric value", path, text_body),
        InvalidRequest("not JSON", path, b'{"instances": [[1, 2,'),
        InvalidRequest("no instances", path, _encode({"instances": []})),
        InvalidRequest("missing instances key", path, _encode({"inputs": [good]})),
        InvalidRequest("too many instances", path, _encode({"instances": [good] * (spec.max_instances + 1)})),
        InvalidRequest("unknown field", path, _encode({"instances": [good], "unknown_field": 1})),
        InvalidRequest("unknown model", "/v1/models/no-such-model:predict", _encode({"instances": [good]})),
    ]
    if spec.max_value is not None:
        too_high = spec.max_value + 1 + abs(spec.max_value)
        cases.append(InvalidRequest("above max_value", path, with_value(too_high)))
    if spec.min_value is not None:
        too_low = spec.min_value - 1 - abs(spec.min_value)
        cases.append(InvalidRequest("below min_value", path, with_value(too_low)))
    return cases


# Past Python's default recursion limit (1,000): a JSON decoder with no depth bound raises RecursionError.
NESTING_DEPTHS = (1_100, 3_000)
V2_JSON_HEAD = '{"inputs": [{"name": "input", "shape": [1], "datatype": "FP32", "data": '


def deep_nesting_requests(spec: ModelSpec) -> list[InvalidRequest]:
    """Bodies nested far deeper than any valid input can be, closed and unclosed, in V1 and V2 JSON: each
    must get a 4xx that says so (a decoder that recurses without a bound turns them into a 500)."""
    v1, v2 = f"/v1/models/{spec.name}:predict", f"/v2/models/{spec.name}/infer"
    cases = []
    for depth in NESTING_DEPTHS:
        for closed in (True, False):
            nested = "[" * depth + ("0" + "]" * depth if closed else "")
            state = "closed" if closed else "unclosed"
            v1_body = '{"instances": ' + nested + ("}" if closed else "")
            v2_body = V2_JSON_HEAD + nested + ("}]}" if closed else "")
            cases.append(InvalidRequest(f"V1 nested {depth} deep, {state}", v1, v1_body.encode()))
            cases.append(InvalidRequest(f"V2 nested {depth} deep, {state}", v2, v2_body.encode()))
    return cases


class AccuracyTally:
    """Correct/total predictions per model; mergeable so Locust workers can report to the master."""

    def __init__(self) -> None:
        self.counts: dict[str, list[int]] = {}

    def record(self, model: str, correct: int, total: int) -> None:
        counts = self.counts.setdefault(model, [0, 0])
        counts[0] += correct
        counts[1] += total

    def merge(self, other: dict[str, list[int]]) -> None:
        for model, (correct, total) in other.items():
            self.record(model, correct, total)

    def accuracy(self, model: str) -> float | None:
        correct, total = self.counts.get(model, (0, 0))
        return correct / total if total else None

    def snapshot(self) -> dict[str, list[int]]:
        return {model: list(counts) for model, counts in self.counts.items()}

    def clearly_below(self, model: str, minimum: float, z: float = 2.576) -> bool:
        """Whether even the upper end of the accuracy's 99 % Wilson interval is below ``minimum``.

        Why not the point estimate: a 96 %-accurate model scores under 90 % on 54 predictions about
        once in 50 runs; this bound lets sampling noise pass and still catches a broken model within
        a few dozen predictions (20 of 50 correct is far below any bound near 90 %).
        """
        correct, total = self.counts.get(model, (0, 0))
        if not total:
            return False
        share = correct / total
        centre = share + z * z / (2 * total)
        spread = z * math.sqrt(share * (1 - share) / total + z * z / (4 * total * total))
        return (centre + spread) / (1 + z * z / total) < minimum


def v2_binary_request(spec: ModelSpec, batch: Batch) -> tuple[bytes, dict[str, str]]:
    """The batch as an Open Inference Protocol V2 request with binary tensors in and out."""
    tensor = np.asarray(batch.body["instances"], dtype="<f4")
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": list(tensor.shape),
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": tensor.nbytes},
                }
            ],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    return header + tensor.tobytes(), {"Inference-Header-Content-Length": str(len(header))}


def v2_probabilities(body: bytes, header_length: int, spec: ModelSpec) -> np.ndarray:
    """The ``probabilities`` output of a binary V2 response, shaped [N, labels]."""
    header = json.loads(body[:header_length])
    offset = header_length
    for output in header["outputs"]:
        size = output["parameters"]["binary_data_size"]
        if output["name"] == "probabilities":
            values = np.frombuffer(body[offset : offset + size], dtype="<f4")
            return values.reshape(output["shape"][0], len(spec.labels))
        offset += size
    raise ValueError("no probabilities output in the response")
