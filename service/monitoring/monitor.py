"""The in-process model monitor the inference worker wraps around each batched forward.

    monitor = ModelMonitor(model, "digits-cnn", MonitorConfig(), device)
    monitor.attach()                       # once, after model.eval() and .to(device)
    with monitor.observe_batch():          # per batch, around the single model(x)
        out = model(x)
    monitor.detach()                       # at shutdown: the model is exactly as before

Batches come in three kinds, chosen by :class:`SamplingController` so that the mean cost of monitoring
stays within ``overhead_budget`` of the forward time:

* idle: no hooks at all (the hooks' cost on a 46 us MLP forward is larger than a 3 % budget);
* armed (every ``guard_every``-th batch): per-module latency, non-finite count of every full output,
  forward-bypass detection;
* stats (every ``stats_every``-th batch, always armed): activation stats and drift histograms too.

On CUDA the hooks record events and keep results on the device; ``end_batch`` synchronizes once and
copies everything in one transfer. Prometheus is touched only after the forward: per armed batch for
latencies, per stats batch for gauges, per ``publish_interval_s`` for counters that move every batch.
Not thread-safe: one monitor per model per worker, used by the thread that runs the model.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from types import TracebackType

import torch
from torch import nn

from service.monitoring import metrics
from service.monitoring.config import MonitorConfig
from service.monitoring.drift import DriftTracker, Reference, default_reference_path, weights_fingerprint
from service.monitoring.hooks import BatchFlags, HookSet, ModuleProbe, hook_dispatch_seconds
from service.monitoring.selection import select_modules
from service.monitoring.stats import STAT_NAMES, summarize

logger = logging.getLogger(__name__)
_perf_counter = time.perf_counter


class SamplingController:
    """Chooses ``guard_every`` and ``stats_every`` from measured costs so that, on average,
    ``idle + (armed - idle) / guard_every + (stats - armed) / stats_every <= budget * forward``.

    Costs are the monitor's own time per batch kind (timed inside the hooks, plus the calibrated
    per-call dispatch cost of having hooks, plus begin/end work); the forward time is the measured
    forward minus the monitor's share. Half the budget goes to armed batches first (their non-finite
    checks and latencies are the cheap, always-useful part), the rest to stats. The first batches
    alternate stats and armed to measure both; the very first one is cold and ignored. Idle batches
    only add to running sums (their whole path must cost well under a microsecond); the plan is
    revised after each armed batch.
    """

    WARMUP_BATCHES = 6
    SMOOTHING = 0.1
    GUARD_SHARE = 0.5
    MAX_GUARD_EVERY = 1000
    MAX_STATS_EVERY = 100_000

    def __init__(self, budget: float, guard_every: int | None = None, stats_every: int | None = None):
        self.budget = budget
        self._fixed_guard = guard_every
        self._fixed_stats = stats_every
        self.guard_every = guard_every or 1
        self.stats_every = stats_every or 2
        self.forward_s: float | None = None
        self.cost_s: dict[str, float] = {}
        self.idle_batches = 0
        self.idle_forward_s = 0.0
        self.idle_own_s = 0.0
        self._armed_batches = 0

    def plan(self, index: int) -> tuple[bool, bool]:
        """``(armed, stats)`` for batch number ``index``."""
        stats = index % self.stats_every == 0
        return stats or index % self.guard_every == 0, stats

    def record_idle(self, forward_s: float, own_s: float) -> None:
        self.idle_batches += 1
        self.idle_forward_s += forward_s
        self.idle_own_s += own_s

    def record_armed(self, forward_s: float, hooks_s: float, own_s: float, *, stats: bool) -> None:
        """One finished armed batch: its forward time, the monitor's share of it (``hooks_s``) and the
        monitor's total cost for the batch (``own_s``)."""
        self._armed_batches += 1
        if self._armed_batches == 1:
            return
        alpha = self.SMOOTHING
        if self.idle_batches:
            idle = self.idle_batches
            self.forward_s = _smooth(self.forward_s, self.idle_forward_s / idle, 1 - (1 - alpha) ** idle)
            self.cost_s["idle"] = _smooth(self.cost_s.get("idle"), self.idle_own_s / idle, alpha)
            self.idle_batches, self.idle_forward_s, self.idle_own_s = 0, 0.0, 0.0
        self.forward_s = _smooth(self.forward_s, forward_s - hooks_s, alpha)
        kind = "stats" if stats else "armed"
        self.cost_s[kind] = _smooth(self.cost_s.get(kind), own_s, alpha)
        if self._armed_batches >= self.WARMUP_BATCHES:
            self._replan()

    def _replan(self) -> None:
        if self.forward_s is None or "armed" not in self.cost_s or "stats" not in self.cost_s:
            return
        idle = self.cost_s.get("idle", 0.0)
        armed_extra = max(self.cost_s["armed"] - idle, 0.0)
        stats_extra = max(self.cost_s["stats"] - self.cost_s["armed"], 0.0)
        allowance = self.budget * self.forward_s - idle
        if self._fixed_guard is None:
            self.guard_every = _interval(armed_extra, self.GUARD_SHARE * allowance, self.MAX_GUARD_EVERY)
        if self._fixed_stats is None:
            remaining = allowance - armed_extra / self.guard_every
            every = _interval(stats_extra, remaining, self.MAX_STATS_EVERY)
            # A multiple of guard_every, so stats batches are armed batches and the cost model holds.
            self.stats_every = self.guard_every * math.ceil(every / self.guard_every)


