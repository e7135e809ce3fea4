"""The model repository: a folder of models and their numbered versions, read at start-up and at each load.

The layout is fixed, because users and tools write it::

    REPO/<model>/model.yaml                     # a `models:` entry's keys, + `versions`, `default_version`,
                                                # `traffic`; `name` optional
    REPO/<model>/<version>/                     # a version: a folder named by a positive integer
    REPO/<model>/<version>/model.yaml           # optional: keys overriding the model's for this version
    REPO/<model>/<version>/model.safetensors    # optional: this version's weights

Every version folder becomes a validated :class:`ModelServeConfig` whose ``version`` is the folder's
number; a version's ``model.safetensors`` becomes its ``checkpoint`` (read later by
``models.checkpoint``, which never unpickles). Everything wrong with the repository is a
:class:`RepositoryError` naming the file or folder, raised before anything starts.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import NonNegativeInt, PositiveInt, TypeAdapter, ValidationError

from service.config import HookserveConfig, ModelServeConfig, ServerConfig

logger = logging.getLogger(__name__)
MODEL_FILE = "model.yaml"
WEIGHTS_FILE = "model.safetensors"
_VERSION_FOLDER = re.compile(r"^[1-9][0-9]*$")  # no leading zeros: "01" and "1" would be one version
_MODEL_KEYS = frozenset(ModelServeConfig.model_fields)  # the keys of a models: entry
# keys of a model.yaml that are not a models: entry's: which versions serve, how they share traffic
REPOSITORY_KEYS = frozenset({"versions", "default_version", "traffic"})
FOLDER_KEYS = frozenset({"name", "version"})  # set by the folder names, not by any model.yaml
VersionPolicy = Literal["latest", "all"] | list[PositiveInt]
_POLICY = TypeAdapter(VersionPolicy)
_VERSION = TypeAdapter(PositiveInt | None)
_TRAFFIC = TypeAdapter(dict[PositiveInt, NonNegativeInt] | None)


class RepositoryError(ValueError):
    """The repository cannot be served as it is; the message names the file or folder."""


@dataclass(frozen=True)
class ModelPlan:
    """A model as it is to be served: each version's config, where unversioned requests go, the split."""

    name: str
    versions: dict[str, ModelServeConfig]
    default_version: str
    traffic: dict[str, int] | None = None  # weights by version (a canary); None: all to default_version
    in_repository: bool = False
    mirrors: dict[str, ModelServeConfig] = field(default_factory=dict)  # by serving version: its candidate

    @classmethod
    def single(cls, config: ModelServeConfig) -> ModelPlan:
        """A ``models:`` entry: one version (which cannot mirror: a clear error now)."""
        mirror_candidate(None, config)
        return cls(config.name, {config.version: config}, config.version)


@dataclass(frozen=True)
class RepositoryModel:
    """One model folder: every version folder as a validated config, which to serve and how."""

    name: str
    path: Path
    versions: dict[int, ModelServeConfig]
    policy: VersionPolicy = "latest"
    default_version: int | None = None
    traffic: dict[int, int] | None = None

    def selected_versions(self) -> list[int]:
        """The versions ``policy`` names, highest last: ``latest``, ``all`` or an explicit list."""
        available = sorted(self.versions)
        if self.policy == "latest":
            return available[-1:]
        if self.policy == "all":
            return available
        missing = sorted(set(self.policy) - set(available))
        if missing:
            raise RepositoryError(
                f"{self.path / MODEL_FILE}: versions {missing} have no version folder; found {available}"
            )
        return sorted(set(self.policy))

    def plan(self) -> ModelPlan:
        """What to serve: the selected versions; ``default_version`` and ``traffic`` checked against them."""
        selected = self.selected_versions()
        where = self.path / MODEL_FILE
        default = self.default_version if self.default_version is not None else selected[-1]
        if default not in selected:
            raise RepositoryError(f"{where}: default_version {default} is not served; served: {selected}")
        traffic = None
        if self.traffic:
            unserved = sorted(set(self.traffic) - set(selected))
            if unserved:
                raise RepositoryError(f"{where}: traffic names versions {unserved}, not served: {selected}")
            if sum(self.traffic.values()) <= 0:
                raise RepositoryError(f"{where}: the traffic weights must not all be 0")
            traffic = {str(v): w for v, w in self.traffic.items() if w > 0}
        configs = {str(v): self.versions[v] for v in selected}
        mirrors = {v: m for v, c in configs.items() if (m := mirror_candidate(self, c)) is not None}
        return ModelPlan(self.name, configs, str(default), traffic, in_repository=True, mirrors=mirrors)


