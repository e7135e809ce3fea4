"""The ``main`` suite: the in-process limit at batch 1/8/32/64, and hookserve with monitoring on and off
beside the FastAPI peer at 1/8/32/64 one-instance clients."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from benchmarks import report
from benchmarks.raw_model import input_pool
from benchmarks.servers import HookserveSettings, ServerProcess, start_hookserve, start_peer, worker_status
from benchmarks.serving_bench.bench import Bench
from benchmarks.serving_bench.limits import limit_for, median_raw, raw_limits
from benchmarks.serving_bench.measure import interleave, running, warm_up
from benchmarks.serving_bench.provenance import platform_line
from models.checkpoint import load_pretrained
from models.registry import get_card


def run_main(bench: Bench) -> dict:
    args, plan = bench.args, bench.plan
    card = get_card(args.model)
    model = load_pretrained(args.model).eval()
    pool = input_pool(model, card.dataset)
    bodies = bench.bodies(model, card.dataset)
    base = HookserveSettings(model=args.model, device=args.device, torch_threads=args.threads)
    starters: dict[str, Callable[[], ServerProcess]] = {}
    wanted = args.servers.split(",")
    if bench.monitoring_available and "on" in wanted:
        starters["hookserve monitoring on"] = lambda: start_hookserve("main-mon-on", base, bench.workdir)
    if "off" in wanted:
        starters["hookserve monitoring off"] = lambda: start_hookserve(
            "main-mon-off", replace(base, monitoring=False), bench.workdir
        )
    if "peer" in wanted:
        starters["fastapi peer"] = lambda: start_peer(
            "main-peer", args.model, bench.workdir, args.threads, args.device
        )
    bench.log(
        f"main: {args.model} on {args.device}, torch threads {args.threads}; starting {', '.join(starters)}"
    )
    if not bench.monitoring_available:
        bench.log(
            "  monitoring is not available (service.monitoring.monitor missing): measured with it off only"
        )
    raws: list[dict] = []
    with running(bench, starters) as servers:
        failed = sorted(set(starters) - set(servers))
        workers = {label: worker_status(s) for label, s in servers.items()}
        warm_up(bench, servers, bodies)
        windows = interleave(
            bench,
            servers,
            bodies,
            plan.concurrency,
            plan.rounds,
            "main",
            between_rounds=lambda r: raws.extend(
                raw_limits(bench, model, pool, plan.batch_sizes, args.threads, "main", r)
            ),
        )
    raw = median_raw(raws)
    served = report.median_by(windows, ("server", "concurrency"), report.SUMMARY_FIELDS)
    for row in served:
        limit = limit_for(raw, row["concurrency"], args.threads)
        row["limit_batch"] = limit.batch_size if limit else None
        row["limit_items_per_s"] = limit.items_per_s if limit else None
        row["served_over_limit"] = row["items_per_s"] / limit.items_per_s if limit else None
    labels = list(starters)
    report.plot_serving(
        bench.out / f"serving_{bench.tag}.png",
        f"{args.model} on {args.device} ({platform_line()}), torch threads {args.threads}; "
        f"medians of {plan.rounds} rounds",
        served,
        {b: t.items_per_s for (b, t_), t in raw.items() if t_ == args.threads},
        labels,
    )
    return {
        "model": args.model,
        "threads": args.threads,
        "servers": labels,
        "failed": failed,
        "workers": workers,
        "raw": [t.to_dict() for t in raw.values()],
        "served": served,
        "windows": windows,
        "raw_windows": raws,
    }
