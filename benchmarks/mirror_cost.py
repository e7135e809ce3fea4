"""What the mirror costs when served: req/s and latency with the mirror off and at a fraction.

``python -m benchmarks.mirror_cost [--fraction 0.05] [--concurrency 32] [--duration 8] [--repeats 3]``

Two hookserve servers (1 API server, 1 worker, monitoring on) serve digits-cnn version 1 from a
repository built in a temp folder; one mirrors ``--fraction`` of its requests to version 2 (the shipped
weights with noise on ``features.conv3``), the other does not. Windows alternate between them (off,
mirror, mirror, off, ...) so each sees the same machine; the table shows medians, the mirror's ratio to "off",
how many requests were mirrored (``hookserve_mirror_requests_total``) of those answered, and the share
the fraction picked but the mirror passed over (``hookserve_mirror_passed_over_total``: full, behind or
over its budget).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import orjson
import torch
import yaml

from benchmarks.loadgen import run_load, write_bodies
from benchmarks.metrics_text import sum_samples
from benchmarks.servers import http_get, start_hookserve
from models.checkpoint import load_pretrained, save_checkpoint
from models.datasets import load_dataset

MODEL = "digits-cnn"


def repository(root: Path, mirror: dict | None) -> Path:
    """digits-cnn versions 1 and 2 (conv3 perturbed); version 1 served, mirroring ``mirror`` if given."""
    keys: dict = {"torch_threads": 1, "max_batch_size": 64, "max_queued_requests": 4096, "versions": [1]}
    if mirror:
        keys["mirror"] = mirror
    (root / MODEL / "1").mkdir(parents=True)
    (root / MODEL / "2").mkdir()
    (root / MODEL / "model.yaml").write_text(yaml.safe_dump(keys))
    candidate = load_pretrained(MODEL)
    with torch.no_grad():
        weight = candidate.features.conv3.weight
        weight += 0.3 * weight.std() * torch.randn(weight.shape, generator=torch.Generator().manual_seed(3))
    save_checkpoint(candidate, root / MODEL / "2" / "model.safetensors", name=MODEL, overrides={})
    return root


def server_config(repo: Path) -> dict:
    server = {"api_servers": 1, "log_level": "warning", "shutdown_grace_s": 2, "request_timeout_s": 30}
    return {"server": {**server, "model_repository": str(repo)}, "models": []}


def counts(base_url: str) -> tuple[float, float, float, float]:
    """(answered 200s, mirrored requests, requests the mirror passed over, monitoring overhead seconds)
    so far."""
    _, body = http_get(f"{base_url}/metrics")
    text = body.decode(errors="replace")
    answered = sum_samples(text, "hookserve_requests_total", model=MODEL, code="200")
    mirrored = sum_samples(text, "hookserve_mirror_requests_total", model=MODEL)
    passed_over = sum_samples(text, "hookserve_mirror_passed_over_total", model=MODEL)
    overhead = sum_samples(text, "hookserve_monitor_overhead_seconds_total", model=MODEL)
    return answered, mirrored, passed_over, overhead


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fraction", type=float, default=0.05)
    parser.add_argument("--budget", type=float, default=None, help="mirror.budget (default: hookserve's)")
    parser.add_argument("--aa", action="store_true", help="both servers without mirror: the noise floor")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    workdir = Path(tempfile.mkdtemp(prefix="mirror-cost-"))
    mirror = {"version": "2", "fraction": args.fraction}
    if args.budget is not None:
        mirror["budget"] = args.budget
    modes = {
        "off": None,
        "off again" if args.aa else f"mirror {args.fraction:g}": None if args.aa else mirror,
    }
    servers = {}
    try:
        for mode, settings in modes.items():
            repo = repository(workdir / f"repo-{len(servers)}", settings)
            servers[mode] = start_hookserve(f"mirror-cost-{len(servers)}", server_config(repo), workdir)
        for mode, server in servers.items():
            server.model = MODEL
            if not server.wait_ready(180):
                raise SystemExit(f"{mode}: hookserve did not start: {server.failure}\n{server.log()[-2000:]}")
        x = load_dataset("digits").test_x.numpy()[:64]
        one_each = [orjson.dumps({"instances": x[i : i + 1].tolist()}) for i in range(64)]
        bodies = write_bodies(one_each, workdir)
        results: dict[str, list] = {mode: [] for mode in modes}
        for server in servers.values():  # warm-up
            run_load(server.predict_url, bodies, args.concurrency, 2)
        before = {mode: counts(server.base_url) for mode, server in servers.items()}
        for repeat in range(args.repeats):  # off, mirror, mirror, off, ...: neither always goes first
            order = list(servers.items())
            for mode, server in order if repeat % 2 == 0 else reversed(order):
                results[mode].append(run_load(server.predict_url, bodies, args.concurrency, args.duration))
                time.sleep(0.5)
        time.sleep(1.5)  # the last kept requests run once they waited
        after = {mode: counts(server.base_url) for mode, server in servers.items()}
    finally:
        for server in servers.values():
            server.stop()
    base = statistics.median(r.ok_per_s for r in results["off"])
    windows = f"{args.repeats} x {args.duration:g} s windows (medians)"
    print(f"model {MODEL}, {args.concurrency} clients, {windows}")
    print("| mode | req/s | x off | p50 ms | p99 ms | errors | mirrored / answered, passed over, overhead |")
    print("|---|---|---|---|---|---|---|")
    for mode, windows in results.items():
        rate = statistics.median(r.ok_per_s for r in windows)
        p50 = statistics.median(r.p50_ms for r in windows)
        p99 = statistics.median(r.p99_ms for r in windows)
        errors = sum(r.errors for r in windows)
        answered, mirrored, passed, overhead = (a - b for a, b in zip(after[mode], before[mode], strict=True))
        share = (
            f"{mirrored:,.0f} / {answered:,.0f} ({mirrored / max(answered, 1):.3f}), "
            f"{passed / max(answered, 1):.3f}, {overhead:.2f} s"
        )
        print(f"| {mode} | {rate:,.0f} | {rate / base:.3f} | {p50:.2f} | {p99:.2f} | {errors} | {share} |")
    for mode, windows in results.items():  # the spread: a busy machine shows here
        print(f"{mode} windows req/s: {', '.join(f'{r.ok_per_s:,.0f}' for r in windows)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
