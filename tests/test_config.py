"""Config loading: strict validation, environment overrides, the shipped default."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from service.config import HookserveConfig, apply_env_overrides, load_config

ROOT = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_default_config_serves_the_shipped_models_on_cpu() -> None:
    config = load_config(ROOT / "configs" / "default.yaml", environ={})
    assert [m.name for m in config.models] == ["digits-cnn", "tabular-mlp", "digits-transformer"]
    assert {m.device for m in config.models} == {"cpu"}


def test_every_config_in_configs_folder_validates() -> None:
    for path in (ROOT / "configs").glob("*.yaml"):
        load_config(path, environ={})


def test_unknown_keys_are_errors(tmp_path: Path) -> None:
    path = write(tmp_path, {"models": [{"name": "digits-cnn", "batch_size": 8}]})
    with pytest.raises(ValidationError, match="batch_size"):
        load_config(path, environ={})


def test_environment_overrides_nested_keys_and_list_items(tmp_path: Path) -> None:
    path = write(tmp_path, {"models": [{"name": "digits-cnn"}]})
    env = {"HOOKSERVE_SERVER__PORT": "9100", "HOOKSERVE_MODELS__0__PRECISION": "bf16", "UNRELATED": "x"}
    config = load_config(path, environ=env)
    assert config.server.port == 9100
    assert config.models[0].precision == "bf16"


def test_environment_override_outside_the_tree_says_which_variable(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="HOOKSERVE_MODELS__5__PRECISION"):
        apply_env_overrides({"models": [{}]}, {"HOOKSERVE_MODELS__5__PRECISION": "bf16"})


def test_bad_device_and_precision_are_rejected() -> None:
    with pytest.raises(ValidationError, match="device"):
        HookserveConfig.model_validate({"models": [{"name": "m", "device": "gpu0"}]})
    with pytest.raises(ValidationError, match="precision"):
        HookserveConfig.model_validate({"models": [{"name": "m", "precision": "int8"}]})


def test_model_names_must_be_unique() -> None:
    with pytest.raises(ValidationError, match="unique"):
        HookserveConfig.model_validate({"models": [{"name": "m"}, {"name": "m"}]})


def test_at_least_one_model_is_required() -> None:
    with pytest.raises(ValidationError):
        HookserveConfig.model_validate({"models": []})


def test_latency_target_is_optional_positive_and_below_the_request_deadline() -> None:
    assert HookserveConfig.model_validate({"models": [{"name": "a"}]}).models[0].latency_target_ms is None
    config = HookserveConfig.model_validate({"models": [{"name": "a", "latency_target_ms": 300}]})
    assert config.models[0].latency_target_ms == 300
    with pytest.raises(ValidationError, match="greater than 0"):
        HookserveConfig.model_validate({"models": [{"name": "a", "latency_target_ms": 0}]})
    with pytest.raises(ValidationError, match="must be below the request deadline"):
        HookserveConfig.model_validate(
            {"server": {"request_timeout_s": 1.0}, "models": [{"name": "a", "latency_target_ms": 1000}]}
        )