@dataclass(frozen=True)
class ModelRepository:
    path: Path
    models: dict[str, RepositoryModel]


def scan_repository(path: str | Path) -> ModelRepository:
    """Read and validate every model folder under ``path`` (without loading any weights)."""
    root = Path(path)
    if not root.is_dir():
        raise RepositoryError(f"model repository {str(root)!r} is not a folder")
    models = {}
    for folder in sorted(root.iterdir()):
        if not folder.is_dir():
            continue
        if folder.name.startswith("."):
            logger.info("model repository: ignoring hidden folder %s", folder)
            continue
        models[folder.name] = read_model(folder)
    return ModelRepository(root, models)


def read_model(folder: Path, override: Mapping[str, Any] | None = None) -> RepositoryModel:
    """One ``REPO/<model>/`` folder: its model.yaml (with ``override``'s keys over it: a load's
    ``config`` parameter), and every version folder validated against it."""
    model_file = folder / MODEL_FILE
    if not model_file.is_file():
        raise RepositoryError(f"model folder {str(folder)!r} has no {MODEL_FILE}")
    keys = _read_keys(model_file, allowed=_MODEL_KEYS | REPOSITORY_KEYS, forbidden={"version"})
    if override:
        keys = _merged(
            keys,
            _checked_keys(dict(override), "the load's config", _MODEL_KEYS | REPOSITORY_KEYS, {"version"}),
        )
    given_name = keys.pop("name", folder.name)
    if given_name != folder.name:
        raise RepositoryError(f"{model_file}: name {given_name!r} differs from its folder {folder.name!r}")
    try:
        policy = _POLICY.validate_python(keys.pop("versions", "latest"))
    except ValidationError as exc:
        raise RepositoryError(
            f"{model_file}: versions must be latest, all or a list of version numbers: {exc}"
        ) from exc
    try:
        default_version = _VERSION.validate_python(keys.pop("default_version", None))
        traffic = _TRAFFIC.validate_python(keys.pop("traffic", None))
    except ValidationError as exc:
        raise RepositoryError(
            f"{model_file}: default_version is a version number, traffic maps version numbers to "
            f"weights (e.g. {{1: 90, 2: 10}}): {exc}"
        ) from exc
    base = _resolve_paths(keys, folder)
    _validated(model_file, {**base, "name": folder.name})  # its own errors name model.yaml
    versions = {}
    for child in sorted(folder.iterdir()):
        if not child.is_dir():
            continue
        if not _VERSION_FOLDER.match(child.name):
            logger.info("model repository: ignoring %s (version folders are positive integers)", child)
            continue
        versions[int(child.name)] = _read_version(child, folder.name, base)
    if not versions:
        raise RepositoryError(
            f"model folder {str(folder)!r} has no version folder (e.g. {str(folder / '1')!r})"
        )
    model = RepositoryModel(folder.name, folder, versions, policy, default_version, traffic)
    model.plan()  # its choice of versions, default and split are checked now, loaded at start or not
    return model


def _read_version(folder: Path, name: str, base: dict[str, Any]) -> ModelServeConfig:
    """A version's config: the model's keys, its own model.yaml over them, its weights if it has any."""
    override_file = folder / MODEL_FILE
    own: dict[str, Any] = {}
    if override_file.is_file():
        own = _read_keys(override_file, allowed=_MODEL_KEYS, forbidden=FOLDER_KEYS | REPOSITORY_KEYS)
        own = _resolve_paths(own, folder)
    weights = folder / WEIGHTS_FILE
    if weights.is_file():
        if "checkpoint" in own:
            raise RepositoryError(
                f"{override_file}: sets checkpoint, but {weights} is this version's weights; keep one"
            )
        own["checkpoint"] = weights
    merged = _merged(base, own)
    where = override_file if override_file.is_file() else folder
    return _validated(where, {**merged, "name": name, "version": folder.name})


def served_models(server: ServerConfig, repository: ModelRepository) -> list[str]:
    """The repository models loaded at start: all with model_control none, else ``load_models``."""
    if server.model_control == "none" or "*" in server.load_models:
        return sorted(repository.models)
    unknown = sorted(set(server.load_models) - set(repository.models))
    if unknown:
        raise RepositoryError(
            f"load_models names {unknown}, which the repository {str(repository.path)!r} does not hold; "
            f"it holds {sorted(repository.models)}"
        )
    return sorted(set(server.load_models))


