"""The supervisor's decisions (when to restart, when to give up, what a give-up does), on fake processes.

A fake process's sentinel is the read end of a pipe: closing the write end is its death, which the
supervisor sees through the same ``multiprocessing.connection.wait`` as a real one. The clock is fake, so
backoffs are exact and nothing sleeps. The live tests (test_worker_supervision.py,
test_api_server_supervision.py) kill real processes.
"""

from __future__ import annotations

import itertools
import os
from typing import Any

import pytest
from prometheus_client import REGISTRY

from service import supervisor as supervisor_module
from service.config import RestartPolicy
from service.supervisor import Supervisor
from service.worker_states import WorkerState, WorkerStates

POLICY = RestartPolicy(max_restarts=2, window_s=60, backoff_initial_s=1.0, backoff_max_s=1.5)
_pids = itertools.count(900_000)


class FakeProcess:
    def __init__(self) -> None:
        self.pid = next(_pids)
        self.sentinel, self._write_end = os.pipe()
        self.exitcode: int | None = None

    def die(self, exitcode: int = -9) -> None:
        self.exitcode = exitcode
        os.close(self._write_end)

    def join(self, timeout: float | None = None) -> None:
        pass


class Harness:
    """A supervisor over fake processes, a fake clock, and a record of what it did."""

    def __init__(self, policy: RestartPolicy = POLICY, draining: bool = False) -> None:
        self.now = 0.0
        self.draining = draining
        self.relaunched: list[tuple[str, int]] = []
        self.fatal: list[str] = []
        self.dead_pids: list[int] = []
        self.states = WorkerStates(1)
        self.states.assign(0, 1)
        self.supervisor = Supervisor(
            self.states,
            policy,
            relaunch_worker=lambda api, worker, dead: self._relaunch("worker", worker),
            api_server_policy=policy,
            relaunch_api_server=lambda index, dead: self._relaunch("api", index),
            on_fatal=self.fatal.append,
            clock=lambda: self.now,
            draining=lambda: self.draining,
        )

    def _relaunch(self, kind: str, index: int) -> FakeProcess:
        self.relaunched.append((kind, index))
        return FakeProcess()

    def process(self, label: str) -> Any:
        return next(s.process for s in self.supervisor.slots if s.label == label)

    def kill(self, label: str) -> None:
        self.process(label).die()
        self.supervisor.step(timeout=1.0)

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.supervisor.step(timeout=0)


@pytest.fixture(autouse=True)
def no_metric_files(monkeypatch) -> list[int]:
    dead: list[int] = []
    monkeypatch.setattr(supervisor_module, "mark_process_dead", dead.append)
    return dead


def api_restarts() -> float:
    return REGISTRY.get_sample_value("hookserve_api_server_restarts_total") or 0.0


def test_a_dead_api_server_is_replaced_after_a_backoff_that_doubles_and_is_counted(no_metric_files) -> None:
    h = Harness()
    h.supervisor.watch_api_server(1, FakeProcess())
    before = api_restarts()
    first = h.process("API server 1")
    h.kill("API server 1")
    assert no_metric_files == [first.pid], "the dead server's live gauges are dropped"
    h.advance(0.9)
    assert h.relaunched == [], "not before the backoff"
    h.advance(0.2)
    assert h.relaunched == [("api", 1)]
    assert api_restarts() == before + 1
    assert h.supervisor.pids("API server") == {"API server 1": h.process("API server 1").pid}
    h.kill("API server 1")
    h.advance(1.4)
    assert len(h.relaunched) == 1, "the second backoff is doubled (capped at 1.5 s)"
    h.advance(0.2)
    assert h.relaunched == [("api", 1), ("api", 1)]
    assert h.fatal == [] and h.supervisor.fatal is None


def test_api_servers_that_die_too_often_make_the_service_exit(caplog) -> None:
    h = Harness()
    h.supervisor.watch_api_server(0, FakeProcess())
    h.supervisor.watch_worker("m", 0, 0, api=None, process=FakeProcess())
    for _ in range(POLICY.max_restarts):
        h.kill("API server 0")
        h.advance(2.0)
    h.kill("API server 0")
    assert len(h.fatal) == 1 and h.fatal[0] == h.supervisor.fatal
    assert "after 2 restarts within 60 s: API servers cannot be kept alive" in h.fatal[0]
    assert h.fatal[0] in caplog.text
    h.kill("m worker 0")
    h.advance(10)
    assert h.relaunched.count(("worker", 0)) == 0, "once the service is stopping, nothing is restarted"


def test_restarts_older_than_the_window_are_forgotten() -> None:
    h = Harness()
    h.supervisor.watch_api_server(0, FakeProcess())
    for _ in range(POLICY.max_restarts + 2):
        h.kill("API server 0")
        h.advance(POLICY.window_s + 2)
    assert h.fatal == [] and len(h.relaunched) == POLICY.max_restarts + 2


def test_a_worker_that_dies_too_often_stays_down_and_the_service_keeps_running() -> None:
    h = Harness()
    h.supervisor.watch_worker("m", 0, 0, api=None, process=FakeProcess())
    h.kill("m worker 0")
    assert h.states.get(0, 0) == WorkerState.DOWN
    h.advance(1.0)
    assert h.states.get(0, 0) == WorkerState.STARTING and h.relaunched == [("worker", 0)]
    h.kill("m worker 0")
    h.advance(2.0)
    h.kill("m worker 0")
    assert h.states.get(0, 0) == WorkerState.FAILED
    assert h.fatal == [] and h.supervisor.fatal is None
    h.advance(60)
    assert len(h.relaunched) == 2


def test_nothing_is_restarted_during_a_drain() -> None:
    h = Harness(draining=True)
    h.supervisor.watch_api_server(0, FakeProcess())
    h.supervisor.watch_worker("m", 0, 0, api=None, process=FakeProcess())
    h.kill("API server 0")
    h.kill("m worker 0")
    h.advance(10)
    assert h.relaunched == [] and h.fatal == []
    assert h.states.get(0, 0) == WorkerState.DOWN


def test_stop_ends_supervision_but_the_thread_lives_on_for_the_parent_death_signal() -> None:
    h = Harness()
    h.supervisor.watch_api_server(0, FakeProcess())
    h.supervisor.start()
    h.supervisor.stop()
    assert h.supervisor._thread is not None and h.supervisor._thread.is_alive()
    h.process("API server 0").die()
    h.now += 10
    h.supervisor._parked.wait(1)
    assert h.relaunched == []


def test_an_api_server_cannot_be_watched_without_a_way_to_relaunch_it() -> None:
    supervisor = Supervisor(WorkerStates(1), POLICY, relaunch_worker=lambda *a: None)
    with pytest.raises(ValueError, match="relaunch an API server"):
        supervisor.watch_api_server(0, FakeProcess())
