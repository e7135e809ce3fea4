"""The memory every process of the server shares, allocated once in the main process before any fork.

A fixed number of *unit* slots (``server.max_units``; a unit is one served model version) each hold
their workers' states (:class:`~service.worker_states.WorkerStates`), their learned batch costs
(:class:`~service.scheduling.board.CostBoard`) and one admission gate's counters. A model loaded
while serving takes free slots; an unloaded one gives them back. API servers, forked once at start,
therefore never need memory that did not exist when they were forked.
"""

from __future__ import annotations

import copy

from service.config import ModelServeConfig
from service.http.admission import AdmissionGate
from service.pool.table import TableStore
from service.scheduling.board import CostBoard
from service.scheduling.budget import TargetBudget
from service.worker_states import WorkerStates

MAX_PRIORITY_LEVELS = 8  # ModelServeConfig.priority_levels is at most this


class SharedSlots:
    """States, costs and admission counters for ``units`` units, and the serving table's store."""

    def __init__(self, units: int) -> None:
        self.units = units
        self.states = WorkerStates(units)
        self.costs = CostBoard(units)
        self.gates = [AdmissionGate(1, priority_levels=MAX_PRIORITY_LEVELS) for _ in range(units)]
        self.store = TableStore()

    def gate(self, unit: int, config: ModelServeConfig) -> AdmissionGate:
        """This process's view of ``unit``'s gate, with its model's limits (the counters are shared)."""
        gate = copy.copy(self.gates[unit])  # same lock and counters (and this process's loop-lag probe)
        target_ms = config.latency_target_ms
        gate.limit = config.max_queued_requests
        gate.model = config.name
        gate.latency_target_s = None if target_ms is None else target_ms / 1000.0
        gate.costs = self.costs.costs(unit)
        gate.max_batch_size = config.max_batch_size
        gate.priority_levels = config.priority_levels
        gate.budget = None if gate.latency_target_s is None else TargetBudget(gate.latency_target_s)
        gate._predicted_wait = None  # its own model's histogram child, bound on first use
        return gate

    def release(self, unit: int) -> None:
        """``unit``'s workers are stopped: forget what they learned (its next owner learns its own)."""
        self.costs.clear(unit)
