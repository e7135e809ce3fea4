"""From what the hooks recorded to Prometheus: bound metric children, one host copy, per-batch publication.

Split out of ``monitor.py``. :class:`Publisher` binds a model's metric children once (``labels()``
costs ~1.5 us a call, a bound child ~0.3); :func:`to_host` copies everything an armed batch left on
the device in one transfer; :meth:`Publisher.publish_batch` turns probes and that copy into metric
updates; :meth:`Publisher.push_counters` pushes what a :class:`~service.monitoring.metering.CostMeter`
accumulated since the last push.
"""

from __future__ import annotations

import math

import torch
from prometheus_client import Gauge

from service.monitoring import metrics
from service.monitoring.drift import DriftTracker
from service.monitoring.hooks import ModuleProbe
from service.monitoring.stats import STAT_NAMES, summarize


class Publisher:
    """The model's metric children, bound once."""

    def __init__(self, model_name: str, modules: list[str], version: str = "1") -> None:
        self.latency = [metrics.MODULE_FORWARD.labels(model_name, version, m) for m in modules]
        self.nonfinite = [metrics.ACTIVATION_NONFINITE.labels(model_name, version, m) for m in modules]
        gauges = (
            metrics.ACTIVATION_MEAN,
            metrics.ACTIVATION_STD,
            metrics.ACTIVATION_MIN,
            metrics.ACTIVATION_MAX,
            metrics.ACTIVATION_ZERO_FRACTION,
        )
        assert len(gauges) == len(STAT_NAMES)
        self.stats = [[gauge.labels(model_name, version, m) for gauge in gauges] for m in modules]
        # Bound on first value: a PSI series reading 0 before the window is full would say "no drift".
        self.psi: list[Gauge | None] = [None] * len(modules)
        self._model_name, self._modules, self._version = model_name, modules, version
        self.bypass = metrics.FORWARD_BYPASS.labels(model_name)
        self.training_resets = metrics.TRAINING_MODE_RESETS.labels(model_name)
        self.overhead = metrics.MONITOR_OVERHEAD.labels(model_name)
        self.forward = metrics.MONITORED_FORWARD.labels(model_name)
        self.guard_every = metrics.MONITOR_SAMPLE_INTERVAL.labels(model_name, "armed")
        self.stats_every = metrics.MONITOR_SAMPLE_INTERVAL.labels(model_name, "stats")
        # Non-finite origins, at 0 for every monitored module so increase() sees the first one; other
        # origins (an unmonitored module, the model's own code) are bound when they first happen.
        self.origins = {m: metrics.NONFINITE_ORIGIN.labels(model_name, m) for m in modules}

    def set_psi(self, index: int, value: float) -> None:
        child = self.psi[index]
        if child is None:
            child = self.psi[index] = metrics.ACTIVATION_DRIFT_PSI.labels(
                self._model_name, self._version, self._modules[index]
            )
        child.set(value)

    def count_origin(self, module: str) -> None:
        child = self.origins.get(module)
        if child is None:
            child = self.origins[module] = metrics.NONFINITE_ORIGIN.labels(self._model_name, module)
        child.inc()

    def push_counters(
        self,
        forward_s: float,
        overhead_s: float,
        bypass: int,
        resets: int,
        guard_every: int,
        stats_every: int,
    ) -> None:
        """The counters that move every batch, and the sampling intervals."""
        self.forward.inc(forward_s)
        self.overhead.inc(overhead_s)
        if bypass:
            self.bypass.inc(bypass)
        if resets:
            self.training_resets.inc(resets)
        self.guard_every.set(guard_every)
        self.stats_every.set(stats_every)

    def collect(
        self,
        probes: list[ModuleProbe],
        drift: DriftTracker | None,
        *,
        stats: bool,
        summary: bool,
        latency: bool,
        cuda: bool,
    ) -> None:
        """Read and publish what the hooks recorded in an armed batch.

        Drift histograms take every ``stats`` batch; the stats table and PSI only a ``summary`` one
        (the gauges are due every ``publish_interval_s``: nobody scrapes faster, and at a small
        ``stats_every`` they would be most of a stats batch's cost).
        """
        on_device: dict[str, torch.Tensor] = {}
        described: list[ModuleProbe] = []
        if stats and drift is not None:
            drift.update([probe.sample for probe in probes])
        if stats and summary:
            sampled = [probe for probe in probes if probe.sample is not None]
            if sampled:
                on_device["stats"], order = summarize([probe.sample for probe in sampled])
                described = [sampled[i] for i in order]
            if drift is not None and drift.ready:
                on_device["psi"] = drift.psi()
        counted: list[ModuleProbe] = []
        if cuda:
            counted = [probe for probe in probes for _ in probe.finite_counts]
            if counted:
                on_device["finite"] = torch.stack([c for probe in probes for c in probe.finite_counts])
        self.publish_batch(
            probes, to_host(on_device, cuda), described, counted, drift, latency=latency, cuda=cuda
        )

    def publish_batch(
        self,
        probes: list[ModuleProbe],
        host: dict[str, list],
        described: list[ModuleProbe],
        counted: list[ModuleProbe],
        drift: DriftTracker | None,
        *,
        latency: bool,
        cuda: bool,
    ) -> None:
        """One armed batch: latencies, non-finite counts; on a summarized stats batch, gauges and PSI."""
        for probe, finite in zip(counted, host.get("finite", ()), strict=True):
            probe.unverified -= int(finite)
        for probe in counted:
            probe.nonfinite += probe.unverified  # elements checked minus finite ones
            probe.unverified = 0
        for probe in probes:
            if probe.calls and latency:
                seconds = cuda_elapsed(probe) if cuda else probe.elapsed_s
                self.latency[probe.index].observe(seconds)
            if probe.nonfinite:
                self.nonfinite[probe.index].inc(probe.nonfinite)
                probe.nonfinite = 0
        for probe, row in zip(described, host.get("stats", ()), strict=True):
            for child, value in zip(self.stats[probe.index], row, strict=True):
                child.set(value)
        if "psi" in host and drift is not None:
            for position, value in zip(drift.positions, host["psi"], strict=True):
                if not math.isnan(value):
                    self.set_psi(position, value)


def to_host(on_device: dict[str, torch.Tensor], cuda: bool) -> dict[str, list]:
    """One device-to-host copy for everything (on CPU, ``tolist`` copies nothing across a bus)."""
    if not cuda or len(on_device) <= 1:
        return {key: tensor.tolist() for key, tensor in on_device.items()}
    flat = torch.cat([tensor.double().reshape(-1) for tensor in on_device.values()]).tolist()
    host: dict[str, list] = {}
    offset = 0
    for key, tensor in on_device.items():
        values = flat[offset : offset + tensor.numel()]
        offset += tensor.numel()
        width = tensor.shape[1] if tensor.dim() == 2 else 0
        host[key] = [values[i : i + width] for i in range(0, len(values), width)] if width else values
    return host


def cuda_elapsed(probe: ModuleProbe) -> float:
    return sum(start.elapsed_time(end) for start, end in probe.events[: probe.calls]) / 1000.0
