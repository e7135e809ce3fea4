"""KServe's Python SDK drives hookserve unmodified: ``InferenceRESTClient`` over V1 and V2, and
``InferenceGRPCClient`` over V2 gRPC.

The SDK lives in its own venv (``.venv-kserve``, made by ``scripts/setup.sh kserve``, which the test
command runs): it pins packages the project's venv does not share.
"""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest
import torch

from benchmarks.servers import REPO_ROOT, ServerProcess
from models.checkpoint import load_pretrained
from models.datasets import load_dataset

pytestmark = pytest.mark.slow
KSERVE_PYTHON = REPO_ROOT / ".venv-kserve" / "bin" / "python"


def test_kserve_sdk_v1_v2_and_grpc(live_server_process: ServerProcess, tmp_path) -> None:
    live_server = live_server_process.base_url
    assert KSERVE_PYTHON.exists(), "run scripts/setup.sh kserve (scripts/test.sh does) to make .venv-kserve"
    x = load_dataset("digits").test_x[:3].numpy()
    grpc_address = f"127.0.0.1:{live_server_process.grpc_port}"
    np.save(tmp_path / "x.npy", x)
    script = REPO_ROOT / "tests" / "clients" / "kserve_check.py"
    result = subprocess.run(
        [str(KSERVE_PYTHON), str(script), live_server, str(tmp_path / "x.npy"), grpc_address],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen["v1_live"] and seen["v1_model_ready"]
    assert seen["v2_live"] and seen["v2_ready"] and seen["v2_model_ready"]
    assert seen["v2_unknown_model_ready"] is False
    with torch.inference_mode():
        expected = load_pretrained("digits-cnn")(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(seen["v1_probabilities"], expected, atol=1e-5)
    for key, binary in (("v2_binary", True), ("v2_json", False)):
        answer = seen[key]
        assert answer["model_name"] == "digits-cnn" and answer["id"] == f"kserve-{binary}"
        np.testing.assert_allclose(answer["probabilities"], expected, atol=1e-5)
        assert answer["label_index"] == expected.argmax(1).tolist()
    grpc = seen["grpc"]
    assert grpc["live"] and grpc["ready"] and grpc["model_ready"]
    assert grpc["infer"]["model_name"] == "digits-cnn" and grpc["infer"]["id"] == "kserve-grpc"
    np.testing.assert_allclose(grpc["infer"]["probabilities"], expected, atol=1e-5)
    assert grpc["infer"]["label_index"] == expected.argmax(1).tolist()
