"""One logging setup for the main process and the spawned workers (which start with none)."""

from __future__ import annotations

import logging
import os

LOG_LEVEL_ENV = "HOOKSERVE_LOG_LEVEL"
FORMAT = "%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s"


def configure_logging(level: str | None = None) -> None:
    """Set the level (remembered in the environment, so spawned workers inherit it) and a plain format."""
    level = (level or os.environ.get(LOG_LEVEL_ENV) or "info").upper()
    os.environ[LOG_LEVEL_ENV] = level
    logging.basicConfig(level=level, format=FORMAT)
