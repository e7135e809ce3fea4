"""Live precision shadow: a budgeted fraction of a bf16/fp16 model's live batches, re-run in fp32.

Start-up checks reduced precision on calibration data only; live traffic can drift into ranges where
bf16/fp16 flips the argmax. For a model served under autocast, :class:`PrecisionShadow` picks some
armed batches (within its share of the monitor's overhead budget) and

1. during the served forward, a capture hook on each monitored module keeps a copy of its output
   (at the served precision);
2. after the batch (the worker calls it once the batch's replies are sent), runs the same input again
   with autocast off, same weights, where a compare hook on each monitored module takes the max
   ``|fp32 - served|`` of its output, and compares the final outputs: max ``|diff|`` of the
   probabilities and whether the top-1 class agrees, per instance.

Results go into a rolling window of the last ``window_instances`` shadowed instances:
``hookserve_shadow_top1_agreement{model}`` (published once the window holds ``min_instances``),
``hookserve_shadow_max_abs_diff{model,module}`` (max over the window; ``module="<output>"`` for the
probabilities), and ``hookserve_shadow_batches_total{model}``. The shadow's cost (the copies, the fp32
forward, the comparisons) is monitoring overhead: it is reported in
``hookserve_monitor_overhead_seconds_total`` and the shadow interval is chosen so that it stays
within ``budget_share`` of ``overhead_budget`` (the sampling controller plans the hooks within the
rest).

Memory: a shadow batch holds a copy of every monitored module's output for the batch at the served
precision (freed after the comparison), plus the fp32 forward's own transient activations (about twice
those of a bf16/fp16 forward): on a GPU, size the headroom for one extra fp32 forward at
``max_batch_size``.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from service.monitoring import metrics
from service.monitoring.config import ShadowConfig
from service.monitoring.hooks import ModuleProbe
from service.monitoring.stats import first_tensor

OUTPUT = "<output>"  # the module label of the final output's comparison
SHADOWED_PRECISIONS = ("bf16", "fp16")
_perf_counter = time.perf_counter


class _ToggledHooks:
    """Forward hooks registered once and then put into / taken out of the modules' hook dicts (as
    :class:`~service.monitoring.hooks.HookSet` does), so arming costs ~0.3 us per module."""

    def __init__(self, pairs: list[tuple[nn.Module, Callable[..., None]]]) -> None:
        self._pairs = pairs
        self._handles: list[RemovableHandle] = []
        self._entries: list[tuple[dict, int, Callable[..., None]]] = []
        self.armed = False

    def arm(self) -> None:
        if self.armed:
            return
        if not self._handles:
            for module, hook in self._pairs:
                handle = module.register_forward_hook(hook)
                self._handles.append(handle)
                self._entries.append((handle.hooks_dict_ref(), handle.id, hook))
        else:
            for hooks, key, hook in self._entries:
                hooks[key] = hook
        self.armed = True

    def disarm(self) -> None:
        if not self.armed:
            return
        for hooks, key, _ in self._entries:
            hooks.pop(key, None)
        self.armed = False

    def remove(self) -> None:
        self.disarm()
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._entries.clear()


class PrecisionShadow:
    """The fp32 shadow of one reduced-precision model (see the module docstring)."""

    MAX_EVERY = 100_000
    SMOOTHING = 0.2

    def __init__(
        self,
        model: nn.Module,
        model_name: str,
        probes: list[ModuleProbe],
        config: ShadowConfig,
        budget: float,
        device: torch.device,
    ) -> None:
        self.model = model
        self.model_name = model_name
        self.config = config
        self.budget = budget  # the shadow's share of the overhead budget, as a fraction of forward time
        self.device = device
        self._names = [probe.name for probe in probes]
        n = len(probes)
        self._captured: list[list[torch.Tensor]] = [[] for _ in range(n)]
        self._compared: list[int] = [0] * n
        self._diffs: list[list[torch.Tensor]] = [[] for _ in range(n)]
        self.capture_s = 0.0
        self._capture = _ToggledHooks([(p.module, self._capture_hook(i)) for i, p in enumerate(probes)])
        self._compare = _ToggledHooks([(p.module, self._compare_hook(i)) for i, p in enumerate(probes)])
        # Rolling window: one (agreeing, instances, per-module max diffs + output's) per shadow batch.
        self._window: deque[tuple[int, int, list[float]]] = deque()
        self._window_instances = 0
        self.every = config.every or 1
        self.cost_s: float | None = None
        self.last_batch: int | None = None
        self.batches = 0
        self.top1_agreement: float | None = None  # over the window, once it holds min_instances
        self.max_abs_diff: dict[str, float] = {}
        self._batches_child = metrics.SHADOW_BATCHES.labels(model_name)
        self._agreement_child = None  # bound on first value: 0 before the window fills would page
        self._diff_children: dict[str, Any] = {}

    # --- scheduling ----------------------------------------------------------------------------------

    def due(self, batch: int, forward_s: float | None) -> bool:
        """Whether batch number ``batch`` (an armed one) should be shadowed. Adaptive intervals wait for
        the monitor's forward-time estimate (``forward_s``); the first shadow then measures the cost."""
        if self.config.every is None and forward_s is None:
            return False
        return self.last_batch is None or batch - self.last_batch >= self.every

    def _replan(self, cost_s: float, forward_s: float | None) -> None:
        self.cost_s = cost_s if self.cost_s is None else self.cost_s + self.SMOOTHING * (cost_s - self.cost_s)
        if self.config.every is not None:
            return
        if not forward_s or forward_s <= 0.0:
            return
        allowance = self.budget * forward_s
        self.every = min(max(math.ceil(self.cost_s / allowance), 1), self.MAX_EVERY)

    # --- the served forward's capture ----------------------------------------------------------------

    def arm_capture(self) -> None:
        self.discard()
        self._capture.arm()

    def disarm_capture(self) -> None:
        self._capture.disarm()

    @property
    def capturing(self) -> bool:
        return self._capture.armed

    def discard(self) -> None:
        """Forget a capture nobody compared (a failed batch, a caller that never ran the shadow)."""
        for captured in self._captured:
            captured.clear()
        self.capture_s = 0.0

    def _capture_hook(self, index: int) -> Callable[..., None]:
        captured = self._captured[index]

        def hook(module: nn.Module, args: Any, output: Any) -> None:
            started = _perf_counter()
            tensor = first_tensor(output)
            if tensor is not None and tensor.is_floating_point():
                captured.append(tensor.detach().clone())  # later in-place ops must not reach it
            self.capture_s += _perf_counter() - started

        return hook

    def _compare_hook(self, index: int) -> Callable[..., None]:
        captured, diffs, compared = self._captured[index], self._diffs[index], self._compared

        def hook(module: nn.Module, args: Any, output: Any) -> None:
            call = compared[index]
            compared[index] = call + 1
            tensor = first_tensor(output)
            if tensor is None or call >= len(captured) or captured[call].shape != tensor.shape:
                return
            diffs.append(_max_abs_diff(tensor, captured[call]))

        return hook

    # --- the shadow forward ----------------------------------------------------------------------------

    def run(self, x: torch.Tensor, served: torch.Tensor, batch: int, forward_s: float | None) -> float:
        """Run ``x`` in fp32 and compare with the served forward's captures and output ``served``;
        publish, replan, and return the cost in seconds (the copies during the served forward
        included)."""
        started = _perf_counter()
        self._capture.disarm()
        try:
            with torch.inference_mode(), torch.autocast(self.device.type, enabled=False):
                self._compare.arm()
                try:
                    reference = self.model(x)
                finally:
                    self._compare.disarm()
                host = self._compare_outputs(served, reference)
        finally:
            self._reset_compare()
        self._record(*host)
        cost = _perf_counter() - started + self.capture_s
        self.capture_s = 0.0
        self.last_batch = batch
        self._replan(cost, forward_s)
        return cost

    def _compare_outputs(self, served: torch.Tensor, reference: torch.Tensor) -> tuple[int, int, list[float]]:
        served, reference = served.float(), reference.float()
        finite = torch.isfinite(served).reshape(len(served), -1).all(dim=1)
        agree = (served.argmax(dim=1) == reference.argmax(dim=1)) & finite
        zero = torch.zeros((), device=served.device)
        per_module = [torch.stack(d).amax() if d else zero.new_full((), math.nan) for d in self._diffs]
        values = torch.stack(
            [agree.sum().float(), finite.sum().float(), _max_abs_diff(served, reference), *per_module]
        )
        flat = values.tolist()  # the one host copy (a sync on CUDA)
        return int(flat[0]), int(flat[1]), [*flat[3:], flat[2]]

    def _reset_compare(self) -> None:
        for i in range(len(self._compared)):
            self._compared[i] = 0
            self._diffs[i].clear()
            self._captured[i].clear()

    def _record(self, agreeing: int, instances: int, diffs: list[float]) -> None:
        self.batches += 1
        self._batches_child.inc()
        if instances:
            self._window.append((agreeing, instances, diffs))
            self._window_instances += instances
            while len(self._window) > 1 and self._window_instances - self._window[0][1] >= (
                self.config.window_instances
            ):
                self._window_instances -= self._window.popleft()[1]
        if self._window_instances >= self.config.min_instances:
            self.top1_agreement = sum(w[0] for w in self._window) / self._window_instances
            if self._agreement_child is None:
                self._agreement_child = metrics.SHADOW_TOP1_AGREEMENT.labels(self.model_name)
            self._agreement_child.set(self.top1_agreement)
        for position, name in enumerate([*self._names, OUTPUT]):
            values = [w[2][position] for w in self._window if not math.isnan(w[2][position])]
            if not values:
                continue
            self.max_abs_diff[name] = value = max(values)
            child = self._diff_children.get(name)
            if child is None:
                child = self._diff_children[name] = metrics.SHADOW_MAX_ABS_DIFF.labels(self.model_name, name)
            child.set(value)

    def remove(self) -> None:
        self._capture.remove()
        self._compare.remove()
        self.discard()


def _max_abs_diff(tensor: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """max |tensor - reference| as a 0-d float32 tensor. Where both overflowed alike (Inf - Inf) it
    counts 0; where only one is non-finite, Inf: an overflow the other precision does not have."""
    a, b = tensor.float(), reference.float()
    if not a.numel():
        return torch.zeros((), device=a.device)
    diff = torch.where(a == b, 0.0, (a - b).abs())  # equal infinities: no difference
    diff = torch.where(torch.isnan(a) & torch.isnan(b), 0.0, diff)
    return torch.nan_to_num(diff, nan=math.inf).amax()  # NaN on one side only: as far apart as it gets
