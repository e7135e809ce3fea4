"""No orphans: every child of the server dies with the main process, even when it is SIGKILLed.

A clean shutdown stops children itself (:mod:`service.lifecycle`); this covers the unclean case, where
the main process gets no chance to. Linux's parent-death signal does it without a watcher thread.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys

logger = logging.getLogger(__name__)
_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Ask the kernel to SIGKILL this process when its parent exits (no-op where unsupported)."""
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            logger.warning("prctl(PR_SET_PDEATHSIG) failed: errno %d", ctypes.get_errno())
    except (OSError, AttributeError) as exc:
        logger.warning("cannot set the parent-death signal: %s", exc)
        return
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)


def forked_children_die_with_parent() -> None:
    """Every process forked from now on (API servers, LitServe's queue manager) dies with this one."""
    os.register_at_fork(after_in_child=die_with_parent)
