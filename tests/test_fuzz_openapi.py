"""Property-based fuzzing of the live server from its own OpenAPI schema: no input may cause a 5xx."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


# Routes that run the same code on the same schema as one that is fuzzed: V2 of every model and version
# (one model's, unversioned, is fuzzed) and digits-transformer's V1 predict (digits-cnn's schema).
DUPLICATES = r"/versions/|^/v2/models/(tabular-mlp|digits-transformer)|^/v1/models/digits-transformer:predict"
# not_a_server_error, except the 503/504 a request's own too-short deadline asks for (see the file)
OWN_DEADLINE_CHECK = Path(__file__).parent / "fuzz" / "own_deadline_check.py"


@pytest.mark.timeout(900)
def test_schema_driven_fuzzing_finds_no_server_error(live_server: str) -> None:
    cli = shutil.which("schemathesis") or str(Path(sys.executable).parent / "schemathesis")
    result = subprocess.run(
        [
            cli,
            "run",
            f"{live_server}/openapi.json",
            "--checks",
            "not_a_server_error_but_own_deadline",
            "--max-examples",
            "15",
            "--phases",
            "coverage,fuzzing",
            "--generation-deterministic",
            "--request-timeout",
            "20",
            "--exclude-path-regex",
            DUPLICATES,
        ],
        capture_output=True,
        text=True,
        timeout=840,
        env={**os.environ, "SCHEMATHESIS_HOOKS": str(OWN_DEADLINE_CHECK)},
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert "passed" in result.stdout
