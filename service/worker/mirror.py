"""The mirror in the serving version's worker: which answered requests also run on the candidate, and when.

A model config's ``mirror: {version, fraction, budget}`` names a candidate version of the same model.
The serving version's worker loads the candidate's weights beside its own (:func:`start_mirror`, same
device and precision). While serving, :meth:`RequestMirror.after_replies` runs once a batch's replies
are sent; it keeps a reference to the inputs of about ``fraction`` of the answered requests (a geometric
skip count: one subtraction per batch between picks, no hook and no copy on the served path). Once a
batch's worth is kept (the worker's learned throughput peak, where served batches stop too), or the
oldest has waited ``MAX_WAIT_S``, and the budget allows, it runs both versions on them
(:class:`~service.monitoring.mirror.MirrorComparator`) and publishes the comparison
(:class:`~service.monitoring.mirror.MirrorWindow`).

Budget: the mirror earns ``budget`` seconds of work per second of wall time (at most ``CREDIT_S`` seconds'
worth saved up) and spends what each run takes, so its own timed runs take about ``budget`` of the
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
from service.monitoring.metrics import MIRROR_FAILURES, MIRROR_REQUESTS, MONITOR_OVERHEAD
from service.monitoring.mirror import MirrorComparator, MirrorWindow
from service.worker.runtime import StartupError, serving_mode, warm_up

logger = logging.getLogger(__name__)
MAX_WAIT_S = 1.0  # a kept request waits at most this long for others before its batch runs (budget allowing)
CREDIT_S = 5.0  # the budget saved up while idle covers at most this many seconds of wall time
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
        self._credit = 0.0
        self._credited_at = _perf_counter()
        self._credit_cap = config.budget * CREDIT_S
        self.runs = 0
        self.failures = 0
        self._requests = MIRROR_REQUESTS.labels(model_name, config.version)  # exported at 0 from the start
        self._failures = MIRROR_FAILURES.labels(model_name, config.version)
        self._overhead = MONITOR_OVERHEAD.labels(model_name)

    def _draw_skip(self) -> int:
        """Requests to pass over before the next kept one: geometric, so each is kept with ``fraction``."""
        if self._log_fraction is None:
            return 0
        return int(math.log(1.0 - random.random()) / self._log_fraction)

    def after_replies(self, requests: Sequence[InferRequest], replies: Sequence[InferReply]) -> None:
        """After a batch's replies are sent: keep some of its answered requests, run a due comparison."""
        try:
            self.offer(requests, replies)
            self.run_due()
        except Exception:  # the mirror must never take the worker down
            self._failed()

    def offer(self, requests: Sequence[InferRequest], replies: Sequence[InferReply]) -> None:
        """Keep about ``fraction`` of the answered (200) requests' inputs, up to a mirrored batch's worth."""
        skip = self._skip
        if skip >= len(requests):
            self._skip = skip - len(requests)
            return
        position = skip
        while position < len(requests):
            if self._kept_rows >= self._wanted:  # full: pass over the rest of this batch
                self._skip = self._draw_skip()
                return
            if replies[position].status == 200:
                if not self._kept:
                    self._kept_since = _perf_counter()
                request = requests[position]
                self._kept.append(request.instances)
                self._kept_rows += request.size
            position += 1 + self._draw_skip()
        self._skip = position - len(requests)

    def run_due(self) -> None:
        """Compare the kept requests when there are enough (or the oldest waited long enough) and the
        budget allows."""
        if not self._kept:
            return
        now = _perf_counter()
        self._credit = min(self._credit + self.config.budget * (now - self._credited_at), self._credit_cap)
        self._credited_at = now
        if self._credit < 0.0 or (self._kept_rows < self._wanted and now - self._kept_since < MAX_WAIT_S):
            return
        kept, self._kept, self._kept_rows = self._kept, [], 0
        if self._batch_rows is not None:
            self._wanted = max(1, min(self._batch_rows(), self.max_rows))
        try:
            self._run(kept)
        finally:
            cost = _perf_counter() - now
            self._credit -= cost
            self._overhead.inc(cost)

    def _run(self, kept: list[np.ndarray]) -> None:
        try:
            x = torch.from_numpy(np.concatenate(kept) if len(kept) > 1 else kept[0]).to(self.device)
            with self._monitor.sitting_out() if self._monitor is not None else nullcontext():
                comparison = self.comparator.compare(x, self._run_mode)
            self.window.record(comparison)
        except Exception:
            self._failed()
            return
        self.runs += 1
        self._requests.inc(len(kept))

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
