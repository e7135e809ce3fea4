"""Locust load test for hookserve.

Users:
- ``PredictUser`` reads ``/v1/models`` and each model's metadata, then sends valid prediction requests
  built from each model's input spec. Models that fit a bundled labelled data set (digits, breast
  cancer) get real rows, and every answer is checked against the true label.
- ``V2BinaryUser`` sends the same real rows over the Open Inference Protocol V2 with binary tensors
  (what tritonclient sends by default) and checks the answers the same way.
- ``GrpcUser`` sends the same rows over the Open Inference Protocol V2 over gRPC (``ModelInfer`` with
  raw tensors, as ``tritonclient.grpc`` does) to ``LOADTEST_GRPC_TARGET`` (host:port; default: the
  ``-H`` host on port 8001), and checks the answers the same way. With ``LOADTEST_GRPC_STREAM=1`` each
  user sends its requests down one ``ModelStreamInfer`` stream instead, one at a time
  (``grpc stream infer <model>`` in the stats).
- ``InvalidPayloadUser`` sends what clients get wrong (wrong shape, NaN, out of range, not JSON, ...):
  each must be answered 4xx; a 5xx or a 2xx counts as a failure.

Scenarios (``LOADTEST_SHAPE`` = smoke | steady | ramp | spike | all): see ``scenarios.py``. Unset, the
usual ``-u/-r/-t`` options drive the run. When Locust quits, the SLO gate (``slo.py``) sets the exit
code and writes ``<--json-file or --csv prefix>_slo.json``.

    locust -f loadtests/locustfile.py -H http://127.0.0.1:8000 --headless -u 8 -r 4 -t 30s \
        --csv reports/x --html reports/x.html --json-file reports/x

Tags: ``predict``, ``metadata``, ``invalid``, ``v2`` and ``grpc`` (``--tags`` / ``--exclude-tags``).
Other knobs:
``LOADTEST_MODELS`` (comma list, default every served model), ``LOADTEST_MAX_INSTANCES`` [4],
``LOADTEST_WAIT_S`` ["0.1,0.3"], ``LOADTEST_MIN_SCORED`` [50] predictions before accuracy may fail requests
(it does once even its 99 % upper bound is below ``LOADTEST_MIN_ACCURACY``; the SLO gate at the end
judges the whole run's accuracy as measured).
"""

from __future__ import annotations

import json
import logging
import os
import random
import sys
import time
from pathlib import Path

# Locust imports this file by path: make `loadtests` importable from any working directory.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import grpc
import grpc.experimental.gevent
from locust import FastHttpUser, between, events, tag, task
from locust.runners import WorkerRunner

from loadtests.grpc_payloads import (
    GRPCInferenceServiceStub,
    StreamCall,
    StreamError,
    grpc_target,
    infer_request,
    probabilities,
)
from loadtests.payloads import (
    AccuracyTally,
    ModelSpec,
    check_predictions,
    invalid_requests,
    v2_binary_request,
    v2_probabilities,
    valid_batch,
)
from loadtests.shapes import selected_shapes
from loadtests.slo import Objectives, judge

logger = logging.getLogger("hookserve.loadtest")
# Locust (imported before this file) has gevent-patched the standard library; grpc must follow it, before
# any channel exists, so that its waits yield to the other users' greenlets.
grpc.experimental.gevent.init_gevent()

MAX_INSTANCES = int(os.environ.get("LOADTEST_MAX_INSTANCES", "4"))
MIN_SCORED = int(os.environ.get("LOADTEST_MIN_SCORED", "50"))
WAIT_MIN_S, WAIT_MAX_S = (float(v) for v in os.environ.get("LOADTEST_WAIT_S", "0.1,0.3").split(","))
GRPC_STREAM = os.environ.get("LOADTEST_GRPC_STREAM", "") in ("1", "true")
OBJECTIVES = Objectives.from_env()
ACCURACY = AccuracyTally()  # everything this process saw (on the master: merged from workers)
UNREPORTED = AccuracyTally()  # a worker's counts not yet sent to the master


def _expose_shapes() -> None:
    """Put the chosen LoadTestShape classes in this module's namespace, where Locust looks for them."""
    name = os.environ.get("LOADTEST_SHAPE", "")
    picker = "--class-picker" in sys.argv or os.environ.get("LOCUST_USERCLASS_PICKER", "").lower() == "true"
    for shape in selected_shapes(name or ("all" if picker else "")):
        globals()[shape.__name__] = shape


_expose_shapes()


