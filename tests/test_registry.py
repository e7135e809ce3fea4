"""models.registry: build models by name or import path, with clear errors for anything else."""

from __future__ import annotations

import pytest
from torch import nn

from models import registry
from models.base import InputSpec, ModelCard, OutputSpec, ServableModel
from models.digits_cnn import DigitsCNN
from models.registry import UnknownModelError, create_model, get_card, list_models, register_model
from tests.fixtures.plugin_model import TinyClassifier

BUILTIN_MODELS = ["digits-cnn", "digits-transformer", "resnet-bench", "tabular-mlp"]
PLUGIN = "tests.fixtures.plugin_model:build"


@pytest.fixture
def isolated_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Registrations made by a test vanish after it."""
    registry.list_models()  # load the builtins into the real registry first
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))


def test_list_models_includes_every_builtin_model() -> None:
    assert set(BUILTIN_MODELS) <= set(list_models())


def test_create_model_by_name_builds_that_model() -> None:
    model = create_model("digits-cnn")
    assert isinstance(model, DigitsCNN)


def test_create_model_passes_overrides_to_the_factory() -> None:
    assert create_model("digits-cnn", width=8).config.width == 8


def test_unknown_override_raises_type_error_naming_it() -> None:
    with pytest.raises(TypeError, match="no_such_knob"):
        create_model("digits-cnn", no_such_knob=1)


def test_get_card_returns_the_registered_card() -> None:
    card = get_card("resnet-bench")
    assert card.name == "resnet-bench"
    assert card.synthetic_weights is True


def test_import_path_plugin_builds_a_duck_typed_module_with_overrides() -> None:
    model = create_model(PLUGIN, hidden=8)
    assert isinstance(model, TinyClassifier)
    assert not isinstance(model, ServableModel)
    assert model.net[0].out_features == 8


def test_import_path_plugin_gets_a_custom_card() -> None:
    card = get_card(PLUGIN)
    assert (card.name, card.task, card.synthetic_weights) == (PLUGIN, "custom", False)


def test_unknown_name_error_lists_registered_models_and_the_import_path_form() -> None:
    with pytest.raises(UnknownModelError) as excinfo:
        create_model("no-such-model")
    message = str(excinfo.value)
    assert "'no-such-model'" in message
    assert all(name in message for name in BUILTIN_MODELS)
    assert "package.module:factory" in message


def test_import_path_to_missing_module_names_the_module() -> None:
    with pytest.raises(UnknownModelError, match=r"cannot import module 'tests\.fixtures\.no_such_module'"):
        create_model("tests.fixtures.no_such_module:build")


def test_import_path_to_missing_factory_names_the_attribute() -> None:
    with pytest.raises(UnknownModelError, match="has no callable 'no_such_factory'"):
        create_model("tests.fixtures.plugin_model:no_such_factory")


def test_import_path_to_non_callable_attribute_is_refused() -> None:
    with pytest.raises(UnknownModelError, match="has no callable 'NOT_A_FACTORY'"):
        create_model("tests.fixtures.plugin_model:NOT_A_FACTORY")


@pytest.mark.parametrize("path", ["tests.fixtures.plugin_model:", ":build"])
def test_malformed_import_path_shows_the_expected_form(path: str) -> None:
    with pytest.raises(UnknownModelError, match=r"must look like 'package\.module:factory'"):
        create_model(path)


def test_factory_returning_a_non_module_is_refused() -> None:
    with pytest.raises(TypeError, match=r"returned str, not a torch\.nn\.Module"):
        create_model("tests.fixtures.plugin_model:build_not_a_module")


def test_factory_returning_a_module_without_specs_names_what_is_missing() -> None:
    with pytest.raises(TypeError, match="lacks input_spec and output_spec"):
        create_model("tests.fixtures.plugin_model:build_without_specs")


def test_register_model_makes_a_new_name_creatable(isolated_registry: None) -> None:
    @register_model(ModelCard(name="test-linear", task="test", dataset=None))
    def build() -> nn.Module:
        model = nn.Linear(2, 2)
        model.input_spec, model.output_spec = InputSpec(shape=(2,)), OutputSpec(labels=("a", "b"))
        return model

    assert "test-linear" in list_models()
    assert isinstance(create_model("test-linear"), nn.Linear)


def test_registering_a_taken_name_with_another_factory_raises(isolated_registry: None) -> None:
    with pytest.raises(ValueError, match="'digits-cnn' is already registered"):
        register_model(ModelCard(name="digits-cnn", task="test", dataset=None))(lambda: None)
