"""hookserve started with ``--model-repository``, driven by the real tritonclient.

The repository is built from the shipped models: ``digits-cnn`` with versions 1 and 2, where version 2
has its own ``model.yaml`` (a smaller batch) and its own ``model.safetensors`` (the shipped weights with
a shifted output layer, so that the answers show which weights serve), and ``tabular-mlp`` version 1.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import requests
import torch
import tritonclient.http as triton
import yaml
from tritonclient.utils import InferenceServerException

from benchmarks.servers import ServerProcess, free_port
from models.checkpoint import load_pretrained, save_checkpoint
from models.datasets import load_dataset

pytestmark = pytest.mark.slow
ADMIN, INFERENCE = "admin-secret", "inference-secret"
KEYS = {"HOOKSERVE_TEST_ADMIN_KEY": ADMIN, "HOOKSERVE_TEST_API_KEY": INFERENCE}


def write_yaml(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data))


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("repository")
    write_yaml(repo / "digits-cnn" / "model.yaml", {"torch_threads": 1, "max_batch_size": 64})
    (repo / "digits-cnn" / "1").mkdir()
    write_yaml(repo / "digits-cnn" / "2" / "model.yaml", {"max_batch_size": 16})
    shifted = load_pretrained("digits-cnn")
    with torch.no_grad():
        shifted.head.fc.bias += torch.linspace(-2.0, 2.0, shifted.head.fc.bias.numel())
    save_checkpoint(shifted, repo / "digits-cnn" / "2" / "model.safetensors", name="digits-cnn", overrides={})
    (repo / "digits-cnn" / "drafts").mkdir()  # not a version: ignored with a log line
    write_yaml(repo / "tabular-mlp" / "model.yaml", {"torch_threads": 1})
    (repo / "tabular-mlp" / "1").mkdir()
    return repo


def start(repository: Path, workdir: Path, *args: str) -> ServerProcess:
    """hookserve on a free port with server settings from a file, its models from ``repository``."""
    port = free_port()
    config = workdir / f"server-{port}.yaml"
    auth = {"api_key_env": "HOOKSERVE_TEST_API_KEY", "admin_key_env": "HOOKSERVE_TEST_ADMIN_KEY"}
    server = {"api_servers": 1, "shutdown_grace_s": 2, "auth": auth, "grpc_port": None}  # no gRPC port clash
    write_yaml(config, {"server": server})
    command = [sys.executable, "-m", "service", "serve", "--config", str(config), "--port", str(port)]
    command += ["--model-repository", str(repository), *args]
    process = ServerProcess(f"repository-{port}", command, port, workdir / f"server-{port}.log", env=KEYS)
    process.start()
    if not process.wait_ready(180.0):
        raise RuntimeError(f"hookserve did not become ready: {process.failure}")
    return process


@pytest.fixture(scope="module")
def served(repository: Path, tmp_path_factory: pytest.TempPathFactory):
    server = start(repository, tmp_path_factory.mktemp("none"))
    yield server
    assert server.stop(grace_s=20) == 0


@pytest.fixture(scope="module")
def client(served: ServerProcess) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(url=served.base_url.removeprefix("http://"))


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_the_index_lists_the_served_version_of_every_model(client: triton.InferenceServerClient) -> None:
    index = client.get_model_repository_index(headers=bearer(ADMIN))
    assert index == [
        {"name": "digits-cnn", "version": "2", "state": "READY", "reason": ""},
        {"name": "tabular-mlp", "version": "1", "state": "READY", "reason": ""},
    ]
    assert "model_repository" in client.get_server_metadata(headers=bearer(INFERENCE))["extensions"]


def test_the_repository_routes_need_the_admin_key(client: triton.InferenceServerClient, served) -> None:
    with pytest.raises(InferenceServerException, match="inference key does not open") as refused:
        client.get_model_repository_index(headers=bearer(INFERENCE))
    assert refused.value.status() == "403"
    unauthenticated = requests.post(f"{served.base_url}/v2/repository/index", timeout=5)
    assert unauthenticated.status_code == 401 and "admin key" in unauthenticated.json()["error"]


def test_load_and_unload_are_refused_under_model_control_none(client: triton.InferenceServerClient) -> None:
    for action in (client.load_model, client.unload_model):
        with pytest.raises(
            InferenceServerException, match="explicit model load / unload is not allowed"
        ) as no:
            action("digits-cnn", headers=bearer(ADMIN))
        assert no.value.status() == "403"
    assert client.is_model_ready("digits-cnn", headers=bearer(INFERENCE))  # still serving


def test_v2_inference_runs_the_served_versions_weights(
    client: triton.InferenceServerClient, repository: Path
) -> None:
    x = load_dataset("digits").test_x.numpy()[:16]
    tensor = triton.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    result = client.infer("digits-cnn", [tensor], model_version="2", headers=bearer(INFERENCE))
    assert result.get_response()["model_version"] == "2"
    served = result.as_numpy("probabilities")
    checkpoint = repository / "digits-cnn" / "2" / "model.safetensors"
    with torch.inference_mode():
        expected = load_pretrained("digits-cnn", checkpoint=checkpoint)(torch.from_numpy(x)).numpy()
        shipped = load_pretrained("digits-cnn")(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(served, expected, atol=1e-5)
    assert np.abs(served - shipped).max() > 1e-2  # version 2's own weights, not the shipped ones
    unversioned = client.infer("digits-cnn", [tensor], headers=bearer(INFERENCE))
    np.testing.assert_allclose(unversioned.as_numpy("probabilities"), served, atol=1e-6)
    with pytest.raises(InferenceServerException) as missing:
        client.infer("digits-cnn", [tensor], model_version="1", headers=bearer(INFERENCE))
    assert missing.value.status() == "404"  # one served version per model in this slice


def test_the_versions_model_yaml_applies(served: ServerProcess) -> None:
    metadata = requests.get(
        f"{served.base_url}/v1/models/digits-cnn", headers=bearer(INFERENCE), timeout=5
    ).json()
    assert metadata["version"] == "2" and metadata["batching"]["max_batch_size"] == 16
    assert "drafts" in served.log() and "version folders are positive integers" in served.log()


def test_explicit_model_control_loads_only_load_models(repository: Path, tmp_path: Path) -> None:
    server = start(repository, tmp_path, "--model-control", "explicit", "--load-model", "tabular-mlp")
    try:
        client = triton.InferenceServerClient(url=server.base_url.removeprefix("http://"))
        assert client.get_model_repository_index(headers=bearer(ADMIN)) == [
            {"name": "digits-cnn", "version": "2", "state": "UNAVAILABLE", "reason": "not loaded"},
            {"name": "tabular-mlp", "version": "1", "state": "READY", "reason": ""},
        ]
        assert not client.is_model_ready("digits-cnn", headers=bearer(INFERENCE))
        with pytest.raises(InferenceServerException, match="inference key does not open") as refused:
            client.load_model("digits-cnn", headers=bearer(INFERENCE))
        assert refused.value.status() == "403"
        client.load_model("digits-cnn", headers=bearer(ADMIN))  # live: version 2, the latest
        assert client.is_model_ready("digits-cnn", headers=bearer(INFERENCE))
    finally:
        assert server.stop(grace_s=20) == 0
