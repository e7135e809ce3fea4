"""Gathered response writes against uvicorn's own two writes per response, side by side in one run.

``python -m benchmarks.gather_writes [--model tiny] [--connections 32] [--duration 4] [--rounds 6]
[--switch gather|reuseport]``

Two servers serve the same model, one with ``HOOKSERVE_GATHER_WRITES=0`` (uvicorn's protocol: head and
body in two ``send`` calls) and one with the default (``service/http/transport.py``: one). wrk drives
each in turn with V1 requests of one instance, windows in ABBA order; the table gives each round's req/s
and the median ratio. wrk (a C client) keeps the load generator's own CPU small on a 2-core machine.
``--switch reuseport`` compares the same way a listening socket per API server (the default) against
LitServe's one shared socket (``HOOKSERVE_REUSEPORT=0``).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import orjson
import requests

from benchmarks.servers import REPO_ROOT, HookserveSettings, ServerProcess, start_hookserve

PLUGINS = REPO_ROOT / "benchmarks" / "peers" / "servers"
SWITCHES = {  # --switch: (environment variable, {label: value}), the baseline first
    "gather": ("HOOKSERVE_GATHER_WRITES", {"two writes (uvicorn)": "0", "gathered": "1"}),
    "reuseport": ("HOOKSERVE_REUSEPORT", {"one shared socket": "0", "a socket per API server": "1"}),
}


def wrk_rps(server: ServerProcess, script: Path, connections: int, duration: float) -> float:
    url = f"{server.base_url}/v1/models/{server.model}:predict"
    command = ["wrk", "-t1", f"-c{connections}", f"-d{duration:g}s", "-s", str(script), url]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    if "Non-2xx" in out:
        raise SystemExit(f"wrk saw errors:\n{out}")
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--duration", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--switch", choices=sorted(SWITCHES), default="gather")
    args = parser.parse_args(argv)
    variable, modes = SWITCHES[args.switch]
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is needed (apt install wrk)")
    workdir = Path(tempfile.mkdtemp(prefix="gather-"))
    source = f"hookserve_plugin:{args.model}" if args.model in ("tiny", "mid") else args.model
    config = HookserveSettings(model=args.model, model_extra={"source": source}).config(port=0)
    del config["server"]["port"]  # start_hookserve passes the port
    config["server"]["grpc_port"] = None
    path = os.pathsep.join([str(REPO_ROOT), str(PLUGINS)])
    env = {**os.environ, "PYTHONPATH": path}
    servers = {
        label: start_hookserve(f"{args.switch}-{flag}", config, workdir, {**env, variable: flag})
        for label, flag in modes.items()
    }
    rates: dict[str, list[float]] = {label: [] for label in modes}
    try:
        for server in servers.values():
            if not server.wait_ready(300):
                raise SystemExit(f"hookserve did not start: {server.failure}\n{server.log()[-2000:]}")
        first = next(iter(servers.values()))
        spec = requests.get(f"{first.base_url}/v1/models/{args.model}", timeout=10).json()["input"]
        x = np.random.default_rng(0).uniform(0, 1, (1, *spec["shape"])).astype(np.float32)
        body = orjson.dumps({"instances": x.tolist()}).decode()
        script = workdir / "post.lua"  # a level-2 long bracket: the JSON holds "]]"
        script.write_text(f'wrk.method = "POST"\nwrk.body = [==[{body}]==]\n'
                          'wrk.headers["Content-Type"] = "application/json"\n')  # fmt: skip
        labels = list(modes)
        for round_ in range(args.rounds):
            for label in labels if round_ % 2 == 0 else labels[::-1]:  # ABBA
                rates[label].append(wrk_rps(servers[label], script, args.connections, args.duration))
    finally:
        for server in servers.values():
            server.stop()
    base, changed = rates[labels[0]], rates[labels[1]]
    print(f"{args.model}, {args.connections} connections, {args.rounds} rounds of {args.duration:g} s each")
    print(f"| {args.switch} | req/s per round | median |")
    print("|---|---|---|")
    for label, values in rates.items():
        print(f"| {label} | {', '.join(f'{v:,.0f}' for v in values)} | {statistics.median(values):,.0f} |")
    ratios = [c / b for b, c in zip(base, changed, strict=True)]
    print(f"{labels[1]} / {labels[0]}: median of rounds {statistics.median(ratios):.3f} "
          f"(rounds {', '.join(f'{r:.3f}' for r in ratios)})")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
