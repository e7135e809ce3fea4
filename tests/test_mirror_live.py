"""A real server mirrors digits-cnn version 1's requests to version 2, whose conv3 weights differ.

The repository is built in a temp folder: version 1 serves the shipped weights; version 2 has its own
``model.safetensors``, the shipped weights with noise added to ``features.conv3``. With ``fraction: 1``
and no budget limit every answered request also runs on version 2; /metrics then shows the four mirror
series: what differs (conv3 and everything after it) and what does not (conv1, conv2), while every
answer is still version 1's.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pytest
import requests
import torch
import yaml

from benchmarks.metrics_text import samples
from benchmarks.servers import ServerProcess, free_port
from models.checkpoint import load_pretrained, save_checkpoint
from models.datasets import load_dataset

pytestmark = pytest.mark.slow
REQUESTS, ROWS = 40, 4
MODEL = {"model": "digits-cnn"}
CANDIDATE = {"model": "digits-cnn", "version": "2"}


def write_yaml(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data))


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("mirror-repository")
    mirror = {"version": "2", "fraction": 1.0, "budget": 1.0, "min_instances": 100}
    write_yaml(repo / "digits-cnn" / "model.yaml", {"torch_threads": 1, "versions": [1], "mirror": mirror})
    (repo / "digits-cnn" / "1").mkdir()
    candidate = load_pretrained("digits-cnn")
    with torch.no_grad():
        weight = candidate.features.conv3.weight
        weight += 0.3 * weight.std() * torch.randn(weight.shape, generator=torch.Generator().manual_seed(3))
    (repo / "digits-cnn" / "2").mkdir()
    save_checkpoint(
        candidate, repo / "digits-cnn" / "2" / "model.safetensors", name="digits-cnn", overrides={}
    )
    return repo


@pytest.fixture(scope="module")
def served(repository: Path, tmp_path_factory: pytest.TempPathFactory):
    workdir = tmp_path_factory.mktemp("mirror-server")
    port = free_port()
    config = workdir / "server.yaml"
    write_yaml(config, {"server": {"api_servers": 1, "shutdown_grace_s": 2, "grpc_port": None}})
    command = [sys.executable, "-m", "service", "serve", "--config", str(config), "--port", str(port)]
    command += ["--model-repository", str(repository)]
    server = ServerProcess(f"mirror-{port}", command, port, workdir / "server.log")
    server.start()
    if not server.wait_ready(180.0):
        raise RuntimeError(f"hookserve did not become ready: {server.failure}")
    yield server
    assert server.stop(grace_s=20) == 0


def metric(text: str, name: str, **labels: str) -> float | None:
    found = samples(text, name, **labels)
    return found[0].value if found else None


def test_mirrored_requests_show_where_the_candidate_differs(served: ServerProcess) -> None:
    x = load_dataset("digits").test_x.numpy()[: REQUESTS * ROWS]
    url = f"{served.base_url}/v1/models/digits-cnn:predict"
    answers = []
    for i in range(REQUESTS):
        response = requests.post(url, json={"instances": x[i * ROWS : (i + 1) * ROWS].tolist()}, timeout=10)
        assert response.status_code == 200, response.text
        assert response.json()["model_version"] == "1"
        answers += [p["probabilities"] for p in response.json()["predictions"]]
    with torch.inference_mode():  # the answers are version 1's: the mirror changes none of them
        expected = load_pretrained("digits-cnn").eval()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(np.array(answers), expected, atol=1e-5)

    # The last kept requests run once they waited MAX_WAIT_S. A mirror that falls behind its client
    # passes requests over (its kept batch full while another runs, or over budget; a slow machine's CI
    # run mirrored 37 of 40) and counts them: with fraction 1, every answered request is one or the other.
    deadline, text, mirrored, passed_over = time.monotonic() + 20.0, "", 0.0, 0.0
    while time.monotonic() < deadline:
        text = requests.get(f"{served.base_url}/metrics", timeout=5).text
        mirrored = metric(text, "hookserve_mirror_requests_total", **CANDIDATE) or 0.0
        passed_over = metric(text, "hookserve_mirror_passed_over_total", **CANDIDATE) or 0.0
        if mirrored + passed_over == REQUESTS:
            break
        time.sleep(0.3)
    assert mirrored + passed_over == REQUESTS
    assert mirrored >= 0.75 * REQUESTS  # most: the window's 100-instance minimum needs 25 of them
    agreement = metric(text, "hookserve_mirror_top1_agreement", **CANDIDATE)
    assert agreement is not None and 0.5 <= agreement <= 1.0
    diff = {m: metric(text, "hookserve_mirror_max_abs_diff", **CANDIDATE, module=m) for m in
            ["features.conv1", "features.conv2", "features.conv3", "head.fc", "<output>"]}  # fmt: skip
    assert diff["features.conv1"] == 0.0 and diff["features.conv2"] == 0.0
    assert all(diff[m] > 0.0 for m in ["features.conv3", "head.fc", "<output>"]), diff
    psi = {m: metric(text, "hookserve_mirror_activation_psi", **CANDIDATE, module=m) for m in
           ["features.conv1", "features.conv3"]}  # fmt: skip
    assert psi["features.conv1"] == pytest.approx(0.0, abs=1e-6)
    assert psi["features.conv3"] is not None and psi["features.conv3"] > 0.0
    assert metric(text, "hookserve_mirror_failures_total", **CANDIDATE) == 0.0
    assert metric(text, "hookserve_monitor_overhead_seconds_total", **MODEL) > 0.0
