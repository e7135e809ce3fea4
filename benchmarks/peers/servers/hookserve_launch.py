"""Run hookserve (the project checkout, from its own venv) on one harness model, in the foreground.

Writes a config into --workdir and execs ``hookserve serve``; the project's defaults stand except what
the harness fixes for every peer (host, port, one torch thread per worker).
Env: HOOKSERVE_PY (python of a venv with the project installed; default: the checkout's .venv) and
HOOKSERVE_SRC (the checkout to serve; default: the repository this harness lives in). ``--src-env`` names
another variable for the checkout (``hookserve-ref`` uses HOOKSERVE_REF_SRC).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

HERE = Path(__file__).resolve().parent

p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
p.add_argument("--model", required=True)
p.add_argument("--host", default="127.0.0.1")
p.add_argument("--port", type=int, required=True)
p.add_argument("--workdir", type=Path, required=True)
p.add_argument("--monitoring", choices=["on", "off"], default="on")
p.add_argument("--api-servers", type=int, default=0, help="0: the project's default")
p.add_argument("--max-batch-size", type=int, default=0, help="0: the project's default")
p.add_argument("--src-env", default="HOOKSERVE_SRC", help="variable naming the checkout to serve")
args = p.parse_args()

model = {
    "name": args.model,
    "source": f"hookserve_plugin:{args.model}",
    "device": "cpu",
    "torch_threads": int(os.environ.get("PEERS_TORCH_THREADS", "1")),
    "monitoring": {"enabled": args.monitoring == "on"},
}
if args.max_batch_size:
    model["max_batch_size"] = args.max_batch_size
server = {"host": args.host, "port": args.port, "log_level": "warning"}
if args.api_servers:
    server["api_servers"] = args.api_servers
args.workdir.mkdir(parents=True, exist_ok=True)
config = args.workdir / "hookserve.yaml"  # JSON is YAML

config.write_text(json.dumps({"server": server, "models": [model]}, indent=1))
REPO = HERE.parent.parent.parent  # benchmarks/peers/servers -> the repository
src = os.environ.get(args.src_env) or (str(REPO) if args.src_env == "HOOKSERVE_SRC" else None)
py = os.environ.get("HOOKSERVE_PY") or str(REPO / ".venv" / "bin" / "python")
if not src or not Path(py).exists():
    raise SystemExit(f"set {args.src_env} (a hookserve checkout) and HOOKSERVE_PY (a venv python with it installed)")
env = dict(
    os.environ, PYTHONPATH=os.pathsep.join([str(HERE), src, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
)
os.chdir(src)
os.execve(py, [py, "-m", "service", "serve", "--config", str(config)], env)