class HookserveUser(FastHttpUser):
    abstract = True
    wait_time = between(WAIT_MIN_S, WAIT_MAX_S)
    specs: list[ModelSpec]

    def on_start(self) -> None:
        self.rng = random.Random()
        self.specs = self.fetch_specs()
        if not self.specs:
            raise RuntimeError("no model metadata could be read: is the host a hookserve?")

    def fetch_specs(self) -> list[ModelSpec]:
        wanted = [m for m in os.environ.get("LOADTEST_MODELS", "").split(",") if m]
        with self.client.get("/v1/models", name="GET /v1/models", catch_response=True) as response:
            if response.status_code != 200:
                response.failure(f"status {response.status_code}")
                return []
            names = [m["name"] for m in response.json()["models"]]
        specs = []
        for name in wanted or names:
            spec = self.fetch_spec(name)
            if spec is not None:
                specs.append(spec)
        return specs

    def fetch_spec(self, name: str) -> ModelSpec | None:
        with self.client.get(
            f"/v1/models/{name}", name="GET /v1/models/[name]", catch_response=True
        ) as response:
            if response.status_code != 200:
                response.failure(f"status {response.status_code}")
                return None
            try:
                return ModelSpec.from_metadata(response.json())
            except (KeyError, TypeError, ValueError) as error:
                response.failure(f"metadata lacks the input spec: {error!r}")
                return None

    def score(self, model: str, predictions: list[dict], expected: list[str]) -> str | None:
        """Count correct answers; once enough are scored, fail requests while accuracy is clearly (beyond
        sampling noise: :meth:`AccuracyTally.clearly_below`) under the minimum."""
        correct = sum(p["label"] == label for p, label in zip(predictions, expected, strict=True))
        ACCURACY.record(model, correct, len(expected))
        UNREPORTED.record(model, correct, len(expected))
        correct_total, total = ACCURACY.counts[model]
        if total >= MIN_SCORED and ACCURACY.clearly_below(model, OBJECTIVES.min_accuracy):
            accuracy = correct_total / total
            return (
                f"accuracy {accuracy:.1%} over {total} predictions is clearly below "
                f"{OBJECTIVES.min_accuracy:.0%}"
            )
        return None


class PredictUser(HookserveUser):
    weight = 4

    @tag("predict")
    @task(20)
    def predict(self) -> None:
        spec = self.rng.choice(self.specs)
        batch = valid_batch(spec, self.rng, self.rng.randint(1, MAX_INSTANCES))
        sent = len(batch.body["instances"])
        with self.client.post(
            f"/v1/models/{spec.name}:predict",
            json=batch.body,
            name=f"predict {spec.name}",
            catch_response=True,
        ) as response:
            if response.status_code != 200:
                reason = "overloaded" if response.status_code == 503 else "unexpected status"
                response.failure(f"{reason} {response.status_code}: {response.text[:200]}")
                return
            body = response.json()
            problem = check_predictions(spec, body, sent)
            if problem is None and batch.expected is not None:
                problem = self.score(spec.name, body["predictions"], batch.expected)
            if problem is not None:
                response.failure(problem)

    @tag("metadata")
    @task(1)
    def metadata(self) -> None:
        spec = self.rng.choice(self.specs)
        with self.client.get(
            f"/v1/models/{spec.name}", name="GET /v1/models/[name]", catch_response=True
        ) as response:
            if response.status_code != 200 or "input" not in response.json():
                response.failure(f"status {response.status_code} or no input spec")

    @tag("metadata")
    @task(1)
    def list_models(self) -> None:
        self.client.get("/v1/models", name="GET /v1/models")


class V2BinaryUser(HookserveUser):
    """Open Inference Protocol V2 with the binary tensor extension, on the same models and rows."""

    weight = 2

    @tag("predict", "v2")
    @task(20)
    def predict(self) -> None:
        spec = self.rng.choice(self.specs)
        batch = valid_batch(spec, self.rng, self.rng.randint(1, MAX_INSTANCES))
        body, headers = v2_binary_request(spec, batch)
        with self.client.post(
            f"/v2/models/{spec.name}/infer",
            data=body,
            headers=headers,
            name=f"v2 infer {spec.name}",
            catch_response=True,
        ) as response:
            if response.status_code != 200:
                response.failure(f"status {response.status_code}: {response.text[:200]}")
                return
            try:
                length = int(response.headers["Inference-Header-Content-Length"])
                probabilities = v2_probabilities(response.content, length, spec)
            except (KeyError, ValueError) as error:
                response.failure(f"unreadable V2 response: {error!r}")
                return
            if probabilities.shape[0] != len(batch.body["instances"]):
                response.failure(
                    f"expected {len(batch.body['instances'])} rows, got {probabilities.shape[0]}"
                )
                return
            if batch.expected is not None:
                predictions = [{"label": spec.labels[int(i)]} for i in probabilities.argmax(axis=1)]
                problem = self.score(spec.name, predictions, batch.expected)
                if problem is not None:
                    response.failure(problem)


