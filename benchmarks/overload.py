"""Overload with and without a latency target, in one run: what the answered requests waited, what
was refused, and the goodput.

``python -m benchmarks.overload [--model digits-transformer] [--instances 64] [--connections 256]
[--processes 2] [--duration 15] [--rounds 1] [--target-ms 500] [--device cpu] [--precision fp32]``

Two servers serve the same model, one with ``latency_target_ms`` and one without (today's admission by
count only), both up for the whole run; in each of ``--rounds`` rounds (ABBA order, so a change in the
machine's load meets both alike) each is flooded in turn by closed-loop connections that send a request
of ``--instances`` instances, wait for its answer, and send the next at once (a client with no retry
budget: the worst case for a server that sheds). The client records every answer's status and latency,
so the table gives the p50/p99 of the 200s alone, the counts of 503 and 504, and goodput (instances
answered with 200 per s); below it, the p99 of the 200s by the second of the window they were sent in
(where in the window the tail is).
``--retry-delay-ms D`` (Python client) makes each connection wait D ms (±50 %) after a 503, as a
client that backs off does, instead of resending at once.
``--priority-share`` sends that share of requests as priority 1 (``X-Priority: 1``), the rest as 2;
``--priority-connections K`` gives priority 1 to K connections of their own instead (a minority client
whose answers must meet the target while the rest is shed).

``--client h2load`` (the default where h2load is installed) drives the flood with Debian's h2load over
HTTP/1.1 (C, one thread; its per-request log gives each answer's status and latency); ``--client
python`` uses asyncio connections in ``--processes`` processes, and is the only client that can mix
priorities within a connection (``--priority-share``). On 2 cores the Python client's own event loops
add to the latency it records: compare the two before reading a p99. h2load drops the requests still
in flight when its window ends from its log, so a request starved past the window's end is not seen
(the Python client waits for each connection's last answer): read the no-target rows with
``--priority-connections`` from the Python client.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import orjson
import requests

from benchmarks.metrics_text import sum_samples
from benchmarks.servers import ServerProcess, start_hookserve


async def _connection(
    port: int, bodies: list[bytes], stop_at: float, out: list, retry_delay_s: float = 0.0
) -> None:
    """One closed-loop connection; after a 503 it waits ``retry_delay_s`` (jittered ±50 %) when set."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    index = 0
    try:
        while time.perf_counter() < stop_at:
            body = bodies[index % len(bodies)]
            index += 1
            start = time.perf_counter()
            writer.write(body)
            status_line = await reader.readline()
            if not status_line:
                out.append((0, time.perf_counter() - start, 0, start))
                return
            length = 0
            priority = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            await reader.readexactly(length)
            priority = 1 if b"X-Priority: 1\r\n" in body[:400] else 2
            status = int(status_line.split(b" ", 2)[1])
            out.append((status, time.perf_counter() - start, priority, start))
            if status == 503 and retry_delay_s > 0:
                await asyncio.sleep(retry_delay_s * random.uniform(0.5, 1.5))
    except (ConnectionError, asyncio.IncompleteReadError):
        out.append((0, 0.0, 0, time.perf_counter()))
    finally:
        writer.close()


def _client(
    port: int,
    path: str,
    payload: bytes,
    connections: int,
    duration: float,
    share: float,
    queue: mp.Queue,
    nice: int = 0,
    high_connections: int = 0,
    retry_delay_s: float = 0.0,
) -> None:
    if nice:
        os.nice(nice)

    def request(priority: int) -> bytes:
        head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                f"X-Priority: {priority}\r\nContent-Length: {len(payload)}\r\n\r\n")  # fmt: skip
        return head.encode() + payload

    high, low = request(1), request(2)
    every = round(1 / share) if share > 0 else 0
    out: list = []

    async def run() -> None:
        stop_at = time.perf_counter() + duration
        tasks = []
        for i in range(connections):
            bodies = [high if every and (i + k) % every == 0 else low for k in range(max(every, 1))]
            if i < high_connections:  # a client of its own that sends priority 1 only
                bodies = [high]
            tasks.append(_connection(port, bodies, stop_at, out, retry_delay_s))
        await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(run())
    queue.put(out)


def _forward_seconds(server: ServerProcess, model: str) -> float:
    text = requests.get(f"{server.base_url}/metrics", timeout=30).text
    return sum_samples(text, "hookserve_model_forward_seconds_sum", model=model)


def measured_flood(server: ServerProcess, model: str, payload: bytes, args: argparse.Namespace) -> dict:
    """:func:`flood`, plus where the CPU went (seconds per role) and how busy the worker's model was."""
    cpu_before, forward_before = server.cpu_seconds(), _forward_seconds(server, model)
    row = flood(server.port, model, payload, args)
    cpu_after, forward_after = server.cpu_seconds(), _forward_seconds(server, model)
    row["cpu_s"] = {role: round(cpu_after[role] - cpu_before.get(role, 0.0), 1) for role in cpu_after}
    row["model_busy"] = (forward_after - forward_before) / args.duration
    return row


