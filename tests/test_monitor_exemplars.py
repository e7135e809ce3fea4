"""Exemplars and multiprocess mode: why hookserve's metrics carry no request-id exemplars.

prometheus-client keeps OpenMetrics exemplars in a plain (single-process) registry, but in
multiprocess mode, which hookserve runs in (``PROMETHEUS_MULTIPROC_DIR``), it drops them: the mmap
value's ``set_exemplar`` does nothing and the per-process files hold only values. These tests pin that
down, so an upgrade that starts keeping them fails here: then wire request ids in as exemplars
(docs/monitoring.md, "Request ids and exemplars")."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = """
import os, sys
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.openmetrics.exposition import generate_latest

registry = CollectorRegistry()
counter = Counter("demo_nonfinite_origin", "demo", ["model"], registry=registry)
histogram = Histogram("demo_request_duration_seconds", "demo", ["model"], registry=registry)
counter.labels("m").inc(exemplar={"request_id": "req-123"})
histogram.labels("m").observe(0.02, exemplar={"request_id": "req-456"})
if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    from prometheus_client.multiprocess import MultiProcessCollector
    registry = CollectorRegistry()
    MultiProcessCollector(registry)
sys.stdout.write(generate_latest(registry).decode())
"""


def exposition(env: dict[str, str]) -> str:
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=60, check=True
    )
    return result.stdout


def test_a_plain_registry_keeps_exemplars() -> None:
    text = exposition({"PATH": "/usr/bin:/bin"})
    assert '# {request_id="req-123"} 1.0' in text
    assert 'request_id="req-456"' in text


def test_multiprocess_mode_drops_exemplars(tmp_path: Path) -> None:
    text = exposition({"PATH": "/usr/bin:/bin", "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)})
    assert 'demo_nonfinite_origin_total{model="m"} 1.0' in text  # the value survives...
    assert 'demo_request_duration_seconds_count{model="m"} 1.0' in text
    assert "request_id" not in text and " # {" not in text  # ...its exemplar does not
