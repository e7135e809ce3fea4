"""Soak test of hookserve's HTTP API: memory, file descriptors and errors under a long mixed load.

    python -m benchmarks.soak --duration 600 --concurrency 32 --out benchmarks/results/soak
    python -m benchmarks.soak --duration 45 --warmup 15 --sample-every 5      # a quick look

It starts hookserve with ``configs/default.yaml`` (or ``--config``) on a free 127.0.0.1 port through
``benchmarks.servers.ServerProcess``, then runs ``--concurrency`` closed-loop clients for ``--duration``
seconds against ``POST /v1/models/{name}:predict`` of every served model, and stops the server at the end
(also on error, Ctrl-C or SIGTERM: the first signal ends the load early and still writes the results).

Requests: valid ones carry held-out rows of each model's dataset (``models.datasets``; random in-range
values if the metadata names no known dataset), 1 to 8 instances each. A reference pass before the load
records each valid body's answer; under load every 200 must carry the same labels (instances whose top-2
probabilities are within ``TIE_MARGIN`` are exempt: batching may legitimately flip a near tie). About
``--invalid-fraction`` of the requests are invalid, evenly over: wrong shape, a ``NaN`` literal, an
out-of-range value, a non-JSON body, too many instances, an unknown field. Input shape, range and
instance limit come from ``GET /v1/models/{name}``.

Goals: every valid request answered 200 with the reference answer; every invalid one answered 4xx
(a 2xx, 5xx, connection error or timeout is an error); total RSS of the server's process tree grows less
than ``--max-rss-growth`` % between the first sample after ``--warmup`` and the end. Every
``--sample-every`` seconds the tree (server pid + all descendants, psutil) is sampled: processes, RSS,
PSS and USS (``memory_full_info``: one read of ``smaps_rollup`` per process), open fds, CPU time,
requests and errors. Written to ``--out``: ``soak_samples.csv``, ``soak_summary.json`` (with per-process
detail per sample) and ``server_log_notable.txt`` (server log lines that are not INFO/access lines).

The load generator is one asyncio loop over raw HTTP/1.1 keep-alive connections (an ``asyncio.Protocol``
each, pre-encoded requests, only the status line and framing headers parsed, one watchdog timer for all
timeouts), so it takes little of the CPU the server needs: its own CPU time (``resource.getrusage``, with
the sampler's share shown apart) is part of the summary.

Exit status: 0 PASS, 1 FAIL (or interrupted during the load), 2 the soak could not run (server did not
start, ...), 130 interrupted before the load.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import math
import random
import re
import resource
import signal
import sys
import tempfile
import time
from array import array
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.servers import REPO_ROOT, ServerProcess, free_port, http_get

DEFAULT_CONFIG = REPO_ROOT / "configs" / "default.yaml"
DEFAULT_OUT = REPO_ROOT / "benchmarks" / "results" / "soak"
HOST = "127.0.0.1"

VALID = "valid"
INVALID_KINDS = ("wrong_shape", "nan", "out_of_range", "non_json", "too_many", "unknown_field")
OK = "200"
CONN_ERROR = "conn_error"
TIMEOUT = "timeout"
WRONG_ANSWER = "wrong_answer"
BAD_BODY = "bad_body"

SCHEDULE_SIZE = 4096  # requests in the rotation every client walks through (from its own offset)
VALID_BODIES_PER_MODEL = 48  # distinct valid bodies per model, each checked in the reference pass
INVALID_VARIANTS = 4  # distinct bodies per model and invalid kind
INSTANCE_COUNTS = (1, 1, 1, 2, 4, 8)
TIE_MARGIN = 1e-3  # top-1 minus top-2 probability below which a flipped label is not an error
RECONNECT_PAUSE_S = 0.05
SETTLE_S = 1.0  # between the end of the load and the final sample
MB = 1024 * 1024
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class SetupError(RuntimeError):
    """The soak cannot run (server not ready, metadata unreadable, reference pass failed)."""


# --- what is served --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelInfo:
    name: str
    shape: tuple[int, ...]
    min_value: float | None
    max_value: float | None
    max_instances: int
    dataset: str | None


def get_json(url: str) -> Any:
    status, body = http_get(url, timeout_s=10.0)
    if status != 200:
        raise SetupError(f"GET {url} answered {status or 'nothing'}")
    return json.loads(body)


def served_models(base_url: str) -> list[ModelInfo]:
    """Every served model, described by its own metadata."""
    infos = []
    for entry in get_json(f"{base_url}/v1/models")["models"]:
        meta = get_json(f"{base_url}{entry['metadata']}")
        infos.append(
            ModelInfo(
                name=meta["name"],
                shape=tuple(meta["input"]["shape"]),
                min_value=meta["input"].get("min_value"),
                max_value=meta["input"].get("max_value"),
                max_instances=int(meta.get("batching", {}).get("max_instances_per_request", 64)),
                dataset=meta.get("dataset"),
            )
        )
    return infos


def held_out_rows(info: ModelInfo, rng: random.Random) -> tuple[np.ndarray, np.ndarray | None]:
    """Test rows of the model's dataset and their labels; random in-range rows if there is no dataset."""
    try:
        from models.datasets import load_dataset

        data = load_dataset(info.dataset or "")
        # float64 rounded to float32's precision: bodies carry 17.93, not 17.93000030517578.
        return np.round(data.test_x.numpy().astype(np.float64), 6), data.test_y.numpy()
    except (ValueError, ImportError):
        low = info.min_value if info.min_value is not None else -1.0
        high = info.max_value if info.max_value is not None else 1.0
        gen = np.random.default_rng(rng.randrange(2**32))
        return gen.uniform(low, high, size=(256, *info.shape)).astype(np.float32), None


