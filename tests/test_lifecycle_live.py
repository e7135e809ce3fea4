"""Models that change while serving, driven through the real tritonclient over loopback HTTP.

One server with ``--model-control explicit`` and two API servers (so a change must reach both before it
returns). The repository: ``digits-cnn`` versions 1 and 2 (version 2 has shifted output weights, so an
answer shows which version gave it; its model.yaml serves version 1 only), and ``tabular-mlp``.
Loads, reloads under steady traffic (every request must get a 200), the canary split, the default
version, a failed load that leaves the serving version serving, and an unload that returns memory.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import psutil
import pytest
import requests
import torch
import tritonclient.http as triton
import yaml
from tritonclient.utils import InferenceServerException

from benchmarks.servers import REPO_ROOT, ServerProcess, free_port
from models.checkpoint import load_pretrained, save_checkpoint

pytestmark = pytest.mark.slow
DIGIT = np.full((8, 8), 0.3, dtype=np.float32).tolist()


def write_yaml(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data))


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("repository")
    write_yaml(repo / "digits-cnn" / "model.yaml", {"torch_threads": 1, "versions": [1]})
    (repo / "digits-cnn" / "1").mkdir()
    shifted = load_pretrained("digits-cnn")
    with torch.no_grad():
        shifted.head.fc.bias += torch.linspace(-3.0, 3.0, shifted.head.fc.bias.numel())
    save_checkpoint(shifted, repo / "digits-cnn" / "2" / "model.safetensors", name="digits-cnn", overrides={})
    write_yaml(repo / "tabular-mlp" / "model.yaml", {"torch_threads": 1})
    (repo / "tabular-mlp" / "1").mkdir()
    return repo


@pytest.fixture(scope="module")
def server(repository: Path, tmp_path_factory: pytest.TempPathFactory):
    workdir = tmp_path_factory.mktemp("lifecycle")
    port = free_port()
    grpc_port = free_port()
    config = workdir / "server.yaml"
    write_yaml(config, {"server": {"api_servers": 2, "shutdown_grace_s": 2, "grpc_port": grpc_port}})
    command = [sys.executable, "-m", "service", "serve", "--config", str(config), "--port", str(port)]
    command += ["--model-repository", str(repository), "--model-control", "explicit"]
    command += ["--load-model", "digits-cnn"]
    process = ServerProcess(f"lifecycle-{port}", command, port, workdir / "server.log")
    process.grpc_port = grpc_port
    process.start()
    if not process.wait_ready(180.0):
        raise RuntimeError(f"hookserve did not become ready: {process.failure}")
    yield process
    assert process.stop(grace_s=20) == 0


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(url=server.base_url.removeprefix("http://"), network_timeout=300)


def load(client: triton.InferenceServerClient, name: str, **config: object) -> None:
    client.load_model(name, config=json.dumps(config) if config else None)


def predict(server: ServerProcess, path: str, request_id: str | None = None) -> requests.Response:
    headers = {"X-Request-ID": request_id} if request_id else {}
    return requests.post(f"{server.base_url}{path}", json={"instances": [DIGIT]}, headers=headers, timeout=30)


def index(client: triton.InferenceServerClient) -> dict[tuple[str, str], tuple[str, str]]:
    entries = client.get_model_repository_index()
    return {(e["name"], e["version"]): (e["state"], e.get("reason", "")) for e in entries}


def tree_rss(pid: int) -> int:
    root = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [root, *root.children(recursive=True)])


def test_the_index_lists_loaded_and_unloaded_models(client: triton.InferenceServerClient) -> None:
    entries = index(client)
    assert entries[("digits-cnn", "1")] == ("READY", "")
    assert entries[("tabular-mlp", "1")] == ("UNAVAILABLE", "not loaded")
    assert "model_repository" in client.get_server_metadata()["extensions"]


def openapi_paths(server: ServerProcess) -> set[str]:
    return set(requests.get(f"{server.base_url}/openapi.json", timeout=10).json()["paths"])


def test_load_serves_a_new_model_and_unload_stops_it_and_returns_its_memory(
    server: ServerProcess, client: triton.InferenceServerClient
) -> None:
    assert not client.is_model_ready("tabular-mlp")
    before = tree_rss(server.process.pid)
    load(client, "tabular-mlp")  # synchronous: ready on return
    assert client.is_model_ready("tabular-mlp")
    features = np.zeros((2, 30), dtype=np.float32)
    given = triton.InferInput("input", list(features.shape), "FP32")
    given.set_data_from_numpy(features)
    answer = client.infer("tabular-mlp", [given]).as_numpy("probabilities")
    assert answer.shape == (2, 2) and np.allclose(answer.sum(axis=1), 1.0, atol=1e-4)
    loaded = tree_rss(server.process.pid)
    assert requests.get(f"{server.base_url}/health", timeout=5).json()["models"]["tabular-mlp"] == "ready"
    assert "/v1/models/tabular-mlp:predict" in openapi_paths(server)  # documented once loaded

    client.unload_model("tabular-mlp")  # synchronous: its workers have exited on return
    assert index(client)[("tabular-mlp", "1")] == ("UNAVAILABLE", "unloaded")
    assert predict(server, "/v1/models/tabular-mlp:predict").status_code == 404
    assert "tabular-mlp" not in requests.get(f"{server.base_url}/health", timeout=5).json()["models"]
    assert "/v1/models/tabular-mlp:predict" not in openapi_paths(server)
    unloaded = tree_rss(server.process.pid)
    worker_rss = loaded - before
    assert worker_rss > 50e6, "a worker process (torch) holds tens of MB"
    assert unloaded < loaded - 0.8 * worker_rss, (before, loaded, unloaded)


def test_reloads_under_steady_traffic_fail_no_request(
    server: ServerProcess, client: triton.InferenceServerClient
) -> None:
    statuses: Counter[int] = Counter()
    versions: Counter[str] = Counter()
    stop = threading.Event()

    def drive() -> None:
        with requests.Session() as session:
            while not stop.is_set():
                answer = session.post(
                    f"{server.base_url}/v1/models/digits-cnn:predict", json={"instances": [DIGIT]}, timeout=30
                )
                statuses[answer.status_code] += 1
                if answer.status_code == 200:
                    versions[answer.json()["model_version"]] += 1

    threads = [threading.Thread(target=drive) for _ in range(6)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(1.0)
        load(client, "digits-cnn", versions=[1, 2])  # adds version 2 (the default is now the highest)
        served_v2 = sum(versions[v] for v in ("2",))
        time.sleep(1.0)
        load(client, "digits-cnn", versions=[1, 2], max_batch_size=8)  # a changed config: new units for both
        time.sleep(1.0)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert set(statuses) == {200}, statuses
    assert statuses[200] > 100
    assert versions["1"] > 0 and versions["2"] > served_v2, versions
    metadata = requests.get(f"{server.base_url}/v1/models/digits-cnn", timeout=5).json()
    assert metadata["versions"] == ["1", "2"] and metadata["batching"]["max_batch_size"] == 8


def test_versions_are_reachable_by_path_and_give_their_own_answers(
    server: ServerProcess, client: triton.InferenceServerClient
) -> None:
    load(client, "digits-cnn", versions=[1, 2])
    one = predict(server, "/v1/models/digits-cnn/versions/1:predict").json()
    two = predict(server, "/v1/models/digits-cnn/versions/2:predict").json()
    assert (one["model_version"], two["model_version"]) == ("1", "2")
    p1, p2 = (np.array(a["predictions"][0]["probabilities"]) for a in (one, two))
    assert np.abs(p1 - p2).max() > 0.01, "version 2's shifted weights answer differently"
    digit = triton.InferInput("input", [1, 8, 8], "FP32")
    digit.set_data_from_numpy(np.array([DIGIT], dtype=np.float32))
    v2 = client.infer("digits-cnn", [digit], model_version="2").as_numpy("probabilities")[0]
    assert np.allclose(v2, p2, atol=1e-5)
    assert client.get_model_metadata("digits-cnn")["versions"] == ["1", "2"]
    assert predict(server, "/v1/models/digits-cnn/versions/7:predict").status_code == 404


def test_the_canary_split_is_weighted_and_sticky_by_request_id(
    server: ServerProcess, client: triton.InferenceServerClient
) -> None:
    load(client, "digits-cnn", versions=[1, 2], traffic={"1": 50, "2": 50})
    ids = [f"canary-{i}" for i in range(60)]
    first = {i: predict(server, "/v1/models/digits-cnn:predict", i).json()["model_version"] for i in ids}
    shares = Counter(first.values())
    assert shares["1"] >= 15 and shares["2"] >= 15, shares
    again = {i: predict(server, "/v1/models/digits-cnn:predict", i).json()["model_version"] for i in ids}
    assert again == first


def test_default_version_takes_unversioned_requests(
    server: ServerProcess, client: triton.InferenceServerClient
) -> None:
    load(client, "digits-cnn", versions=[1, 2], default_version=1)
    answers = {predict(server, "/v1/models/digits-cnn:predict").json()["model_version"] for _ in range(10)}
    assert answers == {"1"}


def test_a_failed_load_leaves_the_serving_versions_serving(
    server: ServerProcess, client: triton.InferenceServerClient
) -> None:
    load(client, "digits-cnn", versions=[1])
    with pytest.raises(InferenceServerException, match=r"failed to load 'digits-cnn'.*does not exist"):
        load(client, "digits-cnn", versions=[1], checkpoint="missing.safetensors")
    with pytest.raises(InferenceServerException, match="is not in the repository"):
        load(client, "no-such-model")
    assert not any(name == "no-such-model" for name, _ in index(client)), "the index lists repository models"
    assert predict(server, "/v1/models/digits-cnn:predict").json()["model_version"] == "1"
    assert index(client)[("digits-cnn", "1")] == ("READY", "")
    metrics = requests.get(f"{server.base_url}/metrics", timeout=5).text
    assert 'hookserve_model_load_failures_total{model="digits-cnn"} 1.0' in metrics


def test_tritonclient_grpc_drives_the_repository(server: ServerProcess) -> None:
    """Triton's repository methods over gRPC (Triton's message numbering), from tritonclient.grpc in its
    own venv (its stubs and hookserve's cannot share a process)."""
    triton_python = REPO_ROOT / ".venv-triton" / "bin" / "python"
    assert triton_python.exists(), "run scripts/setup.sh triton (scripts/test.sh does) to make .venv-triton"
    client = REPO_ROOT / "tests" / "clients" / "triton_grpc_check.py"
    result = subprocess.run(
        [str(triton_python), str(client), f"127.0.0.1:{server.grpc_port}", "lifecycle", "tabular-mlp"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    entry = {"name": "tabular-mlp", "version": "1"}
    before = [e for e in seen["index_before"] if e["name"] == "tabular-mlp"]
    assert before and before[0]["state"] == "UNAVAILABLE"  # not loaded, or unloaded by an earlier test
    assert seen["ready_before"]["code"] == "NOT_FOUND"  # not served: unknown to inference
    assert seen["load"] is None and seen["ready_after_load"] is True
    assert seen["infer_after_load"] == [2, 2]
    assert seen["reload"] is None
    assert seen["bad_load"]["code"] == "INVALID_ARGUMENT"
    assert "unknown keys ['no_such_key']" in seen["bad_load"]["message"]
    assert seen["infer_after_bad_load"] == [2, 2], "a failed load leaves the serving version serving"
    assert {**entry, "state": "READY", "reason": ""} in seen["index_loaded"]
    assert seen["unload"] is None
    assert seen["infer_after_unload"]["code"] == "NOT_FOUND"
    assert {**entry, "state": "UNAVAILABLE", "reason": "unloaded"} in seen["index_after"]
