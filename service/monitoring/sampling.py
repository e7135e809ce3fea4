"""How often the monitor samples: intervals chosen from measured costs so monitoring stays within budget.

Split out of ``monitor.py``: :class:`SamplingController` decides which batches are idle, armed (latency,
non-finite counts, bypass checks) or stats batches (statistics and drift too); the monitor measures and
reports the costs it plans from.
"""

from __future__ import annotations

import math
import statistics
from collections import deque


class SamplingController:
    """Chooses ``guard_every`` and ``stats_every`` from measured costs so that, on average,
    ``idle + (armed - idle) / guard_every + (stats - armed) / stats_every <= budget * forward``.

    A batch kind's cost is the monitor's timed work (hook bodies plus the calibrated dispatch cost per
    hooked call, and begin/end work) plus what no timer sees: an armed batch after idle ones also pays
    for code and caches gone cold (measured here: the hooks of a 4-module CNN cost ~2x their hot-loop
    time), estimated as its forward time minus the hooks' share minus the idle forwards' moving
    average. Half the budget goes to armed batches first (non-finite checks and latencies are the
    cheap, always-useful part), the rest to stats. The first batches alternate stats and armed to
    measure both; the very first one is cold and ignored. Idle batches only add to running sums; the
    plan is revised after each armed batch, and a feedback step scales the allowance so that the cost
    it reports (``hookserve_monitor_overhead_seconds_total``) converges to the budget.
    """

    WARMUP_BATCHES = 6
    SMOOTHING = 0.1
    GUARD_SHARE = 0.5
    # The feedback step compares realized cost with the budget over windows of this many stats cycles.
    FEEDBACK_CYCLES = 2
    # Caps for budgets too small to fit anything: a stats batch per 10,000 costs < 0.1 % even then,
    # and a model that is never looked at is not monitored.
    MAX_GUARD_EVERY = 1000
    MAX_STATS_EVERY = 10_000

    def __init__(
        self,
        budget: float,
        guard_every: int | None = None,
        stats_every: int | None = None,
        *,
        min_armed_s: float = 0.0,
        min_stats_s: float = 0.0,
    ) -> None:
        self.budget = budget
        # Adaptive intervals never put sampled batches closer than this in wall time (see pace()).
        self.min_armed_s, self.min_stats_s = min_armed_s, min_stats_s
        self.batch_wall_s: float | None = None  # wall time per batch, gaps between batches included
        self._fixed_guard = guard_every
        self._fixed_stats = stats_every
        self.guard_every = guard_every or 1
        self.stats_every = stats_every or 2
        self.forward_s: float | None = None
        self.cost_s: dict[str, float] = {}
        # Differences of two forward times: preemption outliers are common, so running medians.
        self.unseen_s: dict[str, _RecentMedian] = {"armed": _RecentMedian(), "stats": _RecentMedian()}
        self.aftermath_s: dict[str, _RecentMedian] = {"armed": _RecentMedian(), "stats": _RecentMedian()}
        self.idle_batches = 0
        self.idle_timed = 0
        self.idle_forward_s = 0.0
        self.idle_own_s = 0.0
        self._idle_forward: float | None = None
        self._armed_batches = 0
        # Feedback: the realized cost over recent batches scales the allowance (see _feedback).
        self.correction = 1.0
        self._window_cost_s = 0.0
        self._window_forward_s = 0.0
        self._window_batches = 0
        self._windows = 0

    def plan(self, index: int) -> tuple[bool, bool]:
        """``(armed, stats)`` for batch number ``index``."""
        stats = index % self.stats_every == 0
        return stats or index % self.guard_every == 0, stats

    def next_armed(self, index: int) -> int:
        """The first armed batch number at or after ``index``."""
        return min(
            -(-index // self.guard_every) * self.guard_every, -(-index // self.stats_every) * self.stats_every
        )

    def record_idle(self, batches: int, forward_s: float | None, cost_each_s: float) -> None:
        """``batches`` idle batches that took ``forward_s`` together (None: not timed, as on CUDA where
        idle batches are not synchronized), at ``cost_each_s`` of monitoring each."""
        self.idle_batches += batches
        self.idle_own_s += batches * cost_each_s
        self._window_cost_s += batches * cost_each_s
        self._window_forward_s += forward_s if forward_s is not None else batches * (self.forward_s or 0.0)
        self._window_batches += batches
        if forward_s is not None:
            self.idle_timed += batches
            self.idle_forward_s += forward_s

    def record_idle_sample(self, forward_s: float) -> None:
        """The forward time of one idle batch counted by :meth:`record_idle` without a time (on CUDA the
        monitor times one idle batch per armed one, with an event pair)."""
        self.idle_timed += 1
        self.idle_forward_s += forward_s

    def record_armed(self, forward_s: float, hooks_s: float, outside_s: float, *, stats: bool) -> float:
        """One finished armed batch: its forward time, the hooks' timed share of it, and the monitor's
        time outside the forward. Returns the batch's monitoring cost as estimated (see class doc)."""
        alpha = self.SMOOTHING
        kind = "stats" if stats else "armed"
        if self.idle_batches:
            self.cost_s["idle"] = _smooth(self.cost_s.get("idle"), self.idle_own_s / self.idle_batches, alpha)
        if self.idle_timed:
            n = self.idle_timed
            # n idle batches weigh as n samples would in the moving average.
            self._idle_forward = _smooth(self._idle_forward, self.idle_forward_s / n, 1 - (1 - alpha) ** n)
            # Forward time beyond the idle average that no hook timer saw. Averaged unclamped, so the
            # noise of a large model's forward cancels out instead of inflating the estimate.
            self.unseen_s[kind].add(forward_s - hooks_s - self._idle_forward)
        self.idle_batches = self.idle_timed = 0
        self.idle_forward_s = self.idle_own_s = 0.0
        unseen_s = max(self.unseen_s[kind].value, 0.0)
        cost = hooks_s + outside_s + self._untimed(kind)
        self._armed_batches += 1
        if self._armed_batches == 1:
            return cost
        # Idle forwards are the model alone; without any (every batch armed), subtract the hooks' share.
        bare = self._idle_forward if self._idle_forward is not None else forward_s - hooks_s - unseen_s
        self.forward_s = _smooth(self.forward_s, bare, alpha)
        self.cost_s[kind] = _smooth(self.cost_s.get(kind), hooks_s + outside_s, alpha)
        if self._armed_batches >= self.WARMUP_BATCHES:
            self._feedback(cost, forward_s)
            self._replan()
        return cost

    def record_pace(self, batches: int, elapsed_s: float) -> None:
        """``batches`` batches took ``elapsed_s`` of wall time (one armed batch's end to the next's)."""
        if batches > 0 and elapsed_s > 0.0:
            self.batch_wall_s = _smooth(self.batch_wall_s, elapsed_s / batches, self.SMOOTHING)

    def pace(self) -> tuple[int, int]:
        """The smallest ``(guard_every, stats_every)`` that keep armed batches ``min_armed_s`` and stats
        batches ``min_stats_s`` apart at the current pace. A model that could afford hooks on every
        batch gains little from them: latency histograms need a few samples a second, and the gauges
        are refreshed once per publication; what runs on every batch is cost for nothing."""
        wall = self.batch_wall_s
        if not wall:
            return 1, 1
        guard = min(max(math.ceil(self.min_armed_s / wall - 1e-9), 1), self.MAX_GUARD_EVERY)
        return guard, min(max(math.ceil(self.min_stats_s / wall - 1e-9), 1), self.MAX_STATS_EVERY)

    def record_aftermath(self, forward_s: float, kind: str) -> None:
        """The forward time of the idle batch right after an armed batch of ``kind``: the hooks' work
        evicted the model's data and code from the caches, so it runs slower than idle batches do
        (seen: +17 us on a 46 us MLP, +50 us on a 0.7 ms CNN). The excess is the armed batch's cost."""
        if self._idle_forward is not None:
            self.aftermath_s[kind].add(forward_s - self._idle_forward)

    def _untimed(self, kind: str) -> float:
        """What a batch of ``kind`` costs beyond its timed work (cold start, and the batch after it)."""
        return max(self.unseen_s[kind].value, 0.0) + max(self.aftermath_s[kind].value, 0.0)

    def _feedback(self, cost_s: float, forward_s: float) -> None:
        """Scale the allowance by how the realized cost compared with the budget over the last window
        (``FEEDBACK_CYCLES`` stats cycles). The cost model lags: rarer armed batches run colder and
        cost more than the averages they were planned with (seen: 4.5 % realized for a 3 % plan on a
        50 us MLP). The first window holds the warm-up's cold batches and only resets."""
        self._window_cost_s += cost_s
        self._window_forward_s += forward_s
        self._window_batches += 1
        if self._window_batches < self.FEEDBACK_CYCLES * self.stats_every or self._window_forward_s <= 0.0:
            return
        realized = self._window_cost_s / self._window_forward_s
        if self._windows and realized > 0.0:
            step = min(max(math.sqrt(self.budget / realized), 0.5), 2.0)  # damped: no oscillation
            # Capped at 1: an over-estimating cost model leaves budget unused, never the reverse.
            self.correction = min(max(self.correction * step, 0.4), 1.0)
        self._windows += 1
        self._window_cost_s = self._window_forward_s = 0.0
        self._window_batches = 0

    def _replan(self) -> None:
        if self.forward_s is None or "armed" not in self.cost_s or "stats" not in self.cost_s:
            return
        idle = self.cost_s.get("idle", 0.0)
        armed = self.cost_s["armed"] + self._untimed("armed")
        stats = self.cost_s["stats"] + self._untimed("stats")
        armed_extra = max(armed - idle, 0.0)
        stats_extra = max(stats - armed, 0.0)
        allowance = self.budget * self.correction * self.forward_s - idle
        min_guard, min_stats = self.pace()
        if self._fixed_guard is None:
            guard = _interval(armed_extra, self.GUARD_SHARE * allowance, self.MAX_GUARD_EVERY)
            self.guard_every = max(guard, min_guard)
        if self._fixed_stats is None:
            remaining = allowance - armed_extra / self.guard_every
            every = max(_interval(stats_extra, remaining, self.MAX_STATS_EVERY), min_stats)
            # A multiple of guard_every, so stats batches are armed batches and the cost model holds.
            self.stats_every = self.guard_every * math.ceil(every / self.guard_every)


class _RecentMedian:
    """Median of the last few values (0.0 before the first): robust to the odd preempted batch."""

    def __init__(self, size: int = 15) -> None:
        self._values: deque[float] = deque(maxlen=size)
        self.value = 0.0
        self.samples = 0

    def add(self, value: float) -> None:
        self._values.append(value)
        self.value = statistics.median(self._values)
        self.samples += 1


def _smooth(previous: float | None, value: float, alpha: float) -> float:
    """Exponential moving average, with each sample capped at 4x the average: one batch stalled by
    the scheduler or the garbage collector (seen: 30x a normal one) must not dominate for 20 batches."""
    if previous is None:
        return value
    if previous > 0.0:
        value = min(value, 4.0 * previous)
    return previous + alpha * (value - previous)


def _interval(cost: float, allowance: float, maximum: int) -> int:
    """Smallest N with cost / N <= allowance."""
    if cost <= 0.0:
        return 1
    if allowance <= 0.0:
        return maximum
    return min(max(math.ceil(cost / allowance), 1), maximum)
