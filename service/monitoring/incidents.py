"""What the monitor notices about how the model is run, rather than what it computes: forwards that skip
their hooks, hooks that fail, modules left in training mode.

Each is logged once (per module where there is one), not per batch, and counted in plain Python until
the monitor pushes the counts with its other counters every ``publish_interval_s``
(``hookserve_forward_bypass_total``, ``hookserve_training_mode_resets_total``).
"""

from __future__ import annotations

import logging

from torch import nn

from service.monitoring.hooks import ModuleProbe

logger = logging.getLogger(__name__)


class Incidents:
    """One model's pending counts and the modules already logged."""

    def __init__(self, model_name: str) -> None:
        self.model_name = model_name
        self.bypass = 0
        self.resets = 0
        self._bypass_logged: set[str] = set()
        self._errors_logged: set[str] = set()

    def on_bypass(self, probe: ModuleProbe) -> None:
        self.bypass += 1
        if probe.name not in self._bypass_logged:
            self._bypass_logged.add(probe.name)
            logger.warning(
                "model %s: module %r ran forward() without its hooks (a parent calls .forward() "
                "instead of calling the module); its latency and activations are not monitored",
                self.model_name, probe.name,
            )  # fmt: skip

    def on_hook_error(self, probe: ModuleProbe, exc: Exception) -> None:
        if probe.name not in self._errors_logged:
            self._errors_logged.add(probe.name)
            logger.error(
                "model %s: monitoring module %r failed (%s: %s); serving continues without its stats",
                self.model_name, probe.name, type(exc).__name__, exc,
            )  # fmt: skip

    def enforce_eval(self, model: nn.Module) -> None:
        """Put every module still in training mode back in eval, and count them."""
        found = [name or "<root>" for name, module in model.named_modules() if module.training]
        if found:
            logger.warning("model %s: %d module(s) in training mode at serve time, e.g. %s; set to eval",
                           self.model_name, len(found), ", ".join(found[:5]))  # fmt: skip
            model.eval()
            self.resets += len(found)

    def take(self) -> tuple[int, int]:
        """The pending ``(bypass, resets)`` counts, reset to zero."""
        pending = self.bypass, self.resets
        self.bypass = self.resets = 0
        return pending
