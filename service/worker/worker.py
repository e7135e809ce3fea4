"""The inference worker: what one worker process does for its model (load, warm up, run, monitor).

A LitServe ``LitAPI``, run in a spawned process. The model is called only as ``self.model(x)`` —
through ``nn.Module.__call__`` — so the monitor's forward hooks see every pass.
"""

from __future__ import annotations

import logging
import os
import signal
import time
import warnings
from typing import Any

import numpy as np
import torch

from models.base import ServableModel
from service.config import ModelServeConfig
from service.http.v1_answer import encode_predictions
from service.litserve_compat import LitAPI, RoutelessSpec, worker_id
from service.logs import configure_logging
from service.messages import PREDICTIONS_JSON, PROBABILITIES_F32, InferRequest
from service.model_loading import load_served_model
from service.monitoring.metrics import (
    MODEL_FORWARD,
    MODEL_INFO,
    OUTPUT_NONFINITE,
    PRECISION_AGREEMENT,
    PRECISION_MIN_AGREEMENT,
    SHADOW_BATCHES,
    SHADOW_MAX_ABS_DIFF,
    SHADOW_TOP1_AGREEMENT,
)
from service.monitoring.origin import NonFiniteOutput, Origin
from service.monitoring.shadow import OUTPUT
from service.orphans import die_with_parent
from service.worker.batching import InstanceBatchingLoop
from service.worker.runtime import (
    StartupError,
    calibration_batch,
    check_precision,
    compare_with_fp32,
    precision_report_dict,
    resolve_device,
    serving_mode,
    synchronize,
    warm_up,
)
from service.worker_states import WorkerState, WorkerStates, write_report

logger = logging.getLogger(__name__)

Batch = tuple[torch.Tensor, list[int]]
# No "NaN" in the body: the cause is in the worker's log line, under the request id the body carries.
NONFINITE_ERROR = b"internal error while running the model: its output was not finite"


