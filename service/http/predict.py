"""``POST /v1/models/{name}:predict``: the V1 protocol on top of :class:`InferenceRoute`.

Body ``{"instances": [...]}`` (JSON, 415 otherwise; 422 for anything else wrong with it); the answer is
the worker's predictions JSON framed into ``{"model", "model_version", "predictions"}`` without
re-serializing it (:mod:`service.http.v1_answer`).
"""

from __future__ import annotations

from service.http.admission import AdmissionGate, DrainSwitch
from service.http.asgi import header
from service.http.codec import decode_v1
from service.http.inference import Answer, Decoded, InferenceRoute, RouteSettings
from service.http.request_options import from_v1_headers
from service.http.v1_answer import V1Envelope
from service.http.worker_client import ModelWorkers
from service.messages import PREDICTIONS_JSON


def predict_path(model: str) -> str:
    """The one place the V1 predict URL is built."""
    return f"/v1/models/{model}:predict"


def versioned_predict_path(model: str, version: str) -> str:
    """The V1 predict URL of one version (TF Serving's ``/versions/{v}``)."""
    return f"/v1/models/{model}/versions/{version}:predict"


class PredictRoute(InferenceRoute):
    """The V1 predict route of one model."""

    protocol = "v1"

    def __init__(
        self, settings: RouteSettings, workers: ModelWorkers, gate: AdmissionGate, drain: DrainSwitch
    ) -> None:
        super().__init__(settings, workers, gate, drain)
        self._envelope = V1Envelope(settings.model, settings.version)

    def priority_hint(self, scope: dict) -> int:
        """``X-Priority`` when it is a valid level (checked again, with a 400, once the body is read)."""
        raw = header(scope, b"x-priority")
        if raw is None:
            return self.settings.default_priority
        level = int(raw) if raw.isdigit() and len(raw) <= 3 else 0
        return level if 1 <= level <= self.settings.priority_levels else 1

    def decode(self, scope: dict, body: bytes) -> Decoded:
        instances = decode_v1(body, self.settings.input_spec, self.settings.max_instances)
        timeout_s, priority = from_v1_headers(scope, self.settings)
        return Decoded(instances, PREDICTIONS_JSON, None, timeout_s, priority)

    def encode(self, decoded: Decoded, payload: bytes, request_id: str) -> Answer:
        return Answer(self._envelope.wrap(payload))
