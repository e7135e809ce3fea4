"""Where a non-finite output came from: replay the offending instances once with a hook on every module.

The final output is checked on every batch (the worker cannot answer NaN). When some instances come
out non-finite, :func:`locate_origins` replays just those instances, once, with a forward hook on every
module (the root included), and finds per instance the first module, in execution order, whose output
holds a non-finite value for that instance. Forward hooks fire when a module *finishes*, so a child is
seen before its parent: the origin is the innermost module that produced the first NaN/Inf. The event
is rare; the replay costs one forward of the offending instances and nothing when nothing is wrong.

:func:`origin_label` maps that module onto the monitored modules (the innermost monitored module that
contains it, else the module itself; :data:`ROOT` for the model's own code outside any submodule), which
bounds the label values of ``hookserve_nonfinite_origin_total{model,module}``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from service.monitoring.stats import first_tensor

ROOT = "<root>"  # the model's own forward code, outside any submodule


class NonFiniteOutput(ValueError):
    """A request's output holds NaN/Inf in ``rows`` (a boolean mask over its instances): it cannot be
    answered, and the worker looks for the origin before failing it."""

    def __init__(self, rows: np.ndarray) -> None:
        self.rows = rows
        super().__init__(f"{int(rows.sum())} of {len(rows)} instance(s) got non-finite probabilities")


@dataclass(frozen=True)
class Origin:
    """The first module whose output went non-finite for one instance, and its position among the
    module completions of the replay (smaller: earlier)."""

    module: str
    step: int


def bad_rows(tensor: torch.Tensor, n: int) -> torch.Tensor:
    """Per instance of an ``n``-instance batch: does ``tensor`` hold a non-finite value for it? The
    batch is dimension 0, or dimension 1 (sequence-first layouts); a tensor with neither says so for
    every instance."""
    finite = torch.isfinite(tensor)
    if tensor.dim() >= 1 and tensor.shape[0] == n:
        return ~finite.reshape(n, -1).all(dim=1)
    if tensor.dim() >= 2 and tensor.shape[1] == n:
        return ~finite.transpose(0, 1).reshape(n, -1).all(dim=1)
    return (~finite.all()).expand(n)


def locate_origins(
    model: nn.Module, x: torch.Tensor, context: Callable[[], AbstractContextManager]
) -> list[Origin | None]:
    """Run ``model(x)`` once inside ``context()`` (the served precision) with a forward hook on every
    module; per instance of ``x``, the first module whose output went non-finite for it (``None``: the
    replay's output was finite, the event did not reproduce). Hooks are removed before returning."""
    n = int(x.shape[0])
    found: list[Origin | None] = [None] * n
    pending = torch.ones(n, dtype=torch.bool)
    step = 0

    def make_hook(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: object, output: object) -> None:
            nonlocal step, pending
            step += 1
            if not bool(pending.any()):
                return
            tensor = first_tensor(output)
            if tensor is None or not tensor.is_floating_point():
                return
            new = bad_rows(tensor.detach(), n).cpu() & pending
            if bool(new.any()):
                for row in new.nonzero().flatten().tolist():
                    found[row] = Origin(name or ROOT, step)
                pending = pending & ~new

        return hook

    handles = [module.register_forward_hook(make_hook(name)) for name, module in model.named_modules()]
    try:
        with context():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    return found


def locate_labelled(
    model: nn.Module, x: torch.Tensor, context: Callable[[], AbstractContextManager], monitored: Sequence[str]
) -> list[Origin | None]:
    """:func:`locate_origins`, each origin named by its :func:`origin_label` among ``monitored``."""
    found = locate_origins(model, x, context)
    return [origin and Origin(origin_label(origin.module, monitored), origin.step) for origin in found]


def origin_label(module: str, monitored: Sequence[str]) -> str:
    """The innermost monitored module containing ``module`` (itself included), else ``module``."""
    best = None
    for name in monitored:
        if (module == name or module.startswith(name + ".")) and (best is None or len(name) > len(best)):
            best = name
    return best if best is not None else module
