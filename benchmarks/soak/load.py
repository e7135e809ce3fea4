"""One soak's load: the reference pass, then the closed-loop clients and the periodic samples until the
duration is over, a signal stops them or the server dies."""

from __future__ import annotations

import argparse
import asyncio
import resource
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass

from benchmarks.servers import ServerProcess
from benchmarks.soak.checks import Stats, reference_pass
from benchmarks.soak.client import CONN_ERROR, TIMEOUT, Connection, watchdog
from benchmarks.soak.corpus import Request, build_corpus, served_models
from benchmarks.soak.sampler import Sample, Sampler

RECONNECT_PAUSE_S = 0.05
SETTLE_S = 1.0  # between the end of the load and the final sample
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
DURATION_REACHED = "duration reached"


class Control:
    """Stop flag shared by the clients and the sampler; set by the deadline, a signal or a dead server."""

    def __init__(self) -> None:
        self.stopped = asyncio.Event()
        self.reason = DURATION_REACHED

    def stop(self, reason: str) -> None:
        if not self.stopped.is_set():
            self.reason = reason
            self.stopped.set()


@dataclass
class LoadResult:
    elapsed_s: float
    client_cpu_s: float
    stop_reason: str
    interrupted: bool
    samples: list[Sample]
    stats: Stats
    reference_accuracy: dict[str, float]
    models: list[str]


def install_stop_signals(control: Control) -> Callable[[], None]:
    """SIGINT/SIGTERM end the load early (results are still written); a second SIGINT interrupts.

    Returns the function that puts the previous handlers back."""
    loop = asyncio.get_running_loop()
    previous = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}

    def on_signal(signum: int) -> None:
        control.stop(f"interrupted by {signal.Signals(signum).name}")
        loop.remove_signal_handler(signal.SIGINT)  # a second Ctrl-C raises KeyboardInterrupt

    def uninstall() -> None:
        for signum, handler in previous.items():
            loop.remove_signal_handler(signum)
            signal.signal(signum, handler)

    for signum in STOP_SIGNALS:
        loop.add_signal_handler(signum, on_signal, signum)
    return uninstall


def client_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def client(
    connection: Connection, schedule: list[Request], offset: int, stats: Stats, control: Control
) -> None:
    index = offset
    try:
        while not control.stopped.is_set():
            request = schedule[index % len(schedule)]
            index += 1
            start = time.perf_counter()
            outcome, body = await connection.exchange(request.payload)
            stats.record(request, outcome, body, time.perf_counter() - start)
            if outcome in (CONN_ERROR, TIMEOUT):
                await asyncio.sleep(RECONNECT_PAUSE_S)
    finally:
        connection.close()


async def sample_periodically(
    sampler: Sampler, server: ServerProcess, control: Control, started: float, args: argparse.Namespace
) -> None:
    """Sample every ``--sample-every`` until stopped (the last one at the end, by the caller); stop the
    load if the server has died."""
    every_s, next_t = args.sample_every, args.sample_every
    while not control.stopped.is_set() and next_t <= args.duration - min(1.0, every_s / 2):
        try:
            await asyncio.wait_for(control.stopped.wait(), next_t - (time.monotonic() - started))
            return
        except TimeoutError:
            pass
        await sampler.take(time.monotonic() - started)
        next_t += every_s
        if server.process is not None and server.process.poll() is not None:
            control.stop(f"server exited with {server.process.returncode}")


async def load_window(
    server: ServerProcess,
    schedule: list[Request],
    stats: Stats,
    control: Control,
    sampler: Sampler,
    args: argparse.Namespace,
) -> None:
    """The clients and the sampler, from now until ``--duration`` is over or the load is stopped."""
    started = time.monotonic()
    step = len(schedule) // args.concurrency or 1
    connections = [Connection(server.port, args.request_timeout) for _ in range(args.concurrency)]
    guard = asyncio.create_task(watchdog(connections, args.request_timeout))
    clients = [
        asyncio.create_task(client(connection, schedule, i * step, stats, control))
        for i, connection in enumerate(connections)
    ]
    sampling = asyncio.create_task(sample_periodically(sampler, server, control, started, args))
    try:
        await asyncio.wait_for(control.stopped.wait(), args.duration)
    except TimeoutError:
        control.stop(DURATION_REACHED)
    await asyncio.gather(*clients, sampling)
    guard.cancel()


async def run_load(server: ServerProcess, args: argparse.Namespace) -> LoadResult:
    models = await asyncio.to_thread(served_models, server.base_url)
    corpus = build_corpus(models, server.port, args.invalid_fraction, args.seed)
    accuracy = await reference_pass(server.port, corpus.valid, args.request_timeout)
    stats, control = Stats(corpus.kinds), Control()
    sampler = Sampler(server, stats, full_memory=not args.no_uss)
    await sampler.take(0.0)
    uninstall = install_stop_signals(control)
    try:
        started, cpu_start = time.monotonic(), client_cpu_s()
        await load_window(server, corpus.schedule, stats, control, sampler, args)
        elapsed, cpu = time.monotonic() - started, client_cpu_s() - cpu_start
        await asyncio.sleep(SETTLE_S)  # let the server close the connections the clients dropped
        await sampler.take(time.monotonic() - started, load_end_s=elapsed)
    finally:
        uninstall()
    return LoadResult(
        elapsed_s=elapsed,
        client_cpu_s=cpu,
        stop_reason=control.reason,
        interrupted=control.reason != DURATION_REACHED,
        samples=sampler.samples,
        stats=stats,
        reference_accuracy=accuracy,
        models=[m.name for m in models],
    )
