"""A loaded model on its device, with its monitor: runs one batch and encodes each request's answer.

The model is called only as ``self.model(x)`` — through ``nn.Module.__call__`` — so the monitor's
forward hooks see every pass. Built by :class:`service.worker.worker.ModelWorker` once the model is
loaded and checked; tests build one directly around a small model.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from models.base import ServableModel
from service.config import ModelServeConfig
from service.http.v1_answer import encode_predictions
from service.messages import PROBABILITIES_F32, InferReply, InferRequest
from service.monitoring.metrics import MODEL_FORWARD, OUTPUT_NONFINITE
from service.monitoring.origin import NonFiniteOutput, Origin
from service.worker.runtime import serving_mode, synchronize

if TYPE_CHECKING:
    from service.worker.mirror import RequestMirror

logger = logging.getLogger(__name__)

# No "NaN" in the body: the cause is in the worker's log line, under the request id the body carries.
NONFINITE_ERROR = b"internal error while running the model: its output was not finite"


def attach_monitor(config: ModelServeConfig, model: ServableModel, device: torch.device) -> Any:
    """The model's monitor with its hooks attached, or None when monitoring is off for it."""
    if not config.monitoring.enabled:
        return None
    from service.monitoring.monitor import ModelMonitor

    monitor = ModelMonitor(
        model, config.name, config.monitoring, device, precision=config.precision, version=config.version
    )
    monitor.attach()
    return monitor


class ModelRunner:
    """Runs batches of one model (see the module docstring)."""

    def __init__(
        self,
        config: ModelServeConfig,
        model: ServableModel,
        device: torch.device,
        monitor: Any = None,
        observe_cost: Callable[[int, float], None] | None = None,
    ) -> None:
        """``observe_cost(batch_size, seconds)`` learns from each forward pass (the scheduling cost model)."""
        self.config = config
        self.model_name = config.name
        self.model = model
        self.device = device
        self.monitor = monitor
        self._forward_seconds = MODEL_FORWARD.labels(config.name, config.version)
        self._observe_cost = observe_cost
        self._shadow_input: tuple[torch.Tensor, torch.Tensor] | None = None  # (x, output) to shadow
        self._shadow_failed = False
        self.mirror: RequestMirror | None = None  # a candidate version compared after the replies

    def _serving_mode(self) -> Any:
        return serving_mode(self.model, self.device, self.config.precision)

    def predict(self, instances: np.ndarray) -> np.ndarray:
        """The float32 probability matrix for a batch of validated instances (one row each)."""
        x = torch.from_numpy(instances).to(self.device, non_blocking=True)
        monitor = self.monitor
        start = time.perf_counter()
        if monitor is not None:
            with monitor.observe_batch(), self._serving_mode():
                probabilities = self.model(x)
        else:
            with self._serving_mode():
                probabilities = self.model(x)
        result = probabilities.float().cpu().numpy()  # the copy to host synchronizes the device
        synchronize(self.device)
        elapsed = time.perf_counter() - start
        self._forward_seconds.observe(elapsed)
        if self._observe_cost is not None:
            self._observe_cost(len(instances), elapsed)
        if monitor is not None and monitor.shadow_due:
            self._shadow_input = (x, probabilities)  # run in fp32 once the replies are sent
        return result

    def encode(self, probabilities: np.ndarray, answer_format: int) -> bytes:
        """One request's answer body; raises :class:`NonFiniteOutput` when a row is not finite."""
        bad = ~np.isfinite(probabilities).all(axis=1)
        if bad.any():
            raise NonFiniteOutput(bad)  # NaN is not JSON: the request fails through explain_nonfinite
        if answer_format == PROBABILITIES_F32:
            return probabilities.tobytes()
        # JSON is built here, in the worker, so the API server only frames it: one bytes object
        # crosses the process boundary instead of a tree of Python floats.
        return encode_predictions(probabilities, self.model.output_spec)

    def after_replies(
        self, requests: Sequence[InferRequest] = (), replies: Sequence[InferReply] = ()
    ) -> None:
        """Work that waits until a batch's replies are sent, off the requests' latency: the fp32 precision
        shadow, when this batch was picked for it, and the mirror (``requests``: the batch, answered
        with ``replies``), when a candidate version is mirrored."""
        pending = self._shadow_input
        if pending is not None:
            self._shadow_input = None
            try:
                self.monitor.run_shadow(*pending)
            except Exception:  # a monitoring fault must not take the worker down
                if not self._shadow_failed:
                    self._shadow_failed = True
                    logger.exception("model %s: the fp32 precision shadow failed", self.model_name)
        if self.mirror is not None:
            self.mirror.after_replies(requests, replies)  # never raises

    def idle_work_in(self, longest: float) -> float:
        """Seconds until :meth:`idle_work` has something to do, at most ``longest``: how long the worker
        may wait for requests."""
        return min(self.mirror.due_in(), longest) if self.mirror is not None else longest

    def idle_work(self) -> None:
        """No request is waiting: a slice of the mirror's due work runs now (never raises)."""
        if self.mirror is not None:
            self.mirror.idle()

    def explain_nonfinite(self, failed: list[tuple[InferRequest, np.ndarray]]) -> list[bytes]:
        """The error bodies of requests whose outputs went non-finite (``rows``: which instances), after
        one replay of just those instances with every module hooked finds where each started. Counts
        the instances (``hookserve_output_nonfinite_total``) and each request once at its origin module
        (``hookserve_nonfinite_origin_total``), and logs one line per request."""
        OUTPUT_NONFINITE.labels(self.model_name).inc(sum(int(rows.sum()) for _, rows in failed))
        origins: list[Origin | None] = []
        if self.monitor is not None:
            x = torch.from_numpy(np.concatenate([request.instances[rows] for request, rows in failed]))
            origins = self.monitor.locate_nonfinite(x.to(self.device), self._serving_mode)
        offset = 0
        for request, rows in failed:
            count = int(rows.sum())
            found = [origin for origin in origins[offset : offset + count] if origin is not None]
            offset += count
            origin = min(found, key=lambda o: o.step) if found else None
            if origin is not None:
                self.monitor.count_origin(origin.module)
                where = f"origin module {origin.module!r} (first non-finite output, replayed alone)"
            elif self.monitor is None:
                where = "origin not located (monitoring is off for this model)"
            else:
                where = "origin not located (the replay of these instances alone came out finite)"
            logger.error(
                "model %s: request %s got non-finite probabilities in %d of %d instance(s); %s",
                self.model_name, request.request_id, count, len(rows), where,
            )  # fmt: skip
        return [NONFINITE_ERROR] * len(failed)
