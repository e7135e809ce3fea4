"""Property-based fuzzing of the live server from its own OpenAPI schema: no input may cause a 5xx."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def test_schema_driven_fuzzing_finds_no_server_error(live_server: str) -> None:
    cli = shutil.which("schemathesis") or str(Path(sys.executable).parent / "schemathesis")
    result = subprocess.run(
        [
            cli,
            "run",
            f"{live_server}/openapi.json",
            "--checks",
            "not_a_server_error",
            "--max-examples",
            "15",
            "--phases",
            "coverage,fuzzing",
            "--generation-deterministic",
            "--request-timeout",
            "20",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert "passed" in result.stdout
