"""The mirror's comparison: a candidate version against the serving one, on the same inputs, module by module.

The worker keeps copies of some answered requests' inputs (``service/worker/mirror.py``) and, once their
replies are sent, hands them here as one batch. :class:`MirrorComparator` runs the serving model on it
with a capture hook on every shared module (a monitored module of the serving model that the candidate
has under the same dotted name), then the candidate with a compare hook on the same modules, and
compares: per module the max ``|candidate - serving|`` of its output (where the shapes match) and a
subsample of each side's values; at the output, the max ``|diff|`` of the probabilities and whether the
top-1 class agrees, per instance. No hook runs on the served path: the serving model is run again.

:class:`MirrorWindow` keeps the last ``window_instances`` mirrored instances and publishes
``hookserve_mirror_top1_agreement{model,version}``, ``hookserve_mirror_max_abs_diff{model,version,module}``
(``module="<output>"``: the probabilities) and ``hookserve_mirror_activation_psi{model,version,module}``:
the candidate's activation histogram against the serving one's, with bin edges at quantiles of the
serving activations of the first mirrored batch, through :mod:`service.monitoring.drift`'s PSI code
(< 0.1 the same distribution, > 0.25 a different one). ``version`` is the candidate's.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from service.monitoring import metrics
from service.monitoring.drift import histogram, psi_terms, quantile_edges
from service.monitoring.hooks import HookSet
from service.monitoring.shadow import OUTPUT, max_abs_diff
from service.monitoring.stats import first_tensor, take_subsample

SAMPLE_VALUES = 2048  # values of each module's output per mirrored batch that go into the histograms
BINS = 10  # quantile bins of the serving activations (the drift reference's default)
RunMode = Callable[[nn.Module], AbstractContextManager[Any]]  # how a forward runs (inference mode, autocast)


@dataclass
class BatchComparison:
    """One mirrored batch compared: ``diffs`` per shared module, then the output's (NaN: not comparable);
    ``samples`` per shared module as (serving, candidate) float32 subsamples (None: not called)."""

    agreeing: int
    instances: int
    diffs: list[float]
    samples: list[tuple[torch.Tensor | None, torch.Tensor | None]]


class MirrorComparator:
    """Runs both versions on one batch and compares them (see the module docstring)."""

    def __init__(self, serving: nn.Module, candidate: nn.Module, module_names: list[str]) -> None:
        self.serving = serving
        self.candidate = candidate
        serving_modules, candidate_modules = dict(serving.named_modules()), dict(candidate.named_modules())
        self.names = [name for name in module_names if name in serving_modules and name in candidate_modules]
        n = len(self.names)
        self._captured: list[list[torch.Tensor]] = [[] for _ in range(n)]
        self._diffs: list[list[torch.Tensor]] = [[] for _ in range(n)]
        self._pairs: list[list[tuple[torch.Tensor, torch.Tensor]]] = [
            [] for _ in range(n)
        ]  # (candidate, serving)
        self._calls = [0] * n
        self._samples: list[list[torch.Tensor | None]] = [[None, None] for _ in range(n)]
        self._capture = HookSet(
            post=[(serving_modules[m], self._capture_hook(i)) for i, m in enumerate(self.names)]
        )
        self._compare = HookSet(
            post=[(candidate_modules[m], self._compare_hook(i)) for i, m in enumerate(self.names)]
        )

    def compare(self, x: torch.Tensor, run_mode: RunMode) -> BatchComparison:
        """Both models on ``x``, each inside ``run_mode(model)``; one host copy of the results."""
        try:
            with run_mode(self.serving):
                self._capture.arm()
                try:
                    served = self.serving(x)
                finally:
                    self._capture.disarm()
            with run_mode(self.candidate):
                self._compare.arm()
                try:
                    candidate = self.candidate(x)
                finally:
                    self._compare.disarm()
            with torch.inference_mode():
                return self._result(served, candidate)
        finally:
            self._reset()

    def _result(self, served: torch.Tensor, candidate: torch.Tensor) -> BatchComparison:
        served, candidate = served.float(), candidate.float()
        nan = served.new_full((), math.nan)
        if served.shape == candidate.shape:
            finite = torch.isfinite(candidate).reshape(len(candidate), -1).all(dim=1)
            agree = ((served.argmax(dim=1) == candidate.argmax(dim=1)) & finite).sum().float()
            output_diff = _fast_diff(candidate, served)
        else:  # other classes: nothing agrees (the worker refuses such a candidate at start)
            agree, output_diff = served.new_zeros(()), nan
        per_module = [torch.stack(d).amax() if d else nan for d in self._diffs]
        flat = torch.stack([agree, output_diff, *per_module]).tolist()  # the one host copy
        diffs = flat[2:]
        for i, value in enumerate(diffs):  # NaN from NaN or Inf - Inf: the exact rule, on the rare case
            if math.isnan(value) and self._diffs[i]:
                diffs[i] = max(max_abs_diff(a, b).item() for a, b in self._pairs[i])
        if math.isnan(flat[1]) and served.shape == candidate.shape:
            flat[1] = max_abs_diff(candidate, served).item()
        samples = [(s[0], s[1]) for s in self._samples]
        return BatchComparison(int(flat[0]), len(served), [*diffs, flat[1]], samples)

    def _capture_hook(self, index: int) -> Callable[..., None]:
        captured, samples = self._captured[index], self._samples[index]

        def hook(module: nn.Module, args: Any, output: Any) -> None:
            tensor = first_tensor(output)
            if tensor is None or not tensor.is_floating_point():
                return
            captured.append(tensor.detach().clone())  # later in-place ops must not reach it
            if samples[0] is None:
                samples[0] = take_subsample(tensor, SAMPLE_VALUES)

        return hook

    def _compare_hook(self, index: int) -> Callable[..., None]:
        captured, diffs, pairs = self._captured[index], self._diffs[index], self._pairs[index]
        calls, samples = self._calls, self._samples[index]

        def hook(module: nn.Module, args: Any, output: Any) -> None:
            call = calls[index]
            calls[index] = call + 1
            tensor = first_tensor(output)
            if tensor is None or not tensor.is_floating_point():
                return
            if samples[1] is None:
                samples[1] = take_subsample(tensor, SAMPLE_VALUES)
            if call < len(captured) and captured[call].shape == tensor.shape and tensor.numel():
                tensor = tensor.detach().clone()  # for the exact rule, should this one come out NaN
                pairs.append((tensor, captured[call]))
                diffs.append(_fast_diff(tensor, captured[call]))

        return hook

    def _reset(self) -> None:
        for i in range(len(self.names)):
            self._captured[i].clear()
            self._diffs[i].clear()
            self._pairs[i].clear()
            self._calls[i] = 0
            self._samples[i][:] = [None, None]

    def remove(self) -> None:
        """Take every hook out: both models are left as they were found."""
        self._capture.remove()
        self._compare.remove()


@dataclass
class _Entry:
    agreeing: int
    instances: int
    diffs: list[float]
    counts: list[tuple[torch.Tensor, torch.Tensor] | None]  # per module: (serving, candidate) bin counts


class MirrorWindow:
    """The rolling window of mirrored instances and the gauges published from it."""

    def __init__(
        self,
        model_name: str,
        version: str,
        module_names: list[str],
        window_instances: int,
        min_instances: int,
    ) -> None:
        self.model_name, self.version = model_name, version
        self.names = module_names
        self.window_instances, self.min_instances = window_instances, min_instances
        self._edges: list[torch.Tensor | None] = [None] * len(module_names)
        self._sums: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * len(module_names)
        self._entries: deque[_Entry] = deque()
        self.instances = 0
        self.top1_agreement: float | None = None  # once the window holds min_instances
        self.max_abs_diff: dict[str, float] = {}
        self.psi: dict[str, float] = {}
        self._agreement_child: Any = None  # bound on first value: 0 before the window fills would page
        self._children: dict[tuple[Any, str], Any] = {}

    def record(self, comparison: BatchComparison) -> None:
        """Add one mirrored batch, drop what fell out of the window, publish."""
        if not comparison.instances:
            return
        with torch.inference_mode():  # the samples are inference tensors; the sums are updated in place
            entry = _Entry(
                comparison.agreeing, comparison.instances, comparison.diffs, self._counts(comparison)
            )
            self._entries.append(entry)
            self.instances += entry.instances
            self._add(entry, 1.0)
            while (
                len(self._entries) > 1
                and self.instances - self._entries[0].instances >= self.window_instances
            ):
                dropped = self._entries.popleft()
                self.instances -= dropped.instances
                self._add(dropped, -1.0)
            self._publish()

    def _counts(self, comparison: BatchComparison) -> list[tuple[torch.Tensor, torch.Tensor] | None]:
        """Each module's bin counts on both sides; its first finite serving sample sets its edges."""
        counts: list[tuple[torch.Tensor, torch.Tensor] | None] = []
        for i, (serving, candidate) in enumerate(comparison.samples):
            if serving is None or candidate is None:
                counts.append(None)
                continue
            if self._edges[i] is None:
                finite = serving[torch.isfinite(serving)]
                if not finite.numel():
                    counts.append(None)
                    continue
                self._edges[i] = quantile_edges(finite.cpu(), BINS).to(serving.device)
            edges = self._edges[i]
            counts.append((histogram(serving, edges), histogram(candidate, edges)))
        return counts

    def _add(self, entry: _Entry, sign: float) -> None:
        for i, counts in enumerate(entry.counts):
            if counts is None:
                continue
            total = self._sums[i]
            if total is None:
                self._sums[i] = (counts[0].clone(), counts[1].clone())
            else:
                total[0].add_(counts[0], alpha=sign)
                total[1].add_(counts[1], alpha=sign)

    def _publish(self) -> None:
        entries = self._entries
        full = self.instances >= self.min_instances
        if full:
            self.top1_agreement = sum(e.agreeing for e in entries) / self.instances
            if self._agreement_child is None:
                self._agreement_child = metrics.MIRROR_TOP1_AGREEMENT.labels(self.model_name, self.version)
            self._agreement_child.set(self.top1_agreement)
        for position, name in enumerate([*self.names, OUTPUT]):
            values = [e.diffs[position] for e in entries if not math.isnan(e.diffs[position])]
            if values:
                self.max_abs_diff[name] = max(values)
                self._child(metrics.MIRROR_MAX_ABS_DIFF, name).set(self.max_abs_diff[name])
        if not full:
            return
        tracked = [
            (name, sums) for name, sums in zip(self.names, self._sums, strict=True) if sums is not None
        ]
        if not tracked:
            return
        psi = torch.stack([_psi(serving, candidate) for _, (serving, candidate) in tracked]).tolist()
        for (name, _), value in zip(tracked, psi, strict=True):
            self.psi[name] = value
            self._child(metrics.MIRROR_ACTIVATION_PSI, name).set(value)

    def _child(self, gauge: Any, module: str) -> Any:
        child = self._children.get((gauge, module))
        if child is None:
            child = self._children[(gauge, module)] = gauge.labels(self.model_name, self.version, module)
        return child


def _fast_diff(tensor: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """max |tensor - reference| in two passes: exact wherever it comes out finite. NaN (a NaN on either
    side, or equal infinities) sends the caller to shadow.max_abs_diff's rule, ~15x slower on CPU."""
    return (tensor.float() - reference.float()).abs().amax()


def _psi(serving: torch.Tensor, candidate: torch.Tensor) -> torch.Tensor:
    """PSI of the candidate's bin counts against the serving ones' (0-d)."""
    return psi_terms(candidate / candidate.sum().clamp_min(1.0), serving / serving.sum().clamp_min(1.0)).sum()
