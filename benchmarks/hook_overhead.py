"""What monitoring costs: forward time with the monitor off, at its defaults, and at full stats.

    python -m benchmarks.hook_overhead --quick                       # about a minute on 2 CPU cores
    python -m benchmarks.hook_overhead --json reports/hook_overhead.json
    python -m benchmarks.hook_overhead --device cuda --precision bf16

For each shipped model and batch size, one process runs three configurations in interleaved rounds
(the order rotates every round; round 0 is warm-up and discarded; 20 rounds of 0.2 s by default), each
round a fixed slice of time:

* ``off``: ``model(x)``, no monitor;
* ``default``: ``MonitorConfig()``, the service's default (adaptive sampling within a 3 % budget);
* ``full``: every batch armed and sampled (``guard_every=1, stats_every=1``).

With ``--precision bf16``/``fp16`` both monitored configurations include the live fp32 precision
shadow as the worker runs it (``monitor.run_shadow(x, out)`` after a batch that left
``monitor.shadow_due`` set, inside the timed call): at its default budget share in ``default``, and
on every batch in ``full`` (``shadow.every=1``).

Both monitored configurations carry a drift reference captured in memory from the model's calibration
inputs, so drift histograms are part of the cost. Each call is timed on its own, around exactly what the
worker wraps: ``with monitor.observe_batch(): model(x)``. CPU: ``time.perf_counter``; CUDA: an event
pair per call (the monitor's single synchronize and its host-side work after it show up as GPU idle
time before the closing event). Means include the rare expensive stats batches; p95s show the tail.
Weights are untrained (``create_model``): timing does not depend on them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import torch
from torch import nn

from models.registry import create_model
from service.monitoring import ModelMonitor, MonitorConfig
from service.monitoring.calibrate import batched, calibration_inputs, capture_reference

MODELS = ("digits-cnn", "tabular-mlp", "digits-transformer", "resnet-bench")
BATCH_SIZES = (1, 8, 64)
CONFIGS = ("off", "default", "full")
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Result:
    model: str
    batch_size: int
    config: str
    calls: int
    mean_ms: float
    p95_ms: float
    guard_every: int | None = None
    stats_every: int | None = None
    self_reported_overhead: float | None = None
    shadow_every: int | None = None
    shadow_batches: int | None = None


class Timer:
    """Times one call: wall clock on CPU, a CUDA event pair on GPU (read right after the call)."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        if self.cuda:
            self.start = torch.cuda.Event(enable_timing=True)
            self.end = torch.cuda.Event(enable_timing=True)

    def __call__(self, fn: Callable[[], object]) -> float:
        if self.cuda:
            self.start.record()
            fn()
            self.end.record()
            self.end.synchronize()
            return self.start.elapsed_time(self.end) / 1000.0
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


def bench_one(
    model: nn.Module,
    name: str,
    x: torch.Tensor,
    monitors: dict[str, ModelMonitor | None],
    *,
    rounds: int,
    round_s: float,
    device: torch.device,
    precision: str,
) -> list[Result]:
    timer = Timer(device)
    autocast = (
        torch.autocast(device.type, dtype=AUTOCAST_DTYPES[precision])
        if precision in AUTOCAST_DTYPES
        else contextlib.nullcontext()
    )
    samples: dict[str, list[float]] = {config: [] for config in CONFIGS}
    with torch.inference_mode(), autocast:
        first = [timer(lambda: model(x)) for _ in range(3)]
        calls = max(3, int(round_s / max(min(first), 1e-6)))
        for round_index in range(rounds + 1):
            order = CONFIGS[round_index % 3 :] + CONFIGS[: round_index % 3]
            for config in order:
                monitor = monitors[config]
                call = _monitored_call(model, x, monitor)
                if monitor is not None:
                    monitor.attach()
                times = [timer(call) for _ in range(calls)]
                if monitor is not None:
                    monitor.detach()
                if round_index:  # round 0 warms caches and the sampling controller up
                    samples[config].extend(times)
    results = []
    for config in CONFIGS:
        times = samples[config]
        result = Result(
            name, len(x), config, len(times), 1e3 * sum(times) / len(times), 1e3 * percentile(times, 0.95)
        )
        monitor = monitors[config]
        if monitor is not None:
            result.guard_every = monitor.controller.guard_every
            result.stats_every = monitor.controller.stats_every
            result.self_reported_overhead = _self_reported(monitor)
            if monitor.shadow is not None:
                result.shadow_every = monitor.shadow.every
                result.shadow_batches = monitor.shadow.batches
        results.append(result)
    return results


