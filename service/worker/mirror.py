"""The mirror in the serving version's worker: which answered requests also run on the candidate, and when.

A model config's ``mirror: {version, fraction, budget}`` names a candidate version of the same model.
The serving version's worker loads the candidate's weights beside its own (:func:`start_mirror`, same
device and precision). While serving, :meth:`RequestMirror.after_replies` runs once a batch's replies
are sent; it keeps a reference to the inputs of about ``fraction`` of the answered requests (a geometric
skip count: one subtraction per batch between picks, no hook and no copy on the served path). Once a
batch's worth is kept (the worker's learned throughput peak, where served batches stop too), or the
oldest has waited ``MAX_WAIT_S``, it is due: both versions run on it
(:class:`~service.monitoring.mirror.MirrorComparator`) and the comparison is published
(:class:`~service.monitoring.mirror.MirrorWindow`).

When: in slices, in the worker's idle moments (:meth:`RequestMirror.idle`: no request is waiting). A
slice has as many rows as the last served batch, so a request that arrives during one waits about one
batch. One long run would stall the whole pipeline instead: measured on ``digits-cnn`` at 32 clients,
running 64 mirrored rows at once left the API server and clients idle while the worker was busy and
cost 20 % of req/s for 5 % of the worker's time. A due batch that finds no idle moment (a saturated
worker) still advances one slice per served batch once its oldest request waited ``MAX_WAIT_S``.

Budget: the mirror earns ``budget`` seconds of work per second of wall time (at most ``CREDIT_S`` seconds'
worth saved up) and spends what each slice takes, so its own timed work takes about ``budget`` of the
worker's time; over budget it keeps no more requests and waits. Its time counts in
``hookserve_monitor_overhead_seconds_total``. Nothing in it can fail a request: the replies are sent
before it runs, and an exception is logged (the first one with its traceback) and counted in
``hookserve_mirror_failures_total``.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import numpy as np
import torch
from torch import nn

from models.base import ServableModel
from service.config import MirrorConfig, ModelServeConfig
from service.messages import InferReply, InferRequest
from service.model_loading import load_served_model
from service.monitoring.metrics import MIRROR_FAILURES, MIRROR_PASSED_OVER, MIRROR_REQUESTS, MONITOR_OVERHEAD
from service.monitoring.mirror import MirrorComparator, MirrorWindow
from service.worker.runtime import StartupError, serving_mode, warm_up

logger = logging.getLogger(__name__)
MAX_WAIT_S = 1.0  # a kept request waits at most this long for others, or for an idle moment (budget allowing)
CREDIT_S = 5.0  # the budget saved up while idle covers at most this many seconds of wall time
MIN_SLICE_ROWS = 4  # below this a slice's fixed cost (hooks, one host copy, publishing) dominates
_perf_counter = time.perf_counter


class RequestMirror:
    """Samples answered requests and runs the candidate comparison on them (see the module docstring)."""

    def __init__(
        self,
        model_name: str,
        config: MirrorConfig,
        comparator: MirrorComparator,
        device: torch.device,
        precision: str,
        max_rows: int,
        monitor: Any = None,
        batch_rows: Callable[[], int] | None = None,
    ) -> None:
        """``batch_rows()``: how many instances a mirrored batch should have now (the worker's learned
        throughput peak); at most ``max_rows``, which it is without one."""
        self.model_name = model_name
        self.config = config
        self.version = config.version
        self.comparator = comparator
        self.window = MirrorWindow(
            model_name, config.version, comparator.names, config.window_instances, config.min_instances
        )
        self.device = device
        self.precision = precision
        self.max_rows = max_rows
        self._batch_rows = batch_rows
        self._wanted = max_rows  # instances kept before a run: batch_rows() at the last run, at most max_rows
        self._monitor = monitor  # its hooks (and the fp32 shadow's capture) sit the mirror's passes out
        self._log_fraction = math.log1p(-config.fraction) if config.fraction < 1.0 else None
        self._skip = self._draw_skip()
        self._kept: list[np.ndarray] = []
        self._kept_rows = 0
        self._kept_since = 0.0
        self._running: torch.Tensor | None = None  # the due batch, compared slice by slice
        self._running_requests = 0
        self._running_since = 0.0  # when its oldest request was kept
        self._position = 0  # rows of it compared so far
        self.slice_rows = MIN_SLICE_ROWS  # the last served batch's rows, at least MIN_SLICE_ROWS
        self._credit = 0.0
        self._credited_at = _perf_counter()
        self._credit_cap = config.budget * CREDIT_S
        self.runs = 0  # mirrored batches compared to the end
        self.failures = 0
        self._requests = MIRROR_REQUESTS.labels(model_name, config.version)  # exported at 0 from the start
        self._failures = MIRROR_FAILURES.labels(model_name, config.version)
        self._passed_over = MIRROR_PASSED_OVER.labels(model_name, config.version)
        self._overhead = MONITOR_OVERHEAD.labels(model_name)

    def _draw_skip(self) -> int:
        """Requests to pass over before the next kept one: geometric, so each is kept with ``fraction``."""
        if self._log_fraction is None:
            return 0
        return int(math.log(1.0 - random.random()) / self._log_fraction)

    def after_replies(self, requests: Sequence[InferRequest], replies: Sequence[InferReply]) -> None:
        """After a served batch's replies are sent: keep some of its answered requests; advance an overdue
        mirrored batch by one slice (the worker found no idle moment for it)."""
        try:
            self.slice_rows = max(MIN_SLICE_ROWS, sum(request.size for request in requests))
            self.offer(requests, replies)
            now = _perf_counter()
            oldest = self._running_since if self._running is not None else self._kept_since
            if (self._running is not None or self._kept) and now - oldest >= MAX_WAIT_S:
                self._run_slice(now)
        except Exception:  # the mirror must never take the worker down
            self._failed()

    def offer(self, requests: Sequence[InferRequest], replies: Sequence[InferReply]) -> None:
        """Keep about ``fraction`` of the answered (200) requests' inputs, up to a mirrored batch's worth;
        count the picked ones that find it full (``hookserve_mirror_passed_over_total``)."""
        skip = self._skip
        if skip >= len(requests):
            self._skip = skip - len(requests)
            return
        position, passed_over = skip, 0
        while position < len(requests):
            if replies[position].status == 200:
                if self._kept_rows >= self._wanted:  # full: behind its traffic, or waiting for its budget
                    passed_over += 1
                else:
                    if not self._kept:
                        self._kept_since = _perf_counter()
                    request = requests[position]
                    self._kept.append(request.instances)
                    self._kept_rows += request.size
            position += 1 + self._draw_skip()
        self._skip = position - len(requests)
        if passed_over:
            self._passed_over.inc(passed_over)

    def due_in(self) -> float:
        """Seconds until :meth:`idle` has a slice to run (0: now); ``math.inf`` with nothing kept."""
        if self._running is None and not self._kept:
            return math.inf
        now = _perf_counter()
        self._earn(now)
        wait = -self._credit / self.config.budget if self._credit < 0.0 else 0.0
        if self._running is None and self._kept_rows < self._wanted:
            wait = max(wait, self._kept_since + MAX_WAIT_S - now)
        return max(wait, 0.0)

    def idle(self) -> bool:
        """The worker has no request waiting: run one slice of a due mirrored batch, budget allowing.
        True if it ran one."""
        try:
            if self.due_in() > 0.0:
                return False
            return self._run_slice(_perf_counter())
        except Exception:  # the mirror must never take the worker down
            self._failed()
            return False

    def _earn(self, now: float) -> None:
        self._credit = min(self._credit + self.config.budget * (now - self._credited_at), self._credit_cap)
        self._credited_at = now

    def _run_slice(self, now: float) -> bool:
        """Compare the next slice of the due batch (starting one from the kept requests if none is
        running). False when over budget."""
        self._earn(now)
        if self._credit < 0.0:
            return False
        try:
            if self._running is None:
                self._start_batch()
            self._compare_slice()
        finally:
            cost = _perf_counter() - now
            self._credit -= cost
            self._overhead.inc(cost)
        return True

    def _start_batch(self) -> None:
        kept, self._kept, self._kept_rows = self._kept, [], 0
        self._running = torch.from_numpy(np.concatenate(kept) if len(kept) > 1 else kept[0]).to(self.device)
        self._running_requests, self._running_since, self._position = len(kept), self._kept_since, 0
        if self._batch_rows is not None:
            self._wanted = max(1, min(self._batch_rows(), self.max_rows))

    def _compare_slice(self) -> None:
        running, start = self._running, self._position
        assert running is not None
        end = min(start + self.slice_rows, len(running))
        try:
            with self._monitor.sitting_out() if self._monitor is not None else nullcontext():
                comparison = self.comparator.compare(running[start:end], self._run_mode)
            self.window.record(comparison)
        except Exception:
            self._running = None  # the rest of this batch is dropped with it
            self._failed()
            return
        self._position = end
        if end == len(running):
            self._running = None
            self.runs += 1
            self._requests.inc(self._running_requests)

    def _run_mode(self, model: nn.Module) -> AbstractContextManager[None]:
        return serving_mode(model, self.device, self.precision)

    def _failed(self) -> None:
        self.failures += 1
        self._failures.inc()
        if self.failures == 1:
            logger.exception("model %s: the mirror of version %s failed", self.model_name, self.version)
        else:
            logger.warning("model %s: the mirror of version %s failed again", self.model_name, self.version)

    def remove(self) -> None:
        self.comparator.remove()


def start_mirror(
    served: ModelServeConfig,
    candidate: ModelServeConfig,
    model: ServableModel,
    device: torch.device,
    monitor: Any = None,
    batch_rows: Callable[[], int] | None = None,
) -> RequestMirror:
    """Load the candidate version beside the serving ``model`` (same loader, device and precision), check
    that it takes the same input and gives the same classes, warm it up. Raises :class:`StartupError`."""
    mirror = served.mirror
    assert mirror is not None, "start_mirror for a config without mirror"
    where = f"{served.name} version {served.version}: mirror version {candidate.version}"
    try:
        other, _ = load_served_model(candidate)
    except Exception as exc:
        raise StartupError(f"{where} does not load: {exc}") from exc
    if other.input_spec != model.input_spec:
        raise StartupError(
            f"{where} takes input {other.input_spec.to_dict()}, but the serving version takes "
            f"{model.input_spec.to_dict()}; a mirror runs both on the same requests"
        )
    if other.output_spec.labels != model.output_spec.labels:
        raise StartupError(
            f"{where} answers with labels {list(other.output_spec.labels)}, the serving version with "
            f"{list(model.output_spec.labels)}; their answers cannot be compared"
        )
    other = other.to(device).eval()
    max_rows = min(served.max_batch_size, candidate.max_batch_size)
    warm_up(other, device, served.precision, max_rows)
    names = monitor.module_names if monitor is not None else []
    comparator = MirrorComparator(model, other, names)
    logger.info(
        "%s: mirroring %.3g of requests to version %s, comparing %d shared module(s) and the output",
        served.name, mirror.fraction, candidate.version, len(comparator.names),
    )  # fmt: skip
    args = served.name, mirror, comparator, device, served.precision, max_rows
    return RequestMirror(*args, monitor=monitor, batch_rows=batch_rows)
