"""The peer: a plain single-process FastAPI + uvicorn server with hookserve's JSON contract, no batching.

``POST /v1/models/{name}:predict`` with ``{"instances": [...]}`` answers
``{"model", "model_version", "predictions": [{"label", "label_index", "score", "probabilities"}]}``,
validated and encoded by the same functions hookserve uses (``service.http.schemas``,
``service.worker.worker``), so the two differ only in how a request reaches the model: here the model
runs inline on the event loop, one request at a time -- the fastest shape for one process and one torch
thread (a thread-pool hop would add a context switch and the GIL would serialize the work anyway).

``python -m benchmarks.fastapi_peer --model digits-cnn --port 8001 --threads 1``

Deliberately no ``from __future__ import annotations``: FastAPI reads the endpoint's signature, and the
request type is built at run time.
"""

import argparse

import torch
import uvicorn
from fastapi import FastAPI, Response

from models.checkpoint import load_pretrained
from service.http.schemas import build_request_model
from service.http.v1_answer import encode_predictions


def build_app(model_name: str, device: str = "cpu", max_instances: int = 64) -> FastAPI:
    torch_device = torch.device(device)
    model = load_pretrained(model_name).to(torch_device).eval()
    request_model = build_request_model(model_name, model.input_spec, max_instances)
    prefix = f'{{"model":"{model_name}","model_version":"1","predictions":'.encode()
    with torch.inference_mode():  # warm-up: the first calls pay lazy initialization
        for size in (1, 8):
            model(model.example_input(size).to(torch_device))

    app = FastAPI()

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    async def predict(body: request_model) -> Response:
        x = torch.from_numpy(body.instances).to(torch_device)
        with torch.inference_mode():
            probabilities = model(x).float().cpu().numpy()
        predictions = encode_predictions(probabilities, model.output_spec)
        return Response(prefix + predictions + b"}", media_type="application/json")

    app.post(f"/v1/models/{model_name}:predict")(predict)
    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    app = build_app(args.model, args.device)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
