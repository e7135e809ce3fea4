"""The in-process model monitor the inference worker wraps around each batched forward.

    monitor = ModelMonitor(model, "digits-cnn", MonitorConfig(), device)
    handle = monitor.attach()              # once, after model.eval() and .to(device)
    with monitor.observe_batch():          # per batch, around the single model(x)
        out = model(x)
    if monitor.shadow_due:                 # bf16/fp16 only, now and then: the fp32 shadow
        monitor.run_shadow(x, out)         # (the worker runs it once the batch's replies are sent)
    handle.remove()                        # at shutdown (or monitor.detach()): the model is as before

Batches come in three kinds, planned by :class:`SamplingController` within ``overhead_budget`` of the
forward time and no closer in time than the metrics need: *idle* (no hooks at all: on a 46 us MLP their
cost is more than a 3 % budget), *armed* (per-module latency, non-finite count of every full output,
forward-bypass detection) and *stats* (armed, plus activation stats and drift histograms).

On CUDA an armed batch's ``end_batch`` synchronizes once and copies everything in one transfer; an idle
one makes no CUDA call. Prometheus is touched only after the forward: per armed batch for latencies,
per ``publish_interval_s`` for gauges and for counters that move every batch (:class:`Publisher`).
Not thread-safe: one monitor per model per worker, used by the thread that runs the model. This module
runs the per-batch protocol; hooks, metering, publishing, drift, the shadow and the replay have their own.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from types import TracebackType

import torch
from torch import nn

from service.monitoring import hooks
from service.monitoring.config import MonitorConfig
from service.monitoring.drift import DriftTracker, Reference, load_tracker
from service.monitoring.hooks import BatchFlags, ModuleProbe, MonitorHandle, probe_hooks
from service.monitoring.incidents import Incidents
from service.monitoring.metering import CostMeter, time_idle_path
from service.monitoring.origin import Origin, locate_labelled
from service.monitoring.publishing import Publisher
from service.monitoring.sampling import SamplingController
from service.monitoring.selection import select_modules
from service.monitoring.shadow import SHADOWED_PRECISIONS, PrecisionShadow

_perf_counter = time.perf_counter


class ModelMonitor:
    """Forward-hook monitoring of one model in one process; see the module docstring for the protocol.

    ``reference`` overrides the drift reference file (``config.drift.reference``, else
    ``models/checkpoints/{model_name}.reference.safetensors``); without one, drift is off.
    ``precision`` is the served precision: for bf16/fp16 the fp32 shadow runs (``config.shadow``).
    """

    def __init__(
        self,
        model: nn.Module,
        model_name: str,
        config: MonitorConfig | None = None,
        device: torch.device | str | None = None,
        *,
        reference: Reference | None = None,
        precision: str = "fp32",
        version: str = "1",
    ) -> None:
        self.model = model
        self.model_name = model_name
        self.version = version  # the served version: request and module series carry it
        self.config = config or MonitorConfig()
        self.device = torch.device(device) if device is not None else _model_device(model)
        self._cuda = self.device.type == "cuda"
        selected = select_modules(model, self.config) if self.config.enabled else []
        self.probes = [ModuleProbe(i, name, module) for i, (name, module) in enumerate(selected)]
        self.incidents = Incidents(model_name)
        self._flags = BatchFlags(
            sample_elements=self.config.sample_elements,
            latency=self.config.latency,
            on_error=self.incidents.on_hook_error,
        )
        self._hooks = probe_hooks(self.probes, self._flags, self.incidents.on_bypass, cuda=self._cuda)
        budget = self.config.overhead_budget
        shadow = self.config.shadow
        self.shadow: PrecisionShadow | None = None
        if self.config.enabled and shadow.enabled and precision in SHADOWED_PRECISIONS:
            share = budget * shadow.budget_share
            self.shadow = PrecisionShadow(model, model_name, self.probes, shadow, share, self.device)
            budget -= share  # the hooks' sampling plans within the rest
        self.controller = SamplingController(
            budget, self.config.guard_every, self.config.stats_every,
            min_armed_s=self.config.min_armed_interval_s, min_stats_s=self.config.min_stats_interval_s,
        )  # fmt: skip
        self._reference = reference
        self._drift: DriftTracker | None = None
        self._publisher: Publisher | None = None
        self.meter = CostMeter(self.controller, cuda=self._cuda)
        self._dispatch_s = 0.0
        self._publish_interval_s = self.config.publish_interval_s
        self.attached = False
        self.handle: MonitorHandle | None = None  # the current attachment's
        self.batches = 0
        self._in_batch = False
        # The plan for the next batch to begin (and, during a batch, for that batch).
        self._armed = False
        self._stats = False
        self._next_armed = 0
        self._started = 0.0
        self._begin_s = 0.0
        self._last_forward_s = 0.0
        self._idle_batches = 0
        self._idle_forward_s = 0.0
        self._time_idle_at = -1
        self._timing_idle = False
        self._last_armed_kind = "armed"
        self._publish_at = 0.0
        self._last_summary = -math.inf
        self._paced = (0, 0.0)  # (batches, end time) at the last armed batch: the pace of traffic

    @property
    def shadow_due(self) -> bool:
        """True after a shadowed batch until :meth:`run_shadow` (the caller's part: it holds the input)."""
        return self.shadow is not None and self.shadow.pending

    @property
    def module_names(self) -> list[str]:
        return [probe.name for probe in self.probes]

    @property
    def drift_modules(self) -> list[str]:
        """Monitored modules that have a drift reference (empty when drift is off)."""
        return list(self._drift.names) if self._drift is not None else []

    # --- lifecycle ---------------------------------------------------------------------------------

    def attach(self) -> MonitorHandle:
        """Start monitoring: eval mode enforced, drift reference loaded, hooks armed for the first
        batches (then per the sampling plan). Returns the attachment's handle: ``handle.remove()`` is
        :meth:`detach`. Idempotent (a second call returns the same handle); when ``config.enabled`` is
        false nothing is attached and the handle's ``remove()`` does nothing."""
        if self.handle is not None:
            return self.handle
        self.handle = MonitorHandle(self)
        if not self.config.enabled:
            return self.handle
        self._dispatch_s = hooks.hook_dispatch_seconds()
        self._publisher = self._publisher or Publisher(self.model_name, self.module_names, self.version)
        if self._drift is None and self.probes:  # a re-attach keeps the window it had
            args = self.model, self.model_name, self.config.drift, self.module_names, self.device
            self._drift = load_tracker(*args, self._reference)
        self.meter.make_idle_events()
        self.incidents.enforce_eval(self.model)
        self.attached = True
        self.meter.idle_cost_s = self._time_idle_path()
        self._plan_next()
        self._paced = (self.batches, _perf_counter())
        self._publish_at = self._paced[1] + self._publish_interval_s
        return self.handle

    def detach(self) -> None:
        """Remove every hook and forward guard and publish what is pending; the model is left as found."""
        if self._in_batch:
            self.end_batch(failed=True)
        self._hooks.remove()
        if self.shadow is not None:
            self.shadow.remove()
        if self.attached:
            self.publish()
        self.attached = False
        self.handle = None

    # --- per batch ---------------------------------------------------------------------------------
    # An idle batch must cost well under a microsecond (3 % of a 46 us forward is 1.4 us): its path is
    # __enter__/__exit__ themselves, two clock reads and a few attribute updates. Anything else goes
    # through _begin_slow/_end_slow.

    def observe_batch(self) -> ModelMonitor:
        """Context manager around one ``model(x)``: :meth:`begin_batch` on entry, :meth:`end_batch` on exit
        (a batch that raised is discarded, not measured)."""
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        t_end = _perf_counter()
        if self._armed or exc_type is not None or not self._in_batch or self._timing_idle:
            self._end_slow(t_end, failed=exc_type is not None)
            return
        self._in_batch = False
        self._idle_forward_s += t_end - self._started
        self._idle_batches += 1
        self.batches += 1
        if self.batches == self._next_armed or t_end >= self._publish_at:
            self._after_idle(t_end)

    def begin_batch(self) -> ModelMonitor:
        """Call right before ``model(x)``. Returns the monitor (it is also ``__enter__``)."""
        if self._armed or not self.attached or self.model.training or self.batches == self._time_idle_at:
            self._begin_slow()
            return self
        self._in_batch = True
        self._started = _perf_counter()
        return self

    __enter__ = begin_batch  # one frame less per batch than a method that calls it

    def end_batch(self, *, failed: bool = False) -> float:
        """Call right after ``model(x)`` returns (or raised: ``failed=True``). Returns the forward's wall
        time in seconds (0.0 when not monitoring). On CUDA an armed batch synchronizes the device once,
        to read its events and results; an idle one does not (the worker's copy of the output to the
        host synchronizes anyway, and a sync of our own costs a launch-bound small model ~5-10 %), so
        its wall time is launch time there."""
        if not self._in_batch:
            return 0.0
        self._end_slow(_perf_counter(), failed=failed)
        return self._last_forward_s

    def _begin_slow(self) -> None:
        if not self.attached:
            return
        t_begin = _perf_counter()
        if self.model.training:
            self.incidents.enforce_eval(self.model)
        if self._armed:
            self._flags.stats = self._stats
            for probe in self.probes:
                probe.reset()
            self._hooks.arm()
            if self.shadow is not None:
                self.shadow.begin_armed()
        elif self.batches == self._time_idle_at:
            if self._cuda:
                self.meter.idle_events[0].record()
            self._timing_idle = True
        self._in_batch = True
        self._started = _perf_counter()
        self._begin_s = self._started - t_begin

    def _end_slow(self, t_end: float, *, failed: bool) -> None:
        if not self._in_batch:
            return
        if self._cuda and self._armed:
            torch.cuda.current_stream(self.device).synchronize()
            t_end = _perf_counter()
        forward_s = t_end - self._started
        self._last_forward_s = forward_s
        self._in_batch = False
        self.batches += 1
        if self._armed:
            with torch.inference_mode():
                self._end_armed(forward_s, t_end, failed)
            return
        if self._timing_idle:
            self._timing_idle = False
            if self._cuda:
                self.meter.idle_events[1].record()
                self.meter.idle_sample_pending = not failed
            elif not failed:
                self.controller.record_aftermath(forward_s, self._last_armed_kind)
        if not failed:
            self._idle_forward_s += forward_s
            self._idle_batches += 1
            if self.batches == self._next_armed or t_end >= self._publish_at:
                self._after_idle(t_end)

    def _after_idle(self, now: float) -> None:
        if self.batches == self._next_armed:
            self._plan_next()
        if now >= self._publish_at:
            self.publish()

    def _end_armed(self, forward_s: float, t_end: float, failed: bool) -> None:
        stats = self._stats
        self._last_armed_kind = "stats" if stats else "armed"
        hooks_s = 0.0
        if self.shadow is not None:
            forward_s -= self.shadow.end_armed(failed=failed)
        if failed:
            for probe in self.probes:
                probe.entered = False
        else:
            hooks_s = self._collect(t_end)
            self.meter.read_idle_sample()  # complete: this batch's synchronize waited for it
        self._flags.stats = False
        if not failed:
            self._flush_idle()
        outside_s = self._begin_s + (_perf_counter() - t_end)
        cost_s = hooks_s + outside_s
        if not failed:
            self.controller.record_pace(self.batches - self._paced[0], t_end - self._paced[1])
            self._paced = (self.batches, t_end)
            cost_s = self.controller.record_armed(forward_s, hooks_s, outside_s, stats=stats)
        planned = _perf_counter()
        self._plan_next()  # after record_armed: it may have changed the intervals
        self.meter.add(forward_s, cost_s + (_perf_counter() - planned))
        if t_end >= self._publish_at:
            self.publish()

    def _flush_idle(self) -> None:
        """Hand the idle batches since the last flush to the meter (and through it the controller)."""
        if self._idle_batches:
            self.meter.flush_idle(self._idle_batches, self._idle_forward_s)
            self._idle_batches, self._idle_forward_s = 0, 0.0

    def _plan_next(self) -> None:
        """Arm or disarm for the next batch, and remember when the next armed batch comes."""
        self._next_armed = self.controller.next_armed(self.batches)
        self._armed, self._stats = self.controller.plan(self.batches)
        # CUDA idle batches are not timed (no sync); time the one before the next armed batch with an
        # event pair, so the controller sees idle forward time and what armed batches cost beyond it.
        # On CPU every batch is timed; the one right after an armed batch is looked at on its own.
        if self._cuda and self._next_armed - 1 >= self.batches:
            self._time_idle_at = self._next_armed - 1
        elif not self._cuda and not self._armed:
            self._time_idle_at = self.batches
        if self._armed:
            self._hooks.arm()
        else:
            self._hooks.disarm()
        if self.shadow is not None:
            self.shadow.plan(self._armed, self.batches, self.controller.forward_s)

    def _time_idle_path(self) -> float:
        """Price one idle batch (see :func:`~service.monitoring.metering.time_idle_path`), planned idle for
        the duration; the monitor's state is put back afterwards."""
        saved = (self.batches, self._idle_batches, self._idle_forward_s, self._publish_at, self._next_armed)
        self._armed, self._publish_at, self._next_armed, self._time_idle_at = False, math.inf, -1, -1
        cost = time_idle_path(self)
        self.batches, self._idle_batches, self._idle_forward_s, self._publish_at, self._next_armed = saved
        return cost

    def publish(self) -> None:
        """Push counters that move every batch, re-check training mode, export the sampling intervals.
        Called after a batch every ``publish_interval_s``; call it directly to flush."""
        started = _perf_counter()
        self._publish_at = started + self._publish_interval_s
        self.incidents.enforce_eval(self.model)
        self._flush_idle()
        assert self._publisher is not None, "publish before attach"
        intervals = self.controller.guard_every, self.controller.stats_every
        self._publisher.push_counters(*self.meter.take(), *self.incidents.take(), *intervals)
        self.meter.overhead_s += _perf_counter() - started

    # --- the precision shadow ---------------------------------------------------------------------

    def run_shadow(self, x: torch.Tensor, served: torch.Tensor) -> None:
        """After a batch that left ``shadow_due`` set: run its input ``x`` again in fp32 and compare with
        the served run (``served``: its output). Call it between batches, outside autocast, e.g. once
        the batch's replies are sent; its cost counts as monitoring overhead. A no-op otherwise."""
        shadow = self.shadow
        if shadow is None or not shadow.pending:
            return
        with self._hooks.suspended():  # the fp32 pass is not a served batch: no latencies, counts or stats
            cost = shadow.run(x, served, self.batches - 1, self.controller.forward_s)
        self.meter.add(0.0, cost)
        shadow.plan(self._armed, self.batches, self.controller.forward_s)  # the next batch may be shadowed

    # --- rare events --------------------------------------------------------------------------------

    def locate_nonfinite(
        self, x: torch.Tensor, context: Callable[[], AbstractContextManager]
    ) -> list[Origin | None]:
        """Replay ``x`` (instances whose output went non-finite) once with every module hooked, inside
        ``context()`` (the served precision); per instance, the origin as a monitored-module label (see
        :mod:`service.monitoring.origin`), or ``None`` when the replay came out finite. Call between
        batches. The monitor's own hooks sit the replay out; its cost counts as monitoring overhead."""
        started = _perf_counter()
        with self.sitting_out():
            located = locate_labelled(self.model, x.to(self.device), context, self.module_names)
        self.meter.add(0.0, _perf_counter() - started)
        return located

    @contextmanager
    def sitting_out(self) -> Iterator[None]:
        """The monitor's hooks and the shadow's capture sit out the passes inside: no served batches."""
        with self._hooks.suspended(), self.shadow.capture_suspended() if self.shadow else nullcontext():
            yield

    def count_origin(self, module: str) -> None:
        """Count one request whose non-finite output started at ``module``."""
        if self._publisher is None:  # never attached (monitoring disabled): bind the children now
            self._publisher = Publisher(self.model_name, self.module_names, self.version)
        self._publisher.count_origin(module)

    # --- internals ---------------------------------------------------------------------------------

    def _collect(self, now: float) -> float:
        """Publish what the hooks recorded in an armed batch (see :meth:`Publisher.collect`); returns
        the hooks' own time (timed bodies plus the calibrated dispatch cost per hooked call)."""
        probes = self.probes
        hooks_s = self._dispatch_s * sum(probe.calls for probe in probes) + sum(p.body_s for p in probes)
        summary = self._flags.stats and now - self._last_summary >= self._publish_interval_s
        if summary:
            self._last_summary = now
        assert self._publisher is not None, "publish before attach"
        self._publisher.collect(
            probes, self._drift, stats=self._flags.stats, summary=summary, latency=self._flags.latency,
            cuda=self._cuda,
        )  # fmt: skip
        return hooks_s


def _model_device(model: nn.Module) -> torch.device:
    tensor = next(model.parameters(), None)
    if tensor is None:
        tensor = next(model.buffers(), None)
    return tensor.device if tensor is not None else torch.device("cpu")