class GrpcUser(HookserveUser):
    """Open Inference Protocol V2 over gRPC (binary tensors), on the same models and rows; metadata comes
    from the HTTP side (V1 metadata has the value ranges and labels the payloads need)."""

    weight = 2

    def on_start(self) -> None:
        super().on_start()
        self.channel = grpc.insecure_channel(grpc_target(self.host))
        self.stream = StreamCall(self.channel) if GRPC_STREAM else None
        unary = GRPCInferenceServiceStub(self.channel).ModelInfer
        self.infer = self.stream or (lambda request: unary(request, timeout=30))
        self.kind = "grpc stream infer" if GRPC_STREAM else "grpc infer"

    def on_stop(self) -> None:
        if self.stream is not None:
            self.stream.close()
        self.channel.close()

    @tag("predict", "grpc")
    @task(20)
    def predict(self) -> None:
        spec = self.rng.choice(self.specs)
        batch = valid_batch(spec, self.rng, self.rng.randint(1, MAX_INSTANCES))
        request = infer_request(spec, batch)
        started = time.perf_counter()
        problem: Exception | None = None
        length = 0
        try:
            response = self.infer(request)
            length = response.ByteSize()
            found = probabilities(response, spec)
            if found.shape[0] != len(batch.body["instances"]):
                raise ValueError(f"expected {len(batch.body['instances'])} rows, got {found.shape[0]}")
            if batch.expected is not None:
                predictions = [{"label": spec.labels[int(i)]} for i in found.argmax(axis=1)]
                accuracy = self.score(spec.name, predictions, batch.expected)
                if accuracy is not None:
                    raise ValueError(accuracy)
        except grpc.RpcError as error:
            problem = RuntimeError(f"{error.code().name}: {error.details()}")
        except (ValueError, StreamError) as error:
            problem = error
        self.environment.events.request.fire(
            request_type="grpc",
            name=f"{self.kind} {spec.name}",
            response_time=(time.perf_counter() - started) * 1000,
            response_length=length,
            exception=problem,
            context={},
        )


class InvalidPayloadUser(HookserveUser):
    weight = 1

    def on_start(self) -> None:
        super().on_start()
        self.cases = [case for spec in self.specs for case in invalid_requests(spec, self.rng)]

    @tag("invalid")
    @task
    def send_invalid(self) -> None:
        case = self.rng.choice(self.cases)
        with self.client.post(
            case.path,
            data=case.body,
            headers={"Content-Type": "application/json"},
            name=f"invalid: {case.case}",
            catch_response=True,
        ) as response:
            status = response.status_code
            if 400 <= status < 500:
                response.success()
            elif status >= 500:
                response.failure(f"server error {status} for an invalid request: {response.text[:200]}")
            else:
                response.failure(f"invalid request accepted with status {status}")


@events.report_to_master.add_listener
def _send_accuracy(client_id: str, data: dict) -> None:
    data["hookserve_accuracy"] = UNREPORTED.snapshot()
    UNREPORTED.counts.clear()


@events.worker_report.add_listener
def _merge_accuracy(client_id: str, data: dict) -> None:
    ACCURACY.merge(data.get("hookserve_accuracy", {}))


@events.quitting.add_listener
def _slo_gate(environment, **_kwargs) -> None:
    """Judge the run against the objectives and set Locust's exit code (0 only when they are all met)."""
    if isinstance(environment.runner, WorkerRunner):
        return
    total = environment.stats.total
    verdict = judge(
        OBJECTIVES,
        requests=total.num_requests,
        fail_ratio=total.fail_ratio,
        p95_ms=total.get_response_time_percentile(0.95) or 0.0,
        accuracy={model: ACCURACY.accuracy(model) for model in ACCURACY.counts},
    )
    if environment.runner is not None and environment.runner.exceptions:
        verdict.violations.append(f"{len(environment.runner.exceptions)} unhandled exception(s) in users")
    environment.process_exit_code = 0 if verdict.passed else 1
    status = "PASSED" if verdict.passed else "FAILED: " + "; ".join(verdict.violations)
    logger.info(
        "SLO gate %s (requests %d, fail ratio %.2f%%, p95 %.0f ms, accuracy %s)",
        status,
        verdict.requests,
        100 * verdict.fail_ratio,
        verdict.p95_ms,
        {m: round(a, 4) for m, a in verdict.accuracy.items() if a is not None},
    )
    _write_verdict(environment, verdict.to_dict())


def _write_verdict(environment, verdict: dict) -> None:
    options = environment.parsed_options
    prefix = getattr(options, "json_file", None) or getattr(options, "csv_prefix", None)
    if not prefix:
        return
    path = Path(f"{prefix}_slo.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(verdict, indent=2) + "\n")