def _smooth(previous: float | None, value: float, alpha: float) -> float:
    return value if previous is None else previous + alpha * (value - previous)


def _interval(cost: float, allowance: float, maximum: int) -> int:
    """Smallest N with cost / N <= allowance."""
    if cost <= 0.0:
        return 1
    if allowance <= 0.0:
        return maximum
    return min(max(math.ceil(cost / allowance), 1), maximum)


class _Publisher:
    """The model's metric children, bound once: ``labels()`` costs ~1.5 us a call, a bound child ~0.3."""

    def __init__(self, model_name: str, modules: list[str]) -> None:
        self.latency = [metrics.MODULE_FORWARD.labels(model_name, m) for m in modules]
        self.nonfinite = [metrics.ACTIVATION_NONFINITE.labels(model_name, m) for m in modules]
        gauges = (
            metrics.ACTIVATION_MEAN,
            metrics.ACTIVATION_STD,
            metrics.ACTIVATION_MIN,
            metrics.ACTIVATION_MAX,
            metrics.ACTIVATION_ZERO_FRACTION,
        )
        assert len(gauges) == len(STAT_NAMES)
        self.stats = [[gauge.labels(model_name, m) for gauge in gauges] for m in modules]
        self.psi = [metrics.ACTIVATION_DRIFT_PSI.labels(model_name, m) for m in modules]
        self.bypass = metrics.FORWARD_BYPASS.labels(model_name)
        self.training_resets = metrics.TRAINING_MODE_RESETS.labels(model_name)
        self.overhead = metrics.MONITOR_OVERHEAD.labels(model_name)
        self.forward = metrics.MONITORED_FORWARD.labels(model_name)
        self.guard_every = metrics.MONITOR_SAMPLE_INTERVAL.labels(model_name, "armed")
        self.stats_every = metrics.MONITOR_SAMPLE_INTERVAL.labels(model_name, "stats")


class _BatchScope:
    """``with monitor.observe_batch():`` without a generator frame per batch."""

    __slots__ = ("_monitor",)

    def __init__(self, monitor: ModelMonitor) -> None:
        self._monitor = monitor

    def __enter__(self) -> ModelMonitor:
        self._monitor.begin_batch()
        return self._monitor

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._monitor.end_batch(failed=exc_type is not None)


