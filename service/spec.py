"""The HTTP side of one model: ``POST /v1/models/{name}:predict``, as a LitServe ``LitSpec``.

A LitSpec is LitServe's extension point for custom endpoints. Its endpoint runs in the API-server
process, so this is where a request is validated (pydantic, 422), admitted or refused (503), bounded by
its deadline (504) and framed into the response. Only a compact :class:`WorkItem` (a float32 array and
a deadline) crosses to the worker.

Deliberately no ``from __future__ import annotations``: FastAPI reads the endpoint's signature, and the
request type is built per model at run time.
"""

import asyncio
import inspect
import logging
import pickle
import time
import uuid
from collections.abc import Callable
from typing import Any

from fastapi import Depends, HTTPException, Response
from litserve.specs.base import LitSpec
from litserve.utils import LitAPIStatus, ResponseBufferItem

from models.base import InputSpec
from service.admission import AdmissionGate, DrainSwitch
from service.batching import WorkItem
from service.monitoring.metrics import INFLIGHT, REJECTED
from service.schemas import PredictResponse, build_request_model

logger = logging.getLogger(__name__)


def overloaded(message: str, retry_after_s: int = 1) -> HTTPException:
    return HTTPException(503, message, headers={"Retry-After": str(retry_after_s)})


class PredictSpec(LitSpec):
    """Registers and serves the predict route of one model."""

    def __init__(
        self,
        model_name: str,
        model_version: str,
        input_spec: InputSpec,
        max_instances: int,
        request_timeout_s: float,
        gate: AdmissionGate,
        drain: DrainSwitch,
        auth_dependency: Callable[..., Any],
    ) -> None:
        super().__init__()
        self.model_name = model_name
        self.api_path = f"/v1/models/{model_name}:predict"
        self.request_timeout_s = request_timeout_s
        self.gate = gate
        self.drain = drain
        self._auth = auth_dependency
        self._prefix = (f'{{"model":"{model_name}","model_version":"{model_version}","predictions":').encode()
        request_model = build_request_model(model_name, input_spec, max_instances)
        self.add_endpoint(self.api_path, self._make_endpoint(request_model), ["POST"])

    def __getstate__(self) -> dict:
        # The worker needs none of the HTTP side (and run-time classes, locks and closures do not pickle).
        state = super().__getstate__()
        for key in ("_endpoints", "gate", "drain", "_auth"):
            state[key] = None
        return state

    def _make_endpoint(self, request_model: type) -> Callable[..., Any]:
        """The route function, with a signature built at run time: the body type differs per model."""

        async def predict(body: Any, auth: None = None) -> Response:
            return await self.handle(body.instances)

        keyword = inspect.Parameter.POSITIONAL_OR_KEYWORD
        predict.__signature__ = inspect.Signature(
            [
                inspect.Parameter("body", keyword, annotation=request_model),
                inspect.Parameter("auth", keyword, default=Depends(self._auth)),
            ],
            return_annotation=PredictResponse,
        )
        predict.__name__ = f"predict_{self.model_name.replace('-', '_').replace('.', '_')}"
        return predict

    # LitSpec's abstract hooks: the worker's ModelAPI does the decoding and encoding itself.
    def decode_request(self, request: Any, context_kwargs: dict | None = None) -> Any:
        return request

    def encode_response(self, output: Any, context_kwargs: dict | None = None) -> Any:
        return output

    async def handle(self, instances: Any) -> Response:
        if self.drain.draining:
            REJECTED.labels(self.model_name, "draining").inc()
            raise overloaded("server is shutting down; retry on another replica")
        if not self.gate.try_enter():
            REJECTED.labels(self.model_name, "overload").inc()
            raise overloaded(f"too many requests queued for {self.model_name} (limit {self.gate.limit})")
        inflight = INFLIGHT.labels(self.model_name)
        inflight.inc()
        try:
            return await self._submit_and_wait(instances)
        finally:
            inflight.dec()
            self.gate.leave()

    async def _submit_and_wait(self, instances: Any) -> Response:
        now = time.monotonic()
        uid = uuid.uuid4().hex
        event = asyncio.Event()
        self.response_buffer[uid] = ResponseBufferItem(event=event)
        self.request_queue.put_nowait(
            (self.response_queue_id, uid, now, WorkItem(instances, now + self.request_timeout_s))
        )
        try:
            await asyncio.wait_for(event.wait(), timeout=self.request_timeout_s)
        except TimeoutError:
            self.response_buffer.pop(uid, None)
            raise HTTPException(504, f"request exceeded its {self.request_timeout_s:g} s deadline") from None
        response, status = self.response_buffer.pop(uid).response
        if status == LitAPIStatus.ERROR:
            raise self._as_http_error(response)
        return Response(content=self._prefix + response + b"}", media_type="application/json")

    def _as_http_error(self, response: Any) -> HTTPException:
        if isinstance(response, bytes):
            try:
                response = pickle.loads(response)
            except Exception:
                response = None
        if isinstance(response, HTTPException):
            return HTTPException(response.status_code, response.detail, headers=response.headers)
        logger.error("worker for %s returned an error: %r", self.model_name, response)
        return HTTPException(500, "internal error while running the model")
