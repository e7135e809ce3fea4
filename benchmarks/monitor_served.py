"""What monitoring costs on the worker's per-batch path: the batch exactly as the worker runs it.

    python -m benchmarks.monitor_served --quick
    python -m benchmarks.monitor_served --models tiny mid --batch-sizes 1 32 --rounds 30
    python -m benchmarks.monitor_served --profile tiny:32     # cProfile of the monitored path

One call is what ``ModelWorker.predict`` does for a batch (``service/worker/worker.py``): the input to
the device, ``with monitor.observe_batch(), serving_mode(...): model(x)``, the output to host numpy, the
``hookserve_model_forward_seconds`` observation, and the fp32 shadow when one is due. Three
configurations, each on its own copy of the model (an attached monitor that happens to be armed must
not put hooks into the others' forwards), run in interleaved rounds with the order rotating (round 0
is warm-up, discarded):

* ``none``: the worker without a monitor (``monitoring.enabled: false``);
* ``off``: a :class:`ModelMonitor` attached with ``enabled: false`` (the context manager alone);
* ``on``: ``MonitorConfig()``, the service's default, with the shipped drift reference where the
  model has one.

Models: the shipped ``tabular-mlp``, ``digits-cnn``, ``digits-transformer`` (trained weights and
drift references), and the peers harness's ``tiny`` and ``mid`` (``benchmarks/peers/models.py``: the
models of the served on/off comparison). Ratios are against ``none`` in the same rounds: medians,
means and p95s of per-batch wall time.
"""

from __future__ import annotations

import argparse
import cProfile
import importlib.util
import io
import pstats
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from benchmarks.hook_overhead import percentile
from service.monitoring import ModelMonitor, MonitorConfig
from service.monitoring.metrics import MODEL_FORWARD
from service.worker.runtime import serving_mode

SHIPPED = ("tabular-mlp", "digits-cnn", "digits-transformer")
PEERS = ("tiny", "mid")
CONFIGS = ("none", "off", "on")


def load_model(name: str) -> tuple[nn.Module, tuple[int, ...]]:
    """The model in eval mode and one instance's shape."""
    if name in PEERS:
        plugin = Path(__file__).resolve().parent / "peers" / "servers" / "hookserve_plugin.py"
        spec = importlib.util.spec_from_file_location("hookserve_plugin", plugin)
        assert spec is not None and spec.loader is not None
        module = sys.modules["hookserve_plugin"] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        model = getattr(module, name)()
    else:
        from models import load_pretrained

        model = load_pretrained(name).eval()
    return model, tuple(model.input_spec.shape)


def worker_call(
    model: nn.Module, name: str, x: torch.Tensor, monitor: ModelMonitor | None, precision: str
) -> Callable[[], object]:
    """``ModelWorker.predict`` for one batch (and ``after_replies``' shadow)."""
    device = torch.device("cpu")
    forward_child = MODEL_FORWARD.labels(name, "1")

    def call() -> object:
        batch = x.to(device, non_blocking=True)
        start = time.perf_counter()
        if monitor is not None:
            with monitor.observe_batch(), serving_mode(model, device, precision):
                probabilities = model(batch)
        else:
            with serving_mode(model, device, precision):
                probabilities = model(batch)
        result = probabilities.float().cpu().numpy()
        forward_child.observe(time.perf_counter() - start)
        if monitor is not None and monitor.shadow_due:
            monitor.run_shadow(batch, probabilities)
        return result

    return call


def setups(
    name: str, batch_size: int, precision: str
) -> tuple[dict[str, Callable[[], object]], ModelMonitor | None]:
    """The three configurations' calls, and the ``on`` monitor (to report its sampling)."""
    model, shape = load_model(name)
    torch.manual_seed(0)
    x = torch.randn(batch_size, *shape)
    calls: dict[str, Callable[[], object]] = {}
    on = None
    for config in CONFIGS:
        copy = load_model(name)[0]
        copy.load_state_dict(model.state_dict())
        monitor = None
        if config != "none":
            cfg = MonitorConfig(enabled=config == "on")
            monitor = ModelMonitor(copy, f"{name}-b{batch_size}-{config}", cfg, "cpu", precision=precision)
            monitor.attach()
            on = monitor if config == "on" else on
        calls[config] = worker_call(copy, f"{name}-b{batch_size}-{config}", x, monitor, precision)
    return calls, on


