"""End-to-end serving check on a CUDA machine: hookserve on ``cuda`` in bf16 and fp16, batched.

Not a pytest test (CI has no GPU): run it where a GPU exists, ``python -m benchmarks.cuda_smoke --out DIR``.
For each precision it starts hookserve with resnet-bench and digits-cnn on ``cuda``, sends concurrent
requests, and checks: every answer is 200 with probabilities summing to 1; batches of more than one
instance formed; the reduced-precision check ran and agrees with fp32; per-module latencies (CUDA events)
and activation statistics reached ``/metrics``. Writes ``cuda_smoke.json``; exits 1 on any failed check.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests
import torch

from benchmarks.metrics_text import samples, sum_samples
from benchmarks.servers import ServerProcess, start_hookserve


def start(config: dict, label: str, out: Path) -> ServerProcess:
    server = start_hookserve(label, config, out)  # out/LABEL.yaml, out/LABEL.log
    if not server.wait_ready(240):
        raise RuntimeError(f"hookserve did not start: {server.failure}")
    return server


def check_precision(precision: str, out: Path) -> dict:
    config = {
        "server": {"host": "127.0.0.1", "api_servers": 2, "request_timeout_s": 30, "grpc_port": None},
        "models": [
            {
                "name": "resnet-bench",
                "device": "cuda",
                "precision": precision,
                "max_batch_size": 64,
                "batch_timeout_ms": 2,
                "min_precision_agreement": 0.9,
            },
            {"name": "digits-cnn", "device": "cuda", "precision": precision, "max_batch_size": 128},
        ],
    }
    server = start(config, f"server_{precision}", out)
    base = server.base_url
    checks: dict[str, object] = {"precision": precision}
    try:
        x = torch.rand(256, 3, 64, 64, generator=torch.Generator().manual_seed(0)).numpy()

        def one(i: int) -> requests.Response:
            return requests.post(
                f"{base}/v1/models/resnet-bench:predict",
                json={"instances": x[i * 4 : (i + 1) * 4].tolist()},
                timeout=60,
            )

        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=32) as pool:
            responses = list(pool.map(one, range(64)))
        elapsed = time.perf_counter() - started
        codes = [r.status_code for r in responses]
        sums = [sum(p["probabilities"]) for r in responses if r.ok for p in r.json()["predictions"]]
        meta = requests.get(f"{base}/v1/models/resnet-bench", timeout=10).json()
        time.sleep(1.5)
        text = requests.get(f"{base}/metrics", timeout=10).text
        batches = sum_samples(text, "hookserve_batch_size_count", model="resnet-bench")
        singles = sum_samples(text, "hookserve_batch_size_bucket", model="resnet-bench", le="1.0")
        module_counts = samples(text, "hookserve_module_forward_seconds_count", model="resnet-bench")
        checks.update(
            all_200=codes.count(200) == len(codes),
            probabilities_sum_to_1=bool(sums) and all(abs(s - 1) < 1e-2 for s in sums),
            batched=batches - singles > 0,
            items_per_s=round(256 / elapsed, 1),
            device=meta["device"],
            precision_check=meta["precision_check"],
            agreement_ok=meta["precision_check"] is not None
            and meta["precision_check"]["top1_agreement"] >= 0.9,
            monitored_modules=len(module_counts),
            module_latency_recorded=any(sample.value > 0 for sample in module_counts),
            activation_stats=sum_samples(text, "hookserve_activation_std", model="resnet-bench") > 0,
            mean_batch_size=round(
                sum_samples(text, "hookserve_batch_size_sum", model="resnet-bench") / max(batches, 1), 2
            ),
        )
    finally:
        server.stop(grace_s=60)
    return checks


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--precisions", default="bf16,fp16")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to check", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    results = [check_precision(p, args.out) for p in args.precisions.split(",")]
    (args.out / "cuda_smoke.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    boolean_checks = [v for r in results for v in r.values() if isinstance(v, bool)]
    return 0 if all(boolean_checks) else 1


if __name__ == "__main__":
    sys.exit(main())
