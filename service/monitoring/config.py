"""What the model monitor watches and how much it may cost, validated once at the edge.

The monitor trusts a :class:`MonitorConfig` it is given: every bound a hot path relies on (positive
sample sizes, a budget in (0, 1]) is checked here, not in the hooks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Level = Literal["leaf", "block", "all"]


class DriftConfig(BaseModel):
    """Activation drift against a calibration reference (population stability index per module)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    # PSI is published once this many sampled batches are in the rolling window: fewer inputs give a
    # noisy histogram, and a noisy PSI pages people for nothing.
    window_batches: int = Field(32, ge=1, le=10_000)
    # Quantile bins of the reference (used when a reference is captured; a stored reference keeps its own).
    bins: int = Field(10, ge=2, le=100)
    # None: models/checkpoints/{model}.reference.safetensors (next to the shipped checkpoint).
    reference: Path | None = None


class ShadowConfig(BaseModel):
    """Live precision shadow (bf16/fp16 models only): some live batches run again in fp32 (autocast
    off, same weights) and are compared with the served run at every monitored module and at the
    output (see ``service/monitoring/shadow.py`` and docs/monitoring.md)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    # The share of ``overhead_budget`` the shadow may spend (an fp32 forward now and then); the
    # sampling of the hooks plans within the rest. Ignored for fp32 models, which get the whole budget.
    budget_share: float = Field(0.5, gt=0.0, lt=1.0)
    # Fixed interval instead of the budget: shadow the first armed batch at least ``every`` batches
    # after the last shadowed one (1: every armed batch; with ``guard_every: 1``, every batch).
    every: int | None = Field(None, ge=1)
    # Top-1 agreement and max |diff| are over the last this-many shadowed instances (rolling window)...
    window_instances: int = Field(1024, ge=1, le=1_000_000)
    # ...and the agreement gauge appears once the window holds this many: an agreement over a handful
    # of instances would page people for nothing.
    min_instances: int = Field(100, ge=1)


class MonitorConfig(BaseModel):
    """Which modules are monitored, and the overhead the monitor may add to the forward pass."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    # Glob patterns on dotted module names (fnmatch). A non-empty ``include`` replaces the level's
    # selection; ``exclude`` then removes matches; ``max_modules`` caps the result in model order.
    include: list[str] = Field(default_factory=list)
    exclude: list[str] = Field(default_factory=list)
    # "block": outermost composite blocks plus conv/linear/embedding/recurrent layers outside them
    # (the default: a few meaningful outputs per model); "leaf": every module without children;
    # "all": every submodule.
    level: Level = "block"
    max_modules: int = Field(100, ge=1, le=1000)
    # Mean cost of monitoring as a fraction of the model's forward time; sampling adapts to it.
    overhead_budget: float = Field(0.03, gt=0.0, le=1.0)
    # Fixed intervals (in batches) instead of adaptive ones: activation stats/drift every
    # ``stats_every`` batches, per-module latency + non-finite + bypass checks every ``guard_every``.
    stats_every: int | None = Field(None, ge=1)
    guard_every: int | None = Field(None, ge=1)
    # Adaptive intervals never sample more often than this, in seconds between armed batches and
    # between stats batches: a few latency samples a second fill the histograms, gauges are refreshed
    # once per publish_interval_s, and a large model that could afford hooks on every batch would
    # otherwise pay for them on every batch (the fixed intervals above ignore these).
    min_armed_interval_s: float = Field(0.25, ge=0.0)
    min_stats_interval_s: float = Field(1.0, ge=0.0)
    # Stats and drift histograms read at most this many elements of each output (strided subsample).
    sample_elements: int = Field(4096, ge=16, le=1_000_000)
    latency: bool = True
    drift: DriftConfig = Field(default_factory=DriftConfig)
    # Counters that change every batch are pushed to Prometheus at most this often (0: every batch).
    publish_interval_s: float = Field(1.0, ge=0.0)
    shadow: ShadowConfig = Field(default_factory=ShadowConfig)
