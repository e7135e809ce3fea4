"""The inference worker: what one worker process does for its model (load, check, warm up, serve).

Started in a spawned process by :mod:`service.pool.workers`, which calls :meth:`ModelWorker.setup` and
then :meth:`ModelWorker.serve`. A worker serves one *unit*: one version of one model, with its own
slots in the shared worker states and cost board. Serving is one loop: collect a batch
from the inbox, :meth:`~service.worker.batching.BatchRunner.run_batch` it, send each API server one
frame with its replies, then do the work that may wait (the fp32 precision shadow).
"""

from __future__ import annotations

import logging
import os
import signal
from collections import defaultdict
from typing import TYPE_CHECKING

import torch

from service.config import ModelServeConfig
from service.logs import configure_logging
from service.messages import InferReply
from service.model_loading import load_served_model
from service.monitoring.metrics import (
    MODEL_INFO,
    OUTPUT_NONFINITE,
    PRECISION_AGREEMENT,
    PRECISION_MIN_AGREEMENT,
    SHADOW_BATCHES,
    SHADOW_MAX_ABS_DIFF,
    SHADOW_TOP1_AGREEMENT,
    WORKERS_READY,
)
from service.monitoring.shadow import OUTPUT
from service.orphans import die_with_parent
from service.scheduling.board import CostBoard
from service.scheduling.prediction import predicted_answer_s
from service.scheduling.tracker import CostTracker
from service.worker.batching import BatchRunner, collect
from service.worker.inbox import Connection, Inbox
from service.worker.mirror import start_mirror
from service.worker.runner import ModelRunner, attach_monitor
from service.worker.runtime import (
    PrecisionReport,
    StartupError,
    calibration_batch,
    check_precision,
    compare_with_fp32,
    precision_report_dict,
    resolve_device,
    warm_up,
)
from service.worker_states import WorkerState, WorkerStates, write_report

if TYPE_CHECKING:
    from service.tracing.batch_spans import BatchTracer
    from service.tracing.settings import TracingSettings

logger = logging.getLogger(__name__)
IDLE_WAIT_S = 1.0  # the longest wait for a request before the loop looks at its idle work again