def startup_plans(config: HookserveConfig) -> tuple[list[ModelPlan], ModelRepository | None]:
    """The models served from start (``models:`` entries, then the repository's), and the repository."""
    plans = [ModelPlan.single(m) for m in config.models]
    if config.server.model_repository is None:
        return plans, None
    repository = scan_repository(config.server.model_repository)
    both = sorted({m.name for m in config.models} & set(repository.models))
    if both:
        raise RepositoryError(
            f"models {both} are both under models: and in the repository {str(repository.path)!r}; "
            "keep each model in one place"
        )
    plans += [repository.models[name].plan() for name in served_models(config.server, repository)]
    return plans, repository


def mirror_candidate(model: RepositoryModel | None, served: ModelServeConfig) -> ModelServeConfig | None:
    """The config of the version ``served.mirror`` names, on ``served``'s device and precision (the
    serving version's workers run it); None without a mirror. ``model``: the repository folder ``served``
    comes from (None: a ``models:`` entry, which has no other version to mirror)."""
    mirror = served.mirror
    if mirror is None:
        return None
    if model is None:
        raise RepositoryError(
            f"model {served.name}: mirror compares versions of a model from the model repository "
            "(server.model_repository); a models: entry has one version only"
        )
    if mirror.version == served.version:
        raise RepositoryError(
            f"{model.path / MODEL_FILE}: version {served.version} mirrors itself; mirror.version names "
            "another version (the candidate)"
        )
    candidate = model.versions.get(int(mirror.version))
    if candidate is None:
        raise RepositoryError(
            f"{model.path / MODEL_FILE}: mirror.version {mirror.version} has no version folder "
            f"{str(model.path / mirror.version)!r}; found versions {sorted(model.versions)}"
        )
    placed = {"device": served.device, "precision": served.precision, "mirror": None}
    return candidate.model_copy(update=placed)


# -- reading and merging model.yaml files
def _read_keys(path: Path, allowed: frozenset[str], forbidden: frozenset[str] | set[str]) -> dict[str, Any]:
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except (yaml.YAMLError, OSError, UnicodeDecodeError) as exc:
        raise RepositoryError(f"{path}: not readable YAML: {exc}") from exc
    return _checked_keys(raw, str(path), allowed, forbidden)


def _checked_keys(
    raw: object, where: str, allowed: frozenset[str], forbidden: frozenset[str] | set[str]
) -> dict:
    path = where
    if not isinstance(raw, dict):
        raise RepositoryError(f"{path}: the top level must be a mapping of keys, got {type(raw).__name__}")
    misplaced = sorted(set(raw) & set(forbidden))
    if misplaced:
        raise RepositoryError(f"{path}: {misplaced} cannot be set here: the folder names set them")
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise RepositoryError(f"{path}: unknown keys {unknown}; allowed: {sorted(allowed - set(forbidden))}")
    return raw


def _resolve_paths(keys: dict[str, Any], folder: Path) -> dict[str, Any]:
    """Relative paths in a model.yaml (``checkpoint``, ``monitoring.drift.reference``) are relative to
    that file's folder, so a repository can be moved as a whole."""
    keys = dict(keys)
    checkpoint = keys.get("checkpoint")
    if isinstance(checkpoint, str) and not Path(checkpoint).is_absolute():
        keys["checkpoint"] = folder / checkpoint
    monitoring = keys.get("monitoring")
    drift = monitoring.get("drift") if isinstance(monitoring, dict) else None
    reference = drift.get("reference") if isinstance(drift, dict) else None
    if isinstance(reference, str) and not Path(reference).is_absolute():
        keys["monitoring"] = {**monitoring, "drift": {**drift, "reference": folder / reference}}
    return keys


def _merged(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """``override`` over ``base``; mappings (``monitoring``, ``overrides``) merge key by key."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merged(merged[key], value)
        else:
            merged[key] = value
    return merged


def _validated(where: Path, keys: dict[str, Any]) -> ModelServeConfig:
    try:
        return ModelServeConfig.model_validate(keys)
    except ValidationError as exc:
        raise RepositoryError(f"{where}: {exc}") from exc