class ModelWorker(LitAPI):
    """One served model in one worker process. Its requests come from the API servers' predict routes."""

    def __init__(self, config: ModelServeConfig, states: WorkerStates) -> None:
        with warnings.catch_warnings():
            # LitAPI warns when batch/unbatch exist but max_batch_size is 1; our loop handles both cases.
            warnings.filterwarnings("ignore", message="The LitServer has both batch and unbatch")
            super().__init__(
                max_batch_size=config.max_batch_size,
                batch_timeout=config.batch_timeout_ms / 1000.0,
                spec=RoutelessSpec(config.route),
                loop=InstanceBatchingLoop(),
            )
        self.config = config
        self.model_name = config.name
        self.model: ServableModel | None = None
        self.monitor: Any = None
        self.states = states
        self._shadow_input: tuple[torch.Tensor, torch.Tensor] | None = None  # (x, output) to shadow
        self._shadow_failed = False

    # --- start-up (in the worker) -----------------------------------------------------------------
    def setup(self, device: str) -> None:
        # Ctrl-C reaches the whole process group; the main process coordinates a drain, so workers
        # must keep serving in-flight requests instead of dying on SIGINT.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        die_with_parent()
        configure_logging()
        cfg = self.config
        self.states.set(cfg.name, worker_id(), WorkerState.STARTING, os.getpid())
        if cfg.torch_threads:
            torch.set_num_threads(cfg.torch_threads)
        self.torch_device = resolve_device(cfg.device)
        check_precision(self.torch_device, cfg.precision)
        model, card = load_served_model(cfg)
        self.model = model.to(self.torch_device).eval()
        report = None
        if cfg.precision != "fp32":
            report = compare_with_fp32(
                self.model, calibration_batch(self.model, card.dataset), self.torch_device, cfg.precision
            )
            logger.info(
                "%s %s vs fp32: top-1 agreement %.4f, max |diff| %.3g on %d instances",
                cfg.name,
                cfg.precision,
                report.top1_agreement,
                report.max_abs_diff,
                report.calibration_instances,
            )
            if report.top1_agreement < cfg.min_precision_agreement:
                raise StartupError(
                    f"{cfg.name}: {cfg.precision} agrees with fp32 on only {report.top1_agreement:.4f} of "
                    f"calibration instances (< min_precision_agreement {cfg.min_precision_agreement})"
                )
        self.monitor = self._attach_monitor()
        warm_seconds = warm_up(self.model, self.torch_device, cfg.precision, cfg.max_batch_size)
        PRECISION_AGREEMENT.labels(cfg.name).set(report.top1_agreement if report else 1.0)
        # The live shadow's alert compares its agreement with this threshold. An fp32 model has no
        # shadow (it is fp32 already): like the start-up agreement, its shadow reads 1 and 0 difference.
        PRECISION_MIN_AGREEMENT.labels(cfg.name).set(cfg.min_precision_agreement)
        if cfg.precision == "fp32" and self.monitor is not None:
            SHADOW_BATCHES.labels(cfg.name)
            SHADOW_TOP1_AGREEMENT.labels(cfg.name).set(1.0)
            SHADOW_MAX_ABS_DIFF.labels(cfg.name, OUTPUT).set(0.0)
        MODEL_INFO.labels(cfg.name, cfg.version, str(self.torch_device), cfg.precision).set(1)
        OUTPUT_NONFINITE.labels(cfg.name)  # exported at 0 from the start, so increase() sees the first one
        write_report(
            cfg.name,
            worker_id(),
            {
                "worker": worker_id(),
                "pid": os.getpid(),
                "device": str(self.torch_device),
                "precision": cfg.precision,
                "torch_threads": torch.get_num_threads(),
                "warmup_seconds": round(warm_seconds, 4),
                "precision_check": precision_report_dict(report) if report else None,
                "monitored_modules": self.monitor.module_names if self.monitor else [],
            },
        )
        logger.info(
            "%s ready on %s (%s), warm-up %.2fs", cfg.name, self.torch_device, cfg.precision, warm_seconds
        )

    def _attach_monitor(self) -> Any:
        if not self.config.monitoring.enabled:
            return None
        from service.monitoring.monitor import ModelMonitor

        monitor = ModelMonitor(
            self.model,
            self.model_name,
            self.config.monitoring,
            self.torch_device,
            precision=self.config.precision,
        )
        monitor.attach()
        return monitor

    # --- the LitAPI lifecycle, per batch ------------------------------------------------------------
    def decode_request(self, request: np.ndarray, **kwargs: Any) -> torch.Tensor:
        return torch.from_numpy(request)

    def batch(self, inputs: list[torch.Tensor]) -> Batch:
        sizes = [int(t.shape[0]) for t in inputs]
        x = inputs[0] if len(inputs) == 1 else torch.cat(inputs)
        return x, sizes

    def predict(self, batch: Batch, **kwargs: Any) -> tuple[np.ndarray, list[int]]:
        x, sizes = batch
        x = x.to(self.torch_device, non_blocking=True)
        start = time.perf_counter()
        if self.monitor is not None:
            with (
                self.monitor.observe_batch(),
                serving_mode(self.model, self.torch_device, self.config.precision),
            ):
                probabilities = self.model(x)
        else:
            with serving_mode(self.model, self.torch_device, self.config.precision):
                probabilities = self.model(x)
        result = probabilities.float().cpu().numpy()  # the copy to host synchronizes the device
        synchronize(self.torch_device)
        MODEL_FORWARD.labels(self.model_name).observe(time.perf_counter() - start)
        if self.monitor is not None and self.monitor.shadow_due:
            self._shadow_input = (x, probabilities)  # run in fp32 once the replies are sent
        return result, sizes

    def after_replies(self) -> None:
        """Called by the batching loop once a batch's replies are sent: the fp32 precision shadow, when
        this batch was picked for it, runs here, off the requests' latency."""
        pending = self._shadow_input
        if pending is None:
            return
        self._shadow_input = None
        try:
            self.monitor.run_shadow(*pending)
        except Exception:  # a monitoring fault must not take the worker down
            if not self._shadow_failed:
                self._shadow_failed = True
                logger.exception("model %s: the fp32 precision shadow failed", self.model_name)

    def unbatch(self, output: tuple[np.ndarray, list[int]]) -> list[np.ndarray]:
        probabilities, sizes = output
        return np.split(probabilities, np.cumsum(sizes)[:-1])

    def encode_response(self, output: np.ndarray, answer_format: int = PREDICTIONS_JSON) -> bytes:
        bad = ~np.isfinite(output).all(axis=1)
        if bad.any():
            # NaN is not JSON; the batching loop fails the request through explain_nonfinite.
            raise NonFiniteOutput(bad)
        if answer_format == PROBABILITIES_F32:
            return output.tobytes()
        # JSON is built here, in the worker, so the API server only frames it: one bytes object
        # crosses the process boundary instead of a tree of Python floats.
        return encode_predictions(output, self.model.output_spec)

    def explain_nonfinite(self, failed: list[tuple[InferRequest, np.ndarray]]) -> list[bytes]:
        """The error bodies of requests whose outputs went non-finite (``rows``: which instances), after
        one replay of just those instances with every module hooked finds where each started. Counts
        the instances (``hookserve_output_nonfinite_total``) and each request once at its origin module
        (``hookserve_nonfinite_origin_total``), and logs one line per request."""
        OUTPUT_NONFINITE.labels(self.model_name).inc(sum(int(rows.sum()) for _, rows in failed))
        origins: list[Origin | None] = []
        if self.monitor is not None:
            x = torch.from_numpy(np.concatenate([request.instances[rows] for request, rows in failed]))
            origins = self.monitor.locate_nonfinite(
                x, lambda: serving_mode(self.model, self.torch_device, self.config.precision)
            )
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
