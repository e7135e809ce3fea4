"""Reduced precision on a CUDA GPU: raw and served speed of fp32, bf16 and fp16, and agreement with fp32.

For resnet-bench and digits-transformer, at each precision (autocast, exactly as hookserve serves it):

* agreement -- top-1 agreement and max/mean |diff| of the probabilities against fp32, on held-out data
  (digits) or seeded random images (resnet-bench);
* raw       -- ``model(x)`` under ``inference_mode`` + autocast, timed with CUDA events after a warm-up,
  median of repeats, at several batch sizes;
* served    -- hookserve started with ``device: cuda`` and that precision, loaded with the project's load
  generator (wrk if installed, else ``benchmarks.loadgen``'s asyncio client) at 1 and 64 clients, rounds
  interleaved across all servers; hookserve's own /metrics give the mean batch and forward time.

One unattended command, bounded by ``--budget-s`` (default 420 s: under 8 minutes on an H100):

    python -m benchmarks.gpu_precision --out gpu-results

It writes ``gpu_precision.json`` and ``gpu_precision.md`` into ``--out``. Without CUDA it exits with a
message (status 2); ``--dry-run`` runs every non-CUDA part on the CPU with tiny settings instead. The
served part needs hookserve's serving dependencies (litserve, fastapi, uvicorn, pydantic); where they
are missing it is skipped with a note and the raw and agreement parts still run. Dependencies: torch,
numpy and the project (plus PyYAML, which the project needs anyway).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from service.worker.runtime import autocast, synchronize

PRECISIONS = ("fp32", "bf16", "fp16")
MODELS = ("resnet-bench", "digits-transformer")
RAW_BATCHES = {"resnet-bench": (1, 64, 256), "digits-transformer": (1, 64, 512)}
SERVED_CONCURRENCY = (1, 64)


@dataclass(frozen=True)
class Settings:
    device: str
    out: Path
    models: tuple[str, ...]
    precisions: tuple[str, ...]
    served: bool
    window_s: float
    rounds: int
    api_servers: int
    monitoring: bool
    budget_s: float
    dry_run: bool

    def raw_batches(self, model: str) -> tuple[int, ...]:
        return (1, 8) if self.dry_run else RAW_BATCHES.get(model, (1, 64))

    def overrides(self, model: str) -> dict[str, Any]:
        # A CPU dry run only proves the plumbing: a narrow resnet keeps it to seconds.
        return {"width": 8} if self.dry_run and model == "resnet-bench" else {}


class Deadline:
    """The run's time budget: optional work is skipped once it is spent."""

    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# --- inputs and agreement ---------------------------------------------------------------------------
def load_model(name: str, settings: Settings) -> torch.nn.Module:
    from models.checkpoint import load_pretrained

    return load_pretrained(name, **settings.overrides(name)).eval().to(settings.device)


def calibration_inputs(name: str, model: torch.nn.Module, count: int = 512) -> torch.Tensor:
    """Held-out data where the model has a dataset (meaningful agreement), else seeded valid random input."""
    from models.registry import get_card

    dataset = get_card(name).dataset
    if dataset:
        from models.datasets import load_dataset

        return load_dataset(dataset).test_x[:count].contiguous()
    return model.example_input(count, seed=1)


def probabilities(model: torch.nn.Module, x: torch.Tensor, precision: str, batch: int = 128) -> torch.Tensor:
    device = next(model.parameters()).device
    outputs = []
    with torch.inference_mode(), autocast(device, precision):
        for start in range(0, x.shape[0], batch):
            outputs.append(model(x[start : start + batch].to(device)).float().cpu())
    return torch.cat(outputs)


def agreement(model: torch.nn.Module, x: torch.Tensor, precisions: tuple[str, ...]) -> list[dict[str, Any]]:
    reference = probabilities(model, x, "fp32")
    rows = []
    for precision in precisions:
        served = probabilities(model, x, precision)
        diff = (served - reference).abs()
        rows.append(
            {
                "precision": precision,
                "instances": int(x.shape[0]),
                "top1_agreement": (served.argmax(1) == reference.argmax(1)).float().mean().item(),
                "max_abs_diff": diff.max().item(),
                "mean_abs_diff": diff.mean().item(),
            }
        )
    return rows


