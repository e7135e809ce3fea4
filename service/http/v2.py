"""The Open Inference Protocol V2 (KServe v2, Triton's HTTP API), beside V1 on the same models and workers.

``tritonclient.http`` and KServe's ``InferenceRESTClient`` work unmodified: health and readiness
(``{"live": true}`` / ``{"ready": true}``, 200 or 503), server and model metadata, model readiness, and
inference in JSON or with the binary tensor extension (:mod:`service.http.v2_codec`). V1 and V2
requests to a model share its workers and batch together. Errors are ``{"error": "...", "request_id":
"..."}`` (:mod:`service.http.errors`; clients read ``error``): 400 for anything wrong with a request,
404 for an unknown model or version, 503 overload/draining/no worker, 504 past the deadline.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING

import numpy as np
import orjson
from starlette.types import Receive, Scope, Send

from service.http.asgi import JSON, header, send_response
from service.http.errors import request_id_of, send_error
from service.http.inference import Answer, Decoded, InferenceRoute, RouteSettings
from service.http.request_options import from_v2_parameters
from service.http.v2_codec import INPUT_NAME, OUTPUTS, decode_request, encode_response
from service.messages import PROBABILITIES_F32

if TYPE_CHECKING:
    from service.http.route_table import VersionRoutes
    from service.pool.table import ServedModel

Handler = Callable[[Scope, Receive, Send], Awaitable[None]]
EXTENSIONS = ["binary_tensor_data", "model_repository"]


def model_paths(model: str, version: str) -> list[str]:
    """The V2 prefixes of one model: without and with its version."""
    return [f"/v2/models/{model}", f"/v2/models/{model}/versions/{version}"]


class V2InferRoute(InferenceRoute):
    """``POST /v2/models/{m}[/versions/{v}]/infer`` for one model."""

    protocol = "v2"
    accepted_types = (JSON, b"application/octet-stream")

    def decode(self, scope: dict, body: bytes) -> Decoded:
        settings = self.settings
        length = header(scope, b"inference-header-content-length")
        instances, request = decode_request(body, length, settings.input_spec, settings.max_instances)
        timeout_s, priority = from_v2_parameters(request.parameters, settings)
        return Decoded(instances, PROBABILITIES_F32, request, timeout_s, priority)

    def encode(self, decoded: Decoded, payload: bytes, request_id: str) -> Answer:
        settings = self.settings
        probabilities = np.frombuffer(payload, dtype=np.float32).reshape(
            decoded.instances.shape[0], len(settings.output_spec.labels)
        )
        body, header_length = encode_response(
            probabilities, decoded.context, settings.model, settings.version, request_id, settings.output_spec
        )
        if header_length is None:
            return Answer(body)
        return Answer(
            body,
            b"application/octet-stream",
            [(b"inference-header-content-length", str(header_length).encode())],
        )


def model_metadata(settings: RouteSettings, versions: list[str] | None = None) -> dict:
    labels = len(settings.output_spec.labels)
    return {
        "name": settings.model,
        "versions": versions or [settings.version],
        "platform": "pytorch",
        "inputs": [{"name": INPUT_NAME, "datatype": "FP32", "shape": [-1, *settings.input_spec.shape]}],
        "outputs": [
            {"name": OUTPUTS[0], "datatype": "FP32", "shape": [-1, labels]},
            {"name": OUTPUTS[1], "datatype": "INT64", "shape": [-1]},
            {"name": OUTPUTS[2], "datatype": "BYTES", "shape": [-1]},
        ],
    }


def json_handler(produce: Callable[[], tuple[int, dict]]) -> Handler:
    """A GET route answering ``produce()``'s status and JSON body."""

    async def handle(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] not in ("GET", "HEAD"):
            await send_error(send, 405, "use GET", request_id_of(scope), [(b"allow", b"GET, HEAD")])
            return
        status, body = produce()
        await send_response(send, status, orjson.dumps(body))

    return handle


def server_routes(server_ready: Callable[[], bool], version: str) -> dict[str, Handler]:
    """The server's V2 paths: metadata and health."""
    return {
        "/v2": json_handler(
            lambda: (200, {"name": "hookserve", "version": version, "extensions": EXTENSIONS})
        ),
        "/v2/health/live": json_handler(lambda: (200, {"live": True})),
        "/v2/health/ready": json_handler(lambda: _readiness(server_ready(), {})),
    }


def model_routes(
    model: ServedModel,
    versions: Mapping[str, VersionRoutes],
    unversioned_infer: Handler,
    unit_ready: Callable[[int], bool],
) -> dict[str, Handler]:
    """One model's V2 paths, exact: unversioned ones (its default version; inference by its split) and
    one set per served version (unknown versions fall through to a 404)."""
    listed = model.sorted_versions()
    table: dict[str, Handler] = {}
    for version, routes in versions.items():
        metadata = model_metadata(routes.settings, listed)
        prefix = f"/v2/models/{model.name}/versions/{version}"
        table[prefix] = json_handler(lambda m=metadata: (200, m))
        table[f"{prefix}/ready"] = _ready_handler(model.name, routes, unit_ready)
        table[f"{prefix}/infer"] = routes.v2
    default = versions[model.default_version]
    prefix = f"/v2/models/{model.name}"
    table[prefix] = table[f"{prefix}/versions/{model.default_version}"]
    table[f"{prefix}/ready"] = _ready_handler(model.name, default, unit_ready)
    table[f"{prefix}/infer"] = unversioned_infer
    return table


def _ready_handler(name: str, routes: VersionRoutes, unit_ready: Callable[[int], bool]) -> Handler:
    return json_handler(lambda: _readiness(unit_ready(routes.unit), {"name": name}))


def _readiness(ready: bool, body: dict) -> tuple[int, dict]:
    return (200 if ready else 503), {**body, "ready": ready}


async def not_found(scope: Scope, send: Send, served: list[str]) -> None:
    await send_error(send, 404, f"{scope['path']} is not served; models: {served}", request_id_of(scope))