def measure(calls: dict[str, Callable[[], object]], rounds: int, round_s: float) -> dict[str, list[float]]:
    first = calls["none"]
    for _ in range(3):
        first()
    start = time.perf_counter()
    first()
    per_round = max(5, int(round_s / max(time.perf_counter() - start, 1e-6)))
    samples: dict[str, list[float]] = {config: [] for config in CONFIGS}
    clock = time.perf_counter
    for index in range(rounds + 1):
        shift = index % len(CONFIGS)
        for config in CONFIGS[shift:] + CONFIGS[:shift]:
            call = calls[config]
            times = []
            for _ in range(per_round):
                t0 = clock()
                call()
                times.append(clock() - t0)
            if index:
                samples[config].extend(times)
    return samples


def row(name: str, batch_size: int, samples: dict[str, list[float]], on: ModelMonitor | None) -> str:
    base = samples["none"]
    med, mean, p95 = statistics.median(base), statistics.fmean(base), percentile(base, 0.95)
    cells = [name, str(batch_size), f"{1e6 * med:.1f}", f"{1e6 * mean:.1f}", f"{1e6 * p95:.1f}"]
    for config in ("off", "on"):
        values = samples[config]
        cells += [
            f"{statistics.median(values) / med:.3f}",
            f"{statistics.fmean(values) / mean:.3f}",
            f"{percentile(values, 0.95) / p95:.3f}",
        ]
    if on is not None:
        cells += [f"{on.controller.guard_every} / {on.controller.stats_every}", _self_reported(on)]
    return "| " + " | ".join(cells) + " |"


def _self_reported(monitor: ModelMonitor) -> str:
    """The monitor's own account, overhead / forward seconds, as it exports them."""
    from prometheus_client import REGISTRY

    monitor.publish()
    labels = {"model": monitor.model_name}
    overhead = REGISTRY.get_sample_value("hookserve_monitor_overhead_seconds_total", labels)
    forward = REGISTRY.get_sample_value("hookserve_monitored_forward_seconds_total", labels)
    return f"{100 * overhead / forward:.1f} %" if overhead is not None and forward else "-"


HEADER = (
    "| model | batch | none median µs | none mean µs | none p95 µs "
    "| off/none median | mean | p95 | on/none median | mean | p95 "
    "| on: armed / stats every | self-reported |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
)


def profile(target: str, precision: str, batches: int) -> None:
    name, _, batch = target.partition(":")
    call = setups(name, int(batch or 32), precision)[0]["on"]
    for _ in range(200):
        call()
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(batches):
        call()
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(25)
    print(out.getvalue())


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=[*SHIPPED, *PEERS])
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 32])
    parser.add_argument("--rounds", type=int, default=20, help="measured rounds (plus one warm-up round)")
    parser.add_argument("--round-seconds", type=float, default=0.3, help="per configuration per round")
    parser.add_argument("--quick", action="store_true", help="6 rounds of 0.1 s")
    parser.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (the worker's 1)")
    parser.add_argument("--profile", metavar="MODEL:BATCH", help="cProfile the 'on' path instead")
    parser.add_argument("--profile-batches", type=int, default=5000)
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.round_seconds = 6, 0.1
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.profile:
        profile(args.profile, args.precision, args.profile_batches)
        return 0
    started = time.perf_counter()
    print(f"torch {torch.__version__}, {args.threads} thread(s), {args.precision}, "
          f"{args.rounds} rounds x {args.round_seconds} s per configuration\n")  # fmt: skip
    print(HEADER, flush=True)
    for name in args.models:
        for batch_size in args.batch_sizes:
            calls, on = setups(name, batch_size, args.precision)
            samples = measure(calls, args.rounds, args.round_seconds)
            print(row(name, batch_size, samples, on), flush=True)
    print(f"\n{time.perf_counter() - started:.0f} s; ratios against 'none' in the same rounds.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
