"""models.checkpoint and models.train: shipped weights, round trips, and refusing pickled code."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from models import checkpoint as checkpoint_module
from models.checkpoint import (
    UnsafeCheckpointError,
    default_checkpoint_path,
    load_checkpoint,
    load_pretrained,
    save_checkpoint,
)
from models.datasets import load_dataset
from models.registry import create_model, get_card
from models.train import evaluate, main

TRAINED_MODELS = ["digits-cnn", "tabular-mlp", "digits-transformer"]
MIN_ACCURACY = {"digits-cnn": 0.97, "tabular-mlp": 0.95, "digits-transformer": 0.95}


class WritesMarkerWhenUnpickled:
    """A booby trap: unpickling it runs ``exec``, which creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


def card_of(name: str) -> dict:
    return json.loads(default_checkpoint_path(name).with_suffix(".json").read_text())


def write_malicious_checkpoint(path: Path, marker: Path) -> Path:
    torch.save({"fc.weight": torch.zeros(2, 2), "payload": WritesMarkerWhenUnpickled(marker)}, path)
    return path


@pytest.fixture
def restore_threads() -> Iterator[None]:
    """The train CLI pins torch to one thread; give the test process its setting back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("name", TRAINED_MODELS)
def test_shipped_checkpoint_reaches_its_stated_accuracy(name: str) -> None:
    card = card_of(name)
    data = load_dataset(card["dataset"])
    accuracy = evaluate(load_pretrained(name), data.test_x, data.test_y)
    assert accuracy >= MIN_ACCURACY[name]
    assert accuracy == pytest.approx(card["accuracy"], abs=1.01 / card["n_test"])  # one sample of slack


@pytest.mark.parametrize("name", TRAINED_MODELS)
def test_shipped_card_describes_its_checkpoint_file(name: str) -> None:
    card = card_of(name)
    payload = default_checkpoint_path(name).read_bytes()
    assert card["checkpoint_bytes"] == len(payload) < 5_000_000
    assert card["checkpoint_sha256"] == hashlib.sha256(payload).hexdigest()
    assert card["parameters"] == sum(p.numel() for p in create_model(name).parameters())


@pytest.mark.parametrize("name", TRAINED_MODELS)
def test_load_pretrained_returns_the_model_in_eval_mode(name: str) -> None:
    model = load_pretrained(name)
    assert not any(module.training for module in model.modules())


def test_default_checkpoint_is_found_from_any_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert load_pretrained("tabular-mlp").feature_std.ne(1).any()


def test_tabular_checkpoint_carries_the_training_split_standardization() -> None:
    data = load_dataset("breast_cancer")
    torch.testing.assert_close(load_pretrained("tabular-mlp").feature_mean, data.train_x.mean(dim=0))


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_checkpoint_round_trip_gives_identical_outputs(tmp_path: Path, suffix: str) -> None:
    torch.manual_seed(0)
    model = create_model("digits-cnn", width=8).eval()
    path = save_checkpoint(model, tmp_path / f"cnn{suffix}", name="digits-cnn", overrides={"width": 8})
    loaded = load_pretrained("digits-cnn", checkpoint=path)
    x = model.example_input(16)
    with torch.inference_mode():
        assert torch.equal(model(x), loaded(x))


def test_checkpoint_metadata_records_name_overrides_and_torch_version(tmp_path: Path) -> None:
    model = create_model("digits-transformer", n_layer=1)
    path = save_checkpoint(
        model, tmp_path / "t.safetensors", name="digits-transformer", overrides={"n_layer": 1}
    )
    _, metadata = load_checkpoint(path)
    assert metadata["model"] == "digits-transformer"
    assert json.loads(metadata["overrides"]) == {"n_layer": 1}
    assert metadata["torch_version"] == torch.__version__


def test_plain_torch_saved_state_dict_loads(tmp_path: Path) -> None:
    model = create_model("tabular-mlp")
    torch.save(model.state_dict(), tmp_path / "plain.pt")
    state, metadata = load_checkpoint(tmp_path / "plain.pt")
    assert metadata == {}
    assert torch.equal(state["head.weight"], model.head.weight)


def test_malicious_pickle_fixture_really_runs_code_when_unpickled_unsafely(tmp_path: Path) -> None:
    # Proves the refusal test below is meaningful: an ordinary unpickle of this file executes the payload.
    marker = tmp_path / "marker"
    torch.load(write_malicious_checkpoint(tmp_path / "evil.pt", marker), weights_only=False)
    assert marker.read_text() == "pwned"


def test_malicious_pickle_checkpoint_is_refused_and_its_code_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    path = write_malicious_checkpoint(tmp_path / "evil.pt", marker)
    with pytest.raises(UnsafeCheckpointError, match=r"weights_only=True"):
        load_checkpoint(path)
    with pytest.raises(UnsafeCheckpointError):
        load_pretrained("digits-cnn", checkpoint=path)
    assert not marker.exists()


def test_pickle_disguised_as_safetensors_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    path = write_malicious_checkpoint(tmp_path / "evil.safetensors", marker)
    with pytest.raises(UnsafeCheckpointError, match="not a valid safetensors file"):
        load_checkpoint(path)
    assert not marker.exists()


def test_unknown_checkpoint_suffix_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "weights.bin"
    path.write_bytes(b"\x80\x04N.")  # a pickle of None
    with pytest.raises(UnsafeCheckpointError, match=r"unsupported suffix '\.bin'"):
        load_checkpoint(path)


def test_checkpoint_of_another_model_is_refused(tmp_path: Path) -> None:
    path = save_checkpoint(
        create_model("digits-cnn"), tmp_path / "c.safetensors", name="digits-cnn", overrides={}
    )
    with pytest.raises(ValueError, match="holds model 'digits-cnn', not 'digits-transformer'"):
        load_pretrained("digits-transformer", checkpoint=path)


def test_overrides_that_change_shapes_fail_the_strict_load(tmp_path: Path) -> None:
    path = save_checkpoint(
        create_model("digits-cnn"), tmp_path / "c.safetensors", name="digits-cnn", overrides={}
    )
    with pytest.raises(RuntimeError, match="size mismatch"):
        load_pretrained("digits-cnn", checkpoint=path, width=8)


def test_missing_default_checkpoint_says_how_to_train_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(checkpoint_module, "CHECKPOINT_DIR", tmp_path)
    with pytest.raises(FileNotFoundError, match=r"python -m models\.train digits-cnn"):
        load_pretrained("digits-cnn")


def test_missing_explicit_checkpoint_is_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nope\.safetensors"):
        load_pretrained("digits-cnn", checkpoint=tmp_path / "nope.safetensors")


def test_synthetic_weights_model_loads_without_a_checkpoint() -> None:
    model = load_pretrained("resnet-bench")
    assert not model.training
    assert torch.equal(model.fc.weight, create_model("resnet-bench").fc.weight)


def test_import_path_model_without_checkpoint_is_built_by_its_factory() -> None:
    model = load_pretrained("tests.fixtures.plugin_model:build", hidden=4)
    assert not model.training and model.net[0].out_features == 4


def test_train_cli_writes_checkpoint_and_card(tmp_path: Path, restore_threads: None) -> None:
    assert main(["tabular-mlp", "--epochs", "2", "--out", str(tmp_path), "--set", "width=16"]) == 0
    card = json.loads((tmp_path / "tabular-mlp.json").read_text())
    assert card["epochs"] == 2 and card["overrides"] == {"width": 16}
    assert card["n_train"] + card["n_test"] == 569 and card["dataset"] == "breast_cancer"
    assert card["checkpoint_bytes"] == (tmp_path / "tabular-mlp.safetensors").stat().st_size
    model = load_pretrained("tabular-mlp", checkpoint=tmp_path / "tabular-mlp.safetensors")
    assert model.config.width == 16


def test_training_is_reproducible_with_a_fixed_seed(tmp_path: Path, restore_threads: None) -> None:
    for run in ("a", "b"):
        main(["tabular-mlp", "--epochs", "2", "--seed", "3", "--out", str(tmp_path / run)])
    first, second = (load_checkpoint(tmp_path / run / "tabular-mlp.safetensors")[0] for run in ("a", "b"))
    assert all(torch.equal(first[key], second[key]) for key in first)


def test_train_cli_says_synthetic_weights_model_has_nothing_to_train(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], restore_threads: None
) -> None:
    assert main(["resnet-bench", "--out", str(tmp_path)]) == 0
    assert "nothing to train" in capsys.readouterr().out
    assert list(tmp_path.iterdir()) == []


def test_train_cli_rejects_an_unknown_model(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["no-such-model"])
    assert "unknown model 'no-such-model'" in capsys.readouterr().err


def test_resnet_bench_card_says_it_needs_no_checkpoint() -> None:
    assert get_card("resnet-bench").synthetic_weights
    assert not default_checkpoint_path("resnet-bench").exists()
