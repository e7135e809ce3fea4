"""The limit: ``model(x)`` in this process under ``torch.inference_mode()``, no serving around it.

What a served number is compared with. Inputs rotate through a pool of real (or valid random) instances
so every call sees fresh data; torch's intra-op thread count is set explicitly and reported, because it
changes the answer (and a server's worker must be compared with the same count).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass

import torch

from models.base import ServableModel


@dataclass(frozen=True)
class ForwardTiming:
    """One window of back-to-back forward passes at one batch size."""

    batch_size: int
    torch_threads: int
    calls: int
    items_per_s: float
    latency_ms_p50: float
    latency_ms_p99: float

    def to_dict(self) -> dict:
        return asdict(self)


def input_pool(model: ServableModel, dataset: str | None, size: int = 256) -> torch.Tensor:
    """Real held-out instances when the model has a dataset, else valid random ones."""
    if dataset:
        from models.datasets import load_dataset

        x = load_dataset(dataset).test_x
        return x[:size].contiguous()
    return model.example_input(min(size, 64), seed=1)


def _batches(pool: torch.Tensor, batch_size: int, count: int) -> list[torch.Tensor]:
    """``count`` distinct batches cut from the pool (wrapping around), made contiguous up front."""
    batches = []
    for i in range(count):
        index = torch.arange(i * batch_size, (i + 1) * batch_size) % pool.shape[0]
        batches.append(pool[index].contiguous())
    return batches


def time_forward(
    model: ServableModel,
    pool: torch.Tensor,
    batch_size: int,
    torch_threads: int,
    window_s: float = 1.0,
    max_calls: int = 100_000,
) -> ForwardTiming:
    """Back-to-back ``model(x)`` for about ``window_s`` after a short warm-up, on the model's device.

    The output is copied to the host as a server must do, which on CUDA also synchronizes, so each
    call's wall time is its real latency.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(torch_threads)
    device = next(model.parameters()).device
    try:
        batches = [b.to(device) for b in _batches(pool, batch_size, 8)]
        latencies: list[float] = []
        with torch.inference_mode():
            warm_until = time.perf_counter() + window_s
            for x in batches[:3]:  # bounded: on an oversubscribed machine one call can take seconds
                model(x).cpu()
                if time.perf_counter() > warm_until:
                    break
            start = time.perf_counter()
            stop_at = start + window_s
            while len(latencies) < max_calls:
                x = batches[len(latencies) % len(batches)]
                t0 = time.perf_counter()
                model(x).cpu()
                t1 = time.perf_counter()
                latencies.append(t1 - t0)
                if t1 >= stop_at:
                    break
            elapsed = time.perf_counter() - start
    finally:
        torch.set_num_threads(previous)
    ordered = sorted(latencies)
    return ForwardTiming(
        batch_size=batch_size,
        torch_threads=torch_threads,
        calls=len(latencies),
        items_per_s=len(latencies) * batch_size / elapsed,
        latency_ms_p50=statistics.median(ordered) * 1e3,
        latency_ms_p99=ordered[min(int(0.99 * len(ordered)), len(ordered) - 1)] * 1e3,
    )


def median_timing(timings: list[ForwardTiming]) -> ForwardTiming:
    """Median over repeated windows of one (batch size, threads) point."""
    first = timings[0]
    return ForwardTiming(
        batch_size=first.batch_size,
        torch_threads=first.torch_threads,
        calls=sum(t.calls for t in timings),
        items_per_s=statistics.median(t.items_per_s for t in timings),
        latency_ms_p50=statistics.median(t.latency_ms_p50 for t in timings),
        latency_ms_p99=statistics.median(t.latency_ms_p99 for t in timings),
    )