class ModelWorker:
    """One served model in one worker process. Its requests come from the API servers' inference routes.

    Pickled into each worker process; ``worker_id`` is set there (by the process launcher) before
    :meth:`setup`.
    """

    def __init__(
        self,
        config: ModelServeConfig,
        states: WorkerStates,
        costs: CostBoard | None = None,
        tracing: TracingSettings | None = None,
        unit: int = 0,
        mirror_candidate: ModelServeConfig | None = None,
    ) -> None:
        """``mirror_candidate``: the resolved config of ``config.mirror``'s version, run beside this one."""
        self.config = config
        self.mirror_candidate = mirror_candidate
        self.model_name = config.name
        self.unit = unit
        self.states = states
        self.tracing = tracing
        self.cost = CostTracker(config.name, config.max_batch_size, costs, unit=unit)  # learned batch cost
        self.worker_id = 0
        self.runner: ModelRunner | None = None

    # --- start-up (in the worker process) ---------------------------------------------------------
    def setup(self, worker_id: int) -> None:
        """Load, check and warm up the model; raises (and the worker exits) when it cannot serve: the
        reason goes into its report first, for the load call that started it."""
        try:
            self._setup(worker_id)
        except Exception as exc:
            write_report(self.unit, worker_id, {"worker": worker_id, "error": f"{type(exc).__name__}: {exc}"})
            raise

    def _setup(self, worker_id: int) -> None:
        # Ctrl-C reaches the whole process group; the main process coordinates a drain, so workers
        # must keep serving in-flight requests instead of dying on SIGINT.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        die_with_parent()
        configure_logging()
        self.worker_id = worker_id
        cfg = self.config
        self.states.set(self.unit, worker_id, WorkerState.STARTING, os.getpid())
        if cfg.torch_threads:
            torch.set_num_threads(cfg.torch_threads)
        device = resolve_device(cfg.device)
        check_precision(device, cfg.precision)
        model, card = load_served_model(cfg)
        model = model.to(device).eval()
        report = self._check_precision(model, device, card.dataset)
        monitor = attach_monitor(cfg, model, device)
        self.runner = ModelRunner(cfg, model, device, monitor, observe_cost=self.cost.observe)
        if self.mirror_candidate is not None:
            self.runner.mirror = start_mirror(
                cfg, self.mirror_candidate, model, device, monitor, lambda: self.cost.best_batch_size
            )  # mirrored batches stop where served ones do: at the learned throughput peak
        self.cost.attach(worker_id)
        warm_seconds = warm_up(model, device, cfg.precision, cfg.max_batch_size, observe=self.cost.seed)
        self._export_start_metrics(report, monitored=monitor is not None)
        write_report(
            self.unit,
            worker_id,
            {
                "worker": worker_id,
                "version": cfg.version,
                "pid": os.getpid(),
                "device": str(device),
                "precision": cfg.precision,
                "torch_threads": torch.get_num_threads(),
                "warmup_seconds": round(warm_seconds, 4),
                "precision_check": precision_report_dict(report) if report else None,
                "monitored_modules": monitor.module_names if monitor else [],
                "mirror": self._mirror_report(),
            },
        )
        logger.info("%s ready on %s (%s), warm-up %.2fs", cfg.name, device, cfg.precision, warm_seconds)

    def _mirror_report(self) -> dict | None:
        mirror = self.runner.mirror if self.runner is not None else None
        if mirror is None:
            return None
        names = mirror.comparator.names
        return {"version": mirror.version, "fraction": mirror.config.fraction, "modules": names}

    def _check_precision(
        self, model: torch.nn.Module, device: torch.device, dataset: str | None
    ) -> PrecisionReport | None:
        """Compare the served precision with fp32 on calibration data; refuse to serve below the floor."""
        cfg = self.config
        if cfg.precision == "fp32":
            return None
        report = compare_with_fp32(model, calibration_batch(model, dataset), device, cfg.precision)
        logger.info(
            "%s %s vs fp32: top-1 agreement %.4f, max |diff| %.3g on %d instances",
            cfg.name, cfg.precision, report.top1_agreement, report.max_abs_diff, report.calibration_instances,
        )  # fmt: skip
        if report.top1_agreement < cfg.min_precision_agreement:
            raise StartupError(
                f"{cfg.name}: {cfg.precision} agrees with fp32 on only {report.top1_agreement:.4f} of "
                f"calibration instances (< min_precision_agreement {cfg.min_precision_agreement})"
            )
        return report

    def _export_start_metrics(self, report: PrecisionReport | None, monitored: bool) -> None:
        cfg = self.config
        PRECISION_AGREEMENT.labels(cfg.name).set(report.top1_agreement if report else 1.0)
        # The live shadow's alert compares its agreement with this threshold. An fp32 model has no
        # shadow (it is fp32 already): like the start-up agreement, its shadow reads 1 and 0 difference.
        PRECISION_MIN_AGREEMENT.labels(cfg.name).set(cfg.min_precision_agreement)
        if cfg.precision == "fp32" and monitored:
            SHADOW_BATCHES.labels(cfg.name)
            SHADOW_TOP1_AGREEMENT.labels(cfg.name).set(1.0)
            SHADOW_MAX_ABS_DIFF.labels(cfg.name, OUTPUT).set(0.0)
        MODEL_INFO.labels(cfg.name, cfg.version, str(self.runner.device), cfg.precision).set(1)
        OUTPUT_NONFINITE.labels(cfg.name)  # exported at 0 from the start, so increase() sees the first one

    # --- serving (in the worker process) ----------------------------------------------------------
    def serve(self) -> None:
        """Serve the inbox until the process is stopped. Binding the socket is what makes it ready."""
        cfg, runner = self.config, self.runner
        assert runner is not None, "setup() first"
        batches = BatchRunner(runner, self._batch_tracer())
        predict = None if cfg.latency_target_ms is None else self._answer_in  # with a target: shed the late
        inbox = Inbox(self.states.socket_path(self.unit, self.worker_id), predict)
        self.states.set(self.unit, self.worker_id, WorkerState.READY, os.getpid())
        WORKERS_READY.labels(cfg.name).set(1)
        logger.info("%s version %s worker %d accepting requests", cfg.name, cfg.version, self.worker_id)
        batch_timeout = cfg.batch_timeout_ms / 1000.0
        try:
            while True:
                # Batches stop at the learned curve's throughput peak, or before a deadline would be missed
                # (docs/scheduling.md).
                idle_wait = runner.idle_work_in(IDLE_WAIT_S)
                batch = collect(
                    inbox, self.cost.best_batch_size, batch_timeout, idle_wait, cost=self.cost.cost
                )
                if not batch:
                    runner.idle_work()  # no request waits: the mirror's work runs now, a slice at a time
                    continue
                if late := inbox.pending.take_late():  # can no longer meet the latency target: shed
                    send_replies(inbox, late, batches.shed([request for _, request in late]))
                requests = [request for _, request in batch]
                replies = batches.run_batch(requests)
                send_replies(inbox, batch, replies)
                runner.after_replies(requests, replies)
        finally:
            inbox.close()

    def _answer_in(self, ahead: int, instances: int) -> float:
        """Seconds until a request of ``instances`` is answered behind ``ahead`` queued instances, on this
        worker's learned line (the admission formula, one worker)."""
        line = self.cost.cost
        return predicted_answer_s(ahead, instances, line.alpha, line.beta, 1, self.cost.max_batch_size)

    def _batch_tracer(self) -> BatchTracer | None:
        """Spans for traced requests' batches, when tracing is on (imported only then)."""
        if self.tracing is None:
            return None
        from service.tracing.batch_spans import BatchTracer
        from service.tracing.provider import start_tracer

        runner = self.runner
        role = f"worker {self.model_name}/{self.worker_id}"
        tracer, _ = start_tracer(self.tracing, role=role, follow_only=True)
        names = runner.monitor.module_names if runner.monitor is not None else []
        modules = dict(runner.model.named_modules())
        monitored = {name: modules[name] for name in names if name in modules}
        return BatchTracer(tracer, self.model_name, monitored, self.config.precision, str(runner.device))


def send_replies(inbox: Inbox, batch: list[tuple[Connection, object]], replies: list[InferReply]) -> None:
    """One frame per API-server connection with all of its replies."""
    if len(batch) == 1:
        inbox.send(batch[0][0], replies)
        return
    by_connection: dict[Connection, list[InferReply]] = defaultdict(list)
    for (connection, _), reply in zip(batch, replies, strict=True):
        by_connection[connection].append(reply)
    for connection, answers in by_connection.items():
        inbox.send(connection, answers)
