"""V1 JSON, V2 JSON, V2 binary and V2 over gRPC side by side, on one server, in one run.

``python -m benchmarks.protocols [--models tiny,resnet-bench] [--concurrency 1,32] [--duration 8]
[--repeats 3] [--protocols v1-json,v2-json,v2-binary,grpc-binary,grpc-stream] [--out DIR]``

For each model one hookserve (2 API servers, 1 torch thread per worker, monitoring on) serves all five
protocols; windows rotate through the protocols so each sees the same machine, and the table shows
medians. ``tiny`` is the peers harness's MLP (``benchmarks/peers``: serving overhead dominates);
``resnet-bench`` (3x64x64, 0.435 GFLOP) is model-bound, and is compared with ``model(x)`` in this process
at the batch sizes the server actually ran (read from ``hookserve_batch_size`` after each window).
Load: wrk, one body per protocol (the V2 binary one with its ``Inference-Header-Content-Length``); for
gRPC, h2load (Debian's nghttp2-client: the same closed loop, C connections of one request each, one
thread, over HTTP/2) posting one framed ``ModelInferRequest`` with a raw FP32 input (what
``tritonclient.grpc`` sends; every output comes back raw, like V2 binary's). h2load sees HTTP statuses
only, so a gRPC window's errors are also read from the server: its non-200 answers in that window.
``grpc-stream`` sends the same request down Triton's ``ModelStreamInfer``, one stream per connection and
one request in flight per stream (``--stream-in-flight K``: K per stream, on clients ÷ K streams), from
``benchmarks/grpc_stream_load.py`` (Python: h2load cannot wait for an answer on a stream before sending
the next request), which counts the answers that are errors.

Each window also records the CPU it cost per answered request, by role: the API servers (``api_us``),
the worker (``worker_us``) and the load generator (``client_us``, h2load or wrk; they share the cores).
On a machine where the cores, not the model, are the limit, req/s is about the cores over their sum,
which is what tells a protocol's own cost from noise (docs/architecture.md, "gRPC beside HTTP").
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import requests
import torch

from benchmarks.metrics_text import sum_samples
from benchmarks.raw_model import time_forward
from benchmarks.servers import REPO_ROOT, ServerProcess, start_hookserve

PROTOCOLS = ("v1-json", "v2-json", "v2-binary", "grpc-binary", "grpc-stream")
CPU_ROLES = ("api_us", "worker_us", "client_us")
PLUGINS = REPO_ROOT / "benchmarks" / "peers" / "servers"
LUA = r"""
local f = assert(io.open(os.getenv("BODY_FILE"), "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
local length = os.getenv("HEADER_LENGTH")
if length and length ~= "" then wrk.headers["Inference-Header-Content-Length"] = length
else wrk.headers["Content-Type"] = "application/json" end
function done(summary, latency, requests)
  io.write(string.format('WRK_JSON {"requests":%d,"duration_us":%d,"errors":%d,"p50_us":%d,"p99_us":%d}\n',
    summary.requests, summary.duration, summary.errors.status + summary.errors.connect + summary.errors.read
    + summary.errors.write + summary.errors.timeout, latency:percentile(50), latency:percentile(99)))
end
"""


def model_config(name: str) -> dict:
    base = {"name": name, "torch_threads": 1, "max_batch_size": 32, "max_instances_per_request": 32}
    if name in ("tiny", "mid"):
        return {**base, "source": f"hookserve_plugin:{name}", "max_batch_size": 64}
    return base


def bodies(x: np.ndarray) -> dict[str, tuple[bytes, str]]:
    """The same one-instance request in each protocol: (body, Inference-Header-Content-Length or "")."""
    tensor = {"name": "input", "shape": list(x.shape), "datatype": "FP32"}
    v2_json = {"inputs": [{**tensor, "data": x.ravel().tolist()}]}
    blob = x.astype("<f4").tobytes()
    header = json.dumps(
        {
            "inputs": [{**tensor, "parameters": {"binary_data_size": len(blob)}}],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    return {
        "v1-json": (json.dumps({"instances": x.tolist()}).encode(), ""),
        "v2-json": (json.dumps(v2_json).encode(), ""),
        "v2-binary": (header + blob, str(len(header))),
    }


def grpc_body(x: np.ndarray, model: str) -> bytes:
    """One ``ModelInfer`` call as it goes on the wire: gRPC's 5-byte frame header, then the message."""
    from service.grpc.proto import grpc_predict_v2_pb2 as pb

    tensor = pb.ModelInferRequest.InferInputTensor(name="input", datatype="FP32", shape=x.shape)
    request = pb.ModelInferRequest(
        model_name=model, inputs=[tensor], raw_input_contents=[x.astype("<f4").tobytes()]
    )
    message = request.SerializeToString()
    return b"\0" + len(message).to_bytes(4, "big") + message


def check_grpc(port: int, body: bytes) -> None:
    """Send ``body`` once with a real gRPC client: raises unless the answer is OK."""
    import grpc

    from service.grpc.proto import grpc_predict_v2_pb2 as pb
    from service.grpc.proto.grpc_predict_v2_pb2_grpc import GRPCInferenceServiceStub

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        answer = GRPCInferenceServiceStub(channel).ModelInfer(
            pb.ModelInferRequest.FromString(body[5:]), timeout=60
        )
    assert answer.raw_output_contents, "a gRPC answer without outputs"


def h2load(url: str, body: bytes, concurrency: int, duration: int) -> dict:
    """h2load's closed loop of ``concurrency`` HTTP/2 connections posting ``body`` as gRPC."""
    with tempfile.TemporaryDirectory() as tmp:
        body_file, log_file = Path(tmp) / "body", Path(tmp) / "log"
        body_file.write_bytes(body)
        out = subprocess.run(
            ["h2load", "-t1", f"-c{concurrency}", "-m1", f"-D{duration}", "-d", str(body_file),
             "-H", "content-type: application/grpc", "-H", "te: trailers", "--log-file", str(log_file), url],
            capture_output=True, text=True, timeout=duration + 60, check=True,
        ).stdout  # fmt: skip
        durations_us = np.array([int(line.split("\t")[2]) for line in log_file.read_text().splitlines()])
    done = re.search(r"finished in ([\d.]+)s", out)
    counts = re.search(r"(\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout", out)
    if done is None or counts is None or not len(durations_us):
        raise RuntimeError(f"unreadable h2load output:\n{out[-2000:]}")
    succeeded, *failed = (int(n) for n in counts.groups())
    return {
        "rps": succeeded / float(done.group(1)),
        "p50_ms": float(np.percentile(durations_us, 50)) / 1e3,
        "p99_ms": float(np.percentile(durations_us, 99)) / 1e3,
        "errors": sum(failed),
    }


def wrk(url: str, body: bytes, header_length: str, concurrency: int, duration: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        script, body_file = Path(tmp) / "load.lua", Path(tmp) / "body"
        script.write_text(LUA)
        body_file.write_bytes(body)
        env = {**os.environ, "BODY_FILE": str(body_file), "HEADER_LENGTH": header_length}
        out = subprocess.run(
            ["wrk", "-t1", f"-c{concurrency}", f"-d{duration}s", "-s", str(script), url],
            capture_output=True, text=True, env=env, timeout=duration + 60, check=True,
        ).stdout  # fmt: skip
    data = json.loads(next(line for line in out.splitlines() if line.startswith("WRK_JSON "))[9:])
    return {
        "rps": data["requests"] / (data["duration_us"] / 1e6),
        "p50_ms": data["p50_us"] / 1e3,
        "p99_ms": data["p99_us"] / 1e3,
        "errors": data["errors"],
    }


def server_errors(after: str, before: str, model: str) -> float:
    """Answers other than 200 to ``model`` between two scrapes."""
    total, ok = (
        sum_samples(after, "hookserve_requests_total", model=model, **code)
        - sum_samples(before, "hookserve_requests_total", model=model, **code)
        for code in ({}, {"code": "200"})
    )
    return total - ok


def mean_batch(model: str, before: str, after: str) -> float:
    total = sum_samples(after, "hookserve_batch_size_sum", model=model) - sum_samples(
        before, "hookserve_batch_size_sum", model=model
    )
    count = sum_samples(after, "hookserve_batch_size_count", model=model) - sum_samples(
        before, "hookserve_batch_size_count", model=model
    )
    return total / count if count else 0.0


def stream_load(address: str, message: bytes, concurrency: int, duration: int, in_flight: int = 1) -> dict:
    """``benchmarks/grpc_stream_load.py``'s closed loop: ``concurrency`` requests in flight, ``in_flight``
    on each stream."""
    with tempfile.TemporaryDirectory() as tmp:
        message_file = Path(tmp) / "message"
        message_file.write_bytes(message)
        out = subprocess.run(
            [sys.executable, "-m", "benchmarks.grpc_stream_load", address, str(message_file),
             "--concurrency", str(max(1, concurrency // in_flight)), "--duration", str(duration),
             "--in-flight", str(in_flight)],
            capture_output=True, text=True, cwd=REPO_ROOT, timeout=duration + 60, check=True,
        ).stdout  # fmt: skip
    return json.loads(out.strip().splitlines()[-1])


def load(
    name: str, url: str, body: bytes, header_length: str, concurrency: int, duration: int, in_flight: int = 1
) -> dict:
    if name == "grpc-stream":
        return stream_load(url, body, concurrency, duration, in_flight)
    if name.startswith("grpc"):
        return h2load(url, body, concurrency, duration)
    return wrk(url, body, header_length, concurrency, duration)


def children_cpu_s() -> float:
    """User+system CPU seconds of this process's finished children (the load generators)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def cpu_per_request(server: ServerProcess, window: Callable[[], dict], duration: int) -> dict:
    """Run ``window`` (one load window); add the µs of CPU each role spent per answered request."""
    server_before, client_before = server.cpu_seconds(), children_cpu_s()
    result = window()
    server_after, client_after = server.cpu_seconds(), children_cpu_s()
    answered = max(result["rps"] * duration, 1.0)
    for role in ("api", "worker"):
        spent = server_after.get(role, 0.0) - server_before.get(role, 0.0)
        result[f"{role}_us"] = spent / answered * 1e6
    result["client_us"] = (client_after - client_before) / answered * 1e6
    return result


def measure(model: str, args: argparse.Namespace, workdir: Path) -> list[dict]:
    config = {"server": {"api_servers": 2, "log_level": "warning"}, "models": [model_config(model)]}
    env = {"PYTHONPATH": os.pathsep.join([str(REPO_ROOT), str(PLUGINS)])}
    server = start_hookserve(f"protocols-{model}", config, workdir, env=env)
    try:
        if not server.wait_ready(300):
            raise RuntimeError(f"{model} did not start: {server.log_tail()}")
        meta = requests.get(f"{server.base_url}/v1/models/{model}", timeout=10).json()
        x = np.random.default_rng(0).uniform(0, 1, size=[1, *meta["input"]["shape"]]).astype(np.float32)
        payloads = bodies(x)
        framed = grpc_body(x, model)
        payloads["grpc-binary"] = (framed, "")
        payloads["grpc-stream"] = (framed[5:], "")  # the message, without gRPC's frame
        payloads = {name: payloads[name] for name in args.protocols}
        urls = {
            "v1-json": f"{server.base_url}/v1/models/{model}:predict",
            "v2-json": f"{server.base_url}/v2/models/{model}/infer",
            "v2-binary": f"{server.base_url}/v2/models/{model}/infer",
            "grpc-binary": f"http://127.0.0.1:{server.grpc_port}/inference.GRPCInferenceService/ModelInfer",
            "grpc-stream": f"127.0.0.1:{server.grpc_port}",
        }
        for name, (body, length) in payloads.items():  # each must answer 200 before it is timed
            if name == "grpc-binary":
                check_grpc(server.grpc_port, body)
                continue
            if name == "grpc-stream":
                checked = stream_load(urls[name], body, 1, 1)
                assert checked["rps"] > 0 and not checked["errors"], checked
                continue
            headers = {"Inference-Header-Content-Length": length} if length else {}
            response = requests.post(urls[name], data=body, headers=headers, timeout=60)
            assert response.status_code == 200, (name, response.text[:300])
        rows = []
        for concurrency in args.concurrency:
            for name in payloads:  # warm-up
                load(name, urls[name], *payloads[name], concurrency, 2, args.stream_in_flight)
            for repeat in range(args.repeats):
                for name, (body, length) in payloads.items():
                    before = requests.get(f"{server.base_url}/metrics", timeout=10).text
                    result = cpu_per_request(
                        server,
                        functools.partial(
                            load,
                            name,
                            urls[name],
                            body,
                            length,
                            concurrency,
                            args.duration,
                            args.stream_in_flight,
                        ),
                        args.duration,
                    )
                    after = requests.get(f"{server.base_url}/metrics", timeout=10).text
                    if name == "grpc-binary":  # h2load sees HTTP 200 for every gRPC answer
                        result["errors"] += server_errors(after, before, model)
                    batch = mean_batch(model, before, after)
                    rows.append({"model": model, "protocol": name, "concurrency": concurrency,
                                 "repeat": repeat, "mean_batch": batch, **result})  # fmt: skip
                    print(json.dumps(rows[-1]), flush=True)
        return rows
    finally:
        server.stop()


def raw_limit(model: str, batch_sizes: list[int]) -> dict[int, float]:
    from models.checkpoint import load_pretrained

    torch.set_num_threads(1)
    net = load_pretrained(model).eval()
    pool = net.example_input(64, seed=1)
    return {b: time_forward(net, pool, b, 1, window_s=3.0).items_per_s for b in batch_sizes}


def table(rows: list[dict], raw: dict[str, dict[int, float]]) -> str:
    lines = [
        "| model | protocol | clients | req/s (median) | p50 ms | p99 ms | mean batch | x raw at batch "
        "| CPU µs/request: api · worker · client |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    keys = sorted({(r["model"], r["concurrency"], r["protocol"]) for r in rows})
    for model, concurrency, protocol in keys:
        group = [
            r for r in rows if (r["model"], r["concurrency"], r["protocol"]) == (model, concurrency, protocol)
        ]
        rps = statistics.median(r["rps"] for r in group)
        batch = statistics.median(r["mean_batch"] for r in group)
        limit = raw.get(model, {})
        nearest = min(limit, key=lambda b: abs(b - batch)) if limit else None
        ratio = f"{rps / limit[nearest]:.2f} (b{nearest})" if nearest else "-"
        lines.append(
            f"| {model} | {protocol} | {concurrency} | {rps:,.0f} | "
            f"{statistics.median(r['p50_ms'] for r in group):.2f} | "
            f"{statistics.median(r['p99_ms'] for r in group):.2f} | {batch:.1f} | {ratio} | "
            + " · ".join(f"{statistics.median(r[k] for r in group):,.0f}" for k in CPU_ROLES)
            + " |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="tiny,resnet-bench")
    parser.add_argument("--concurrency", default="1,32")
    parser.add_argument("--duration", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--protocols", default=",".join(PROTOCOLS), help="a subset, in this order")
    parser.add_argument(
        "--stream-in-flight", type=int, default=1,
        help="grpc-stream: requests in flight per stream (the clients' requests over fewer streams)",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results" / "protocols")
    args = parser.parse_args(argv)
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    args.protocols = [name for name in PROTOCOLS if name in args.protocols.split(",")]
    if not args.protocols:
        raise SystemExit(f"--protocols: name one or more of {', '.join(PROTOCOLS)}")
    missing = [tool for tool in ("wrk", "h2load") if shutil.which(tool) is None]
    if missing:
        raise SystemExit(f"{', '.join(missing)} not found: apt-get install -y wrk nghttp2-client")
    args.out.mkdir(parents=True, exist_ok=True)
    rows, raw = [], {}
    with tempfile.TemporaryDirectory() as workdir:
        for model in args.models.split(","):
            rows += measure(model, args, Path(workdir))
            if model == "resnet-bench":
                batches = sorted({max(1, round(r["mean_batch"])) for r in rows if r["model"] == model})
                raw[model] = raw_limit(model, sorted({1, 8, 16, 32, *batches}))
    report = table(rows, raw)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (args.out / f"protocols-{stamp}.json").write_text(json.dumps({"rows": rows, "raw": raw}, indent=1))
    (args.out / f"protocols-{stamp}.md").write_text(report + "\n")
    print(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