def _spread(total: int, parts: int) -> list[int]:
    """``total`` split over ``parts`` as evenly as whole numbers allow."""
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def _h2load_flood(port: int, path: str, payload: bytes, args: argparse.Namespace) -> list[tuple]:
    """The flood from h2load: one process per priority (K connections at 1, the rest at 2), each a
    closed loop of HTTP/1.1 connections; returns (status, latency s, priority, start s) per answered
    request."""
    results: list[tuple] = []
    groups = [(1, args.priority_connections), (2, args.connections - args.priority_connections)]
    with tempfile.TemporaryDirectory() as tmp:
        body = Path(tmp) / "body"
        body.write_bytes(payload)
        running = []
        for priority, connections in groups:
            if connections <= 0:
                continue
            log = Path(tmp) / f"priority-{priority}.log"
            command = ["h2load", "--h1", "-t1", f"-c{connections}", "-m1", f"-D{args.duration:g}",
                       "-d", str(body), "-H", "Content-Type: application/json",
                       "-H", f"X-Priority: {priority}", f"--log-file={log}",
                       f"http://127.0.0.1:{port}{path}"]  # fmt: skip
            nice = (lambda: os.nice(args.client_nice)) if args.client_nice else None
            proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                    preexec_fn=nice)  # fmt: skip
            running.append((priority, log, proc))
        for priority, log, proc in running:
            out, _ = proc.communicate(timeout=args.duration + 60)
            if proc.returncode != 0 or not log.exists():
                raise RuntimeError(f"h2load failed ({proc.returncode}):\n{out[-2000:]}")
            for line in log.read_text().splitlines():
                start_us, status, elapsed_us = line.split("\t")[:3]
                results.append((max(0, int(status)), int(elapsed_us) / 1e6, priority, int(start_us) / 1e6))
    return results


