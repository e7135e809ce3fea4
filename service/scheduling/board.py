"""The learned cost of each worker, shared with every API server through shared memory.

Like :class:`service.worker_states.WorkerStates`, the main process allocates it for every unit slot
before any worker is spawned or API server forked. Each (unit, worker) slot holds the worker's current
``alpha`` (seconds per instance) and ``beta`` (seconds per batch); the worker is its only writer and
rewrites it after every batch, and API servers read it at the door. No lock: a reader may see a new
``alpha`` with the previous ``beta``, which are both recent fits of the same curve. A slot that reads
0, 0 has not been published (the worker is still warming up).
"""

from __future__ import annotations

import multiprocessing as mp

from service.worker_states import MAX_WORKERS_PER_UNIT


class CostBoard:
    """One ``(alpha, beta)`` slot per (unit, worker id)."""

    def __init__(self, units: int) -> None:
        ctx = mp.get_context("spawn")  # picklable into spawned workers, inherited by forked API servers
        self._coefficients = ctx.RawArray("d", 2 * units * MAX_WORKERS_PER_UNIT)

    @staticmethod
    def _slots(unit: int) -> range:
        return range(unit * MAX_WORKERS_PER_UNIT, (unit + 1) * MAX_WORKERS_PER_UNIT)

    def publish(self, unit: int, worker_id: int, alpha: float, beta: float) -> None:
        slot = 2 * self._slots(unit)[worker_id]
        self._coefficients[slot] = alpha
        self._coefficients[slot + 1] = beta

    def clear(self, unit: int) -> None:
        """Forget a released unit's lines (its next owner learns its own)."""
        for slot in self._slots(unit):
            self._coefficients[2 * slot] = self._coefficients[2 * slot + 1] = 0.0

    def costs(self, unit: int) -> ModelCosts:
        """The read side for one unit (cheap to query; keep it, don't rebuild it per request)."""
        return ModelCosts(self._coefficients, self._slots(unit))


class ModelCosts:
    """What the API servers read for one model: its workers' mean cost line."""

    def __init__(self, coefficients: object, slots: range) -> None:
        self._coefficients = coefficients
        self._indices = [2 * slot for slot in slots]

    def line(self) -> tuple[float, float, int]:
        """``(alpha, beta, workers)``: the mean line over the workers that have published one."""
        values = self._coefficients
        alpha = beta = 0.0
        workers = 0
        for i in self._indices:
            a, b = values[i], values[i + 1]
            if a > 0.0 or b > 0.0:
                alpha += a
                beta += b
                workers += 1
        if workers > 1:
            alpha /= workers
            beta /= workers
        return alpha, beta, workers
