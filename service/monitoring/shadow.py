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
from contextlib import AbstractContextManager
from typing import Any

import torch
from torch import nn

from service.monitoring import metrics
from service.monitoring.config import ShadowConfig
from service.monitoring.hooks import HookSet, ModuleProbe
from service.monitoring.stats import first_tensor

OUTPUT = "<output>"  # the module label of the final output's comparison
SHADOWED_PRECISIONS = ("bf16", "fp16")
_perf_counter = time.perf_counter


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
        self._capture = HookSet(post=[(p.module, self._capture_hook(i)) for i, p in enumerate(probes)])
        self._compare = HookSet(post=[(p.module, self._compare_hook(i)) for i, p in enumerate(probes)])
        # The served batch being captured now, and whether a captured one waits for run() (the caller's
        # part: it holds the input), one at a time.
        self.capturing_batch = False
        self.pending = False
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

    # --- the monitor's per-batch protocol ------------------------------------------------------------

    def plan(self, armed: bool, batch: int, forward_s: float | None) -> None:
        """Capture batch number ``batch`` if it is armed and a shadow is due (not while the last
        capture waits for :meth:`run`)."""
        self.capturing_batch = armed and not self.pending and self.due(batch, forward_s)
        if self.capturing_batch:
            self.arm_capture()
        else:
            self.disarm_capture()

    def begin_armed(self) -> None:
        """An armed batch begins: a capture never run in fp32 is dropped."""
        if self.pending:
            self.pending = False
            self.discard()

    def end_armed(self, *, failed: bool) -> float:
        """An armed batch ended: a capture becomes pending (or is dropped if the batch failed). Returns
        the seconds its copies took, which are the shadow's cost, not the forward's."""
        if not self.capturing_batch:
            return 0.0
        self.capturing_batch = False
        self.disarm_capture()
        if failed:
            self.discard()
            return 0.0
        self.pending = True
        return self.capture_s

    # --- the served forward's capture ----------------------------------------------------------------

    def arm_capture(self) -> None:
        self.discard()
        self._capture.arm()

    def disarm_capture(self) -> None:
        self._capture.disarm()

    def capture_suspended(self) -> AbstractContextManager[None]:
        """No capture for the duration (a replay), then as it was."""
        return self._capture.suspended()

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
            diffs.append(max_abs_diff(tensor, captured[call]))

        return hook

    # --- the shadow forward ----------------------------------------------------------------------------

    def run(self, x: torch.Tensor, served: torch.Tensor, batch: int, forward_s: float | None) -> float:
        """Run ``x`` in fp32 and compare with the served forward's captures and output ``served``;
        publish, replan, and return the cost in seconds (the copies during the served forward
        included)."""
        started = _perf_counter()
        self.pending = False
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
            [agree.sum().float(), finite.sum().float(), max_abs_diff(served, reference), *per_module]
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
        self.pending = self.capturing_batch = False


def max_abs_diff(tensor: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """max |tensor - reference| as a 0-d float32 tensor. Where both overflowed alike (Inf - Inf) it
    counts 0; where only one is non-finite, Inf: an overflow the other precision does not have."""
    a, b = tensor.float(), reference.float()
    if not a.numel():
        return torch.zeros((), device=a.device)
    diff = torch.where(a == b, 0.0, (a - b).abs())  # equal infinities: no difference
    diff = torch.where(torch.isnan(a) & torch.isnan(b), 0.0, diff)
    return torch.nan_to_num(diff, nan=math.inf).amax()  # NaN on one side only: as far apart as it gets
