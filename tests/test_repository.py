"""The model repository scanner: layouts built in tmp_path, read into validated model configs."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
import yaml

from service.config import HookserveConfig, ServerConfig
from service.repository import (
    ModelPlan,
    RepositoryError,
    read_model,
    scan_repository,
    served_models,
    startup_plans,
)


def model_folder(repo: Path, name: str, keys: dict | None = None, versions: tuple[int, ...] = (1,)) -> Path:
    folder = repo / name
    folder.mkdir(parents=True)
    (folder / "model.yaml").write_text(yaml.safe_dump(keys or {}))
    for version in versions:
        (folder / str(version)).mkdir()
    return folder


def config_with(repo: Path, models: list[dict] | None = None, **server: object) -> HookserveConfig:
    return HookserveConfig.model_validate(
        {"server": {"model_repository": str(repo), **server}, "models": models or []}
    )


def test_every_version_folder_becomes_a_config_and_latest_is_served(tmp_path: Path) -> None:
    model_folder(tmp_path, "digits-cnn", {"max_batch_size": 32, "torch_threads": 1}, versions=(1, 2, 10))
    repository = scan_repository(tmp_path)
    model = repository.models["digits-cnn"]
    assert sorted(model.versions) == [1, 2, 10]  # numeric order: 10 is the highest, not "2"
    assert {v: c.version for v, c in model.versions.items()} == {1: "1", 2: "2", 10: "10"}
    assert all(c.name == "digits-cnn" and c.max_batch_size == 32 for c in model.versions.values())
    plan = model.plan()
    assert list(plan.versions) == ["10"] and plan.default_version == "10"
    assert plan.versions["10"].version == "10"


def test_a_version_model_yaml_overrides_the_models_keys_and_merges_mappings(tmp_path: Path) -> None:
    keys = {"max_batch_size": 32, "monitoring": {"enabled": True, "stats_every": 8}}
    folder = model_folder(tmp_path, "digits-cnn", keys, versions=(1, 2))
    (folder / "2" / "model.yaml").write_text(
        yaml.safe_dump({"max_batch_size": 8, "monitoring": {"enabled": False}})
    )
    model = scan_repository(tmp_path).models["digits-cnn"]
    one, two = model.versions[1], model.versions[2]
    assert (one.max_batch_size, one.monitoring.enabled) == (32, True)
    assert (two.max_batch_size, two.monitoring.enabled) == (8, False)
    assert two.monitoring.stats_every == one.monitoring.stats_every == 8  # kept from the model's mapping


def test_a_versions_weights_become_its_checkpoint_else_the_models(tmp_path: Path) -> None:
    folder = model_folder(tmp_path, "digits-cnn", {"checkpoint": "shared.safetensors"}, versions=(1, 2))
    (folder / "2" / "model.safetensors").write_bytes(b"not read by the scan")
    model = scan_repository(tmp_path).models["digits-cnn"]
    assert model.versions[1].checkpoint == folder / "shared.safetensors"  # relative to its model.yaml
    assert model.versions[2].checkpoint == folder / "2" / "model.safetensors"


def test_relative_paths_in_a_model_yaml_are_relative_to_its_folder(tmp_path: Path) -> None:
    folder = model_folder(tmp_path, "digits-cnn", {"checkpoint": "/abs/weights.safetensors"}, versions=(1, 2))
    drift = {"monitoring": {"drift": {"reference": "model.reference.safetensors", "window_batches": 4}}}
    (folder / "2" / "model.yaml").write_text(yaml.safe_dump(drift))
    model = scan_repository(tmp_path).models["digits-cnn"]
    assert model.versions[1].checkpoint == Path("/abs/weights.safetensors")
    assert model.versions[1].monitoring.drift.reference is None
    assert model.versions[2].monitoring.drift.reference == folder / "2" / "model.reference.safetensors"
    assert model.versions[2].monitoring.drift.window_batches == 4


def test_a_version_setting_checkpoint_beside_its_own_weights_is_an_error(tmp_path: Path) -> None:
    folder = model_folder(tmp_path, "digits-cnn", versions=(1,))
    (folder / "1" / "model.yaml").write_text("checkpoint: other.safetensors\n")
    (folder / "1" / "model.safetensors").write_bytes(b"")
    with pytest.raises(RepositoryError, match=r"1/model.yaml: sets checkpoint"):
        scan_repository(tmp_path)


def test_folders_that_are_not_positive_integers_are_ignored_with_a_log_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = model_folder(tmp_path, "digits-cnn", versions=(3,))
    for name in ("0", "01", "-1", "v2", "latest"):
        (folder / name).mkdir()
    (folder / "README.md").write_text("a file, not a folder")
    with caplog.at_level(logging.INFO, logger="service.repository"):
        model = scan_repository(tmp_path).models["digits-cnn"]
    assert list(model.versions) == [3]
    for name in ("0", "01", "-1", "v2", "latest"):
        assert any(str(folder / name) in record.getMessage() for record in caplog.records), name


def test_a_model_folder_without_version_folders_is_an_error_naming_it(tmp_path: Path) -> None:
    model_folder(tmp_path, "digits-cnn", versions=())
    with pytest.raises(RepositoryError, match=r"digits-cnn.* has no version folder"):
        scan_repository(tmp_path)


def test_a_model_folder_without_model_yaml_is_an_error_naming_it(tmp_path: Path) -> None:
    (tmp_path / "digits-cnn" / "1").mkdir(parents=True)
    with pytest.raises(RepositoryError, match=r"digits-cnn.* has no model.yaml"):
        scan_repository(tmp_path)


def test_bad_yaml_is_an_error_naming_the_file(tmp_path: Path) -> None:
    folder = model_folder(tmp_path, "digits-cnn", versions=(1,))
    (folder / "1" / "model.yaml").write_text("max_batch_size: [8\n")
    with pytest.raises(RepositoryError, match=r"digits-cnn/1/model.yaml: not readable YAML"):
        scan_repository(tmp_path)
    (folder / "1" / "model.yaml").write_text("- a list\n")
    with pytest.raises(RepositoryError, match=r"1/model.yaml: the top level must be a mapping"):
        scan_repository(tmp_path)


@pytest.mark.parametrize("where", ["model", "version"])
def test_unknown_keys_are_errors_naming_the_file(tmp_path: Path, where: str) -> None:
    folder = model_folder(tmp_path, "digits-cnn", versions=(1,))
    path = folder / "model.yaml" if where == "model" else folder / "1" / "model.yaml"
    path.write_text("batch_size: 8\n")
    with pytest.raises(RepositoryError, match=rf"{re.escape(str(path))}: unknown keys \['batch_size'\]"):
        scan_repository(tmp_path)


def test_invalid_values_name_the_file_they_come_from(tmp_path: Path) -> None:
    folder = model_folder(tmp_path, "digits-cnn", {"precision": "int8"}, versions=(1,))
    with pytest.raises(RepositoryError, match=rf"(?s){re.escape(str(folder / 'model.yaml'))}: .*precision"):
        scan_repository(tmp_path)
    (folder / "model.yaml").write_text("{}\n")
    (folder / "1" / "model.yaml").write_text("workers: 0\n")
    version_file = re.escape(str(folder / "1" / "model.yaml"))
    with pytest.raises(RepositoryError, match=rf"(?s){version_file}: .*workers"):
        scan_repository(tmp_path)


def test_the_folders_set_name_and_version(tmp_path: Path) -> None:
    folder = model_folder(tmp_path, "digits-cnn", {"name": "digits-cnn"}, versions=(1,))
    assert scan_repository(tmp_path).models["digits-cnn"].versions[1].name == "digits-cnn"
    (folder / "model.yaml").write_text("name: other\n")
    with pytest.raises(RepositoryError, match="name 'other' differs from its folder 'digits-cnn'"):
        scan_repository(tmp_path)
    (folder / "model.yaml").write_text("version: '7'\n")
    with pytest.raises(RepositoryError, match=r"\['version'\] cannot be set here"):
        scan_repository(tmp_path)
    (folder / "model.yaml").write_text("{}\n")
    (folder / "1" / "model.yaml").write_text("versions: latest\n")
    with pytest.raises(RepositoryError, match=r"1/model.yaml: \['versions'\] cannot be set here"):
        scan_repository(tmp_path)


def test_a_folder_name_that_is_not_a_model_name_is_an_error(tmp_path: Path) -> None:
    model_folder(tmp_path, "Digits CNN", versions=(1,))
    with pytest.raises(RepositoryError, match=r"(?s)Digits CNN/model.yaml: .*name"):
        scan_repository(tmp_path)


def test_hidden_folders_and_files_in_the_root_are_not_models(tmp_path: Path) -> None:
    model_folder(tmp_path, "digits-cnn")
    (tmp_path / ".git").mkdir()
    (tmp_path / "README.md").write_text("hi")
    assert list(scan_repository(tmp_path).models) == ["digits-cnn"]


def test_a_missing_repository_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(RepositoryError, match="is not a folder"):
        scan_repository(tmp_path / "nowhere")


# -- versions: which are served, where unversioned requests go, how traffic splits
def test_a_list_of_one_version_picks_it(tmp_path: Path) -> None:
    model_folder(tmp_path, "digits-cnn", {"versions": [1]}, versions=(1, 2))
    assert list(scan_repository(tmp_path).models["digits-cnn"].plan().versions) == ["1"]


@pytest.mark.parametrize("versions", ["all", [1, 2]])
def test_several_versions_are_served_and_the_highest_is_the_default(tmp_path: Path, versions: object) -> None:
    model_folder(tmp_path, "digits-cnn", {"versions": versions}, versions=(1, 2))
    plan = scan_repository(tmp_path).models["digits-cnn"].plan()
    assert list(plan.versions) == ["1", "2"]
    assert plan.default_version == "2" and plan.traffic is None
    assert [p.name for p in startup_plans(config_with(tmp_path))[0]] == ["digits-cnn"]


def test_default_version_and_traffic_are_read_and_checked(tmp_path: Path) -> None:
    keys = {"versions": "all", "default_version": 1, "traffic": {1: 90, 2: 10}}
    model_folder(tmp_path, "digits-cnn", keys, versions=(1, 2))
    plan = scan_repository(tmp_path).models["digits-cnn"].plan()
    assert plan.default_version == "1"
    assert plan.traffic == {"1": 90, "2": 10}


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"versions": [2], "default_version": 1}, r"default_version 1 is not served; served: \[2\]"),
        ({"versions": [2], "traffic": {1: 50, 2: 50}}, r"traffic names versions \[1\], not served"),
        ({"versions": "all", "traffic": {1: 0, 2: 0}}, "the traffic weights must not all be 0"),
        ({"traffic": {1: -5}}, "traffic maps version numbers to weights"),
        ({"default_version": "latest"}, "default_version is a version number"),
    ],
)
def test_a_bad_default_or_split_is_an_error_naming_the_file(tmp_path: Path, keys: dict, message: str) -> None:
    model_folder(tmp_path, "digits-cnn", keys, versions=(1, 2))
    with pytest.raises(RepositoryError, match=message):
        scan_repository(tmp_path)


def test_a_loads_config_overrides_the_model_yaml(tmp_path: Path) -> None:
    folder = model_folder(tmp_path, "digits-cnn", {"max_batch_size": 32, "versions": [1]}, versions=(1, 2))
    model = read_model(folder, {"versions": [1, 2], "max_batch_size": 8})
    plan = model.plan()
    assert list(plan.versions) == ["1", "2"]
    assert {c.max_batch_size for c in plan.versions.values()} == {8}
    with pytest.raises(RepositoryError, match=r"the load's config: unknown keys \['bogus'\]"):
        read_model(folder, {"bogus": 1})
    with pytest.raises(RepositoryError, match="cannot be set here"):
        read_model(folder, {"version": "3"})


def test_a_listed_version_without_a_folder_is_an_error(tmp_path: Path) -> None:
    model_folder(tmp_path, "digits-cnn", {"versions": [3]}, versions=(1, 2))
    with pytest.raises(RepositoryError, match=r"versions \[3\] have no version folder; found \[1, 2\]"):
        scan_repository(tmp_path)


@pytest.mark.parametrize("versions", ["newest", [0], ["x"], 2])
def test_a_bad_versions_value_is_an_error_naming_the_file(tmp_path: Path, versions: object) -> None:
    model_folder(tmp_path, "digits-cnn", {"versions": versions})
    with pytest.raises(
        RepositoryError, match=r"digits-cnn/model.yaml: versions must be latest, all or a list"
    ):
        scan_repository(tmp_path)


# -- what loads at start
def test_model_control_none_loads_every_repository_model_beside_the_config_models(tmp_path: Path) -> None:
    model_folder(tmp_path, "digits-cnn", versions=(1, 2))
    model_folder(tmp_path, "tabular-mlp")
    plans, repository = startup_plans(config_with(tmp_path, [{"name": "digits-transformer"}]))
    assert repository is not None
    assert [(p.name, list(p.versions), p.in_repository) for p in plans] == [
        ("digits-transformer", ["1"], False),
        ("digits-cnn", ["2"], True),
        ("tabular-mlp", ["1"], True),
    ]


def test_model_control_explicit_loads_only_load_models(tmp_path: Path) -> None:
    model_folder(tmp_path, "digits-cnn", versions=(1, 2))
    model_folder(tmp_path, "tabular-mlp")
    plans, repository = startup_plans(
        config_with(tmp_path, model_control="explicit", load_models=["tabular-mlp"])
    )
    assert [p.name for p in plans] == ["tabular-mlp"]
    assert repository is not None and sorted(repository.models) == ["digits-cnn", "tabular-mlp"]
    everything = ServerConfig(model_repository=tmp_path, model_control="explicit", load_models=["*"])
    assert served_models(everything, scan_repository(tmp_path)) == ["digits-cnn", "tabular-mlp"]


def test_load_models_naming_a_model_not_in_the_repository_is_an_error(tmp_path: Path) -> None:
    model_folder(tmp_path, "digits-cnn")
    with pytest.raises(RepositoryError, match=r"load_models names \['nope'\].* holds \['digits-cnn'\]"):
        startup_plans(config_with(tmp_path, model_control="explicit", load_models=["nope"]))


def test_explicit_control_may_start_with_nothing_loaded(tmp_path: Path) -> None:
    model_folder(tmp_path, "digits-cnn")
    plans, repository = startup_plans(config_with(tmp_path, model_control="explicit"))
    assert plans == [] and repository is not None  # models are loaded later through the repository API


def test_a_name_both_under_models_and_in_the_repository_is_an_error(tmp_path: Path) -> None:
    model_folder(tmp_path, "digits-cnn")
    with pytest.raises(
        RepositoryError, match=r"models \['digits-cnn'\] are both under models: and in the repository"
    ):
        startup_plans(config_with(tmp_path, [{"name": "digits-cnn"}]))


def test_without_a_repository_each_model_is_one_version() -> None:
    config = HookserveConfig.model_validate({"models": [{"name": "digits-cnn", "version": "3"}]})
    plans, repository = startup_plans(config)
    assert repository is None
    assert plans == [ModelPlan("digits-cnn", {"3": config.models[0]}, "3")]
