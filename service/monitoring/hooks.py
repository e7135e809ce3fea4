"""Forward hooks on the selected modules, and a guard that notices forwards that skip them.

Each monitored module gets a forward-pre hook (start time / CUDA start event, and an "entered through
``__call__``" flag), a forward hook (end time, non-finite check of the full output, and on stats batches
a float32 subsample), and a thin wrapper on its ``forward`` attribute that finds the flag unset when a
parent called ``child.forward(x)`` directly: hooks silently skip such calls.

What the hooks record goes into one :class:`ModuleProbe` per module: plain attributes, no Prometheus
calls, no device syncs. The monitor reads and resets the probes after each batch.

:class:`HookSet` keeps every :class:`~torch.utils.hooks.RemovableHandle` and the previous ``forward``
attribute, so :meth:`HookSet.remove` leaves each module exactly as it found it; the precision shadow
toggles its own hooks with one too. :class:`MonitorHandle` is what attaching a monitor returns.
"""

from __future__ import annotations

import itertools
import math
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Protocol

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from service.monitoring.stats import count_nonfinite, finite_count, first_tensor, full_sum, take_subsample

_MISSING = object()
_perf_counter = time.perf_counter
_isfinite = math.isfinite
_Tensor = torch.Tensor


class ModuleProbe:
    """What the hooks saw of one module since the last reset (one batch, normally)."""

    __slots__ = (
        "body_s",
        "calls",
        "elapsed_s",
        "entered",
        "events",
        "finite_counts",
        "index",
        "module",
        "name",
        "nonfinite",
        "sample",
        "started",
        "unverified",
    )

    def __init__(self, index: int, name: str, module: nn.Module) -> None:
        self.index = index
        self.name = name
        self.module = module
        self.entered = False
        self.events: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []
        self.nonfinite = 0
        self.reset()

    def reset(self) -> None:
        """Forget the last batch (non-finite counts are kept until published)."""
        self.calls = 0
        self.started = 0.0
        self.elapsed_s = 0.0
        self.body_s = 0.0
        self.sample: torch.Tensor | None = None
        self.finite_counts: list[torch.Tensor] = []
        self.unverified = 0

    def event_pair(self, call: int) -> tuple[torch.cuda.Event, torch.cuda.Event]:
        """The CUDA events timing the ``call``-th call in this batch (pooled: created once, reused)."""
        while len(self.events) <= call:
            self.events.append((torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)))
        return self.events[call]


def _ignore_error(probe: ModuleProbe, exc: Exception) -> None:
    """Default error sink (calibration); the monitor passes one that logs."""


@dataclass(slots=True)
class BatchFlags:
    """Per-batch switches the hooks read (one attribute load each), and where hook errors go."""

    stats: bool = False
    sample_elements: int = 4096
    latency: bool = True
    on_error: Callable[[ModuleProbe, Exception], None] = _ignore_error