def _python_flood(port: int, path: str, payload: bytes, args: argparse.Namespace) -> list[tuple]:
    queue: mp.Queue = mp.Queue()
    per = max(1, args.connections // args.processes)
    procs = [
        mp.Process(
            target=_client,
            args=(
                port,
                path,
                payload,
                per,
                args.duration,
                args.priority_share,
                queue,
                args.client_nice,
                high,
                args.retry_delay_ms / 1e3,
            ),
        )
        for high in _spread(args.priority_connections, args.processes)
    ]
    for p in procs:
        p.start()
    results = [record for _ in procs for record in queue.get()]
    for p in procs:
        p.join()
    return results


def flood(port: int, model: str, payload: bytes, args: argparse.Namespace) -> dict:
    path = f"/v1/models/{model}:predict"
    run = _h2load_flood if args.client == "h2load" else _python_flood
    results = run(port, path, payload, args)
    statuses = Counter(status for status, *_ in results)
    ok = sorted(latency for status, latency, *_ in results if status == 200)
    ok_high = sorted(latency for status, latency, priority, _ in results if status == 200 and priority == 1)

    def pct(values: list[float], q: float) -> float:
        return values[min(len(values) - 1, int(q * len(values)))] * 1e3 if values else float("nan")

    return {
        "200": statuses.get(200, 0), "503": statuses.get(503, 0), "504": statuses.get(504, 0),
        "other": sum(n for s, n in statuses.items() if s not in (200, 503, 504)),
        "p50_ms": pct(ok, 0.5), "p99_ms": pct(ok, 0.99), "max_ms": pct(ok, 1.0),
        "p99_priority1_ms": pct(ok_high, 0.99),
        "goodput": statuses.get(200, 0) * args.instances / args.duration,
        "p99_by_second_ms": _p99_by_second(results, pct),
    }  # fmt: skip


def _p99_by_second(results: list[tuple], pct: Callable[[list[float], float], float]) -> list[int]:
    """The p99 of the 200s by the second of the window in which they were sent: where the tail is."""
    first = min((start for *_, start in results), default=0.0)
    by_second: dict[int, list[float]] = {}
    for status, latency, _, start in results:
        if status == 200:
            by_second.setdefault(int(start - first), []).append(latency)
    seconds = range(max(by_second, default=-1) + 1)
    return [round(pct(sorted(by_second[s]), 0.99)) if s in by_second else 0 for s in seconds]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="digits-transformer")
    parser.add_argument("--instances", type=int, default=64)
    parser.add_argument("--connections", type=int, default=256)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--duration", type=float, default=15.0)
    parser.add_argument("--target-ms", type=float, default=500.0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--priority-share", type=float, default=0.0)
    parser.add_argument(
        "--priority-connections",
        type=int,
        default=0,
        help="this many connections send priority 1 only (a minority client); the rest follow the share",
    )
    parser.add_argument("--api-servers", type=int, default=2)
    parser.add_argument("--api-nice", type=int, default=0, help="renice the API servers by this much")
    parser.add_argument(
        "--client-nice",
        type=int,
        default=0,
        help="renice the load generator by this much (a client on another machine takes no server CPU)",
    )
    parser.add_argument(
        "--client",
        choices=("h2load", "python"),
        default="h2load" if shutil.which("h2load") else "python",
        help="the load generator (h2load: C, one thread; python: asyncio, mixes priorities per request)",
    )
    parser.add_argument(
        "--retry-delay-ms",
        type=float,
        default=0.0,
        help="python client: wait this long (±50 %%) after a 503 before the next request (0: at once)",
    )
    parser.add_argument("--rounds", type=int, default=1, help="windows per server, interleaved ABBA")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    if args.client == "h2load" and args.retry_delay_ms:
        parser.error("--retry-delay-ms needs --client python (h2load resends at once)")
    if args.client == "h2load" and args.priority_share:
        parser.error("--priority-share needs --client python (h2load sends one header set per process)")
    workdir = Path(tempfile.mkdtemp(prefix="overload-"))

    def config(target: float | None) -> dict:
        model = {"name": args.model, "device": args.device, "precision": args.precision, "torch_threads": 1}
        model |= {"max_batch_size": 64, "max_instances_per_request": args.instances}
        model |= {"min_precision_agreement": 0.5}
        if target is not None:
            model["latency_target_ms"] = target
        server = {"api_servers": args.api_servers, "log_level": "warning", "max_payload_bytes": 64 << 20}
        server["grpc_port"] = None  # HTTP only
        return {"server": server, "models": [model]}

    modes = {"no target": None, f"target {args.target_ms:g} ms": args.target_ms}
    servers: dict[str, ServerProcess] = {}
    windows: dict[str, list[dict]] = {label: [] for label in modes}
    try:
        for label, target in modes.items():  # both up at once: windows interleave, the idle one waits
            servers[label] = start_hookserve(f"overload-{'t' if target else 'n'}", config(target), workdir)
        payload = b""
        for server in servers.values():
            if not server.wait_ready(300):
                raise SystemExit(f"hookserve did not start: {server.failure}\n{server.log()[-2000:]}")
            if args.api_nice:
                import psutil

                for pid in server.roles().get("api", []):
                    psutil.Process(pid).nice(args.api_nice)
            spec = requests.get(f"{server.base_url}/v1/models/{args.model}", timeout=10).json()["input"]
            x = np.random.default_rng(0).uniform(0, 1, (args.instances, *spec["shape"])).astype(np.float32)
            payload = orjson.dumps({"instances": x.tolist()})
            for _ in range(3):  # warm the path (and the cost model)
                requests.post(f"{server.base_url}/v1/models/{args.model}:predict", data=payload, timeout=60)
        labels = list(modes)
        for round_ in range(args.rounds):
            for label in labels if round_ % 2 == 0 else labels[::-1]:  # ABBA
                windows[label].append(measured_flood(servers[label], args.model, payload, args))
    finally:
        for server in servers.values():
            server.stop()
    load = f"{args.connections} connections x {args.instances} instances, {args.duration:g} s windows"
    print(f"{args.model} ({args.device}, {args.precision}), {load}, {args.rounds} round(s) in ABBA order, "
          f"client {args.client}")  # fmt: skip
    columns = "200 | 503 | 504 | p50 ms (200s) | p99 ms (200s) | max ms | goodput/s | x none"
    print(f"| admission | round | {columns} |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    ratios = {label: [] for label in modes}
    for round_ in range(args.rounds):
        base = windows["no target"][round_]["goodput"] or float("nan")
        for label in modes:
            r = windows[label][round_]
            ratios[label].append(r["goodput"] / base)
            print(f"| {label} | {round_ + 1} | {r['200']} | {r['503']} | {r['504']} | {r['p50_ms']:.0f} | "
                  f"{r['p99_ms']:.0f} | {r['max_ms']:.0f} | {r['goodput']:,.0f} "
                  f"| {ratios[label][-1]:.2f} |")  # fmt: skip
    for label in modes:
        p99 = statistics.median(r["p99_ms"] for r in windows[label])
        timeouts = sum(r["504"] for r in windows[label])
        print(f"{label}: goodput x none {statistics.median(ratios[label]):.2f} (median of rounds), "
              f"p99 {p99:.0f} ms (median of rounds), 504s {timeouts}")  # fmt: skip
    for label in modes:
        for round_, r in enumerate(windows[label], 1):
            print(f"{label}, round {round_}: p99 ms of the 200s by second sent {r['p99_by_second_ms']}")
    for label in modes:
        r = windows[label][-1]
        busy = f"model busy {r['model_busy']:.0%} of the time"
        print(f"{label}, last round: {busy}; CPU seconds by role {r['cpu_s']}")
    if args.priority_share or args.priority_connections:
        for label in modes:
            high = statistics.median(r["p99_priority1_ms"] for r in windows[label])
            print(f"{label}: p99 of priority-1 answers {high:.0f} ms (median of rounds)")
    if args.json:
        Path(args.json).write_text(json.dumps(windows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
