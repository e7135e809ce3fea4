"""One serving-benchmark run's shared state: how long and how often to measure (``Plan``; ``--quick``
shrinks it), where files go, how load is made, and what was measured."""

from __future__ import annotations

import argparse
import importlib.util
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks import loadgen
from benchmarks.raw_model import input_pool

SUITES = ("main", "heavy", "sweep", "profile")
STARTUP_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class Plan:
    """How long and how often to measure; ``--quick`` shrinks it."""

    rounds: int
    window_s: float
    warmup_s: float
    raw_window_s: float
    concurrency: tuple[int, ...]
    batch_sizes: tuple[int, ...]
    heavy_batches: tuple[int, ...]
    heavy_threads: tuple[int, ...]
    sweep_concurrency: tuple[int, ...]
    sweep_rounds: int
    sweep_window_s: float
    profile_s: float


FULL = Plan(
    3, 8.0, 2.0, 1.0, (1, 8, 32, 64), (1, 8, 32, 64), (1, 4, 8, 16, 32), (1, 2), (1, 8, 32), 3, 6.0, 12.0
)
QUICK = Plan(2, 3.0, 1.0, 0.5, (1, 8, 32, 64), (1, 8, 32, 64), (1, 8, 16), (1, 2), (1, 32), 1, 3.0, 6.0)


class Bench:
    """One run's shared state: the plan, where files go, how load is made, and what was measured."""

    def __init__(self, args: argparse.Namespace, plan: Plan) -> None:
        self.args = args
        self.plan = plan
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.workdir = Path(tempfile.mkdtemp(prefix="hookserve-bench-"))
        self.tag = f"{args.model}_{args.device}" + ("_quick" if args.quick else "")
        self.load_options: dict[str, Any] = {"cpus": args.client_cpus}
        self.results: dict[str, Any] = {}
        self.monitoring_available = importlib.util.find_spec("service.monitoring.monitor") is not None

    def log(self, message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)

    def bodies(self, model: torch.nn.Module, dataset: str | None, count: int = 32) -> Path:
        """``count`` request bodies of one real (or valid random) instance each."""
        pool = input_pool(model, dataset, size=count)
        rows = np.round(pool.numpy().astype(np.float64), 3)
        bodies = [
            json.dumps({"instances": [rows[i].tolist()]}, separators=(",", ":")).encode()
            for i in range(len(rows))
        ]
        return loadgen.write_bodies(bodies, self.workdir)
