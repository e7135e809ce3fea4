"""A closed loop over Triton's ``ModelStreamInfer``: C streams, each on its own connection, each with one
request in flight (send, wait for the answer, send again), like h2load's and wrk's loops for unary calls;
or K in flight per stream (``--in-flight K``: a client that pipelines, as ``async_stream_infer`` can).

``python -m benchmarks.grpc_stream_load ADDRESS MESSAGE_FILE [--concurrency 32] [--duration 8]
[--in-flight 1]``

``MESSAGE_FILE`` holds one serialized ``ModelInferRequest``. It prints one JSON line: ``rps``, ``p50_ms``,
``p99_ms``, and ``errors`` (answers carrying an ``error_message``, and streams that broke). With K > 1 a
latency pairs each answer with the oldest unanswered request: exact while one model answers in order.

Why Python (``grpc.aio`` on uvloop, one process, like ``h2load -t1``): neither h2load nor wrk can wait for
each answer on a stream before sending the next request on it. It costs more CPU per request than
h2load does, on the same cores as the server: ``benchmarks/protocols.py`` reports it as ``client_us``.
Each stream gets its own connection (a local subchannel pool), so the kernel spreads them over the API
servers as it spreads h2load's connections.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import time
from pathlib import Path

import numpy as np

METHOD = "/inference.GRPCInferenceService/ModelStreamInfer"
ERROR_TAG = b"\n"  # field 1 (error_message), length-delimited: on the wire only when it is not empty


async def closed_loop(
    address: str, message: bytes, concurrency: int, duration: float, in_flight: int = 1
) -> dict:
    import grpc

    def same(data: bytes) -> bytes:
        return data

    channels = [
        grpc.aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(concurrency)
    ]
    await asyncio.gather(*(channel.channel_ready() for channel in channels))
    latencies: list[float] = []
    errors = 0
    end = time.perf_counter() + duration

    async def one_stream(channel: grpc.aio.Channel) -> None:
        nonlocal errors
        call = channel.stream_stream(METHOD, request_serializer=same, response_deserializer=same)()
        sent_at: collections.deque[float] = collections.deque()
        credits = asyncio.Semaphore(in_flight)

        async def send() -> None:
            while time.perf_counter() < end:
                await credits.acquire()
                sent_at.append(time.perf_counter())
                await call.write(message)
            await call.done_writing()

        sender = asyncio.create_task(send())
        try:
            while (answer := await call.read()) is not grpc.aio.EOF:
                latencies.append(time.perf_counter() - sent_at.popleft())  # in order for one model
                errors += answer.startswith(ERROR_TAG)
                credits.release()
            await sender
        except grpc.aio.AioRpcError:
            errors += 1
            sender.cancel()

    started = time.perf_counter()
    await asyncio.gather(*(one_stream(channel) for channel in channels))
    elapsed = time.perf_counter() - started
    await asyncio.gather(*(channel.close() for channel in channels))
    answered = np.array(latencies) * 1e3
    return {
        "rps": (len(latencies) - errors) / elapsed,
        "p50_ms": float(np.percentile(answered, 50)) if len(answered) else 0.0,
        "p99_ms": float(np.percentile(answered, 99)) if len(answered) else 0.0,
        "errors": errors,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("address", help="HOST:PORT of the gRPC server")
    parser.add_argument("message_file", type=Path, help="one serialized ModelInferRequest")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--in-flight", type=int, default=1, help="requests in flight on each stream")
    args = parser.parse_args(argv)
    import uvloop

    result = uvloop.run(
        closed_loop(
            args.address, args.message_file.read_bytes(), args.concurrency, args.duration, args.in_flight
        )
    )
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
