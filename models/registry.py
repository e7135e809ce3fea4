"""Build models by name, timm-style: a new model is one file and one decorator.

The shipped models are found, not listed: every module of this package whose source holds
``@register_model`` is imported the first time a name is looked up, so a new file needs no other edit.

A user's own model plugs in by import path (``package.module:factory``) without editing the project:
the factory is called with the overrides and must return an ``nn.Module`` with ``input_spec`` and
``output_spec`` attributes (duck typing: subclassing :class:`~models.base.ServableModel` is optional).
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from models.base import ModelCard, ServableModel

ModelFactory = Callable[..., ServableModel]


class UnknownModelError(LookupError):
    """Raised for a model name that is neither registered nor a valid import path."""


@dataclass(frozen=True)
class RegisteredModel:
    factory: ModelFactory
    card: ModelCard


_REGISTRY: dict[str, RegisteredModel] = {}


@functools.cache
def _builtin_modules() -> tuple[str, ...]:
    """The modules here that register a model (imported lazily: `import models.registry` stays cheap)."""
    package = Path(__file__).parent
    return tuple(
        f"{__package__}.{path.stem}"
        for path in sorted(package.glob("*.py"))
        if not path.name.startswith("_")
        and path.name != "registry.py"
        and "@register_model(" in path.read_text(encoding="utf-8")
    )


def register_model(card: ModelCard) -> Callable[[ModelFactory], ModelFactory]:
    """Register ``factory`` under ``card.name``; registering a name twice is a bug, so it raises."""

    def decorator(factory: ModelFactory) -> ModelFactory:
        if card.name in _REGISTRY and _REGISTRY[card.name].factory is not factory:
            raise ValueError(f"model {card.name!r} is already registered")
        _REGISTRY[card.name] = RegisteredModel(factory, card)
        return factory

    return decorator


def _load_builtins() -> None:
    for module in _builtin_modules():
        importlib.import_module(module)


def list_models() -> list[str]:
    _load_builtins()
    return sorted(_REGISTRY)


def get_card(name: str) -> ModelCard:
    return _resolve(name).card


def _resolve(name: str) -> RegisteredModel:
    if ":" in name:
        return RegisteredModel(_import_factory(name), ModelCard(name=name, task="custom", dataset=None))
    _load_builtins()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownModelError(
            f"unknown model {name!r}; registered models: {', '.join(sorted(_REGISTRY))}; "
            "or give an import path like 'package.module:factory'"
        ) from None


def _import_factory(path: str) -> ModelFactory:
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise UnknownModelError(f"import path {path!r} must look like 'package.module:factory'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UnknownModelError(f"cannot import module {module_name!r} from {path!r}: {exc}") from exc
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise UnknownModelError(f"{path!r}: module {module_name!r} has no callable {attr!r}")
    return factory


def create_model(name: str, **overrides: Any) -> ServableModel:
    """Build an untrained model by registered name or import path, with keyword overrides.

    The result is an ``nn.Module`` with ``input_spec`` and ``output_spec``; a factory that returns
    anything else raises ``TypeError`` naming what is missing.
    """
    model = _resolve(name).factory(**overrides)
    if not isinstance(model, nn.Module):
        raise TypeError(f"factory for {name!r} returned {type(model).__name__}, not a torch.nn.Module")
    missing = [attr for attr in ("input_spec", "output_spec") if not hasattr(model, attr)]
    if missing:
        raise TypeError(
            f"model {type(model).__name__} from {name!r} lacks {' and '.join(missing)}; "
            "a served model declares input_spec (models.base.InputSpec) "
            "and output_spec (models.base.OutputSpec)"
        )
    return model