class HookSet:
    """Forward(-pre) hooks registered once, then only put into and taken out of their modules' hook
    dicts; optionally a bypass guard on each probe's module while armed.

    :meth:`arm` registers the hooks the first time (keeping every handle) and later only puts them back
    into the modules' hook dicts; :meth:`disarm` takes them out, so a module whose dicts are empty again
    runs nn.Module's fast path. Re-registering costs ~6 us per module (a handle, weakrefs, dict churn),
    and measured cold after idle batches ~17 us: toggling dict entries costs ~0.3 us. :meth:`remove`
    disarms and removes every handle, leaving nothing behind. The monitor's probes
    (:func:`probe_hooks`) and the precision shadow's capture and compare hooks are each one set.
    """

    def __init__(
        self,
        pre: Sequence[tuple[nn.Module, Callable[..., Any]]] = (),
        post: Sequence[tuple[nn.Module, Callable[..., Any]]] = (),
        *,
        guarded: Sequence[ModuleProbe] = (),
        on_bypass: Callable[[ModuleProbe], None] = lambda probe: None,
    ) -> None:
        self._pre, self._post = list(pre), list(post)
        self._guarded = list(guarded)
        self._on_bypass = on_bypass
        self._handles: list[RemovableHandle] = []
        # (hook dict, handle id, hook): what arm/disarm put into and take out of each module.
        self._entries: list[tuple[dict[int, Callable[..., Any]], int, Callable[..., Any]]] = []
        self._forwards: list[tuple[nn.Module, Any, Callable[..., Any]]] = []
        self.armed = False

    def arm(self) -> None:
        if self.armed:
            return
        if not self._handles:
            self._register()
        else:
            for hooks, key, hook in self._entries:
                hooks[key] = hook
        for probe in self._guarded:
            module = probe.module
            previous = module.__dict__.get("forward", _MISSING)
            guard = _guarded_forward(probe, module.forward, self._on_bypass)
            # Straight into __dict__: nn.Module.__setattr__ costs ~1 us and does nothing for a function.
            module.__dict__["forward"] = guard
            self._forwards.append((module, previous, guard))
            probe.entered = False
        self.armed = True

    def disarm(self) -> None:
        if not self.armed:
            return
        for hooks, key, _ in self._entries:
            hooks.pop(key, None)
        for module, previous, guard in reversed(self._forwards):
            if module.__dict__.get("forward") is not guard:
                continue  # someone replaced it after us: theirs wins, ours is gone anyway
            if previous is _MISSING:
                del module.__dict__["forward"]
            else:
                module.__dict__["forward"] = previous
        self._forwards.clear()
        self.armed = False

    @contextmanager
    def suspended(self) -> Iterator[None]:
        """Disarmed for the duration (a pass that is no served batch), then as it was."""
        armed = self.armed
        self.disarm()
        try:
            yield
        finally:
            if armed:
                self.arm()

    def remove(self) -> None:
        self.disarm()
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._entries.clear()

    def _register(self) -> None:
        for module, hook in self._pre:
            self._keep(module.register_forward_pre_hook(hook), hook)
        for module, hook in self._post:
            self._keep(module.register_forward_hook(hook), hook)

    def _keep(self, handle: RemovableHandle, hook: Callable[..., Any]) -> None:
        self._handles.append(handle)
        self._entries.append((handle.hooks_dict_ref(), handle.id, hook))


def probe_hooks(
    probes: list[ModuleProbe], flags: BatchFlags, on_bypass: Callable[[ModuleProbe], None], *, cuda: bool
) -> HookSet:
    """The monitor's hooks: a timing pre hook and a measuring post hook per probe, and its guard."""
    make = _cuda_hooks if cuda else _cpu_hooks
    pairs = [make(probe, flags) for probe in probes]
    return HookSet(
        pre=[(probe.module, pre) for probe, (pre, _) in zip(probes, pairs, strict=True)],
        post=[(probe.module, post) for probe, (_, post) in zip(probes, pairs, strict=True)],
        guarded=probes,
        on_bypass=on_bypass,
    )


def _guarded_forward(
    probe: ModuleProbe, original: Callable[..., Any], on_bypass: Callable[[ModuleProbe], None]
) -> Callable[..., Any]:
    def forward(*args: Any, **kwargs: Any) -> Any:
        if probe.entered:
            probe.entered = False
        else:
            on_bypass(probe)
        return original(*args, **kwargs)

    return forward


def _cpu_hooks(probe: ModuleProbe, flags: BatchFlags) -> tuple[Callable[..., None], Callable[..., None]]:
    """Wall-clock hooks. On CPU, reading a 0-d sum is no device sync (~0.2 us), so the non-finite check
    branches right away and counts exactly only when the sum is not finite."""

    def pre(module: nn.Module, args: Any) -> None:
        probe.entered = True
        probe.started = _perf_counter()

    def post(module: nn.Module, args: Any, output: Any) -> None:
        t_end = _perf_counter()
        probe.elapsed_s += t_end - probe.started
        probe.calls += 1
        tensor = output if type(output) is _Tensor else first_tensor(output)
        if tensor is not None and tensor.is_floating_point():
            try:
                if not _isfinite(full_sum(tensor).item()):
                    probe.nonfinite += count_nonfinite(tensor)
                if flags.stats:
                    probe.sample = take_subsample(tensor, flags.sample_elements)
            except Exception as exc:  # a monitoring bug must not fail the request
                flags.on_error(probe, exc)
        probe.body_s += _perf_counter() - t_end

    return pre, post