# --- raw timing -------------------------------------------------------------------------------------
def time_call(fn: Callable[[], Any], device: torch.device, iterations: int) -> float:
    """Milliseconds per call over ``iterations`` back-to-back calls: CUDA events on a GPU (device time,
    launch gaps included), a synchronize-bracketed host clock elsewhere."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(iterations):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / iterations
    t0 = time.perf_counter()
    for _ in range(iterations):
        fn()
    synchronize(device)
    return (time.perf_counter() - t0) * 1e3 / iterations


def raw_timing(
    model: torch.nn.Module,
    pool: torch.Tensor,
    precision: str,
    batch: int,
    repeats: int = 7,
    target_s: float = 0.25,
) -> dict[str, Any]:
    """Median over ``repeats`` of ms per forward; inputs rotate over 4 device buffers (no cache replay)."""
    device = next(model.parameters()).device
    index = torch.arange(4 * batch) % pool.shape[0]
    buffers = [pool[index[i * batch : (i + 1) * batch]].to(device) for i in range(4)]
    calls = [0]

    def call() -> None:
        calls[0] += 1
        model(buffers[calls[0] % 4])

    with torch.inference_mode(), autocast(device, precision):
        for _ in range(10):  # warm-up: cuDNN autotuning, lazy init, allocator growth
            call()
        synchronize(device)
        once = max(time_call(call, device, 3), 1e-3)
        iterations = max(3, min(2000, int(target_s * 1e3 / once)))
        samples = [time_call(call, device, iterations) for _ in range(repeats)]
    ms = statistics.median(samples)
    return {
        "precision": precision,
        "batch_size": batch,
        "ms_per_batch": ms,
        "items_per_s": batch * 1e3 / ms,
        "spread_ms": [min(samples), max(samples)],
        "iterations": iterations,
    }


# --- served -----------------------------------------------------------------------------------------
def serving_available() -> str | None:
    """None when hookserve can serve here, else what is missing."""
    missing = [
        m for m in ("litserve", "fastapi", "uvicorn", "pydantic", "yaml") if not importlib.util.find_spec(m)
    ]
    return f"missing Python packages: {', '.join(missing)}" if missing else None


def request_bodies(x: torch.Tensor, count: int = 16) -> list[bytes]:
    rows = np.round(x[:count].numpy().astype(np.float64), 3)
    return [json.dumps({"instances": [row.tolist()]}, separators=(",", ":")).encode() for row in rows]


def serve_all(settings: Settings, inputs: dict[str, torch.Tensor], deadline: Deadline) -> dict[str, Any]:
    from benchmarks import loadgen
    from benchmarks.servers import HookserveSettings, metric_totals, start_hookserve

    workdir = Path(tempfile.mkdtemp(prefix="hookserve-gpu-"))
    bodies = {name: loadgen.write_bodies(request_bodies(x), workdir) for name, x in inputs.items()}

    def settings_for(name: str, precision: str, monitoring: bool) -> HookserveSettings:
        return HookserveSettings(
            model=name,
            device=settings.device,
            precision=precision,
            monitoring=monitoring,
            api_servers=settings.api_servers,
            max_batch_size=64,
            torch_threads=2,
            overrides=settings.overrides(name),
            # Agreement is measured (and reported) here; the service's start-up gate must not refuse.
            model_extra={"min_precision_agreement": 0.0},
        )

    servers, notes = {}, []
    for name in settings.models:
        for precision in settings.precisions:
            label = f"{name} {precision}"
            servers[label] = start_hookserve(
                label.replace(" ", "-"), settings_for(name, precision, settings.monitoring), workdir
            )
    ready = {}
    try:
        for label, server in servers.items():
            if server.wait_ready(max(deadline.left() - 60, 30)):
                ready[label] = server
                log(f"  {label}: ready in {server.startup_s:.1f} s")
            elif settings.monitoring:
                notes.append(
                    f"{label}: did not start with monitoring on ({server.failure}); retried with it off"
                )
                log(f"  {label}: failed with monitoring on; retrying with monitoring off")
                name, precision = label.rsplit(" ", 1)
                retry = start_hookserve(
                    label.replace(" ", "-") + "-nomon", settings_for(name, precision, False), workdir
                )
                servers[label + " (monitoring off)"] = retry
                if retry.wait_ready(max(deadline.left() - 60, 30)):
                    ready[label] = retry
                else:
                    notes.append(f"{label}: did not start: {retry.failure}")
            else:
                notes.append(f"{label}: did not start: {server.failure}")
        for label, server in ready.items():  # warm-up: the first requests pay cuDNN autotuning and JIT
            loadgen.run_load(server.predict_url, bodies[label.rsplit(" ", 1)[0]], 8, 2.0)
        windows = []
        for r in range(settings.rounds):
            for c in SERVED_CONCURRENCY:
                labels = list(ready)
                for label in labels[r % max(len(labels), 1) :] + labels[: r % max(len(labels), 1)]:
                    if deadline.left() < settings.window_s + 30:
                        notes.append(f"budget spent: skipped round {r} c={c} {label} and later windows")
                        break
                    server = ready[label]
                    before = metric_totals(server)
                    result = loadgen.run_load(
                        server.predict_url, bodies[label.rsplit(" ", 1)[0]], c, settings.window_s
                    )
                    after = metric_totals(server)
                    windows.append({"server": label, "round": r, **result.to_dict(), **_means(before, after)})
                    log(
                        f"  r{r} c={c:<3} {label:26s} {result.ok_per_s:9.1f} req/s  "
                        f"p50 {result.p50_ms:7.2f} ms  "
                        f"p99 {result.p99_ms:7.2f} ms  errors {result.errors}"
                    )
    finally:
        for server in servers.values():
            server.stop(grace_s=5)
    return {"windows": windows, "summary": _summarize(windows), "notes": notes}


def _means(before: dict[str, float], after: dict[str, float]) -> dict[str, float | None]:
    def mean(name: str, scale: float = 1.0) -> float | None:
        count = after.get(f"{name}_count", 0.0) - before.get(f"{name}_count", 0.0)
        total = after.get(f"{name}_sum", 0.0) - before.get(f"{name}_sum", 0.0)
        return total / count * scale if count > 0 else None

    return {
        "mean_batch": mean("hookserve_batch_size"),
        "forward_ms_mean": mean("hookserve_model_forward_seconds", 1e3),
        "queue_wait_ms_mean": mean("hookserve_queue_wait_seconds", 1e3),
    }


def _summarize(windows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    groups: dict[tuple[str, int], list[dict]] = {}
    for w in windows:
        groups.setdefault((w["server"], w["concurrency"]), []).append(w)
    rows = []
    for (label, c), group in groups.items():
        row: dict[str, Any] = {"server": label, "concurrency": c, "rounds": len(group)}
        for key in (
            "ok_per_s",
            "p50_ms",
            "p99_ms",
            "errors",
            "mean_batch",
            "forward_ms_mean",
            "queue_wait_ms_mean",
        ):
            values = [w[key] for w in group if w.get(key) is not None]
            row[key] = statistics.median(values) if values else None
        rows.append(row)
    return rows


# --- report -----------------------------------------------------------------------------------------
def _table(headers: list[str], rows: list[list[Any]]) -> str:
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}" if abs(v) < 1 else f"{v:,.1f}"
        return "-" if v is None else str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def markdown(result: dict[str, Any]) -> str:
    meta = result["meta"]
    parts = [
        "# hookserve reduced precision on GPU",
        "",
        f"{meta['date']} · {meta['device_name']} · torch {meta['torch']} · CUDA {meta['cuda']} · "
        f"command `{meta['command']}`" + (" · **dry run on CPU (plumbing only)**" if meta["dry_run"] else ""),
        "",
        "## Agreement with fp32 (probabilities)",
        "",
        _table(
            ["model", "precision", "instances", "top-1 agreement", "max abs diff", "mean abs diff"],
            [[m, a["precision"], a["instances"], a["top1_agreement"], a["max_abs_diff"], a["mean_abs_diff"]]
             for m, r in result["models"].items() for a in r["agreement"]],
        ),
        "",
        "## Raw forward (" + ("host clock" if meta["dry_run"] else "CUDA events") + ", median of 7 repeats)",
        "",
        _table(
            ["model", "precision", "batch", "ms/batch", "items/s", "vs fp32"],
            [[m, t["precision"], t["batch_size"], t["ms_per_batch"], t["items_per_s"],
              t.get("speedup_vs_fp32")] for m, r in result["models"].items() for t in r["raw"]],
        ),
    ]  # fmt: skip
    served = result.get("served")
    if isinstance(served, dict):
        parts += [
            "",
            "## Served (hookserve, 1 instance per request; medians of rounds)",
            "",
            _table(
                ["server", "clients", "req/s", "p50 ms", "p99 ms", "errors", "mean batch", "forward ms"],
                [[s["server"], s["concurrency"], s["ok_per_s"], s["p50_ms"], s["p99_ms"], s["errors"],
                  s["mean_batch"], s["forward_ms_mean"]] for s in served["summary"]],
            ),
        ]  # fmt: skip
        parts += [f"- {note}" for note in served["notes"]]
    else:
        parts += ["", f"Served part skipped: {served}"]
    return "\n".join(parts) + "\n"


# --- main -------------------------------------------------------------------------------------------
def measure_model(name: str, settings: Settings) -> tuple[dict[str, Any], torch.Tensor]:
    """Agreement and raw timing of one model; also returns its inputs (CPU) for the served part."""
    model = load_model(name, settings)
    x = calibration_inputs(name, model)
    result: dict[str, Any] = {
        "overrides": settings.overrides(name),
        "agreement": agreement(model, x, settings.precisions),
    }
    raw = [raw_timing(model, x, p, b) for b in settings.raw_batches(name) for p in settings.precisions]
    fp32 = {t["batch_size"]: t["items_per_s"] for t in raw if t["precision"] == "fp32"}
    for t in raw:
        t["speedup_vs_fp32"] = t["items_per_s"] / fp32[t["batch_size"]] if t["batch_size"] in fp32 else None
        log(
            f"  raw {name} {t['precision']} b={t['batch_size']:<4} {t['ms_per_batch']:8.3f} ms  "
            f"{t['items_per_s']:10.1f} items/s"
        )
    result["raw"] = raw
    del model
    if settings.device.startswith("cuda"):
        torch.cuda.empty_cache()
    return result, x


def parse_args(argv: list[str] | None) -> Settings:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for gpu_precision.{json,md}")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--precisions", default=",".join(PRECISIONS))
    parser.add_argument("--no-served", action="store_true", help="raw timing and agreement only")
    parser.add_argument("--window", type=float, default=5.0, help="seconds per served window")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--api-servers", type=int, default=4, help="hookserve API servers (CPU-bound JSON)")
    parser.add_argument("--monitoring", choices=["on", "off"], default="on")
    parser.add_argument("--budget-s", type=float, default=420.0, help="stop starting new work after this")
    parser.add_argument("--dry-run", action="store_true", help="no CUDA: exercise everything else on the CPU")
    args = parser.parse_args(argv)
    return Settings(
        device="cpu" if args.dry_run else "cuda",
        out=args.out,
        models=tuple(args.models.split(",")),
        precisions=tuple(args.precisions.split(",")),
        served=not args.no_served,
        window_s=1.0 if args.dry_run else args.window,
        rounds=1 if args.dry_run else args.rounds,
        api_servers=1 if args.dry_run else args.api_servers,
        monitoring=args.monitoring == "on",
        budget_s=args.budget_s,
        dry_run=args.dry_run,
    )


def main(argv: list[str] | None = None) -> int:
    settings = parse_args(argv)
    if not settings.dry_run and not torch.cuda.is_available():
        print(
            "gpu_precision: CUDA is not available on this machine (torch "
            f"{torch.__version__}); nothing measured. Run it on a CUDA host, or pass --dry-run to exercise "
            "the non-CUDA parts on the CPU.",
            file=sys.stderr,
        )
        return 2
    if "fp32" not in settings.precisions:
        settings = Settings(**{**settings.__dict__, "precisions": ("fp32", *settings.precisions)})
    deadline = Deadline(settings.budget_s)
    settings.out.mkdir(parents=True, exist_ok=True)
    device_name = (
        torch.cuda.get_device_name(0) if settings.device == "cuda" else platform.processor() or "CPU"
    )
    if settings.device == "cuda" and not torch.cuda.is_bf16_supported():
        settings = Settings(
            **{**settings.__dict__, "precisions": tuple(p for p in settings.precisions if p != "bf16")}
        )
        log("bf16 is not supported on this GPU: measuring fp32 and fp16 only")
    result: dict[str, Any] = {
        "meta": {
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "device_name": device_name,
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "python": platform.python_version(),
            "command": "python -m benchmarks.gpu_precision "
            + " ".join(argv if argv is not None else sys.argv[1:]),
            "dry_run": settings.dry_run,
            "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
            "tf32_cudnn": torch.backends.cudnn.allow_tf32,
        },
        "models": {},
    }
    log(f"{device_name}: models {', '.join(settings.models)}; precisions {', '.join(settings.precisions)}")
    inputs = {}
    for name in settings.models:
        result["models"][name], inputs[name] = measure_model(name, settings)
    missing = serving_available()
    if not settings.served:
        result["served"] = "not requested (--no-served)"
    elif missing:
        result["served"] = f"hookserve cannot serve here: {missing}"
        log(result["served"])
    else:
        log("served: starting one hookserve per model and precision")
        result["served"] = serve_all(settings, inputs, deadline)
    result["meta"]["elapsed_s"] = round(settings.budget_s - deadline.left(), 1)
    (settings.out / "gpu_precision.json").write_text(json.dumps(result, indent=1))
    text = markdown(result)
    (settings.out / "gpu_precision.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
