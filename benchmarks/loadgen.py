"""Closed-loop HTTP load: ``wrk`` when installed, else a lean asyncio client in its own process.

Each of ``concurrency`` connections sends one POST, waits for the answer, sends the next (keep-alive),
for ``duration_s``; request bodies rotate through a file of JSON lines. The result carries completed
requests, errors, p50/p90/p99 latency and the CPU time the load generator itself used, so a report can
show that the client did not starve the server (on a 2-core machine that matters).

Why wrk: it is one C thread on epoll. At the ~1-2k req/s these servers reach it uses a few percent of a
core, where a Python client needs a large fraction of one -- CPU the server under test would lose.

Run the fallback client directly: ``python -m benchmarks.loadgen --url URL --bodies FILE -c 8 -d 5``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlsplit

# Bodies rotate per request; done() prints one JSON line the parent parses. wrk reports latency in us.
WRK_SCRIPT = r"""
local bodies = {}
local counter = 0

function init(args)
  for line in io.lines(args[1]) do
    bodies[#bodies + 1] = line
  end
end

function request()
  counter = counter % #bodies + 1
  return wrk.format("POST", nil, {["Content-Type"] = "application/json"}, bodies[counter])
end

function done(summary, latency, requests)
  io.write(string.format(
    'WRK_JSON {"requests":%d,"duration_us":%d,"connect":%d,"read":%d,"write":%d,"status":%d,' ..
    '"timeout":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"mean_us":%.1f,"max_us":%d}\n',
    summary.requests, summary.duration, summary.errors.connect, summary.errors.read,
    summary.errors.write, summary.errors.status, summary.errors.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean, latency.max))
end
"""


@dataclass(frozen=True)
class LoadResult:
    """One closed-loop window. ``errors`` counts failed or non-2xx requests (also counted in requests)."""

    tool: str
    concurrency: int
    requests: int
    errors: int
    duration_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    client_cpu_s: float

    @property
    def ok_per_s(self) -> float:
        return max(self.requests - self.errors, 0) / self.duration_s if self.duration_s > 0 else 0.0

    def to_dict(self) -> dict:
        return {**asdict(self), "ok_per_s": self.ok_per_s}


def write_bodies(bodies: list[bytes], directory: Path) -> Path:
    """One JSON body per line (JSON has no raw newlines, so lines are bodies)."""
    path = directory / f"bodies-{os.getpid()}-{time.monotonic_ns()}.jsonl"
    path.write_bytes(b"\n".join(bodies) + b"\n")
    return path


def wrk_available() -> bool:
    return shutil.which("wrk") is not None


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _run_child(command: list[str], timeout_s: float) -> tuple[str, float]:
    # RUSAGE_CHILDREN grows when a child is reaped; the delta around one child is that child's CPU.
    # Servers are reaped only when stopped, never during a window, so the delta is the load generator's.
    before = _children_cpu_s()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        out, _ = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise RuntimeError(f"{command[0]} did not finish within {timeout_s:.0f} s") from None
    if process.returncode != 0:
        raise RuntimeError(f"{command[0]} exited with {process.returncode}: {out.strip()[-500:]}")
    return out, _children_cpu_s() - before


def run_wrk(
    url: str,
    bodies_file: Path,
    concurrency: int,
    duration_s: float,
    threads: int = 1,
    cpus: str | None = None,
    timeout_s: float = 10.0,
) -> LoadResult:
    """One wrk window. ``cpus`` (e.g. "1") pins wrk with taskset."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(WRK_SCRIPT)
    try:
        command = [
            "wrk",
            f"-t{min(threads, concurrency)}",
            f"-c{concurrency}",
            f"-d{max(round(duration_s), 1)}s",  # wrk takes whole seconds
            f"--timeout={timeout_s:.0f}s",
            "-s",
            script.name,
            url,
            "--",
            str(bodies_file),
        ]
        if cpus:
            command = ["taskset", "-c", cpus, *command]
        out, cpu = _run_child(command, duration_s + timeout_s + 30)
    finally:
        os.unlink(script.name)
    line = next((ln for ln in out.splitlines() if ln.startswith("WRK_JSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no summary: {out.strip()[-500:]}")
    data = json.loads(line[len("WRK_JSON ") :])
    # connect/read/write/timeout errors are not in summary.requests; status errors (non-2xx/3xx) are.
    failed = data["connect"] + data["read"] + data["write"] + data["timeout"]
    return LoadResult(
        tool="wrk",
        concurrency=concurrency,
        requests=data["requests"] + failed,
        errors=data["status"] + failed,
        duration_s=data["duration_us"] / 1e6,
        p50_ms=data["p50_us"] / 1e3,
        p90_ms=data["p90_us"] / 1e3,
        p99_ms=data["p99_us"] / 1e3,
        mean_ms=data["mean_us"] / 1e3,
        client_cpu_s=cpu,
    )


def run_python_client(
    url: str, bodies_file: Path, concurrency: int, duration_s: float, cpus: str | None = None, **_: object
) -> LoadResult:
    """The fallback: this module's asyncio client, in a child process so its CPU is accounted apart."""
    command = [
        sys.executable,
        "-m",
        "benchmarks.loadgen",
        "--url",
        url,
        "--bodies",
        str(bodies_file),
        "-c",
        str(concurrency),
        "-d",
        str(duration_s),
    ]
    if cpus:
        command = ["taskset", "-c", cpus, *command]
    out, cpu = _run_child(command, duration_s + 60)
    data = json.loads(out.strip().splitlines()[-1])
    return LoadResult(tool="python", client_cpu_s=cpu, **data)


def run_load(
    url: str, bodies_file: Path, concurrency: int, duration_s: float, **options: object
) -> LoadResult:
    """wrk if installed, else the Python client."""
    runner = run_wrk if wrk_available() else run_python_client
    return runner(url, bodies_file, concurrency, duration_s, **options)


# --- the fallback client ------------------------------------------------------------------------------
async def _connection(
    host: str, port: int, requests: list[bytes], stop_at: float, latencies: list[float], errors: list[int]
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    index = 0
    try:
        while time.perf_counter() < stop_at:
            start = time.perf_counter()
            writer.write(requests[index % len(requests)])
            index += 1
            status_line = await reader.readline()
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - start)
            if not status_line.split(b" ", 2)[1].startswith(b"2"):
                errors.append(1)
    finally:
        writer.close()


async def _python_load(url: str, bodies: list[bytes], concurrency: int, duration_s: float) -> dict:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    requests = [
        (
            f"POST {parts.path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        + body
        for body in bodies
    ]
    latencies: list[float] = []
    errors: list[int] = []
    start = time.perf_counter()
    stop_at = start + duration_s
    await asyncio.gather(
        *(_connection(host, port, requests, stop_at, latencies, errors) for _ in range(concurrency))
    )
    elapsed = time.perf_counter() - start
    ordered = sorted(latencies) or [0.0]

    def percentile(q: float) -> float:
        return ordered[min(int(q * len(ordered)), len(ordered) - 1)] * 1e3

    return {
        "concurrency": concurrency,
        "requests": len(latencies),
        "errors": len(errors),
        "duration_s": elapsed,
        "p50_ms": percentile(0.50),
        "p90_ms": percentile(0.90),
        "p99_ms": percentile(0.99),
        "mean_ms": sum(ordered) / len(ordered) * 1e3,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Closed-loop POST load (the fallback when wrk is absent).")
    parser.add_argument("--url", required=True)
    parser.add_argument("--bodies", type=Path, required=True, help="one JSON body per line")
    parser.add_argument("-c", "--concurrency", type=int, default=1)
    parser.add_argument("-d", "--duration", type=float, default=5.0, help="seconds")
    args = parser.parse_args(argv)
    bodies = [line for line in args.bodies.read_bytes().splitlines() if line]
    print(json.dumps(asyncio.run(_python_load(args.url, bodies, args.concurrency, args.duration))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
