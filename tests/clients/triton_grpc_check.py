"""Drive a live hookserve's gRPC port with Triton's own client (``tritonclient.grpc``).

Runs in its own venv (``scripts/setup.sh triton`` makes ``.venv-triton``): tritonclient's stubs and
hookserve's both register the ``inference`` proto package, which one process cannot hold twice
(kserve #3099). ``tests/test_grpc_live.py`` runs it as a subprocess:

    python triton_grpc_check.py ADDRESS CHECK [ARG...]

and reads the one JSON line it prints: what the client saw, including the gRPC code and message of
every call that failed (``{"code": "NOT_FOUND", "message": ...}``).
"""

from __future__ import annotations

import contextlib
import json
import queue
import sys
from collections.abc import Callable
from typing import Any

import numpy as np
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException


def outcome(call: Callable[[], Any]) -> Any:
    """What ``call`` returned, or the gRPC code and message of its failure."""
    try:
        return call()
    except InferenceServerException as error:
        return {"code": str(error.status()).removeprefix("StatusCode."), "message": error.message()}


def tensor(x: np.ndarray, datatype: str = "FP32", shape: list[int] | None = None) -> triton.InferInput:
    """An input named ``input``; ``shape`` may contradict the data (to send a wrong size)."""
    t = triton.InferInput("input", list(x.shape), datatype)
    t.set_data_from_numpy(x)
    if shape is not None:
        t.set_shape(shape)
    return t


def answer(result: triton.InferResult) -> dict:
    response = result.get_response(as_json=True)
    return {
        "model_name": response["model_name"],
        "model_version": response["model_version"],
        "id": response["id"],
        "outputs": {o["name"]: (o["datatype"], [int(d) for d in o["shape"]]) for o in response["outputs"]},
        "probabilities": result.as_numpy("probabilities").tolist(),
        "label_index": result.as_numpy("label_index").tolist(),
        "label": [v.decode() for v in result.as_numpy("label").tolist()],
    }


def basics(client: triton.InferenceServerClient, x: np.ndarray) -> dict:
    """Health, metadata, inference, and each client mistake."""
    model = "digits-cnn"

    def infer(*inputs: triton.InferInput, **kwargs: Any) -> Any:
        return outcome(lambda: answer(client.infer(kwargs.pop("model", model), list(inputs), **kwargs)))

    return {
        "live": client.is_server_live(),
        "ready": client.is_server_ready(),
        "model_ready": client.is_model_ready(model),
        "model_ready_v1": client.is_model_ready(model, "1"),
        "unknown_model_ready": outcome(lambda: client.is_model_ready("no-such-model")),
        "server_metadata": client.get_server_metadata(as_json=True),
        "model_metadata": client.get_model_metadata(model, as_json=True),
        "model_metadata_v1": client.get_model_metadata(model, "1", as_json=True),
        "binary": infer(tensor(x), request_id="triton-grpc"),
        "binary_v1": infer(tensor(x), model_version="1"),
        "one_output": outcome(
            lambda: (
                client.infer(model, [tensor(x)], outputs=[triton.InferRequestedOutput("label_index")])
                .as_numpy("label_index")
                .tolist()
            )
        ),
        "bad_shape": infer(tensor(np.zeros((2, 8, 9), np.float32))),
        "bad_datatype": infer(tensor(np.zeros((2, 8, 8), bool), "BOOL")),
        "bad_size": infer(tensor(x, shape=[len(x) + 1, 8, 8])),
        "bad_value": infer(tensor(np.full((1, 8, 8), np.nan, np.float32))),
        "too_many": infer(tensor(np.zeros((65, 8, 8), np.float32))),
        "unknown_model": infer(tensor(x), model="no-such-model"),
        "unknown_version": infer(tensor(x), model_version="7"),
        "repository_index": outcome(lambda: client.get_model_repository_index(as_json=True)),
        "repository_load": outcome(lambda: client.load_model(model)),
    }


def start_stream(client: triton.InferenceServerClient) -> queue.Queue:
    """Open the client's stream; its callback puts each (result, error) on the queue returned."""
    answers: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    return answers


