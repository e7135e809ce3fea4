"""The in-process limit a server is compared with: ``model(x)`` in this process, batch by batch."""

from __future__ import annotations

import torch

from benchmarks.raw_model import ForwardTiming, median_timing, time_forward
from benchmarks.serving_bench.bench import Bench


def raw_limits(
    bench: Bench,
    model: torch.nn.Module,
    pool: torch.Tensor,
    batches: tuple[int, ...],
    threads: int,
    suite: str,
    r: int,
) -> list[dict]:
    rows = []
    for b in batches:
        timing = time_forward(model, pool, b, threads, window_s=bench.plan.raw_window_s)
        rows.append({**timing.to_dict(), "suite": suite, "round": r})
    return rows


def median_raw(rows: list[dict]) -> dict[tuple[int, int], ForwardTiming]:
    grouped: dict[tuple[int, int], list[ForwardTiming]] = {}
    for row in rows:
        timing = ForwardTiming(**{k: row[k] for k in ForwardTiming.__dataclass_fields__})
        grouped.setdefault((timing.batch_size, timing.torch_threads), []).append(timing)
    return {key: median_timing(group) for key, group in grouped.items()}


def limit_for(
    raw: dict[tuple[int, int], ForwardTiming], concurrency: int, threads: int
) -> ForwardTiming | None:
    """The limit a server at ``concurrency`` one-instance clients could reach: the largest batch <= c."""
    batches = sorted(b for b, t in raw if t == threads and b <= concurrency)
    return raw[(batches[-1], threads)] if batches else None


def best_batch(raw: dict[tuple[int, int], ForwardTiming], threads: int, tolerance: float = 0.03) -> int:
    """The smallest batch within ``tolerance`` of the best items/s: more batch buys latency, not speed."""
    points = {b: t.items_per_s for (b, t_), t in raw.items() if t_ == threads}
    best = max(points.values())
    return min(b for b, rate in points.items() if rate >= (1 - tolerance) * best)
