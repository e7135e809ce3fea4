"""What ``hookserve serve`` exits with once LitServe's ``run()`` has ended, and that the log says why."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest

from service.cli import exit_status


def server(draining: bool = False, fatal: str | None = None) -> SimpleNamespace:
    return SimpleNamespace(
        plan=SimpleNamespace(drain=SimpleNamespace(draining=draining)),
        supervisor=SimpleNamespace(fatal=fatal),
    )


def test_a_requested_stop_that_ends_run_is_a_clean_exit() -> None:
    assert exit_status(server(draining=True), None) == 0


MANAGER_GONE = [EOFError(), BrokenPipeError(), ConnectionResetError(), ConnectionRefusedError()]


@pytest.mark.parametrize("exc", MANAGER_GONE)
def test_a_drain_that_finds_the_queue_manager_gone_is_still_a_clean_stop(exc: Exception, caplog) -> None:
    with caplog.at_level(logging.INFO):
        assert exit_status(server(draining=True), exc) == 0
    assert "the queue manager went first" in caplog.text


@pytest.mark.parametrize("exc", [RuntimeError("boom"), ValueError("bad"), KeyError("x"), PermissionError()])
def test_any_other_exception_during_a_drain_is_an_error(exc: Exception, caplog) -> None:
    assert exit_status(server(draining=True), exc) == 1
    assert any(r.levelno == logging.ERROR and type(exc).__name__ in r.getMessage() for r in caplog.records)


def test_an_exception_outside_a_drain_is_an_error_even_a_manager_error(caplog) -> None:
    assert exit_status(server(draining=False), EOFError()) == 1


def test_api_servers_that_could_not_be_kept_alive_make_the_exit_non_zero(caplog) -> None:
    why = "API server 0 died (exit code -9) after 5 restarts within 300 s: API servers cannot be kept alive"
    assert exit_status(server(draining=True, fatal=why), None) == 1
    assert exit_status(server(draining=True, fatal=why), EOFError()) == 1
    assert f"hookserve stopped: {why}" in caplog.text
