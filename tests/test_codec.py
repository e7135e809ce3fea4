"""Request validation derived from a model's input spec: what passes, and what each error says."""

from __future__ import annotations

import json

import numpy as np
import orjson
import pytest
from pydantic import ValidationError

from models.base import InputSpec, OutputSpec
from service.http.codec import decode_v1
from service.http.errors import ClientError
from service.http.schemas import build_request_model
from service.http.v1_answer import encode_predictions

SPEC = InputSpec(shape=(2, 3), min_value=0.0, max_value=16.0)
Request = build_request_model("digits-cnn", SPEC, max_instances=4)
GOOD = [[0, 1, 2], [3, 4, 16]]


def error_of(body: dict) -> str:
    with pytest.raises(ValidationError) as info:
        Request.model_validate(body)
    return str(info.value)


def test_valid_instances_become_one_float32_array() -> None:
    parsed = Request.model_validate({"instances": [GOOD, GOOD]})
    assert parsed.instances.dtype == np.float32
    assert parsed.instances.shape == (2, 2, 3)


@pytest.mark.parametrize(
    ("instances", "message"),
    [
        ([], "1 to 4 items, got 0"),
        ([GOOD] * 5, "1 to 4 items, got 5"),
        ([GOOD, [[0, 1], [2, 3]]], "instance 1: expected shape [2, 3], got [2, 2]"),
        ([GOOD, [[0, 1, 2], [3]]], "instance 1: expected shape [2, 3], got a ragged array"),
        ([[[0, 1, "2"], [3, 4, 5]]], "numbers only, got strings"),
        ([GOOD, [[0, 1, None], [3, 4, 5]]], "instance 1: values must be numbers"),
        ([GOOD, [[0, 1, float("nan")], [3, 4, 5]]], "instance 1: NaN or infinite"),
        ([[[0, 1, float("inf")], [3, 4, 5]]], "instance 0: NaN or infinite"),
        ([GOOD, [[0, 1, 17], [3, 4, 5]]], "instance 1: values must be <= 16"),
        ([[[0, -1, 2], [3, 4, 5]]], "instance 0: values must be >= 0"),
        ("not a list", "JSON array"),
    ],
)
def test_bad_instances_are_rejected_with_a_message_naming_the_problem(
    instances: object, message: str
) -> None:
    assert message in error_of({"instances": instances})


@pytest.mark.parametrize(
    ("instances", "message"),
    [
        ([GOOD, [[0, 1], [2, 3]]], "instance 1: expected shape [2, 3], got [2, 2]"),
        ([[[0, 1, "2"], [3, 4, 5]]], "numbers only, got strings"),
        ([GOOD, [[0, 1, 17], [3, 4, 5]]], "instance 1: values must be <= 16"),
    ],
)
def test_the_route_decoder_and_the_documented_schema_agree(instances: object, message: str) -> None:
    assert message in error_of({"instances": instances})
    assert message in decode_error(json.dumps({"instances": instances}).encode())


def decode_error(body: bytes) -> str:
    with pytest.raises(ClientError) as info:
        decode_v1(body, SPEC, max_instances=4)
    assert info.value.status == 422
    return info.value.message


def test_the_route_decoder_returns_one_contiguous_float32_array() -> None:
    array = decode_v1(json.dumps({"instances": [GOOD, GOOD]}).encode(), SPEC, max_instances=4)
    assert array.dtype == np.float32 and array.shape == (2, 2, 3) and array.flags.c_contiguous
    np.testing.assert_array_equal(array[1], np.array(GOOD, dtype=np.float32))


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"this is not json", "not valid JSON"),
        (b'{"instances": [', "not valid JSON"),
        (b"[1, 2, 3]", "JSON object"),
        (b'{"inputs": []}', "instances: field required"),
        (b'{"instances": [[[0, 1, 2], [3, 4, 5]]], "extra": 1}', "unknown field(s) ['extra']"),
        (b'{"instances": [[[0, 1, NaN], [3, 4, 5]]]}', "instance 0: NaN or infinite"),
        (b'{"instances": [[[0, 1, Infinity], [3, 4, 5]]]}', "instance 0: NaN or infinite"),
    ],
)
def test_the_route_decoder_names_what_is_wrong_with_a_body(body: bytes, message: str) -> None:
    assert message in decode_error(body)


def test_unknown_fields_are_rejected() -> None:
    assert "extra" in error_of({"instances": [GOOD], "inputs": 1}).lower()


def test_openapi_schema_documents_the_exact_nested_shape() -> None:
    schema = Request.model_json_schema()["properties"]["instances"]
    assert schema["maxItems"] == 4
    row = schema["items"]
    assert (row["minItems"], row["items"]["minItems"]) == (2, 3)
    assert row["items"]["items"] == {"type": "number", "minimum": 0.0, "maximum": 16.0}


def test_predictions_carry_label_score_and_probabilities_in_order() -> None:
    probabilities = np.array([[0.1, 0.9], [0.7, 0.3]], dtype=np.float32)
    predictions = orjson.loads(encode_predictions(probabilities, OutputSpec(labels=("no", "yes"))))
    assert [p["label"] for p in predictions] == ["yes", "no"]
    assert predictions[0]["score"] == pytest.approx(0.9)
    assert predictions[1]["probabilities"] == pytest.approx([0.7, 0.3])
