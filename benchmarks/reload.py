"""Live model changes under load: reloads that must fail no request, and an unload that returns memory.

One hookserve (``--model-control explicit``, two API servers) serves ``digits-cnn`` version 1 from a
temporary repository whose version 2 has shifted output weights (so an answer shows its version).
Each round: 32 closed-loop connections send V1 predictions for ``--seconds``; a third of the way in, a
load adds version 2 (which becomes the default); two thirds in, a load changes the config (new units for
both versions). Every request is recorded with its start, latency, status and answering version.

Reported per round, then as medians over rounds: failed requests (non-200 or broken connections), how
long each load call took, the time from the first load call until version 2 answered a request, and the
p99 latency in the second before the first load against the reload windows (from each load call until a
second after it returned).

Memory: ``tabular-mlp`` is loaded and unloaded ``--rounds`` times; the summed RSS of the server's process
tree before the load, after it and after the unload.

    python -m benchmarks.reload --rounds 3 --seconds 12
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import yaml

from benchmarks.servers import ServerProcess, free_port

DIGIT = [[0.3] * 8] * 8


@dataclass
class Record:
    started: float
    latency: float
    status: int
    version: str


@dataclass
class Round:
    records: list[Record] = field(default_factory=list)
    loads: list[tuple[float, float]] = field(default_factory=list)  # (called, returned), monotonic


def build_repository(root: Path) -> Path:
    import torch

    from models.checkpoint import load_pretrained, save_checkpoint

    def write(path: Path, data: dict) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(data))

    repo = root / "repository"
    write(repo / "digits-cnn" / "model.yaml", {"torch_threads": 1, "versions": [1]})
    (repo / "digits-cnn" / "1").mkdir(parents=True)
    shifted = load_pretrained("digits-cnn")
    with torch.no_grad():
        shifted.head.fc.bias += torch.linspace(-3.0, 3.0, shifted.head.fc.bias.numel())
    save_checkpoint(shifted, repo / "digits-cnn" / "2" / "model.safetensors", name="digits-cnn", overrides={})
    write(repo / "tabular-mlp" / "model.yaml", {"torch_threads": 1})
    (repo / "tabular-mlp" / "1").mkdir(parents=True)
    return repo


def start(repo: Path, workdir: Path) -> ServerProcess:
    port = free_port()
    config = workdir / "server.yaml"
    config.write_text(
        yaml.safe_dump({"server": {"api_servers": 2, "grpc_port": None, "log_level": "warning"}})
    )
    command = [sys.executable, "-m", "service", "serve", "--config", str(config), "--port", str(port)]
    command += ["--model-repository", str(repo), "--model-control", "explicit", "--load-model", "digits-cnn"]
    server = ServerProcess(f"reload-{port}", command, port, workdir / "server.log")
    server.start()
    if not server.wait_ready(180.0):
        raise RuntimeError(f"hookserve did not start: {server.failure}")
    return server


def repository_call(base_url: str, model: str, action: str, config: dict | None = None) -> None:
    body = json.dumps({"parameters": {"config": json.dumps(config)}} if config else {}).encode()
    request = urllib.request.Request(f"{base_url}/v2/repository/models/{model}/{action}", body, method="POST")
    with urllib.request.urlopen(request, timeout=600) as answer:
        if answer.status != 200:
            raise RuntimeError(f"{action} {model}: {answer.status}")


async def connection(port: int, stop_at: float, records: list[Record]) -> None:
    body = json.dumps({"instances": [DIGIT]}).encode()
    request = (
        "POST /v1/models/digits-cnn:predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while time.monotonic() < stop_at:
            started = time.monotonic()
            try:
                writer.write(request)
                status_line = await reader.readline()
                length = 0
                while (line := await reader.readline()) not in (b"\r\n", b""):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                answer = await reader.readexactly(length)
                status = int(status_line.split(b" ", 2)[1])
            except (OSError, asyncio.IncompleteReadError, IndexError, ValueError):
                records.append(Record(started, time.monotonic() - started, 0, ""))
                writer.close()
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                continue
            version = ""
            marker = answer.find(b'"model_version":"')
            if marker >= 0:
                version = answer[marker + 17 : answer.index(b'"', marker + 17)].decode()
            records.append(Record(started, time.monotonic() - started, status, version))
    finally:
        writer.close()


def reload_round(server: ServerProcess, seconds: float, clients: int) -> Round:
    result = Round()
    base = server.base_url
    repository_call(base, "digits-cnn", "load", {"versions": [1]})  # back to version 1 alone

    def reloads(began: float) -> None:
        for at, config in (
            (seconds / 3, {"versions": [1, 2]}),
            (2 * seconds / 3, {"versions": [1, 2], "max_batch_size": 32}),
        ):
            time.sleep(max(0.0, began + at - time.monotonic()))
            called = time.monotonic()
            repository_call(base, "digits-cnn", "load", config)
            result.loads.append((called, time.monotonic()))

    async def drive() -> None:
        began = time.monotonic()
        stop_at = began + seconds
        thread = threading.Thread(target=reloads, args=(began,))
        thread.start()
        await asyncio.gather(*(connection(server.port, stop_at, result.records) for _ in range(clients)))
        thread.join()

    asyncio.run(drive())
    return result


def p99_ms(latencies: list[float]) -> float:
    ordered = sorted(latencies)
    return ordered[min(int(0.99 * len(ordered)), len(ordered) - 1)] * 1e3 if ordered else float("nan")


def summarize(round_: Round) -> dict:
    records, loads = round_.records, round_.loads
    first_call = loads[0][0]
    first_v2 = min((r.started + r.latency for r in records if r.version == "2"), default=float("nan"))
    before = [r.latency for r in records if first_call - 1.0 <= r.started < first_call]
    during = [r.latency for r in records if any(c <= r.started <= ret + 1.0 for c, ret in loads)]
    return {
        "requests": len(records),
        "failed": sum(1 for r in records if r.status != 200),
        "load_call_s": [round(ret - called, 3) for called, ret in loads],
        "version_2_answers_after_s": round(first_v2 - first_call, 3),
        "p99_before_ms": round(p99_ms(before), 1),
        "p99_during_reload_ms": round(p99_ms(during), 1),
    }


def tree_rss_mb(pid: int) -> float:
    root = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [root, *root.children(recursive=True)]) / 1e6


def memory_round(server: ServerProcess) -> dict:
    pid = server.process.pid
    before = tree_rss_mb(pid)
    repository_call(server.base_url, "tabular-mlp", "load")
    loaded = tree_rss_mb(pid)
    repository_call(server.base_url, "tabular-mlp", "unload")
    time.sleep(0.5)
    after = tree_rss_mb(pid)
    return {"before_mb": round(before, 1), "loaded_mb": round(loaded, 1), "unloaded_mb": round(after, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=12.0)
    parser.add_argument("--clients", type=int, default=32)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="hookserve-reload-") as tmp:
        workdir = Path(tmp)
        server = start(build_repository(workdir), workdir)
        try:
            rounds = [summarize(reload_round(server, args.seconds, args.clients)) for _ in range(args.rounds)]
            memory = [memory_round(server) for _ in range(args.rounds)]
        finally:
            server.stop(grace_s=10)
    for i, r in enumerate(rounds, 1):
        print(f"round {i}: {json.dumps(r)}")
    for i, m in enumerate(memory, 1):
        print(f"memory {i}: {json.dumps(m)}")
    median = {
        key: statistics.median(r[key] for r in rounds)
        for key in ("failed", "version_2_answers_after_s", "p99_before_ms", "p99_during_reload_ms")
    }
    median["load_call_s"] = [statistics.median(r["load_call_s"][i] for r in rounds) for i in range(2)]
    median["failed_total"] = sum(r["failed"] for r in rounds)
    median["requests_total"] = sum(r["requests"] for r in rounds)
    median["rss_returned_mb"] = statistics.median(m["loaded_mb"] - m["unloaded_mb"] for m in memory)
    median["rss_added_by_load_mb"] = statistics.median(m["loaded_mb"] - m["before_mb"] for m in memory)
    print(f"median: {json.dumps(median)}")
    return 0 if median["failed_total"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
