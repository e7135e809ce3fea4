"""The one HTTP edge, without a server: the error body, auth, body limit, content type and the V1 answer."""

from __future__ import annotations

import asyncio

import numpy as np
import orjson
import pytest

from models.base import OutputSpec
from service.http.auth import require_api_key
from service.http.errors import ClientError, error_body, send_error
from service.http.middleware import check_declared, read_body
from service.http.predict import PredictRoute
from service.http.v1_answer import PredictResponse, V1Envelope, encode_predictions
from service.http.v2 import V2InferRoute


def scope(**headers: str) -> dict:
    return {"headers": [(k.replace("_", "-").encode(), v.encode()) for k, v in headers.items()]}


def test_error_body_carries_the_request_id_and_survives_lone_surrogates() -> None:
    assert orjson.loads(error_body("bad", "r-1")) == {"error": "bad", "request_id": "r-1"}
    assert orjson.loads(error_body("bad", None)) == {"error": "bad"}
    assert orjson.loads(error_body("name \ud800", "r")).keys() == {"error", "request_id"}


def test_send_error_echoes_the_request_id_header() -> None:
    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    asyncio.run(send_error(send, 404, "nope", "abc", [(b"allow", b"GET")]))
    headers = dict(sent[0]["headers"])
    assert sent[0]["status"] == 404 and headers[b"x-request-id"] == b"abc" and headers[b"allow"] == b"GET"
    assert orjson.loads(sent[1]["body"]) == {"error": "nope", "request_id": "abc"}


@pytest.mark.parametrize(
    ("authorization", "ok"),
    [
        (None, False),
        ("Bearer k3y", True),
        ("bearer  k3y", True),
        ("Bearer nope", False),
        ("Basic k3y", False),
    ],
)
def test_one_bearer_check(authorization: str | None, ok: bool) -> None:
    request = scope(authorization=authorization) if authorization else scope()
    require_api_key(request, None)  # no key configured: everything passes
    if ok:
        require_api_key(request, b"k3y")
        return
    with pytest.raises(ClientError) as info:
        require_api_key(request, b"k3y")
    assert info.value.status == 401 and (b"www-authenticate", b"Bearer") in info.value.headers


@pytest.mark.parametrize("length", ["101", "9" * 5000])
def test_declared_length_over_the_limit_is_413(length: str) -> None:
    with pytest.raises(ClientError) as info:
        check_declared(scope(content_length=length), 100)
    assert info.value.status == 413 and "exceeds 100" in info.value.message
    check_declared(scope(content_length="100"), 100)


def test_streamed_body_over_the_limit_is_413() -> None:
    chunks = iter([{"type": "http.request", "body": b"x" * 60, "more_body": more} for more in (True, False)])

    async def receive() -> dict:
        return next(chunks)

    with pytest.raises(ClientError) as info:
        asyncio.run(read_body(scope(), receive, 100))
    assert info.value.status == 413


@pytest.mark.parametrize(
    ("route", "content_type", "ok"),
    [
        (PredictRoute, None, True),
        (PredictRoute, "application/json; charset=utf-8", True),
        (PredictRoute, "application/vnd.api+json", True),
        (PredictRoute, "application/octet-stream", False),
        (V2InferRoute, "application/octet-stream", True),
        (V2InferRoute, "Application/JSON", True),
        (V2InferRoute, "text/plain", False),
    ],
)
def test_one_content_type_rule_for_both_protocols(route: type, content_type: str | None, ok: bool) -> None:
    request = scope(content_type=content_type) if content_type else scope()
    if ok:
        route.check_content_type(route, request)
        return
    with pytest.raises(ClientError) as info:
        route.check_content_type(route, request)
    assert info.value.status == 415 and "application/json" in info.value.message


def test_the_encoded_v1_answer_validates_against_its_documented_schema() -> None:
    probabilities = np.array([[0.1, 0.9], [0.7, 0.3]], dtype=np.float32)
    body = V1Envelope('m"odel', "2").wrap(encode_predictions(probabilities, OutputSpec(labels=("no", "yes"))))
    answer = PredictResponse.model_validate_json(body)  # extra="forbid": a renamed field fails here
    assert answer.model == 'm"odel' and answer.model_version == "2"
    assert [p.label for p in answer.predictions] == ["yes", "no"]
    assert answer.predictions[1].probabilities == pytest.approx([0.7, 0.3])
    assert answer.model_dump(mode="json") == orjson.loads(body)
