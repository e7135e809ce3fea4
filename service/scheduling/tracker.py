"""The worker's end of the cost model: learn from every batch, publish the line, export the curve.

The worker seeds it from its warm-up and calls :meth:`CostTracker.observe` once per forward pass. The
line goes to the :class:`~service.scheduling.board.CostBoard` after every batch (two float writes); the
``hookserve_batch_cost_seconds`` gauges are rewritten at most once per ``export_interval_s``, so the
per-batch cost stays a few microseconds.
"""

from __future__ import annotations

import time
from typing import Any

from service.monitoring.metrics import BATCH_BEST_SIZE, BATCH_COST
from service.scheduling.batch_policy import best_size
from service.scheduling.board import CostBoard
from service.scheduling.cost_model import CostModel, bucket_sizes


class CostTracker:
    """One model's cost model in one worker process."""

    def __init__(
        self,
        model: str,
        max_batch_size: int,
        board: CostBoard | None = None,
        export_interval_s: float = 1.0,
        unit: int = 0,
    ) -> None:
        self.model = model
        self.unit = unit
        self.cost = CostModel()
        self.buckets = bucket_sizes(max_batch_size)
        self.max_batch_size = max_batch_size
        # Where batches stop: the curve's throughput peak, re-read with the export (at most once a
        # second), so forming a batch costs one attribute read.
        self.best_batch_size = max_batch_size
        self._board = board
        self._worker: int | None = None
        self._export_interval_s = export_interval_s
        self._next_export = 0.0
        self._gauges: list[tuple[int, Any]] | None = None

    def attach(self, worker_id: int) -> None:
        """Publish to this worker's slot of the board from now on (called in the worker process)."""
        self._worker = worker_id

    def seed(self, batch_size: int, seconds: float) -> None:
        """A warm-up batch (see :meth:`CostModel.seed`)."""
        self.cost.seed(batch_size, seconds)
        self._publish(time.monotonic(), force=True)

    def observe(self, batch_size: int, seconds: float) -> None:
        """A served batch's forward time."""
        self.cost.observe(batch_size, seconds)
        self._publish(time.monotonic())

    def _publish(self, now: float, force: bool = False) -> None:
        cost = self.cost
        if self._board is not None and self._worker is not None:
            self._board.publish(self.unit, self._worker, cost.alpha, cost.beta)
        if not force and now < self._next_export:
            return
        self._next_export = now + self._export_interval_s
        if self._gauges is None:
            self._gauges = [(size, BATCH_COST.labels(self.model, str(size))) for size in self.buckets]
        for size, gauge in self._gauges:
            gauge.set(cost.predict(size))
        self.best_batch_size = best_size(cost.predict, self.max_batch_size, cost.knots())
        BATCH_BEST_SIZE.labels(self.model).set(self.best_batch_size)