def _monitored_call(model: nn.Module, x: torch.Tensor, monitor: ModelMonitor | None) -> Callable[[], object]:
    if monitor is None:
        return lambda: model(x)

    def call() -> object:
        with monitor.observe_batch():
            out = model(x)
        if monitor.shadow_due:  # as the worker does (after the replies; autocast off inside)
            monitor.run_shadow(x, out)
        return out

    return call


def _self_reported(monitor: ModelMonitor) -> float | None:
    """The monitor's own estimate, overhead / forward seconds, as it exports them to Prometheus."""
    from prometheus_client import REGISTRY

    labels = {"model": monitor.model_name}
    overhead = REGISTRY.get_sample_value("hookserve_monitor_overhead_seconds_total", labels)
    forward = REGISTRY.get_sample_value("hookserve_monitored_forward_seconds_total", labels)
    return overhead / forward if overhead is not None and forward else None


def run(args: argparse.Namespace) -> list[Result]:
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available on this machine")
    torch.set_num_threads(args.threads)
    results: list[Result] = []
    for name in args.models:
        torch.manual_seed(0)
        model = create_model(name).eval().to(device)
        inputs = calibration_inputs(name, model)
        reference = capture_reference(model, name, batched(inputs.to(device), 64))
        for batch_size in args.batch_sizes:
            x = torch.cat([inputs] * math.ceil(batch_size / len(inputs)))[:batch_size].to(device)
            configs = {
                "default": MonitorConfig(),
                "full": MonitorConfig(guard_every=1, stats_every=1, shadow={"every": 1}),
            }
            monitors: dict[str, ModelMonitor | None] = {"off": None}
            for label, config in configs.items():
                monitor_name = f"bench-{name}-b{batch_size}-{label}"
                monitors[label] = ModelMonitor(
                    model, monitor_name, config, device, reference=reference, precision=args.precision
                )
            found = bench_one(
                model, name, x, monitors, rounds=args.rounds, round_s=args.round_seconds, device=device,
                precision=args.precision,
            )  # fmt: skip
            results.extend(found)
            print(_row(found), flush=True)
    return results


def _row(found: list[Result]) -> str:
    off, default, full = found
    return (
        f"| {off.model} | {off.batch_size} | {off.mean_ms:.3f} | {off.p95_ms:.3f} "
        f"| {default.mean_ms / off.mean_ms:.3f} | {default.p95_ms / off.p95_ms:.3f} "
        f"| {full.mean_ms / off.mean_ms:.3f} | {full.p95_ms / off.p95_ms:.3f} "
        f"| {default.guard_every} / {default.stats_every} "
        f"| {100 * (default.self_reported_overhead or 0):.1f} % "
        f"| {_shadow(default)} |"
    )


def _shadow(result: Result) -> str:
    if result.shadow_every is None:
        return "-"
    return f"{result.shadow_batches} (every {result.shadow_every})"


HEADER = (
    "| model | batch | off mean ms | off p95 ms | default mean ratio | default p95 ratio "
    "| full mean ratio | full p95 ratio | default armed / stats every | default self-reported "
    "| default shadow batches |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|"
)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=list(BATCH_SIZES))
    # Many short rounds: on a shared machine, load bursts last seconds; finer interleaving spreads them
    # over all three configurations instead of landing on one.
    parser.add_argument("--rounds", type=int, default=20, help="measured rounds (plus one warm-up round)")
    parser.add_argument("--round-seconds", type=float, default=0.2, help="time per configuration per round")
    parser.add_argument("--quick", action="store_true", help="8 rounds of 0.06 s: about a minute on CPU")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.round_seconds = 8, 0.06
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    print(
        f"torch {torch.__version__}, device {args.device}, precision {args.precision}, "
        f"{args.threads} thread(s), {args.rounds} rounds x {args.round_seconds} s per configuration\n"
    )
    print(HEADER, flush=True)
    results = run(args)
    elapsed = time.perf_counter() - started
    print(f"\n{elapsed:.0f} s. Ratios are vs 'off' in the same process and rounds.")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        environment = {
            "torch": torch.__version__,
            "device": args.device,
            "device_name": torch.cuda.get_device_name()
            if args.device.startswith("cuda")
            else platform.processor(),
            "precision": args.precision,
            "threads": args.threads,
            "cpu_count": os.cpu_count(),
            "rounds": args.rounds,
            "round_seconds": args.round_seconds,
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "elapsed_s": round(elapsed, 1),
        }
        args.json.write_text(
            json.dumps({"environment": environment, "results": [asdict(r) for r in results]}, indent=2)
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
