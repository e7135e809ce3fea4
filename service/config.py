"""Service configuration: YAML validated by pydantic, with environment overrides.

Configuration is data, validated once at the edge (unknown keys are errors); the rest of the service
trusts it. Environment variables override YAML: ``HOOKSERVE_SERVER__PORT=9000`` sets ``server.port``;
``HOOKSERVE_MODELS__0__PRECISION=bf16`` sets the first model's precision. Values are parsed as YAML
scalars, so ``true``, ``3`` and ``0.5`` get their natural types.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from service.monitoring.config import MonitorConfig
from service.tracing.settings import TracingConfig

ENV_PREFIX = "HOOKSERVE_"
Precision = Literal["fp32", "bf16", "fp16"]
_DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AuthConfig(_Strict):
    """Optional bearer-token auth; the key itself comes from the environment, never from YAML.

    ``/health`` always stays open: orchestrators probe it without secrets.
    """

    api_key_env: str | None = Field(
        default=None, description="Environment variable holding the API key; unset or empty disables auth."
    )
    admin_key_env: str | None = Field(
        default=None,
        description="Environment variable holding the admin key, the only key that opens /v2/repository/*.",
    )
    protect_metrics: bool = Field(default=False, description="Require the key for /metrics too.")

    def api_key(self) -> str | None:
        return _secret(self.api_key_env)

    def admin_key(self) -> str | None:
        return _secret(self.admin_key_env)


def _secret(variable: str | None) -> str | None:
    """The value of environment variable ``variable``; None when unnamed, unset or empty."""
    if not variable:
        return None
    return os.environ.get(variable) or None


class RestartPolicy(_Strict):
    """How dead processes (inference workers, API servers) are replaced (see service/supervisor.py)."""

    max_restarts: int = Field(
        default=5,
        ge=0,
        description="Restarts of one process allowed within window_s; then a worker's model stays down, "
        "and for an API server the whole service exits non-zero.",
    )
    window_s: float = Field(default=300.0, gt=0, description="The window max_restarts counts over.")
    backoff_initial_s: float = Field(
        default=0.5, ge=0, description="Wait before the first restart; doubles with each one in the window."
    )
    backoff_max_s: float = Field(default=30.0, ge=0, description="Upper bound of the wait.")


class ServerConfig(_Strict):
    host: Literal["127.0.0.1", "0.0.0.0", "::"] = "127.0.0.1"
    port: int = Field(default=8000, ge=1024, le=65535)
    grpc_port: int | None = Field(
        default=8001,
        ge=1024,
        le=65535,
        description="Open Inference Protocol V2 over gRPC on this port (Triton's default); null: no gRPC.",
    )
    api_servers: int = Field(default=1, ge=1, le=64, description="uvicorn API-server processes.")
    request_timeout_s: float = Field(
        default=10.0, gt=0, description="Deadline for a whole request (queue + run); past it: 504."
    )
    max_payload_bytes: int = Field(default=4 * 1024 * 1024, ge=1024, description="Larger bodies get 413.")
    shutdown_grace_s: float = Field(
        default=20.0, gt=0, description="On SIGTERM/SIGINT, how long in-flight requests may take to finish."
    )
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    access_log: bool = Field(
        default=False, description="One uvicorn log line per request (costs CPU on the hot path)."
    )
    auth: AuthConfig = AuthConfig()
    worker_restarts: RestartPolicy = RestartPolicy()
    tracing: TracingConfig = TracingConfig()
    model_repository: Path | None = Field(
        default=None, description="A model repository folder (docs/operate.md), read at start-up and loads."
    )
    model_control: Literal["none", "explicit"] = Field(
        default="none",
        description="Triton's names. none: every repository model loads at start; explicit: load_models do.",
    )
    load_models: list[str] = Field(
        default_factory=list,
        description="With model_control explicit: the models loaded at start; ['*'] = all.",
    )
    api_server_nice: int = Field(
        default=0,
        ge=0,
        le=19,
        description="Lower the API servers' CPU priority by this (os.nice) so that, under a refusal flood on "
        "a small machine, the workers keep the CPU (docs/scheduling.md); 0: unchanged.",
    )
    max_units: int = Field(
        default=32,
        ge=1,
        le=256,
        description="Model versions that can be served at once, counting a reload's new and old versions "
        "while traffic moves (shared memory is sized for them at start-up).",
    )
    model_load_timeout_s: float = Field(
        default=600.0, gt=0, description="A version not loaded and warmed up within this fails its load."
    )

    @model_validator(mode="after")
    def _model_control_fits(self) -> ServerConfig:
        if self.model_control == "explicit" and self.model_repository is None:
            raise ValueError("model_control explicit needs a model_repository to load models from")
        if self.load_models and self.model_control != "explicit":
            raise ValueError("load_models is used only with model_control explicit (with none, all load)")
        return self

    api_server_restarts: RestartPolicy = RestartPolicy()

    @model_validator(mode="after")
    def _distinct_ports(self) -> ServerConfig:
        if self.grpc_port == self.port:
            raise ValueError(f"grpc_port and port must differ (both are {self.port})")
        return self


class MirrorConfig(_Strict):
    """A candidate version that a share of this version's requests also run on, after their replies are
    sent, compared module by module (service/monitoring/mirror.py; docs/operate.md#mirror)."""

    version: str = Field(pattern=r"^[1-9][0-9]*$", description="The candidate: a version of this model.")
    fraction: float = Field(gt=0, le=1, description="The share of answered requests that are also mirrored.")
    budget: float = Field(
        default=0.01,
        gt=0,
        le=1,
        description="The share of a worker's time the mirror may take (both models' forwards on the "
        "mirrored requests and the comparison, timed in the worker); past it fewer requests are mirrored "
        "than fraction asks. 1: no limit (a short full mirror).",
    )
    window_instances: int = Field(
        default=1024, ge=1, le=1_000_000, description="Agreement, max |diff| and PSI are over this many."
    )
    min_instances: int = Field(
        default=100, ge=1, description="Agreement and PSI are published once the window holds this many."
    )


class ModelServeConfig(_Strict):
    """How one model is served."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]*$", description="Public name, used in URLs and labels.")
    source: str | None = Field(
        default=None, description="Registry name or 'package.module:factory'; defaults to name."
    )
    checkpoint: Path | None = Field(
        default=None, description="Weights file; default: the shipped checkpoint."
    )
    overrides: dict[str, Any] = Field(default_factory=dict, description="Keyword overrides for the factory.")
    version: str = "1"
    device: str = Field(default="cpu", description="auto, cpu, cuda or cuda:N.")
    precision: Precision = "fp32"
    workers: int = Field(default=1, ge=1, le=16, description="Inference worker processes for this model.")
    max_batch_size: int = Field(default=64, ge=1, description="Instances per forward pass.")
    batch_timeout_ms: float = Field(
        default=0.0,
        ge=0,
        le=1000,
        description="Extra wait for more instances once a batch has started; 0 = take what is queued.",
    )
    max_instances_per_request: int = Field(default=64, ge=1)
    max_queued_requests: int = Field(
        default=512, ge=1, description="Admitted-but-unanswered requests before new ones get 503."
    )
    latency_target_ms: float | None = Field(
        default=None,
        gt=0,
        description="Refuse at once (503 + Retry-After) a request whose predicted time to answer, from the "
        "queue and the learned batch cost, exceeds this; unset: only max_queued_requests limits admission.",
    )
    priority_levels: int = Field(
        default=2, ge=1, le=8, description="Request priorities 1 (highest) .. priority_levels (Triton's)."
    )
    default_priority: int | None = Field(
        default=None, ge=1, description="The priority of a request that sets none; unset: the lowest level."
    )
    min_precision_agreement: float = Field(
        default=0.99, ge=0, le=1, description="Top-1 agreement with fp32 required at start-up (bf16/fp16)."
    )
    torch_threads: int | None = Field(default=None, ge=1, description="torch intra-op threads per worker.")
    monitoring: MonitorConfig = MonitorConfig()
    mirror: MirrorConfig | None = Field(
        default=None, description="Repository models only: compare a candidate version on live requests."
    )

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        if not _DEVICE_PATTERN.match(value):
            raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {value!r}")
        return value

    @property
    def model_source(self) -> str:
        return self.source or self.name

    @property
    def route(self) -> str:
        return f"/v1/models/{self.name}:predict"


class HookserveConfig(_Strict):
    server: ServerConfig = ServerConfig()
    models: list[ModelServeConfig] = Field(
        default_factory=list, description="Models served besides the repository's; may be empty with one."
    )

    @model_validator(mode="after")
    def _some_models(self) -> HookserveConfig:
        if not self.models and self.server.model_repository is None:
            raise ValueError("no models: list at least one under models:, or set server.model_repository")
        return self

    @model_validator(mode="after")
    def _unique_names(self) -> HookserveConfig:
        names = [m.name for m in self.models]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"model names must be unique; repeated: {duplicates}")
        return self

    @model_validator(mode="after")
    def _targets_within_deadline(self) -> HookserveConfig:
        deadline_ms = self.server.request_timeout_s * 1000
        for m in self.models:
            if m.latency_target_ms is not None and m.latency_target_ms >= deadline_ms:
                raise ValueError(
                    f"model {m.name}: latency_target_ms ({m.latency_target_ms:g}) must be below the "
                    f"request deadline server.request_timeout_s ({deadline_ms:g} ms): past it, a 504 anyway"
                )
        return self

    @model_validator(mode="after")
    def _default_priority_is_a_level(self) -> HookserveConfig:
        for m in self.models:
            if m.default_priority is not None and m.default_priority > m.priority_levels:
                raise ValueError(
                    f"model {m.name}: default_priority {m.default_priority} is not one of its "
                    f"priority_levels (1..{m.priority_levels})"
                )
        return self

    def model(self, name: str) -> ModelServeConfig:
        return next(m for m in self.models if m.name == name)


def _set_path(tree: Any, path: list[str], value: Any) -> None:
    key, rest = path[0], path[1:]
    if isinstance(tree, list):
        index = int(key)
        if not rest:
            tree[index] = value
            return
        _set_path(tree[index], rest, value)
        return
    if not rest:
        tree[key] = value
        return
    _set_path(tree.setdefault(key, {}), rest, value)


def apply_env_overrides(raw: dict[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    """Apply ``HOOKSERVE_A__B__C=value`` variables onto the raw config tree."""
    for name, text in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        path = [part.lower() for part in name[len(ENV_PREFIX) :].split("__")]
        try:
            _set_path(raw, path, yaml.safe_load(text))
        except (IndexError, ValueError, TypeError, AttributeError) as exc:
            raise ValueError(f"environment override {name} does not fit the config: {exc}") from exc
    return raw


def load_config(
    path: str | Path | None,
    environ: Mapping[str, str] | None = None,
    server_overrides: Mapping[str, Any] | None = None,
) -> HookserveConfig:
    """Read (no ``path``: every default), override from the environment, then from ``server_overrides``
    (the command line), and validate."""
    raw = (yaml.safe_load(Path(path).read_text()) or {}) if path is not None else {}
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: the top level must be a mapping")
    raw = apply_env_overrides(raw, os.environ if environ is None else environ)
    if server_overrides:
        server = raw.setdefault("server", {})
        if not isinstance(server, dict):
            raise ValueError(f"{path}: server must be a mapping")
        server.update(server_overrides)
    return HookserveConfig.model_validate(raw)
