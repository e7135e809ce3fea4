"""The HTTP edge against a live server (default config): deep JSON is a 4xx, every error has one shape."""

from __future__ import annotations

import pytest
import requests

from service.http.v1_answer import PredictResponse

pytestmark = pytest.mark.slow

V1 = "/v1/models/digits-cnn:predict"
V2 = "/v2/models/digits-cnn/infer"
DIGIT = [[0.0] * 8] * 8


def deep_bodies(depth: int) -> dict[str, bytes]:
    nested = b"[" * depth + b"0" + b"]" * depth
    return {
        V1: b'{"instances": ' + nested + b"}",
        V2: b'{"inputs": [{"name": "input", "shape": [1, 8, 8], "datatype": "FP32", "data": '
        + nested
        + b"}]}",
    }


@pytest.mark.parametrize("depth", [1_100, 100_000])
def test_deep_json_is_a_4xx_saying_so_and_the_server_keeps_serving(live_server: str, depth: int) -> None:
    for path, body in deep_bodies(depth).items():
        response = requests.post(
            f"{live_server}{path}", data=body, headers={"Content-Type": "application/json"}, timeout=30
        )
        assert response.status_code in (400, 422), (path, response.status_code, response.text[:300])
        assert "nested" in response.json()["error"], response.text[:300]
        unclosed = requests.post(f"{live_server}{path}", data=body[: len(body) // 2], timeout=30)
        assert unclosed.status_code in (400, 422), (path, unclosed.status_code, unclosed.text[:300])
    answer = requests.post(f"{live_server}{V1}", json={"instances": [DIGIT]}, timeout=30)
    assert answer.status_code == 200, answer.text
    v2 = {"inputs": [{"name": "input", "shape": [1, 8, 8], "datatype": "FP32", "data": [0.0] * 64}]}
    assert requests.post(f"{live_server}{V2}", json=v2, timeout=30).status_code == 200


def test_the_served_v1_answer_is_its_documented_schema(live_server: str) -> None:
    response = requests.post(f"{live_server}{V1}", json={"instances": [DIGIT, DIGIT]}, timeout=30)
    answer = PredictResponse.model_validate_json(response.content)
    assert answer.model == "digits-cnn" and len(answer.predictions) == 2


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("POST", V1, 422),  # the router's inference route
        ("GET", V1, 405),
        ("POST", "/v1/models/nope:predict", 404),  # the router's unknown model
        ("POST", "/v2/models/nope/infer", 404),
        ("GET", "/v2/models/digits-cnn/ready/more", 404),
        ("GET", "/v1/models/nope", 404),  # FastAPI's route
        ("GET", "/no/such/path", 404),  # FastAPI's own 404
    ],
)
def test_every_error_has_one_shape_with_the_request_id(
    live_server: str, method: str, path: str, status: int
) -> None:
    response = requests.request(
        method, f"{live_server}{path}", data=b"{}", headers={"X-Request-ID": "edge-7"}, timeout=10
    )
    assert response.status_code == status, response.text
    assert response.json().keys() == {"error", "request_id"} and response.json()["error"]
    assert response.json()["request_id"] == response.headers["X-Request-ID"] == "edge-7"
