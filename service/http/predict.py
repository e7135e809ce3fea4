"""``POST /v1/models/{name}:predict``: the V1 protocol on top of :class:`InferenceRoute`.

Body ``{"instances": [...]}`` (JSON, 415 otherwise; 422 for anything else wrong with it); the answer is
the worker's predictions JSON framed into ``{"model", "model_version", "predictions"}`` without
re-serializing it.
"""

from __future__ import annotations

from service.http.admission import AdmissionGate, DrainSwitch
from service.http.asgi import header
from service.http.codec import ClientError, decode_v1
from service.http.inference import Answer, Decoded, InferenceRoute, RouteSettings
from service.http.worker_client import ModelWorkers
from service.messages import PREDICTIONS_JSON


def predict_path(model: str) -> str:
    """The one place the V1 predict URL is built."""
    return f"/v1/models/{model}:predict"


def is_json(content_type: bytes | None) -> bool:
    """JSON or unspecified (clients such as tritonclient send none)."""
    if content_type is None:
        return True
    media = content_type.split(b";", 1)[0].strip().lower()
    return media == b"application/json" or media.endswith(b"+json")


class PredictRoute(InferenceRoute):
    """The V1 predict route of one model."""

    protocol = "v1"

    def __init__(
        self, settings: RouteSettings, workers: ModelWorkers, gate: AdmissionGate, drain: DrainSwitch
    ) -> None:
        super().__init__(settings, workers, gate, drain)
        self._prefix = (
            f'{{"model":"{settings.model}","model_version":"{settings.version}","predictions":'
        ).encode()

    def check_request(self, scope: dict) -> None:
        content_type = header(scope, b"content-type")
        if not is_json(content_type):
            found = content_type.decode(errors="replace") if content_type else ""
            raise ClientError(415, f"Content-Type must be application/json, got {found}")

    def decode(self, scope: dict, body: bytes) -> Decoded:
        instances = decode_v1(body, self.settings.input_spec, self.settings.max_instances)
        return Decoded(instances, PREDICTIONS_JSON)

    def encode(self, decoded: Decoded, payload: bytes, request_id: str) -> Answer:
        return Answer(self._prefix + payload + b"}")