def _cuda_hooks(probe: ModuleProbe, flags: BatchFlags) -> tuple[Callable[..., None], Callable[..., None]]:
    """Event-timed hooks that never synchronize: events and counts are read once after the batch."""

    def pre(module: nn.Module, args: Any) -> None:
        probe.entered = True
        if flags.latency:
            probe.event_pair(probe.calls)[0].record()

    def post(module: nn.Module, args: Any, output: Any) -> None:
        t_start = _perf_counter()
        if flags.latency:
            probe.event_pair(probe.calls)[1].record()
        probe.calls += 1
        tensor = output if type(output) is _Tensor else first_tensor(output)
        if tensor is not None and tensor.is_floating_point():
            try:
                probe.finite_counts.append(finite_count(tensor))
                probe.unverified += tensor.numel()  # minus the finite count, read after the batch
                if flags.stats:
                    probe.sample = take_subsample(tensor, flags.sample_elements)
            except Exception as exc:  # a monitoring bug must not fail the request
                flags.on_error(probe, exc)
        probe.body_s += _perf_counter() - t_start

    return pre, post


@lru_cache(maxsize=1)
def hook_dispatch_seconds() -> float:
    """Per-call cost of *having* our hooks and guard on a module (nn.Module's slow call path plus the
    hook frames), which no timer inside a hook can see. Measured once per process on a tiny layer,
    best of several interleaved repeats; the monitor adds it per hooked call to its own cost."""
    layer = nn.Linear(4, 4)
    x = torch.zeros(1, 4)
    probe = ModuleProbe(0, "calibration", layer)
    hooks = probe_hooks([probe], BatchFlags(), lambda p: None, cuda=False)
    best = {True: math.inf, False: math.inf}
    calls = 300
    with torch.inference_mode():
        for _ in range(7):
            for armed in (False, True):
                if armed:
                    hooks.arm()
                start = _perf_counter()
                for _ in range(calls):
                    layer(x)
                best[armed] = min(best[armed], (_perf_counter() - start) / calls)
                hooks.disarm()
    hooks.remove()
    # The post hook's body (sum + read) is timed inside the hook already: only the dispatch remains.
    body = probe.body_s / max(probe.calls, 1)
    return max(best[True] - best[False] - body, 0.0)


class _Attachment(Protocol):
    handle: MonitorHandle | None

    def detach(self) -> None: ...


class MonitorHandle:
    """What :meth:`ModelMonitor.attach` returns: ``remove()`` detaches, in the manner of
    :class:`torch.utils.hooks.RemovableHandle` (also a context manager that removes on exit).

    Holds the monitor weakly and names one attachment: ``remove()`` on the handle of an attachment
    that was already detached (and perhaps attached again since) does nothing, so a stale handle
    never takes hooks off someone else's attachment.
    """

    _ids = itertools.count()

    def __init__(self, monitor: _Attachment) -> None:
        self.id = next(MonitorHandle._ids)
        self._monitor_ref = weakref.ref(monitor)

    @property
    def monitor(self) -> _Attachment | None:
        return self._monitor_ref()

    @property
    def attached(self) -> bool:
        monitor = self._monitor_ref()
        return monitor is not None and monitor.handle is self

    def remove(self) -> None:
        monitor = self._monitor_ref()
        if monitor is not None and monitor.handle is self:
            monitor.detach()

    def __enter__(self) -> MonitorHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()
