"""What was measured, on what: the machine, the tool versions, and a fingerprint of the service code
before and after the run (a run that straddles an edit shows it)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import subprocess

import torch

from benchmarks import loadgen
from benchmarks.servers import REPO_ROOT


def platform_line() -> str:
    return f"{cpu_model()}, {os.cpu_count()} cores"


def cpu_model() -> str:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def code_fingerprint() -> dict[str, str]:
    """Which service code was measured: the commit plus a hash of every file under service/ and models/
    as it is on disk (uncommitted edits included), so a run that straddles an edit shows it."""
    root = REPO_ROOT
    digest = hashlib.sha256()
    for path in sorted([*root.glob("service/**/*.py"), *root.glob("models/**/*.py")]):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    commit = ""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10
        ).stdout.strip()
    return {"commit": commit, "service_models_sha256": digest.hexdigest()[:16]}


def tool_versions() -> dict[str, str]:
    versions = {"python": platform.python_version(), "torch": torch.__version__}
    with contextlib.suppress(Exception):
        import litserve

        versions["litserve"] = litserve.__version__
    if loadgen.wrk_available():
        out = subprocess.run(["wrk", "--version"], capture_output=True, text=True).stdout
        versions["wrk"] = out.split("[")[0].replace("wrk", "").strip()
    return versions
