"""Which modules of a model get hooks: a curated, bounded set (every hook costs a few microseconds).

Rules, in order: the level picks candidates; a non-empty ``include`` replaces them with every module
whose dotted name matches a pattern; ``exclude`` removes matches; ``max_modules`` keeps the first ones in
model order. The root module is never selected: the worker times the whole forward itself.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from fnmatch import fnmatchcase

from torch import nn

from service.monitoring.config import MonitorConfig

logger = logging.getLogger(__name__)

# Pure containers hold modules but compute nothing of their own: look inside them.
CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
# Layers whose output is a meaningful activation on its own (norms, activations and dropout are not
# worth a hook each: their input's module already shows the tensor).
LAYER_TYPES = (
    nn.modules.conv._ConvNd,
    nn.Linear,
    nn.Bilinear,
    nn.Embedding,
    nn.EmbeddingBag,
    nn.RNNBase,
    nn.MultiheadAttention,
)


def select_modules(model: nn.Module, config: MonitorConfig) -> list[tuple[str, nn.Module]]:
    """The ``(dotted name, module)`` pairs to monitor, in model order, at most ``config.max_modules``."""
    if config.include:
        candidates = [
            (name, module)
            for name, module in model.named_modules()
            if name and any(fnmatchcase(name, pattern) for pattern in config.include)
        ]
    else:
        candidates = list(_by_level(model, config.level))
    selected = [(n, m) for n, m in candidates if not any(fnmatchcase(n, p) for p in config.exclude)]
    if len(selected) > config.max_modules:
        logger.warning(
            "monitoring the first %d of %d selected modules (max_modules); narrow with include/exclude",
            config.max_modules,
            len(selected),
        )
        selected = selected[: config.max_modules]
    return selected


def _by_level(model: nn.Module, level: str) -> Iterator[tuple[str, nn.Module]]:
    if level == "all":
        yield from ((n, m) for n, m in model.named_modules() if n)
    elif level == "leaf":
        yield from ((n, m) for n, m in model.named_modules() if n and not _has_children(m))
    else:
        yield from _blocks(model, prefix="")


def _blocks(parent: nn.Module, prefix: str) -> Iterator[tuple[str, nn.Module]]:
    """Outermost blocks, and layers outside any block, descending only through containers."""
    for name, child in parent.named_children():
        full = f"{prefix}{name}"
        if isinstance(child, LAYER_TYPES):
            yield full, child
        elif isinstance(child, CONTAINERS) or _holds_repeated_blocks(child):
            yield from _blocks(child, prefix=f"{full}.")
        elif _has_children(child):
            yield full, child


def _holds_repeated_blocks(module: nn.Module) -> bool:
    """A wrapper such as ``backbone`` or ``transformer`` holding a stack of blocks is not itself a block:
    hooking it would give one number for the whole network."""
    return any(
        isinstance(child, CONTAINERS) and sum(_has_children(c) for c in child.children()) >= 2
        for child in module.children()
    )


def _has_children(module: nn.Module) -> bool:
    return next(module.children(), None) is not None
