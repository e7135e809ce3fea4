"""The ``sweep`` suite: configurations the service could adopt as defaults (API servers, batch window,
torch threads, max batch size), each a running hookserve, all interleaved with the FastAPI peer."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from benchmarks import report
from benchmarks.servers import HookserveSettings, ServerProcess, start_hookserve, start_peer
from benchmarks.serving_bench.bench import Bench
from benchmarks.serving_bench.measure import interleave, running, warm_up
from models.checkpoint import load_pretrained
from models.registry import get_card


def sweep_variants(bench: Bench) -> dict[str, HookserveSettings]:
    base = HookserveSettings(
        model=bench.args.model,
        device=bench.args.device,
        monitoring=bench.monitoring_available,
        torch_threads=1,
    )
    return {
        "base (api 1, window 0, threads 1, batch 64)": base,
        "api_servers=2": replace(base, api_servers=2),
        "batch_timeout_ms=2": replace(base, batch_timeout_ms=2.0),
        "torch_threads=2 (= unset here)": replace(base, torch_threads=2),
        "max_batch_size=8": replace(base, max_batch_size=8),
        "max_batch_size=1": replace(base, max_batch_size=1),
    }


def run_sweep(bench: Bench) -> dict:
    args, plan = bench.args, bench.plan
    card = get_card(args.model)
    model = load_pretrained(args.model).eval()
    bodies = bench.bodies(model, card.dataset)
    variants = sweep_variants(bench)
    starters: dict[str, Callable[[], ServerProcess]] = {
        label: (lambda s=settings, i=i: start_hookserve(f"sweep-{i}", s, bench.workdir))
        for i, (label, settings) in enumerate(variants.items())
    }
    starters["fastapi peer"] = lambda: start_peer("sweep-peer", args.model, bench.workdir, 1, args.device)
    monitoring = "on" if bench.monitoring_available else "off"
    bench.log(f"sweep: {args.model}, monitoring {monitoring}; {len(starters)} servers")
    with running(bench, starters) as servers:
        warm_up(bench, servers, bodies)
        windows = interleave(
            bench,
            servers,
            bodies,
            plan.sweep_concurrency,
            plan.sweep_rounds,
            "sweep",
            window_s=plan.sweep_window_s,
        )
    served = report.median_by(windows, ("server", "concurrency"), report.SUMMARY_FIELDS)
    return {
        "model": args.model,
        "monitoring": monitoring,
        "variants": {
            label: s.config(0)["models"][0] | {"api_servers": s.api_servers} for label, s in variants.items()
        },
        "served": served,
        "windows": windows,
    }
