"""The learned cost of each worker, shared with every API server through shared memory.

Like :class:`service.worker_states.WorkerStates`, the main process allocates it before any worker is
spawned or API server forked. Each (model, worker) slot holds the worker's current ``alpha`` (seconds per
instance) and ``beta`` (seconds per batch); the worker is its only writer and rewrites it after every
batch, and API servers read it at the door. No lock: a reader may see a new ``alpha`` with the previous
``beta``, which are both recent fits of the same curve. A slot that reads 0, 0 has not been published
(the worker is still warming up).
"""

from __future__ import annotations

import multiprocessing as mp


class CostBoard:
    """One ``(alpha, beta)`` slot per (model, worker id)."""

    def __init__(self, workers_per_model: dict[str, int]) -> None:
        self._slots: dict[str, range] = {}
        start = 0
        for name, count in workers_per_model.items():
            self._slots[name] = range(start, start + count)
            start += count
        ctx = mp.get_context("spawn")  # picklable into spawned workers, inherited by forked API servers
        self._coefficients = ctx.RawArray("d", 2 * start)

    def publish(self, model: str, worker_id: int, alpha: float, beta: float) -> None:
        slot = 2 * self._slots[model][worker_id]
        self._coefficients[slot] = alpha
        self._coefficients[slot + 1] = beta

    def costs(self, model: str) -> ModelCosts:
        """The read side for one model (cheap to query; keep it, don't rebuild it per request)."""
        return ModelCosts(self._coefficients, self._slots[model])


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