def stream(client: triton.InferenceServerClient, x: np.ndarray, requests: int) -> dict:
    """Triton's streaming API: answers matched by request id, mistakes answered on the stream, which goes
    on after them."""
    answers = start_stream(client)
    model = "digits-cnn"
    for i in range(requests):
        client.async_stream_infer(model, [tensor(x[i % len(x) :])], request_id=f"ok-{i}")
    client.async_stream_infer(model, [tensor(np.zeros((2, 8, 9), np.float32))], request_id="bad-shape")
    client.async_stream_infer("no-such-model", [tensor(x)], request_id="unknown-model")
    client.async_stream_infer(model, [tensor(x)], model_version="1", request_id="after-mistakes")
    seen: dict[str, Any] = {"answers": {}, "errors": []}
    for _ in range(requests + 3):
        result, error = answers.get(timeout=60)
        if error is not None:
            seen["errors"].append(error.message())
        else:
            response = result.get_response()
            seen["answers"][response.id] = {
                "version": response.model_version,
                "final": response.parameters["triton_final_response"].bool_param,
                **answer(result),
            }
    client.stop_stream()
    return seen


def auth(client: triton.InferenceServerClient, x: np.ndarray, key: str) -> dict:
    """With auth on: which calls need the key, and that the key opens them."""
    good = {"authorization": f"Bearer {key}"}
    wrong = {"authorization": "Bearer not-the-key"}

    def infer(headers: dict | None) -> Any:
        return outcome(lambda: answer(client.infer("digits-cnn", [tensor(x)], headers=headers)))

    def stream_without_key() -> Any:
        answers = start_stream(client)
        with contextlib.suppress(InferenceServerException):  # the server may end the stream first:
            client.async_stream_infer("digits-cnn", [tensor(x)])  # its reason comes to the callback
        _, error = answers.get(timeout=60)
        client.stop_stream()
        if error is None:
            return "answered"
        return {"code": str(error.status()).removeprefix("StatusCode."), "message": error.message()}

    return {
        "live": client.is_server_live(),
        "model_ready": client.is_model_ready("digits-cnn"),
        "stream_no_key": stream_without_key(),
        "no_key": infer(None),
        "wrong_key": infer(wrong),
        "key": infer(good),
        "metadata_no_key": outcome(lambda: client.get_model_metadata("digits-cnn", as_json=True)),
        "metadata_key": outcome(lambda: client.get_model_metadata("digits-cnn", headers=good, as_json=True)),
    }


def deadline(client: triton.InferenceServerClient, model: str, client_timeout_s: float, key: str) -> dict:
    """A request to a model slower than the server's deadline, and one with the client's own deadline."""
    x, headers = np.ones((1, 4), np.float32), {"authorization": f"Bearer {key}"}

    def infer(**kwargs: Any) -> Any:
        return outcome(lambda: answer(client.infer(model, [tensor(x)], headers=headers, **kwargs)))

    return {"server_deadline": infer(), "client_deadline": infer(client_timeout=client_timeout_s)}


def lifecycle(client: triton.InferenceServerClient, model: str) -> dict:
    """Triton's repository methods on a server with explicit model control: load, infer, reload, unload."""

    def index() -> list[dict]:
        entries = client.get_model_repository_index(as_json=True).get("models", [])
        return [{k: entry.get(k, "") for k in ("name", "version", "state", "reason")} for entry in entries]

    x = np.zeros((2, 30), np.float32)

    def infer() -> Any:
        return outcome(lambda: client.infer(model, [tensor(x)]).as_numpy("probabilities").shape)

    seen: dict[str, Any] = {
        "index_before": index(),
        "ready_before": outcome(lambda: client.is_model_ready(model)),
    }
    seen["load"] = outcome(lambda: client.load_model(model))
    seen["ready_after_load"] = client.is_model_ready(model)
    seen["infer_after_load"] = infer()
    seen["reload"] = outcome(lambda: client.load_model(model, config=json.dumps({"max_batch_size": 8})))
    seen["bad_load"] = outcome(lambda: client.load_model(model, config=json.dumps({"no_such_key": 1})))
    seen["infer_after_bad_load"] = infer()
    seen["index_loaded"] = index()
    seen["unload"] = outcome(lambda: client.unload_model(model))
    seen["infer_after_unload"] = infer()
    seen["index_after"] = index()
    return seen


def main(argv: list[str]) -> dict:
    address, check, *args = argv
    client = triton.InferenceServerClient(address)
    if check == "basics":
        return basics(client, np.load(args[0]))
    if check == "stream":
        return stream(client, np.load(args[0]), int(args[1]))
    if check == "auth":
        return auth(client, np.load(args[0]), args[1])
    if check == "lifecycle":
        return lifecycle(client, args[0])
    if check == "deadline":
        return deadline(client, args[0], float(args[1]), args[2])
    raise SystemExit(f"unknown check {check!r}")


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:])))
