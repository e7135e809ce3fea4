"""The servers this harness can benchmark, and how to start and reach each one.

Adding a server (e.g. hookserve) means adding one `Peer` to PEERS: a command that runs it in
the foreground on 127.0.0.1:ctx.port serving ctx.model, and its predict path. Bodies and
outputs default to the shared contract in models.py ({"input": [...]} -> {"output": [...]});
set `encode_body` / `decode_output` for a server that speaks another schema.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
SERVERS = HERE / "servers"


@dataclass(frozen=True)
class ServerContext:
    """What a peer's command may use; workdir is an empty scratch folder owned by this server."""

    model: str
    host: str
    port: int
    python: str
    workdir: Path


def _same_body(body: dict) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode()


def _output_field(response: object) -> list[float]:
    return response["output"]  # type: ignore[index]


@dataclass(frozen=True)
class Peer:
    name: str
    description: str
    command: Callable[[ServerContext], list[str]]
    predict_path: Callable[[str], str]
    max_batch: int = 1
    ports_used: int = 1  # consecutive ports from ctx.port that must be free
    ready_timeout_s: float = 180.0
    in_default_set: bool = True
    encode_body: Callable[[dict], bytes] = field(default=_same_body)
    decode_output: Callable[[object], list[float]] = field(default=_output_field)


def _fastapi(ctx: ServerContext) -> list[str]:
    return [
        ctx.python,
        str(SERVERS / "fastapi_app.py"),
        "--model",
        ctx.model,
        "--host",
        ctx.host,
        "--port",
        str(ctx.port),
    ]


def _litserve(max_batch: int, timeout_s: float, fast_queue: bool = False) -> Callable[[ServerContext], list[str]]:
    def command(ctx: ServerContext) -> list[str]:
        cmd = [
            ctx.python,
            str(SERVERS / "litserve_app.py"),
            "--model",
            ctx.model,
            "--host",
            ctx.host,
            "--port",
            str(ctx.port),
            "--max-batch-size",
            str(max_batch),
            "--batch-timeout",
            str(timeout_s),
        ]
        return cmd + (["--fast-queue"] if fast_queue else [])

    return command


def _torchserve(batch: int, delay_ms: int) -> Callable[[ServerContext], list[str]]:
    def command(ctx: ServerContext) -> list[str]:
        return [
            ctx.python,
            str(SERVERS / "torchserve_launch.py"),
            "--model",
            ctx.model,
            "--host",
            ctx.host,
            "--port",
            str(ctx.port),
            "--batch-size",
            str(batch),
            "--max-batch-delay-ms",
            str(delay_ms),
            "--workdir",
            str(ctx.workdir),
        ]

    return command


def _hookserve(
    monitoring: str = "on", api_servers: int = 0, src_env: str = "HOOKSERVE_SRC"
) -> Callable[[ServerContext], list[str]]:
    def command(ctx: ServerContext) -> list[str]:
        cmd = [
            ctx.python,
            str(SERVERS / "hookserve_launch.py"),
            "--model",
            ctx.model,
            "--host",
            ctx.host,
            "--port",
            str(ctx.port),
            "--workdir",
            str(ctx.workdir),
            "--monitoring",
            monitoring,
            "--src-env",
            src_env,
        ]
        return cmd + (["--api-servers", str(api_servers)] if api_servers else [])

    return command


def _hookserve_predict(model: str) -> str:
    return f"/v1/models/{model}:predict"


def _hookserve_body(body: dict) -> bytes:
    """{"input": flat} -> {"instances": [nested to the model's input shape]} (hookserve checks shapes)."""
    import models

    values = body["input"]
    shape = next(spec.input_shape for spec in models.SPECS.values() if spec.numel == len(values))

    def nest(flat: list, dims: tuple) -> list:
        if len(dims) == 1:
            return list(flat)
        step = len(flat) // dims[0]
        return [nest(flat[i * step : (i + 1) * step], dims[1:]) for i in range(dims[0])]

    return json.dumps({"instances": [nest(values, shape)]}, separators=(",", ":")).encode()


def _hookserve_output(response: object) -> list[float]:
    """Probabilities back to centred logits (log-softmax up to a constant): compared after centring."""
    import math

    probs = response["predictions"][0]["probabilities"]  # type: ignore[index]
    logs = [math.log(max(p, 1e-30)) for p in probs]
    mean = sum(logs) / len(logs)
    return [v - mean for v in logs]


def _predict(model: str) -> str:
    return "/predict"


def _ts_predict(model: str) -> str:
    return f"/predictions/{model}"


PEERS: dict[str, Peer] = {
    p.name: p
    for p in [
        Peer(
            "fastapi", "FastAPI + uvicorn, 1 process, sync endpoint in the threadpool, no batching", _fastapi, _predict
        ),
        Peer("litserve-b1", "LitServe, max_batch_size=1", _litserve(1, 0.0), _predict),
        Peer(
            "litserve-b8", "LitServe, max_batch_size=8, batch_timeout=5 ms", _litserve(8, 0.005), _predict, max_batch=8
        ),
        Peer(
            "litserve-b8-zmq",
            "as litserve-b8 with fast_queue=True (ZeroMQ)",
            _litserve(8, 0.005, True),
            _predict,
            max_batch=8,
            in_default_set=False,
        ),
        Peer("torchserve-b1", "TorchServe, 1 worker, batchSize 1", _torchserve(1, 0), _ts_predict, ports_used=5),
        Peer(
            "torchserve-b8",
            "TorchServe, 1 worker, batchSize 8, maxBatchDelay 5 ms",
            _torchserve(8, 5),
            _ts_predict,
            max_batch=8,
            ports_used=5,
        ),
        Peer(
            "hookserve",
            "hookserve as configs/default.yaml serves: 2 API servers, instance batching up to 64, monitoring on",
            _hookserve("on", api_servers=2),
            _hookserve_predict,
            max_batch=64,
            encode_body=_hookserve_body,
            decode_output=_hookserve_output,
        ),
        Peer(
            "hookserve-nomon",
            "as hookserve with monitoring off",
            _hookserve("off", api_servers=2),
            _hookserve_predict,
            max_batch=64,
            encode_body=_hookserve_body,
            decode_output=_hookserve_output,
        ),
        Peer(
            "hookserve-ref",
            "as hookserve, from the checkout in HOOKSERVE_REF_SRC (e.g. an earlier commit, to compare versions)",
            _hookserve("on", api_servers=2, src_env="HOOKSERVE_REF_SRC"),
            _hookserve_predict,
            max_batch=64,
            in_default_set=False,
            encode_body=_hookserve_body,
            decode_output=_hookserve_output,
        ),
        Peer(
            "hookserve-1api",
            "as hookserve with 1 API server (as the other Python peers)",
            _hookserve("on", api_servers=1),
            _hookserve_predict,
            max_batch=64,
            in_default_set=False,
            encode_body=_hookserve_body,
            decode_output=_hookserve_output,
        ),
    ]
}

RAW = "raw"  # the in-process limit, run by raw_bench.py rather than as a server
DEFAULT_ORDER = [RAW] + [name for name, p in PEERS.items() if p.in_default_set]