class ModelMonitor:
    """Forward-hook monitoring of one model in one process; see the module docstring for the protocol.

    ``reference`` overrides the drift reference file (``config.drift.reference``, else
    ``models/checkpoints/{model_name}.reference.safetensors``); without one, drift is off.
    """

    def __init__(
        self,
        model: nn.Module,
        model_name: str,
        config: MonitorConfig | None = None,
        device: torch.device | str | None = None,
        *,
        reference: Reference | None = None,
    ) -> None:
        self.model = model
        self.model_name = model_name
        self.config = config or MonitorConfig()
        self.device = torch.device(device) if device is not None else _model_device(model)
        self._cuda = self.device.type == "cuda"
        selected = select_modules(model, self.config) if self.config.enabled else []
        self.probes = [ModuleProbe(i, name, module) for i, (name, module) in enumerate(selected)]
        self._flags = BatchFlags(sample_elements=self.config.sample_elements, latency=self.config.latency)
        self._hooks = HookSet(self.probes, self._flags, self._on_bypass, cuda=self._cuda)
        self.controller = SamplingController(
            self.config.overhead_budget, self.config.guard_every, self.config.stats_every
        )
        self._reference = reference
        self._drift: DriftTracker | None = None
        self._publisher: _Publisher | None = None
        self._scope = _BatchScope(self)
        self._dispatch_s = 0.0
        self.attached = False
        self.batches = 0
        self._in_batch = False
        self._armed = False
        self._stats = False
        self._started = 0.0
        self._begin_s = 0.0
        self._pending_forward_s = 0.0
        self._pending_overhead_s = 0.0
        self._pending_bypass = 0
        self._pending_resets = 0
        self._bypass_logged: set[str] = set()
        self._last_publish = 0.0

    @property
    def module_names(self) -> list[str]:
        return [probe.name for probe in self.probes]

    @property
    def drift_modules(self) -> list[str]:
        """Monitored modules that have a drift reference (empty when drift is off)."""
        return list(self._drift.names) if self._drift is not None else []

    # --- lifecycle ---------------------------------------------------------------------------------

    def attach(self) -> ModelMonitor:
        """Start monitoring: eval mode enforced, hooks installed (they come and go per batch after the
        warm-up batches), drift reference loaded. Idempotent; a no-op when ``config.enabled`` is false."""
        if self.attached or not self.config.enabled:
            return self
        self._dispatch_s = hook_dispatch_seconds()
        self._publisher = self._publisher or _Publisher(self.model_name, self.module_names)
        with torch.inference_mode():
            self._drift = self._load_drift()
        self._enforce_eval()
        for probe in self.probes:
            probe.reset()
        self._armed, self._stats = self.controller.plan(self.batches)
        if self._armed:
            self._hooks.install()
        self._last_publish = _perf_counter()
        self.attached = True
        return self

    def detach(self) -> None:
        """Remove every hook and forward guard and publish what is pending; the model is left as found."""
        if self._in_batch:
            self.end_batch(failed=True)
        self._hooks.remove()
        if self.attached:
            self.publish()
        self.attached = False

    # --- per batch ---------------------------------------------------------------------------------

    def observe_batch(self) -> _BatchScope:
        """Context manager around one ``model(x)``: :meth:`begin_batch` on entry, :meth:`end_batch` on exit
        (a batch that raised is discarded, not measured)."""
        return self._scope

    def begin_batch(self) -> None:
        """Call right before ``model(x)``."""
        if not self.attached:
            return
        t_begin = _perf_counter()
        if self.model.training:
            self._enforce_eval()
        if self._armed:
            self._flags.stats = self._stats
            for probe in self.probes:
                probe.reset()
            self._hooks.install()
        self._in_batch = True
        self._started = _perf_counter()
        self._begin_s = self._started - t_begin

    def end_batch(self, *, failed: bool = False) -> float:
        """Call right after ``model(x)`` returns (or raised: ``failed=True``). On CUDA this synchronizes
        the device once. Returns the forward's wall time in seconds (0.0 when not monitoring)."""
        if not self._in_batch:
            return 0.0
        if self._cuda:
            torch.cuda.current_stream(self.device).synchronize()
        t_end = _perf_counter()
        forward_s = t_end - self._started
        self._in_batch = False
        self.batches += 1
        if self._armed:
            with torch.inference_mode():
                self._end_armed(forward_s, t_end, failed)
        else:
            self._armed, self._stats = self.controller.plan(self.batches)
            own_s = self._begin_s + (_perf_counter() - t_end)
            self.controller.record_idle(forward_s, own_s)
            self._pending_forward_s += forward_s
            self._pending_overhead_s += own_s
        if t_end - self._last_publish >= self.config.publish_interval_s:
            self.publish()
        return forward_s

    def _end_armed(self, forward_s: float, t_end: float, failed: bool) -> None:
        stats = self._stats
        hooks_s = 0.0
        if failed:
            for probe in self.probes:
                probe.entered = False
        else:
            hooks_s = self._collect()
        self._flags.stats = False
        self._armed, self._stats = self.controller.plan(self.batches)
        if not self._armed:
            self._hooks.remove()
        own_s = hooks_s + self._begin_s + (_perf_counter() - t_end)
        if not failed:
            self.controller.record_armed(forward_s, hooks_s, own_s, stats=stats)
        self._pending_forward_s += forward_s
        self._pending_overhead_s += own_s

    def publish(self) -> None:
        """Push counters that move every batch, re-check training mode, export the sampling intervals.
        Called by :meth:`end_batch` every ``publish_interval_s``; call it directly to flush."""
        self._last_publish = _perf_counter()
        self._enforce_eval()
        pub = self._publisher
        assert pub is not None, "publish before attach"
        pub.forward.inc(self._pending_forward_s)
        pub.overhead.inc(self._pending_overhead_s)
        if self._pending_bypass:
            pub.bypass.inc(self._pending_bypass)
        if self._pending_resets:
            pub.training_resets.inc(self._pending_resets)
        pub.guard_every.set(self.controller.guard_every)
        pub.stats_every.set(self.controller.stats_every)
        self._pending_forward_s = self._pending_overhead_s = 0.0
        self._pending_bypass = self._pending_resets = 0
        self._pending_overhead_s += _perf_counter() - self._last_publish

    # --- internals ---------------------------------------------------------------------------------

    def _collect(self) -> float:
        """Read and publish what the hooks recorded in an armed batch; returns the hooks' own time
        (timed bodies plus the calibrated dispatch cost per hooked call)."""
        probes = self.probes
        hooks_s = 0.0
        calls = 0
        for probe in probes:
            hooks_s += probe.body_s
            calls += probe.calls
        hooks_s += calls * self._dispatch_s
        samples = [probe.sample for probe in probes] if self._flags.stats else None
        stats, psi, nonfinite = self._reduce_on_device(samples)
        pub = self._publisher
        assert pub is not None, "publish before attach"
        for probe in probes:
            if probe.calls and self._flags.latency:
                seconds = self._cuda_elapsed(probe) if self._cuda else probe.elapsed_s
                pub.latency[probe.index].observe(seconds)
            count = probe.nonfinite + (nonfinite[probe.index] if nonfinite else 0)
            if count:
                pub.nonfinite[probe.index].inc(count)
                probe.nonfinite = 0
        if stats is not None:
            for row, probe in zip(stats, (p for p in probes if p.sample is not None), strict=True):
                for child, value in zip(pub.stats[probe.index], row, strict=True):
                    child.set(value)
        if psi is not None and self._drift is not None:
            for position, value in zip(self._drift.positions, psi, strict=True):
                if not math.isnan(value):
                    pub.psi[position].set(value)
        return hooks_s

    def _reduce_on_device(
        self, samples: list[torch.Tensor | None] | None
    ) -> tuple[list[list[float]] | None, list[float] | None, list[int] | None]:
        """Stats, PSI and (CUDA) non-finite counts, with a single device-to-host copy."""
        parts: list[torch.Tensor] = []
        stats_rows = 0
        if samples is not None:
            present = [s for s in samples if s is not None]
            if present:
                parts.append(summarize(present).double().reshape(-1))
                stats_rows = len(present)
            if self._drift is not None:
                self._drift.update(samples)
        with_psi = samples is not None and self._drift is not None and self._drift.ready
        if with_psi:
            parts.append(self._drift.psi().double())
        numel_total: list[int] = []
        if self._cuda:
            finite = [torch.stack(p.finite_counts).sum() if p.finite_counts else None for p in self.probes]
            numel_total = [sum(p.numels) for p in self.probes]
            parts.append(torch.stack([f if f is not None else _zero(self.device) for f in finite]).double())
        if not parts:
            return None, None, None
        values = torch.cat(parts).tolist() if len(parts) > 1 else parts[0].tolist()
        width = len(STAT_NAMES)
        stats = [values[i * width : (i + 1) * width] for i in range(stats_rows)] if stats_rows else None
        offset = stats_rows * width
        psi = None
        if with_psi:
            psi = values[offset : offset + len(self._drift.names)]
            offset += len(self._drift.names)
        nonfinite = None
        if self._cuda:
            nonfinite = [int(n - f) for n, f in zip(numel_total, values[offset:], strict=True)]
        return stats, psi, nonfinite

    @staticmethod
    def _cuda_elapsed(probe: ModuleProbe) -> float:
        return sum(start.elapsed_time(end) for start, end in probe.events[: probe.calls]) / 1000.0

    def _on_bypass(self, probe: ModuleProbe) -> None:
        self._pending_bypass += 1
        if probe.name not in self._bypass_logged:
            self._bypass_logged.add(probe.name)
            logger.warning(
                "model %s: module %r ran forward() without its hooks (a parent calls .forward() "
                "instead of calling the module); its latency and activations are not monitored",
                self.model_name,
                probe.name,
            )

    def _enforce_eval(self) -> None:
        """Put every module still in training mode back in eval, and count them."""
        found = [name or "<root>" for name, module in self.model.named_modules() if module.training]
        if found:
            logger.warning("model %s: %d module(s) in training mode at serve time, e.g. %s; set to eval",
                           self.model_name, len(found), ", ".join(found[:5]))  # fmt: skip
            self.model.eval()
            self._pending_resets += len(found)

    def _load_drift(self) -> DriftTracker | None:
        drift = self.config.drift
        if not drift.enabled or not self.probes:
            return None
        reference = self._reference
        if reference is None:
            path = drift.reference or default_reference_path(self.model_name)
            if not Path(path).is_file():
                logger.info("model %s: no drift reference at %s; drift is off", self.model_name, path)
                return None
            reference = Reference.load(path)
            expected = reference.metadata.get("weights_sha256")
            if expected and expected != weights_fingerprint(self.model):
                logger.warning(
                    "model %s: drift reference %s was captured with other weights; drift is off "
                    "(recapture it: python -m service.monitoring.calibrate %s)",
                    self.model_name,
                    path,
                    self.model_name,
                )
                return None
        tracker = DriftTracker(reference, self.module_names, drift.window_batches, self.device)
        if not tracker.names:
            logger.warning("model %s: drift reference covers none of the monitored modules", self.model_name)
            return None
        return tracker


def _model_device(model: nn.Module) -> torch.device:
    tensor = next(model.parameters(), None)
    if tensor is None:
        tensor = next(model.buffers(), None)
    return tensor.device if tensor is not None else torch.device("cpu")


def _zero(device: torch.device) -> torch.Tensor:
    return torch.zeros((), dtype=torch.int64, device=device)
