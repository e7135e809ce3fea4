"""Drive a live hookserve with KServe's own SDK: ``InferenceRESTClient`` (V1 and V2) and
``InferenceGRPCClient`` (V2 over gRPC).

Runs in its own venv (KServe pins versions the project's venv does not share; ``scripts/setup.sh kserve``
makes it), so ``tests/test_kserve_sdk.py`` runs it as a subprocess:
``python kserve_check.py URL INPUT.npy GRPC_ADDRESS``. It prints one JSON line with what the SDK saw; the
test compares that with in-process inference.
"""

from __future__ import annotations

import asyncio
import json
import sys

import numpy as np
from kserve import InferenceGRPCClient, InferenceRESTClient, InferInput, InferRequest, RESTConfig


def digits_request(x: np.ndarray, request_id: str, binary: bool = True) -> InferRequest:
    tensor = InferInput(name="input", shape=list(x.shape), datatype="FP32")
    tensor.set_data_from_numpy(x, binary_data=binary)
    return InferRequest(model_name="digits-cnn", infer_inputs=[tensor], request_id=request_id)


def answer(response) -> dict:
    outputs = {o.name: o.as_numpy() for o in response.outputs}
    return {
        "id": response.id,
        "model_name": response.model_name,
        "probabilities": outputs["probabilities"].tolist(),
        "label_index": outputs["label_index"].tolist(),
    }


async def check_grpc(address: str, x: np.ndarray) -> dict:
    """The SDK's gRPC client: health, readiness and inference."""
    client = InferenceGRPCClient(address, retries=0, timeout=30)
    try:
        return {
            "live": await client.is_server_live(),
            "ready": await client.is_server_ready(),
            "model_ready": await client.is_model_ready("digits-cnn"),
            "infer": answer(await client.infer(digits_request(x, "kserve-grpc"))),
        }
    finally:
        await client.close()


async def check(url: str, x: np.ndarray) -> dict:
    v1 = InferenceRESTClient(RESTConfig(protocol="v1", retries=0, timeout=30))
    v2 = InferenceRESTClient(RESTConfig(protocol="v2", retries=0, timeout=30))
    seen: dict = {
        "v1_live": await v1.is_server_live(url),
        "v1_model_ready": await v1.is_model_ready(url, "digits-cnn"),
        "v2_live": await v2.is_server_live(url),
        "v2_ready": await v2.is_server_ready(url),
        "v2_model_ready": await v2.is_model_ready(url, "digits-cnn"),
        "v2_unknown_model_ready": await v2.is_model_ready(url, "no-such-model"),
    }
    v1_answer = await v1.infer(url, {"instances": x.tolist()}, model_name="digits-cnn")
    seen["v1_probabilities"] = [p["probabilities"] for p in v1_answer["predictions"]]
    for binary in (True, False):
        request = digits_request(x, f"kserve-{binary}", binary)
        response = await v2.infer(url, request, model_name="digits-cnn")
        seen["v2_binary" if binary else "v2_json"] = answer(response)
    for client in (v1, v2):
        await client.close()
    return seen


async def main(url: str, x: np.ndarray, grpc_address: str) -> dict:
    return {**await check(url, x), "grpc": await check_grpc(grpc_address, x)}


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(sys.argv[1], np.load(sys.argv[2]), sys.argv[3]))))
