"""How much predicted work admission may let in: AIMD on the latency target, from the answers' real times.

The prediction misses what no model of the worker sees: a CPU shared with the API servers, the time to
write the answer, noisy neighbours. :class:`TargetBudget` closes the loop the way Clipper sizes batches
(additive increase, multiplicative decrease): every answer that came back within the target raises the
budget by ``step`` of the target, up to the target; one that came back late cuts it by ``cut`` (10 %), at
most once per ``cooldown_s`` so that one late burst counts once. Admission then compares the prediction
with the budget instead of the target. At equilibrium about one answer in ``1 / (step · cooldown rate)``
is late, the tail the operator asked for; without late answers the budget is the target itself.
Per API-server process, O(1) per answer.
"""

from __future__ import annotations

import time


class TargetBudget:
    """The share of ``target_s`` that admission may fill (see the module docstring)."""

    def __init__(
        self,
        target_s: float,
        step: float = 0.002,
        cut: float = 0.1,
        floor: float = 0.1,
        cooldown_s: float = 0.1,
    ) -> None:
        self.target_s = target_s
        self.budget_s = target_s
        self._step_s = step * target_s
        self._keep = 1.0 - cut
        self._floor_s = floor * target_s
        self._cooldown_s = cooldown_s
        self._next_cut = 0.0

    def observe(self, answered_s: float, now: float | None = None) -> None:
        """One answer, ``answered_s`` after its request arrived."""
        if answered_s <= self.target_s:
            if self.budget_s < self.target_s:
                self.budget_s = min(self.target_s, self.budget_s + self._step_s)
            return
        now = time.monotonic() if now is None else now
        if now >= self._next_cut:
            self.budget_s = max(self._floor_s, self.budget_s * self._keep)
            self._next_cut = now + self._cooldown_s
