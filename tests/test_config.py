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
    paths = sorted((ROOT / "configs").glob("*.yaml"))
    assert {path.name for path in paths} >= {"default.yaml", "gpu.yaml", "resnet-bench-cpu.yaml"}
    for path in paths:
        written = [model["name"] for model in yaml.safe_load(path.read_text())["models"]]
        config = load_config(path, environ={})
        assert written and [model.name for model in config.models] == written, path.name


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


# -- the model repository's server keys, the admin key, and the command line over the file
def test_models_may_be_omitted_when_a_repository_is_given(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, {"server": {"model_repository": str(tmp_path)}}), environ={})
    assert config.models == [] and config.server.model_repository == tmp_path
    assert config.server.model_control == "none" and config.server.load_models == []
    with pytest.raises(ValidationError, match="no models"):
        load_config(write(tmp_path, {"server": {"port": 9000}}), environ={})


def test_model_control_explicit_needs_a_repository_and_load_models_needs_explicit(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="model_control explicit needs a model_repository"):
        HookserveConfig.model_validate({"server": {"model_control": "explicit"}, "models": [{"name": "m"}]})
    with pytest.raises(ValidationError, match="load_models is used only with model_control explicit"):
        HookserveConfig.model_validate({"server": {"model_repository": "r", "load_models": ["m"]}})
    with pytest.raises(ValidationError, match="model_control"):
        HookserveConfig.model_validate({"server": {"model_repository": "r", "model_control": "poll"}})


def test_admin_key_comes_from_its_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    config = HookserveConfig.model_validate(
        {"server": {"auth": {"api_key_env": "T_API", "admin_key_env": "T_ADMIN"}}, "models": [{"name": "m"}]}
    )
    monkeypatch.setenv("T_API", "inference-key")
    monkeypatch.setenv("T_ADMIN", "")
    assert config.server.auth.api_key() == "inference-key" and config.server.auth.admin_key() is None
    monkeypatch.setenv("T_ADMIN", "admin-key")
    assert config.server.auth.admin_key() == "admin-key"


def test_command_line_server_keys_win_over_the_file_and_the_environment(tmp_path: Path) -> None:
    path = write(tmp_path, {"server": {"model_repository": "from-file"}, "models": [{"name": "digits-cnn"}]})
    env = {"HOOKSERVE_SERVER__MODEL_REPOSITORY": "from-env"}
    assert load_config(path, environ=env).server.model_repository == Path("from-env")
    overrides = {"model_repository": "from-cli", "model_control": "explicit", "load_models": ["a", "b"]}
    config = load_config(path, environ=env, server_overrides=overrides)
    assert config.server.model_repository == Path("from-cli")
    assert (config.server.model_control, config.server.load_models) == ("explicit", ["a", "b"])


def test_cli_repository_options_become_server_overrides() -> None:
    from service.cli import DEFAULT_CONFIG, _config_path, _server_overrides, build_parser

    args = build_parser().parse_args(
        [
            "serve",
            "--model-repository",
            "repo",
            "--model-control",
            "explicit",
            "--load-model",
            "a",
            "--load-model",
            "b",
        ]
    )
    assert _server_overrides(args) == {
        "model_repository": "repo",
        "model_control": "explicit",
        "load_models": ["a", "b"],
    }
    assert _config_path(args) is None  # a repository without --config: server defaults, no shipped models
    plain = build_parser().parse_args(["serve"])
    assert _server_overrides(plain) == {} and _config_path(plain) == DEFAULT_CONFIG
    assert load_config(None, environ={}, server_overrides=_server_overrides(args)).models == []


def test_api_server_restarts_have_their_own_policy(tmp_path: Path) -> None:
    raw = {"models": [{"name": "digits-cnn"}], "server": {"worker_restarts": {"max_restarts": 9}}}
    path = write(tmp_path, raw)
    env = {"HOOKSERVE_SERVER__API_SERVER_RESTARTS__MAX_RESTARTS": "1"}
    server = load_config(path, environ=env).server
    assert server.api_server_restarts.max_restarts == 1 and server.worker_restarts.max_restarts == 9
    with pytest.raises(ValidationError, match="api_server_restarts"):
        HookserveConfig.model_validate(
            {"models": [{"name": "digits-cnn"}], "server": {"api_server_restarts": {"window_s": 0}}}
        )


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
