"""The learned batch cost against a measured sweep: how well the worker's cost model knows its model.

``python -m benchmarks.cost_curve [--model resnet-bench] [--device cuda] [--precision bf16]
[--sizes 1,2,4,...] [--json FILE]``

Measures the model's forward time at each batch size as the worker runs it (eval, inference mode,
autocast; the device synchronized before the clock stops), median of repeated passes. Then feeds a
:class:`~service.scheduling.cost_model.CostModel` the way a worker does: the warm-up's sizes as seeds,
then a stream of served batches of mixed sizes (measured, not synthetic) and prints the curve it
learned beside the sweep, with both curves' throughput-best batch size.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time

import torch

from models import load_pretrained
from models.base import example_batch
from service.scheduling.batch_policy import best_size
from service.scheduling.cost_model import CostModel
from service.worker.runtime import serving_mode, synchronize


def time_forward(model: torch.nn.Module, x: torch.Tensor, device: torch.device, precision: str) -> float:
    synchronize(device)
    start = time.perf_counter()
    with serving_mode(model, device, precision):
        model(x)
    synchronize(device)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet-bench")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", default="bf16")
    parser.add_argument("--sizes", default="1,2,4,8,16,32,64,128,256")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--served-batches", type=int, default=400)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sizes = [int(s) for s in args.sizes.split(",")]
    model = load_pretrained(args.model).to(device).eval()
    inputs = {size: example_batch(model.input_spec, size).to(device) for size in sizes}

    measured = {}
    for size in sizes:
        for _ in range(3):
            time_forward(model, inputs[size], device, args.precision)
        measured[size] = statistics.median(
            time_forward(model, inputs[size], device, args.precision) for _ in range(args.repeats)
        )

    cost = CostModel()
    max_batch = max(sizes)
    for size in sorted({1, min(8, max_batch), max_batch}):  # what warm_up() runs and seeds
        cost.seed(size, time_forward(model, inputs[size], device, args.precision))
    rng = random.Random(0)
    for _ in range(args.served_batches):  # served traffic: sizes skewed to small, as under mixed load
        size = rng.choice(sizes[: max(1, len(sizes) - rng.randint(0, len(sizes) - 1))])
        cost.observe(size, time_forward(model, inputs[size], device, args.precision))

    rows = []
    for size in sizes:
        predicted = cost.predict(size)
        rows.append({"batch": size, "measured_ms": measured[size] * 1e3, "learned_ms": predicted * 1e3,
                     "error": predicted / measured[size] - 1})  # fmt: skip
    measured_best = max(sizes, key=lambda s: s / measured[s])
    learned_best = best_size(cost.predict, max_batch, cost.knots())
    print(f"{args.model} on {device} ({args.precision}): learned t(b) = {cost.alpha * 1e3:.4f} ms * b + "
          f"{cost.beta * 1e3:.4f} ms, with per-bucket corrections")  # fmt: skip
    print("| batch | measured ms | learned ms | error | measured items/s |")
    print("|---|---|---|---|---|")
    for row in rows:
        rate = row["batch"] / (row["measured_ms"] / 1e3)
        print(f"| {row['batch']} | {row['measured_ms']:.3f} | {row['learned_ms']:.3f} | "
              f"{row['error']:+.1%} | {rate:,.0f} |")  # fmt: skip
    print(f"throughput-best batch size: measured {measured_best}, learned {learned_best}")
    if args.json:
        summary = {"rows": rows, "measured_best": measured_best, "learned_best": learned_best}
        summary |= {"device": str(device), "precision": args.precision, "model": args.model}
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