# --- requests --------------------------------------------------------------------------------------------
@dataclass(eq=False)
class Request:
    """One pre-encoded request. ``expected``: labels from the reference pass; ``ties``: exempt positions."""

    kind: str
    model: str
    payload: bytes
    truth: tuple[int, ...] | None = None
    expected: tuple[int, ...] | None = None
    ties: frozenset[int] = frozenset()


def encode_http(model: str, port: int, body: bytes) -> bytes:
    head = (
        f"POST /v1/models/{model}:predict HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def instances_body(instances: np.ndarray, **extra: Any) -> bytes:
    # allow_nan (the default) writes a bare NaN literal, which is what the "nan" kind wants.
    return json.dumps({"instances": instances.tolist(), **extra}, separators=(",", ":")).encode()


def pick_rows(rows: np.ndarray, count: int, rng: random.Random) -> tuple[np.ndarray, list[int]]:
    indices = [rng.randrange(len(rows)) for _ in range(count)]
    return rows[indices], indices


def out_of_range_value(info: ModelInfo) -> float:
    if info.max_value is not None:
        return info.max_value + 1.0
    if info.min_value is not None:
        return info.min_value - 1.0
    return 1e39  # no declared range: beyond float32, so not representable as the model's input


def invalid_body(kind: str, info: ModelInfo, rows: np.ndarray, rng: random.Random) -> bytes:
    x, _ = pick_rows(rows, rng.choice(INSTANCE_COUNTS), rng)
    x = x.astype(np.float64)
    if kind == "wrong_shape":
        return instances_body(x[..., :-1])
    if kind in ("nan", "out_of_range"):
        x.reshape(len(x), -1)[rng.randrange(len(x)), rng.randrange(x[0].size)] = (
            math.nan if kind == "nan" else out_of_range_value(info)
        )
        return instances_body(x)
    if kind == "non_json":
        body = instances_body(x)
        return body[: len(body) // 2]
    if kind == "too_many":
        return instances_body(pick_rows(rows, info.max_instances + 1, rng)[0])
    if kind == "unknown_field":
        return instances_body(x, unknown_field=1)
    raise ValueError(f"unknown invalid kind {kind!r}")


def valid_requests(info: ModelInfo, port: int, rng: random.Random) -> list[Request]:
    rows, labels = held_out_rows(info, rng)
    requests = []
    for _ in range(VALID_BODIES_PER_MODEL):
        count = min(rng.choice(INSTANCE_COUNTS), info.max_instances)
        x, indices = pick_rows(rows, count, rng)
        truth = tuple(int(labels[i]) for i in indices) if labels is not None else None
        requests.append(Request(VALID, info.name, encode_http(info.name, port, instances_body(x)), truth))
    return requests


def invalid_requests(info: ModelInfo, port: int, rng: random.Random) -> list[Request]:
    rows, _ = held_out_rows(info, rng)
    return [
        Request(kind, info.name, encode_http(info.name, port, invalid_body(kind, info, rows, rng)))
        for kind in INVALID_KINDS
        for _ in range(INVALID_VARIANTS)
    ]


def build_schedule(
    models: Sequence[ModelInfo], port: int, invalid_fraction: float, seed: int
) -> tuple[list[Request], list[Request]]:
    """The rotation the clients walk (models in turn, ``invalid_fraction`` invalid) and its valid bodies."""
    rng = random.Random(seed)
    valid = {m.name: valid_requests(m, port, rng) for m in models}
    invalid = {m.name: invalid_requests(m, port, rng) for m in models}
    invalid_slots = set(rng.sample(range(SCHEDULE_SIZE), round(SCHEDULE_SIZE * invalid_fraction)))
    schedule = []
    for slot in range(SCHEDULE_SIZE):
        pool = invalid if slot in invalid_slots else valid
        schedule.append(rng.choice(pool[models[slot % len(models)].name]))
    return schedule, [r for requests in valid.values() for r in requests]


# --- raw HTTP/1.1 ----------------------------------------------------------------------------------------
# A Protocol, not StreamReader/Writer: one parse per data_received and no per-request timer (a single
# watchdog enforces the timeout) measured about 30 % less client CPU per request than asyncio streams.
Parsed = tuple[int, bytes, bool, int]  # status, body, "Connection: close", bytes consumed


def parse_chunked(buffer: bytearray, pos: int) -> tuple[bytes, int] | None:
    """The de-chunked body starting at ``pos`` and where it ends, or None while incomplete."""
    chunks = []
    while (line_end := buffer.find(b"\r\n", pos)) >= 0:
        size = int(bytes(buffer[pos:line_end]).split(b";")[0], 16)
        if size == 0:
            end = buffer.find(b"\r\n\r\n", line_end)  # after the (usually empty) trailer
            return (b"".join(chunks), end + 4) if end >= 0 else None
        pos = line_end + 2 + size + 2
        if len(buffer) < pos:
            return None
        chunks.append(bytes(buffer[line_end + 2 : pos - 2]))
    return None


def parse_response(buffer: bytearray, eof: bool = False) -> Parsed | None:
    """One whole response from the front of ``buffer``, or None while incomplete."""
    head_end = buffer.find(b"\r\n\r\n")
    if head_end < 0:
        return None
    head = bytes(buffer[: head_end + 2]).lower()
    status, close, body_start = int(head[9:12]), b"\r\nconnection: close\r\n" in head, head_end + 4
    start = head.find(b"\r\ncontent-length:")
    if start >= 0:
        body_end = body_start + int(head[start + 17 : head.find(b"\r\n", start + 2)])
        return (
            (status, bytes(buffer[body_start:body_end]), close, body_end) if len(buffer) >= body_end else None
        )
    if b"\r\ntransfer-encoding: chunked\r\n" in head:
        chunked = parse_chunked(buffer, body_start)
        return (status, chunked[0], close, chunked[1]) if chunked else None
    return (status, bytes(buffer[body_start:]), True, len(buffer)) if eof else None  # ends at close


class ClientProtocol(asyncio.Protocol):
    """One HTTP/1.1 connection with at most one request in flight."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future[tuple[int, bytes, bool]] | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def request(self, payload: bytes) -> asyncio.Future[tuple[int, bytes, bool]]:
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(payload)
        return self.waiter

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self._deliver(eof=False)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._deliver(eof=True)
        self.fail(exc or ConnectionResetError("connection closed by the server"))

    def _deliver(self, eof: bool) -> None:
        if self.waiter is None:
            return
        try:
            parsed = parse_response(self.buffer, eof)
        except ValueError as exc:  # not HTTP
            self.fail(exc)
            return
        if parsed is not None:
            status, body, close, used = parsed
            del self.buffer[:used]
            waiter, self.waiter = self.waiter, None
            if not waiter.done():
                waiter.set_result((status, body, close))

    def fail(self, exc: BaseException) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)


class Connection:
    """One keep-alive connection, reopened after an error, a timeout or ``Connection: close``."""

    def __init__(self, port: int, timeout_s: float) -> None:
        self.port = port
        self.timeout_s = timeout_s
        self.protocol: ClientProtocol | None = None
        self.sent_at: float | None = None  # monotonic time of the request in flight, for the watchdog

    async def exchange(self, payload: bytes) -> tuple[str, bytes]:
        """``(outcome, body)``: outcome is the status code, ``conn_error`` or ``timeout``."""
        try:
            if self.protocol is None or self.protocol.closed:
                self.protocol = await asyncio.wait_for(self._connect(), self.timeout_s)
            self.sent_at = time.monotonic()
            status, body, close = await self.protocol.request(payload)
        except TimeoutError:
            self.close()
            return TIMEOUT, b""
        except (OSError, ValueError):
            self.close()
            return CONN_ERROR, b""
        finally:
            self.sent_at = None
        if close:
            self.close()
        return str(status), body

    async def _connect(self) -> ClientProtocol:
        _, protocol = await asyncio.get_running_loop().create_connection(ClientProtocol, HOST, self.port)
        return protocol

    def expire(self, now: float) -> None:
        """Fail the request in flight if it is older than the timeout (called by the watchdog)."""
        if self.sent_at is not None and now - self.sent_at > self.timeout_s and self.protocol is not None:
            self.protocol.fail(TimeoutError())

    def close(self) -> None:
        if self.protocol is not None and self.protocol.transport is not None:
            self.protocol.transport.abort()  # nothing is pending on a connection we drop
        self.protocol = None


async def watchdog(connections: Sequence[Connection], timeout_s: float) -> None:
    """Time requests out: one check a second (or faster for short timeouts), until cancelled."""
    while True:
        await asyncio.sleep(min(1.0, timeout_s / 4))
        now = time.monotonic()
        for connection in connections:
            connection.expire(now)


# --- answers ---------------------------------------------------------------------------------------------
def parse_predictions(body: bytes) -> list[dict[str, Any]] | None:
    try:
        predictions = json.loads(body)["predictions"]
    except (ValueError, KeyError, TypeError):
        return None
    return predictions if isinstance(predictions, list) else None


def check_answer(request: Request, body: bytes) -> str:
    """``200`` if the answer matches the reference pass, else what is wrong with it."""
    predictions = parse_predictions(body)
    if predictions is None or len(predictions) != len(request.expected or ()):
        return BAD_BODY
    for position, (prediction, expected) in enumerate(zip(predictions, request.expected, strict=True)):
        label = prediction.get("label_index") if isinstance(prediction, dict) else None
        if label != expected and position not in request.ties:
            return WRONG_ANSWER
    return OK


def top2_margin(probabilities: list[float]) -> float:
    first, second = sorted(probabilities, reverse=True)[:2]
    return first - second


async def reference_pass(port: int, requests: list[Request], timeout_s: float) -> dict[str, float]:
    """Answer every valid body once, one at a time; fill ``expected``/``ties``. Accuracy per model."""
    connection = Connection(port, timeout_s)
    guard = asyncio.create_task(watchdog([connection], timeout_s))
    hits: dict[str, list[int]] = {}
    try:
        for request in requests:
            outcome, body = await connection.exchange(request.payload)
            predictions = parse_predictions(body) if outcome == OK else None
            if predictions is None:
                raise SetupError(
                    f"reference pass: a valid {request.model} request got {outcome}: {body[:200]}"
                )
            request.expected = tuple(int(p["label_index"]) for p in predictions)
            request.ties = frozenset(
                i for i, p in enumerate(predictions) if top2_margin(p["probabilities"]) < TIE_MARGIN
            )
            if request.truth is not None:
                counts = hits.setdefault(request.model, [0, 0])
                counts[0] += sum(a == b for a, b in zip(request.expected, request.truth, strict=True))
                counts[1] += len(request.truth)
    finally:
        guard.cancel()
        connection.close()
    return {model: round(right / total, 4) for model, (right, total) in hits.items()}


# --- load ------------------------------------------------------------------------------------------------
@dataclass
class Stats:
    """Outcome counts per request kind and valid-request latencies (seconds)."""

    outcomes: dict[str, dict[str, int]] = field(
        default_factory=lambda: {kind: {} for kind in (VALID, *INVALID_KINDS)}
    )
    latencies: array = field(default_factory=lambda: array("d"))
    done: int = 0

    def record(self, request: Request, outcome: str, body: bytes, latency_s: float) -> None:
        self.done += 1
        if request.kind == VALID:
            self.latencies.append(latency_s)
            if outcome == OK and request.expected is not None:
                outcome = check_answer(request, body)
        counts = self.outcomes[request.kind]
        counts[outcome] = counts.get(outcome, 0) + 1

    def errors(self) -> dict[str, int]:
        """``kind:outcome`` -> count, for every outcome that misses its goal."""
        found = {}
        for kind, counts in self.outcomes.items():
            for outcome, count in counts.items():
                if not is_expected(kind, outcome):
                    found[f"{kind}:{outcome}"] = count
        return found

    def totals(self) -> dict[str, int]:
        valid = sum(self.outcomes[VALID].values())
        return {"requests": self.done, "valid": valid, "invalid": self.done - valid}

    def connection_errors(self) -> int:
        return sum(c.get(CONN_ERROR, 0) + c.get(TIMEOUT, 0) for c in self.outcomes.values())


def is_expected(kind: str, outcome: str) -> bool:
    return outcome == OK if kind == VALID else outcome.startswith("4")


class Control:
    """Stop flag shared by the clients and the sampler; set by the deadline, a signal or a dead server."""

    def __init__(self) -> None:
        self.stopped = asyncio.Event()
        self.reason = "duration reached"

    def stop(self, reason: str) -> None:
        if not self.stopped.is_set():
            self.reason = reason
            self.stopped.set()


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


# --- sampling --------------------------------------------------------------------------------------------
@dataclass
class Sample:
    """The server's process tree and the load at ``t_s`` seconds into the load."""

    t_s: float
    requests: int
    interval_req_s: float
    valid_errors: int
    invalid_errors: int
    connection_errors: int
    p50_ms: float
    p99_ms: float
    processes: int
    rss_mb: float
    pss_mb: float
    uss_mb: float
    fds: int
    server_cpu_s: float
    sample_ms: float
    sample_cpu_ms: float  # the sampler's own CPU time (smaps_rollup reads cost kernel time)
    per_process: dict[str, dict[str, Any]] = field(default_factory=dict)

    def row(self) -> dict[str, Any]:
        row = asdict(self)
        del row["per_process"]
        return row


def process_usage(process: Any, role: str, full: bool) -> dict[str, Any] | None:
    """One process's memory (MB), open fds and CPU seconds; None if it is gone."""
    import psutil

    try:
        with process.oneshot():
            memory = process.memory_full_info() if full else process.memory_info()
            fds, cpu = process.num_fds(), process.cpu_times()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None
    return {
        "role": role,
        "rss_mb": memory.rss / MB,
        "pss_mb": getattr(memory, "pss", 0) / MB,
        "uss_mb": getattr(memory, "uss", 0) / MB,
        "fds": fds,
        "cpu_s": cpu.user + cpu.system,
    }


def tree_usage(root_pid: int, roles: dict[int, str], full: bool) -> dict[str, Any]:
    """Summed memory (MB), fds and CPU seconds over ``root_pid`` and all its descendants."""
    import psutil

    try:
        root = psutil.Process(root_pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        processes = []
    usages = {p.pid: process_usage(p, roles.get(p.pid, "other"), full) for p in processes}
    found = {pid: usage for pid, usage in usages.items() if usage is not None}
    totals: dict[str, Any] = {
        key: sum(u[key] for u in found.values()) for key in ("rss_mb", "pss_mb", "uss_mb", "fds")
    }
    totals["processes"] = len(found)
    totals["server_cpu_s"] = sum(u.pop("cpu_s") for u in found.values())
    totals["per_process"] = {
        str(pid): {k: round(v, 1) if isinstance(v, float) else v for k, v in usage.items()}
        for pid, usage in found.items()
    }
    return totals


def timed_tree_usage(root_pid: int, roles: dict[int, str], full: bool) -> dict[str, Any]:
    start = time.thread_time()
    usage = tree_usage(root_pid, roles, full)
    return {**usage, "sample_cpu_ms": (time.thread_time() - start) * 1e3}


def percentile_ms(values: Sequence[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(int(q * len(ordered)), len(ordered) - 1)] * 1e3


class Sampler:
    """Takes samples; psutil runs in a thread so the clients keep going meanwhile."""

    def __init__(self, server: ServerProcess, stats: Stats, full_memory: bool) -> None:
        assert server.process is not None
        self.pid = server.process.pid
        self.roles = {pid: role for role, pids in server.roles().items() for pid in pids}
        self.stats = stats
        self.full_memory = full_memory
        self.samples: list[Sample] = []
        self._last = (0.0, 0, 0)  # t_s, requests, latency index

    def load_snapshot(self, load_t_s: float) -> dict[str, Any]:
        """Requests and errors so far; rate and latency since the previous sample."""
        stats, (last_t, last_done, last_latency) = self.stats, self._last
        errors = stats.errors()
        interval = stats.latencies[last_latency:]
        self._last = (load_t_s, stats.done, len(stats.latencies))
        return {
            "requests": stats.done,
            "interval_req_s": (stats.done - last_done) / (load_t_s - last_t) if load_t_s > last_t else 0.0,
            "valid_errors": sum(v for k, v in errors.items() if k.startswith(VALID + ":")),
            "invalid_errors": sum(v for k, v in errors.items() if not k.startswith(VALID + ":")),
            "connection_errors": stats.connection_errors(),
            "p50_ms": percentile_ms(interval, 0.50),
            "p99_ms": percentile_ms(interval, 0.99),
        }

    async def take(self, t_s: float, load_end_s: float | None = None) -> Sample:
        """A sample at ``t_s``; ``load_end_s``: when the load stopped, if before ``t_s`` (for the rate)."""
        load = self.load_snapshot(load_end_s if load_end_s is not None else t_s)
        start = time.perf_counter()
        usage = await asyncio.to_thread(timed_tree_usage, self.pid, self.roles, self.full_memory)
        sample = Sample(t_s=round(t_s, 2), **load, **usage, sample_ms=(time.perf_counter() - start) * 1e3)
        self.samples.append(sample)
        return sample

    async def run(
        self, server: ServerProcess, control: Control, started: float, every_s: float, duration_s: float
    ) -> None:
        """Sample every ``every_s`` until stopped (the last one at the end, by the caller); stop the load if
        the server has died."""
        next_t = every_s
        while not control.stopped.is_set() and next_t <= duration_s - min(1.0, every_s / 2):
            try:
                await asyncio.wait_for(control.stopped.wait(), next_t - (time.monotonic() - started))
                return
            except TimeoutError:
                pass
            report(await self.take(time.monotonic() - started))
            next_t += every_s
            if server.process is not None and server.process.poll() is not None:
                control.stop(f"server exited with {server.process.returncode}")


def report(sample: Sample) -> None:
    print(
        f"  t={sample.t_s:6.0f}s  {sample.interval_req_s:7.1f} req/s  requests={sample.requests}  "
        f"errors={sample.valid_errors}+{sample.invalid_errors}  procs={sample.processes}  "
        f"rss={sample.rss_mb:.1f}MB  uss={sample.uss_mb:.1f}MB  fds={sample.fds}",
        file=sys.stderr,
        flush=True,
    )


# --- one soak --------------------------------------------------------------------------------------------
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


def raise_interrupt(signum: int, frame: object) -> None:
    """SIGTERM outside the load: unwind like Ctrl-C, so the server is stopped on the way out."""
    raise KeyboardInterrupt


def client_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


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
    sampling = asyncio.create_task(sampler.run(server, control, started, args.sample_every, args.duration))
    try:
        await asyncio.wait_for(control.stopped.wait(), args.duration)
    except TimeoutError:
        control.stop("duration reached")
    await asyncio.gather(*clients, sampling)
    guard.cancel()


async def run_load(server: ServerProcess, args: argparse.Namespace) -> LoadResult:
    models = await asyncio.to_thread(served_models, server.base_url)
    schedule, valid = build_schedule(models, server.port, args.invalid_fraction, args.seed)
    accuracy = await reference_pass(server.port, valid, args.request_timeout)
    stats, control = Stats(), Control()
    sampler = Sampler(server, stats, full_memory=not args.no_uss)
    report(await sampler.take(0.0))
    uninstall = install_stop_signals(control)
    try:
        started, cpu_start = time.monotonic(), client_cpu_s()
        await load_window(server, schedule, stats, control, sampler, args)
        elapsed, cpu = time.monotonic() - started, client_cpu_s() - cpu_start
        await asyncio.sleep(SETTLE_S)  # let the server close the connections the clients dropped
        report(await sampler.take(time.monotonic() - started, load_end_s=elapsed))
    finally:
        uninstall()
    return LoadResult(
        elapsed_s=elapsed,
        client_cpu_s=cpu,
        stop_reason=control.reason,
        interrupted=control.reason != "duration reached",
        samples=sampler.samples,
        stats=stats,
        reference_accuracy=accuracy,
        models=[m.name for m in models],
    )


# --- summary ---------------------------------------------------------------------------------------------
def baseline_sample(samples: list[Sample], warmup_s: float) -> Sample:
    """The first sample at or after the warm-up (never the final one unless it is the only one)."""
    candidates = samples[:-1] or samples
    return next((s for s in candidates if s.t_s >= warmup_s), candidates[-1])


def rss_slope_mb_per_min(samples: list[Sample]) -> float:
    if len(samples) < 2:
        return 0.0
    t = np.array([s.t_s for s in samples])
    rss = np.array([s.rss_mb for s in samples])
    return float(np.polyfit(t, rss, 1)[0] * 60.0)


def memory_summary(samples: list[Sample], warmup_s: float) -> dict[str, Any]:
    """RSS/USS/fds/processes at the start, after the warm-up and at the end; growth after the warm-up."""
    start, base, end = samples[0], baseline_sample(samples, warmup_s), samples[-1]
    growth = (end.rss_mb - base.rss_mb) / base.rss_mb * 100 if base.rss_mb else math.inf
    steady = [s for s in samples if s.t_s >= base.t_s]
    return {
        "warmup_s": warmup_s,
        "rss_mb": {
            "start": round(start.rss_mb, 1),
            "after_warmup": round(base.rss_mb, 1),
            "end": round(end.rss_mb, 1),
            "after_warmup_t_s": base.t_s,
        },
        "rss_growth_pct": round(growth, 2),
        "rss_slope_mb_per_min_after_warmup": round(rss_slope_mb_per_min(steady), 3),
        "uss_mb": {"after_warmup": round(base.uss_mb, 1), "end": round(end.uss_mb, 1)},
        "fds": {"start": start.fds, "after_warmup": base.fds, "end": end.fds},
        "processes": {"start": start.processes, "end": end.processes},
        "server_cpu_s": round(end.server_cpu_s - start.server_cpu_s, 2),
    }


def load_summary(result: LoadResult) -> dict[str, Any]:
    """Requests, rates, latencies, errors and what the client itself cost."""
    stats, elapsed = result.stats, result.elapsed_s
    totals = stats.totals()
    return {
        "duration_s": round(elapsed, 1),
        "stop_reason": result.stop_reason,
        **totals,
        "req_per_s": round(totals["requests"] / elapsed, 1) if elapsed else 0.0,
        "valid_p50_ms": round(percentile_ms(stats.latencies, 0.50), 2),
        "valid_p99_ms": round(percentile_ms(stats.latencies, 0.99), 2),
        "errors": stats.errors(),
        "connection_errors": stats.connection_errors(),
        "outcomes": stats.outcomes,
        "reference_accuracy": result.reference_accuracy,
        "client_cpu_s": round(result.client_cpu_s, 2),
        "client_cpu_pct_of_core": round(result.client_cpu_s / elapsed * 100, 1) if elapsed else 0.0,
        "client_cpu_us_per_request": round(result.client_cpu_s / max(totals["requests"], 1) * 1e6, 1),
        # samples taken during the load window (not the first, nor the final one after it)
        "sampler_cpu_s": round(sum(s.sample_cpu_ms for s in result.samples[1:-1]) / 1e3, 2),
    }


def goal_checks(summary: dict[str, Any], interrupted: bool, max_growth: float) -> dict[str, bool]:
    valid_errors = sum(v for k, v in summary["errors"].items() if k.startswith(VALID + ":"))
    return {
        "rss_growth_below_goal": summary["rss_growth_pct"] < max_growth,
        "no_valid_request_errors": valid_errors == 0,
        "every_invalid_request_4xx": sum(summary["errors"].values()) == valid_errors,
        "ran_to_the_end": not interrupted and summary["requests"] > 0,
    }


def summarize(result: LoadResult, args: argparse.Namespace) -> dict[str, Any]:
    summary = {
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "config": str(args.config),
        "models": result.models,
        "concurrency": args.concurrency,
        "invalid_fraction": args.invalid_fraction,
        **load_summary(result),
        **memory_summary(result.samples, min(args.warmup, result.elapsed_s / 2)),
        "goals": {
            "max_rss_growth_pct": args.max_rss_growth,
            "valid": "200, reference answer",
            "invalid": "4xx",
        },
    }
    summary["checks"] = goal_checks(summary, result.interrupted, args.max_rss_growth)
    summary["verdict"] = "PASS" if all(summary["checks"].values()) else "FAIL"
    return summary


# --- output ----------------------------------------------------------------------------------------------
def write_results(out: Path, summary: dict[str, Any], samples: list[Sample]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    rows = [s.row() for s in samples]
    with (out / "soak_samples.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({k: round(v, 2) if isinstance(v, float) else v for k, v in r.items()} for r in rows)
    detail = [{"t_s": s.t_s, "per_process": s.per_process} for s in samples]
    (out / "soak_summary.json").write_text(json.dumps({**summary, "samples": detail}, indent=2) + "\n")


TABLE = "{:>7} {:>8} {:>9} {:>6} {:>6} {:>5} {:>7} {:>5} {:>8} {:>8} {:>5}"


def sample_table(samples: list[Sample]) -> list[str]:
    header = (
        "t_s",
        "req/s",
        "requests",
        "v.err",
        "i.err",
        "conn",
        "p99ms",
        "procs",
        "rss_MB",
        "uss_MB",
        "fds",
    )
    lines = [TABLE.format(*header)]
    for s in samples:
        values = (s.t_s, s.interval_req_s, s.requests, s.valid_errors, s.invalid_errors, s.connection_errors)
        values += (s.p99_ms, s.processes, s.rss_mb, s.uss_mb, s.fds)
        lines.append(TABLE.format(*(f"{v:.1f}" if isinstance(v, float) else v for v in values)))
    return lines


def summary_lines(summary: dict[str, Any]) -> list[str]:
    s, rss, fds, procs = summary, summary["rss_mb"], summary["fds"], summary["processes"]
    checks = "  ".join(f"{name}={'ok' if ok else 'FAIL'}" for name, ok in s["checks"].items())
    return [
        f"{s['duration_s']} s, {s['requests']} requests ({s['valid']} valid, {s['invalid']} invalid), "
        f"{s['req_per_s']} req/s, valid p50/p99 {s['valid_p50_ms']}/{s['valid_p99_ms']} ms",
        f"errors: {s['errors'] or 'none'} (connection errors/timeouts: {s['connection_errors']})",
        f"RSS {rss['start']} MB at start, {rss['after_warmup']} MB at t={rss['after_warmup_t_s']:.0f}s, "
        f"{rss['end']} MB at the end: {s['rss_growth_pct']:+.2f} % after warm-up "
        f"(goal < {s['goals']['max_rss_growth_pct']} %)",
        f"fds {fds['start']} -> {fds['after_warmup']} -> {fds['end']}, processes {procs['start']} -> "
        f"{procs['end']}",
        f"client CPU {s['client_cpu_s']} s ({s['client_cpu_pct_of_core']} % of a core, "
        f"{s['client_cpu_us_per_request']} us/request, sampler {s['sampler_cpu_s']} s of it); "
        f"server tree CPU {s['server_cpu_s']} s",
        checks,
        s["verdict"],
    ]


def print_table(summary: dict[str, Any], samples: list[Sample]) -> None:
    print("\n".join([*sample_table(samples), "", *summary_lines(summary)]))


ACCESS_LOG = re.compile(r'^INFO:\s+\S+ - "')
NOTABLE = re.compile(r"WARNING|ERROR|CRITICAL|Traceback|Error|Warning|Exception|exit", re.IGNORECASE)


def notable_log_lines(log_path: Path, limit: int = 500) -> list[str]:
    """Server log lines worth a look: not access-log lines, and naming a warning, error or exit."""
    found = []
    with log_path.open(errors="replace") as handle:
        for line in handle:
            if not ACCESS_LOG.match(line) and NOTABLE.search(line):
                found.append(line.rstrip("\n"))
                if len(found) >= limit:
                    break
    return found


# --- server ----------------------------------------------------------------------------------------------
def start_server(config: Path, workdir: Path) -> ServerProcess:
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "service",
        "serve",
        "--config",
        str(config),
        "--host",
        HOST,
        "--port",
        str(port),
    ]
    server = ServerProcess("soak", command, port, workdir / "server.log", model="")
    server.start()
    return server


def stop_server(server: ServerProcess) -> dict[str, Any]:
    start = time.monotonic()
    server.stop()
    code = server.process.returncode if server.process is not None else None
    return {"exit_code": code, "stop_s": round(time.monotonic() - start, 1)}


def soak(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="soak-") as workdir:
        server = start_server(args.config, Path(workdir))
        try:
            if not server.wait_ready(args.startup_timeout):
                raise SetupError(f"hookserve did not start: {server.failure}")
            print(f"hookserve ready on {server.base_url} after {server.startup_s:.1f} s", file=sys.stderr)
            result = asyncio.run(run_load(server, args))
        finally:
            stopped = stop_server(server)
            notable = notable_log_lines(server.log_path)
    summary = {**summarize(result, args), "server_stop": stopped, "server_log_notable_lines": len(notable)}
    write_results(args.out, summary, result.samples)
    (args.out / "server_log_notable.txt").write_text("".join(line + "\n" for line in notable))
    print_table(summary, result.samples)
    print(f"results in {args.out}", file=sys.stderr)
    return 0 if summary["verdict"] == "PASS" else 1


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of load (default 600)")
    parser.add_argument("--concurrency", type=int, default=32, help="closed-loop clients (default 32)")
    parser.add_argument("--invalid-fraction", type=float, default=0.2, help="share of invalid requests")
    parser.add_argument("--sample-every", type=float, default=10.0, help="seconds between samples")
    parser.add_argument(
        "--warmup",
        type=float,
        default=60.0,
        help="seconds before the RSS baseline sample (at most half the run)",
    )
    parser.add_argument("--max-rss-growth", type=float, default=3.0, help="goal, %% after warm-up")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for CSV and JSON results")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="hookserve config")
    parser.add_argument("--request-timeout", type=float, default=30.0, help="client timeout, seconds")
    parser.add_argument("--startup-timeout", type=float, default=180.0, help="seconds to wait for /health")
    parser.add_argument("--seed", type=int, default=0, help="seed of the request mix")
    parser.add_argument("--no-uss", action="store_true", help="RSS only (skip PSS/USS from smaps_rollup)")
    args = parser.parse_args(argv)
    if not 0.0 <= args.invalid_fraction <= 1.0 or args.concurrency < 1 or args.sample_every <= 0:
        parser.error("need 0 <= --invalid-fraction <= 1, --concurrency >= 1, --sample-every > 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, raise_interrupt)
    try:
        return soak(args)
    except SetupError as exc:
        print(f"soak could not run: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("soak interrupted; server stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
