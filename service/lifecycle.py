"""Process lifecycle LitServe 0.2.19 lacks: runtime folders, signal-driven drain, no orphaned children.

LitServe installs no SIGTERM handler (SIGTERM kills only the main process, leaving API servers and
workers serving as orphans), and a Ctrl-C reaches every process of the group at once. Here the main
process owns shutdown (an unclean death of the main process is :mod:`service.orphans`' job):

1. SIGTERM or SIGINT flips the shared :class:`DrainSwitch`: new predictions get 503 + Retry-After and
   ``/health`` answers 503, so load balancers stop sending traffic;
2. in-flight requests get up to ``grace_s`` to finish;
3. LitServe's own graceful shutdown runs (API servers, then workers, then the queue manager);
4. whatever child is still alive is killed. A second signal skips the wait.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from service.http.admission import AdmissionGate, DrainSwitch
from service.worker_states import RUNTIME_DIR_ENV

logger = logging.getLogger(__name__)


def prepare_runtime_dirs() -> Path:
    """Fresh per-run folders (metrics, worker sockets and reports), set before prometheus_client loads.

    An operator may pin ``PROMETHEUS_MULTIPROC_DIR`` (e.g. to a tmpfs); its stale files from an earlier run
    would otherwise be summed into this run's counters, so they are removed.
    """
    if "prometheus_client" in sys.modules:
        raise RuntimeError("prometheus_client was imported before PROMETHEUS_MULTIPROC_DIR was set")
    root = Path(tempfile.mkdtemp(prefix="hookserve-"))
    metrics_dir = Path(os.environ.get("PROMETHEUS_MULTIPROC_DIR") or root / "metrics")
    metrics_dir.mkdir(parents=True, exist_ok=True)
    for stale in metrics_dir.glob("*.db"):
        stale.unlink()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    os.environ[RUNTIME_DIR_ENV] = str(root)
    return root


def remove_runtime_dirs(root: Path) -> None:
    shutil.rmtree(root, ignore_errors=True)


def kill_children(timeout_s: float = 5.0) -> None:
    """Terminate, then kill, every multiprocessing child still alive (workers, API servers, manager)."""
    children = mp.active_children()
    for child in children:
        child.terminate()
    deadline = time.monotonic() + timeout_s
    for child in children:
        child.join(max(0.0, deadline - time.monotonic()))
        if child.is_alive():
            logger.warning("child %s (pid %s) ignored SIGTERM; killing it", child.name, child.pid)
            child.kill()
            child.join(1.0)


class GracefulShutdown:
    """Turns SIGTERM/SIGINT into drain-then-stop; ``stop`` is what finally ends LitServer.run()."""

    def __init__(
        self, drain: DrainSwitch, gates: Iterable[AdmissionGate], grace_s: float, stop: Callable[[], None]
    ) -> None:
        self.drain = drain
        self.gates = list(gates)
        self.grace_s = grace_s
        self.stop = stop
        self._signals = 0
        self._main_pid = os.getpid()

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

    def _on_signal(self, signum: int, frame: object) -> None:
        if os.getpid() != self._main_pid:
            # A forked API server inherits this handler; uvicorn re-raises the signal after its own
            # shutdown, and there the default action (exit) is right.
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self._signals += 1
        if self._signals > 1:
            logger.warning("second signal: stopping now without waiting for in-flight requests")
            self.stop()
            return
        logger.info("%s received: draining (grace %.0f s)", signal.Signals(signum).name, self.grace_s)
        self.drain.start()
        threading.Thread(target=self._drain_then_stop, name="hookserve-drain", daemon=True).start()

    def in_flight(self) -> int:
        return sum(gate.in_flight for gate in self.gates)

    def _drain_then_stop(self) -> None:
        deadline = time.monotonic() + self.grace_s
        while (pending := self.in_flight()) > 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        if pending:
            logger.warning("grace period over with %d request(s) still in flight", pending)
        else:
            logger.info("all in-flight requests answered; stopping")
        self.stop()
