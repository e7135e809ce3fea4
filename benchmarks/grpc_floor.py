"""The floor under gRPC and REST: a server that does nothing, in each, under the same closed loop.

``python -m benchmarks.grpc_floor [--processes 2] [--concurrency 32] [--duration 4] [--repeats 3]``

Why: on a machine where the cores are the limit, a protocol cannot answer faster than its server's
own per-call cost allows. This measures that cost with a handler that returns a fixed answer at once:
``grpc.aio`` (on uvloop, as the API servers run it) and the synchronous ``grpc.server`` (one handler
thread), each in N forked processes sharing the port with ``SO_REUSEPORT``, driven by h2load as
``benchmarks/protocols.py`` drives gRPC; and a plain ASGI app under uvicorn (httptools, uvloop, N
workers), driven by wrk as REST is. It reports req/s and the CPU µs per call of the server processes
and of the load generator. Compare with ``benchmarks/protocols.py``'s ``api_us`` for the real path.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import time

import psutil

from benchmarks.protocols import children_cpu_s, h2load, wrk
from benchmarks.servers import REPO_ROOT, free_port

SERVICE, METHOD = "inference.GRPCInferenceService", "ModelInfer"
ANSWER = b"\n\x04tiny" + b"\0" * 60  # a small ModelInferResponse-sized message
REQUEST = b"\0\0\0\0\x06\n\x04tiny"  # gRPC frame: uncompressed, 6 bytes, model_name "tiny"
KINDS = (
    ("aio", "grpc.aio (uvloop)", "h2load"),
    ("sync", "grpc.server (1 thread)", "h2load"),
    ("asgi", "uvicorn plain ASGI", "wrk"),
)


async def noop_app(scope: dict, receive, send) -> None:
    """The smallest ASGI answer: read the body, send 64 bytes."""
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": ANSWER})


def serve_grpc(kind: str, port: int, processes: int) -> None:
    """Fork ``processes - 1`` times, then serve the no-op method (grpc is imported after the fork)."""
    for _ in range(processes - 1):
        if os.fork() == 0:
            break
    import grpc

    def same(data: bytes) -> bytes:
        return data

    options = [("grpc.so_reuseport", 1)]
    address = f"127.0.0.1:{port}"
    if kind == "aio":
        import uvloop

        async def answer(request: bytes, context) -> bytes:
            return ANSWER

        async def main() -> None:
            handler = grpc.unary_unary_rpc_method_handler(answer, same, same)
            server = grpc.aio.server(options=options)
            server.add_generic_rpc_handlers(
                (grpc.method_handlers_generic_handler(SERVICE, {METHOD: handler}),)
            )
            server.add_insecure_port(address)
            await server.start()
            await server.wait_for_termination()

        uvloop.run(main())
    else:
        from concurrent.futures import ThreadPoolExecutor

        handler = grpc.unary_unary_rpc_method_handler(lambda request, context: ANSWER, same, same)
        server = grpc.server(ThreadPoolExecutor(1), options=options)
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, {METHOD: handler}),))
        server.add_insecure_port(address)
        server.start()
        server.wait_for_termination()


def start(kind: str, port: int, processes: int) -> subprocess.Popen:
    if kind == "asgi":
        command = ["-m", "uvicorn", "benchmarks.grpc_floor:noop_app", "--port", str(port), "--workers",
                   str(processes), "--loop", "uvloop", "--http", "httptools", "--log-level", "warning",
                   "--no-access-log"]  # fmt: skip
    else:
        command = [
            "-m",
            "benchmarks.grpc_floor",
            "--serve",
            kind,
            "--port",
            str(port),
            "--processes",
            str(processes),
        ]
    return subprocess.Popen([sys.executable, *command], cwd=REPO_ROOT, start_new_session=True)


def tree_cpu_s(root: psutil.Process) -> float:
    total = 0.0
    for process in [root, *root.children(recursive=True)]:
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def measure(kind: str, args: argparse.Namespace) -> dict:
    port = free_port()
    server = start(kind, port, args.processes)
    try:
        time.sleep(3.0)  # start-up (no health endpoint on a no-op server)
        root = psutil.Process(server.pid)
        if kind == "asgi":
            url = f"http://127.0.0.1:{port}/"
            window = lambda seconds: wrk(url, REQUEST, "", args.concurrency, seconds)  # noqa: E731
        else:
            url = f"http://127.0.0.1:{port}/{SERVICE}/{METHOD}"
            window = lambda seconds: h2load(url, REQUEST, args.concurrency, seconds)  # noqa: E731
        window(1)  # warm-up
        rows = []
        for _ in range(args.repeats):
            server_before, client_before = tree_cpu_s(root), children_cpu_s()
            result = window(args.duration)
            answered = max(result["rps"] * args.duration, 1.0)
            server_us = (tree_cpu_s(root) - server_before) / answered * 1e6
            client_us = (children_cpu_s() - client_before) / answered * 1e6
            rows.append((result["rps"], server_us, client_us))
        return {
            name: statistics.median(r[i] for r in rows)
            for i, name in enumerate(("rps", "server_us", "client_us"))
        }
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=10)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--duration", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--serve", choices=("aio", "sync"), help=argparse.SUPPRESS)  # the server side
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve_grpc(args.serve, args.port, args.processes)
        return 0
    print("| server (no-op handler) | load | req/s | server CPU µs/call | client CPU µs/call |")
    print("|---|---|---:|---:|---:|")
    for kind, label, load in KINDS:
        row = measure(kind, args)
        print(f"| {label} | {load} | {row['rps']:,.0f} | {row['server_us']:.0f} | {row['client_us']:.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
