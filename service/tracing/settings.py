"""When tracing is on, where spans go, and what is sampled: ``server.tracing`` plus the standard
``OTEL_*`` environment variables, resolved once in the main process and handed to every process."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

DEFAULT_SERVICE_NAME = "hookserve"
# OpenTelemetry's batch span processor defaults (OTEL_BSP_*), which the export schedule follows
BSP_SCHEDULE_DELAY_MS = 5000
BSP_MAX_QUEUE_SIZE = 4096
BSP_MAX_EXPORT_BATCH_SIZE = 512
_ENDPOINT_VARS = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")


class TracingConfig(BaseModel):
    """``server.tracing``. Every field left unset falls back to the OpenTelemetry environment variables."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool | None = Field(
        default=None,
        description="On/off; unset: on when OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT is set (and "
        "OTEL_SDK_DISABLED is not true).",
    )
    endpoint: str | None = Field(
        default=None,
        description="OTLP/HTTP traces URL, e.g. http://collector:4318/v1/traces; unset: OTEL_* variables.",
    )
    sample_ratio: float | None = Field(
        default=None,
        ge=0.0,
        le=1.0,
        description="Share of new traces sampled (an incoming sampled traceparent is always followed); "
        "unset: OTEL_TRACES_SAMPLER / OTEL_TRACES_SAMPLER_ARG (OpenTelemetry's default: every trace).",
    )
    max_queued_spans: int | None = Field(
        default=None,
        ge=1,
        description="Spans buffered per process for export; past it they are dropped. Unset: "
        "OTEL_BSP_MAX_QUEUE_SIZE, else 4096.",
    )
    export_interval_s: float | None = Field(
        default=None,
        gt=0,
        description="How often a process exports its spans. Unset: OTEL_BSP_SCHEDULE_DELAY (ms), else 5 s, "
        "the OpenTelemetry batch processor's default.",
    )
    export_batch_spans: int | None = Field(
        default=None,
        ge=1,
        description="Spans per export request; this many buffered start an export before the interval "
        "ends. Unset: OTEL_BSP_MAX_EXPORT_BATCH_SIZE, else 512.",
    )
    export_timeout_s: float = Field(default=5.0, gt=0, description="One export call's timeout.")


@dataclass(frozen=True)
class TracingSettings:
    """Resolved settings, picklable into the spawned workers."""

    endpoint: str | None  # None: the exporter reads the OTEL_* variables itself
    sample_ratio: float  # share of requests without a sampled parent that are traced
    follow_parent: bool  # an incoming traceparent's sampled flag decides (the parentbased_* samplers)
    service_name: str
    max_queued_spans: int
    export_interval_s: float
    export_timeout_s: float
    export_batch_spans: int


def resolve(config: TracingConfig, environ: dict[str, str] | None = None) -> TracingSettings | None:
    """The settings when tracing is on, else None."""
    env = os.environ if environ is None else environ
    enabled = config.enabled
    if enabled is None:
        disabled = env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true"
        no_exporter = env.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "none"
        enabled = not disabled and not no_exporter and any(env.get(var) for var in _ENDPOINT_VARS)
    if not enabled:
        return None
    ratio, follow_parent = _sampling(config, env)
    queued = config.max_queued_spans or _env_int(env, "OTEL_BSP_MAX_QUEUE_SIZE", BSP_MAX_QUEUE_SIZE)
    delay_ms = _env_int(env, "OTEL_BSP_SCHEDULE_DELAY", BSP_SCHEDULE_DELAY_MS)
    batch = config.export_batch_spans or _env_int(
        env, "OTEL_BSP_MAX_EXPORT_BATCH_SIZE", BSP_MAX_EXPORT_BATCH_SIZE
    )
    return TracingSettings(
        endpoint=config.endpoint,
        sample_ratio=ratio,
        follow_parent=follow_parent,
        service_name=env.get("OTEL_SERVICE_NAME") or DEFAULT_SERVICE_NAME,
        max_queued_spans=queued,
        export_interval_s=config.export_interval_s or delay_ms / 1000,
        export_timeout_s=config.export_timeout_s,
        export_batch_spans=batch,
    )


def _env_int(env: Mapping[str, str], name: str, default: int) -> int:
    """A positive integer OpenTelemetry variable; its default when unset or not one (as the SDK does)."""
    try:
        value = int(env.get(name, "").strip())
    except ValueError:
        return default
    return value if value > 0 else default


def _sampling(config: TracingConfig, env: Mapping[str, str]) -> tuple[float, bool]:
    """``(ratio, follow_parent)`` from ``sample_ratio``, else ``OTEL_TRACES_SAMPLER``/``_ARG`` as the
    OpenTelemetry specification defines them (default ``parentbased_always_on``)."""
    if config.sample_ratio is not None:
        return config.sample_ratio, True
    name = env.get("OTEL_TRACES_SAMPLER", "parentbased_always_on").strip().lower()
    follow_parent = name.startswith("parentbased_")
    kind = name.removeprefix("parentbased_")
    if kind == "always_off":
        return 0.0, follow_parent
    if kind == "traceidratio":
        try:
            ratio = float(env.get("OTEL_TRACES_SAMPLER_ARG", "1.0"))
        except ValueError:
            ratio = 1.0
        return min(max(ratio, 0.0), 1.0), follow_parent
    return 1.0, follow_parent  # always_on, and any name the SDK would not know either
