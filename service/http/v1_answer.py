"""The V1 predict answer, owned here: its schema, the predictions the worker encodes, the envelope.

``{"model": ..., "model_version": ..., "predictions": [...]}``. The predictions array is encoded once,
in the inference worker (:func:`encode_predictions`, right after the forward pass), and the API server
frames those bytes into the envelope (:class:`V1Envelope`) without re-serializing them. The pydantic
models below document the same shape in ``/openapi.json``; a test validates a real encoded answer
against them, so the three cannot drift apart.

Imported by the worker process too: nothing here may pull in FastAPI or the HTTP stack.
"""

from __future__ import annotations

import numpy as np
import orjson
from pydantic import BaseModel, ConfigDict, Field

from models.base import OutputSpec


class Prediction(BaseModel):
    model_config = ConfigDict(extra="forbid")

    label: str = Field(description="The most probable class.")
    label_index: int
    score: float = Field(description="Probability of the predicted label.")
    probabilities: list[float] = Field(description="One probability per output label, in label order.")


class PredictResponse(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: str
    model_version: str
    predictions: list[Prediction]


def encode_predictions(probabilities: np.ndarray, output_spec: OutputSpec) -> bytes:
    """The JSON array of :class:`Prediction` for a float32 probability matrix, one object per row."""
    indices = probabilities.argmax(axis=1).tolist()
    labels = output_spec.labels
    return orjson.dumps(
        [
            {"label": labels[i], "label_index": i, "score": row[i], "probabilities": row}
            for i, row in zip(indices, probabilities, strict=True)
        ],
        option=orjson.OPT_SERIALIZE_NUMPY,
    )


class V1Envelope:
    """One model's :class:`PredictResponse` around the worker's predictions bytes (built once per route)."""

    __slots__ = ("prefix",)

    def __init__(self, model: str, version: str) -> None:
        head = orjson.dumps({"model": model, "model_version": version})
        self.prefix = head[:-1] + b',"predictions":'

    def wrap(self, predictions: bytes) -> bytes:
        return self.prefix + predictions + b"}"
