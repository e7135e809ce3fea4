"""The ``heavy`` suite: a compute-bound model (resnet-bench) at its best batch size, served items/s
against the in-process limit, for worker torch threads 1 and 2."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from benchmarks import report
from benchmarks.raw_model import input_pool
from benchmarks.servers import HookserveSettings, ServerProcess, start_hookserve, start_peer
from benchmarks.serving_bench.bench import Bench
from benchmarks.serving_bench.limits import best_batch, median_raw, raw_limits
from benchmarks.serving_bench.measure import interleave, running, warm_up
from models.checkpoint import load_pretrained
from models.registry import get_card


def run_heavy(bench: Bench) -> dict:
    args, plan = bench.args, bench.plan
    overrides = {"width": args.heavy_width} if args.heavy_width else {}
    model = load_pretrained(args.heavy_model, **overrides).eval()
    card = get_card(args.heavy_model)
    pool = input_pool(model, card.dataset)
    bench.log(f"heavy: {args.heavy_model} {overrides or '(default width)'}: finding the best batch")
    search = []
    for threads in plan.heavy_threads:
        search += raw_limits(bench, model, pool, plan.heavy_batches, threads, "heavy-search", 0)
    searched = median_raw(search)
    best = {threads: best_batch(searched, threads) for threads in plan.heavy_threads}
    for (b, threads), t in sorted(searched.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        bench.log(
            f"  raw b={b:<3} threads={threads}: {t.items_per_s:7.1f} items/s, p50 {t.latency_ms_p50:.1f} ms"
        )
    batch = best[1]
    bench.log(f"  best batch (threads 1): {batch}; served with max_batch_size={batch}, {2 * batch} clients")
    bodies = bench.bodies(model, card.dataset, count=16)
    base = HookserveSettings(
        model=args.heavy_model,
        device=args.device,
        monitoring=False,
        torch_threads=1,
        max_batch_size=batch,
        overrides=overrides,
    )
    starters: dict[str, Callable[[], ServerProcess]] = {}
    for threads in plan.heavy_threads:
        settings = replace(base, torch_threads=threads)
        starters[f"hookserve off, threads {threads}"] = lambda s=settings, t=threads: start_hookserve(
            f"heavy-off-t{t}", s, bench.workdir
        )
    if bench.monitoring_available:
        starters["hookserve on, threads 1"] = lambda: start_hookserve(
            "heavy-on-t1", replace(base, monitoring=True), bench.workdir
        )
    if not overrides:
        starters["fastapi peer, threads 1"] = lambda: start_peer(
            "heavy-peer", args.heavy_model, bench.workdir, 1
        )
    raws: list[dict] = []

    def measure_limits(r: int) -> None:
        for threads in plan.heavy_threads:
            raws.extend(raw_limits(bench, model, pool, (batch,), threads, "heavy", r))

    with running(bench, starters) as servers:
        failed = sorted(set(starters) - set(servers))
        warm_up(bench, servers, bodies, concurrency=2 * batch)
        windows = interleave(
            bench,
            servers,
            bodies,
            (2 * batch,),
            plan.rounds,
            "heavy",
            between_rounds=measure_limits,
        )
    raw = median_raw(raws)
    served = report.median_by(windows, ("server", "concurrency"), report.SUMMARY_FIELDS)
    for row in served:
        threads = 2 if "threads 2" in row["server"] else 1
        limit = raw[(batch, threads)]
        row["limit_batch"] = batch
        row["limit_threads"] = threads
        row["limit_items_per_s"] = limit.items_per_s
        row["served_over_limit"] = row["items_per_s"] / limit.items_per_s
    return {
        "model": args.heavy_model,
        "overrides": overrides,
        "best_batch": best,
        "search": [t.to_dict() for t in searched.values()],
        "raw": [t.to_dict() for t in raw.values()],
        "served": served,
        "windows": windows,
        "failed": failed,
    }
