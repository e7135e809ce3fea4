"""Property: whatever bytes a client sends, the decoders of both protocols answer a valid array or a 4xx.

Bodies are generated as JSON *text*, so that what a Python value cannot express is in it too: nesting
thousands of levels deep, numbers past float64 (``1e400``) and int64, ``-0``, ``NaN``, lone surrogates
and NUL as escapes, a byte-order mark, duplicate keys; and for the V2 binary extension, header lengths
and ``binary_data_size`` values at and past the edges. Any other exception (a 5xx on the wire) fails.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, example, find, given, settings
from hypothesis import strategies as st

from models.base import InputSpec
from service.http.codec import decode_v1, nesting_depth
from service.http.errors import ClientError
from service.http.v2_codec import decode_request

SPEC = InputSpec(shape=(2, 3), min_value=0.0, max_value=16.0)
MAX_INSTANCES = 4
SETTINGS = settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)

NUMBERS = st.one_of(
    st.sampled_from(
        [
            "0",
            "-0",
            "1",
            "16",
            "17",
            "-1",
            "1e400",
            "-1e400",
            "1e-400",
            "NaN",
            "Infinity",
            "-Infinity",
            "9223372036854775808",
            "-9223372036854775809",
            "18446744073709551616",
            "1" + "0" * 400,
            "0.5e1",
            "1E2",
            "3.4028236e38",
        ]
    ),
    st.integers(min_value=-(10**40), max_value=10**40).map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
)
STRINGS = st.one_of(
    st.text(max_size=8).map(json.dumps),
    st.sampled_from(
        ['"\\ud800"', '"\\udfff\\ud800"', '"\\u0000"', '"\ufeff"', '"[[[["', '"]]]]"', '"\\"[\\\\"', '"\\x"']
    ),
)
SCALARS = st.one_of(NUMBERS, STRINGS, st.sampled_from(["true", "false", "null"]))


def _array(items: list[str]) -> str:
    return "[" + ",".join(items) + "]"


def _object(pairs: list[tuple[str, str]]) -> str:
    return "{" + ",".join(f"{key}:{value}" for key, value in pairs) + "}"


KEYS = st.one_of(STRINGS, st.sampled_from(['"instances"', '"inputs"', '"data"', '"shape"', '"parameters"']))
JSON_TEXT = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4).map(_array),
        st.lists(st.tuples(KEYS, inner), max_size=4).map(_object),
    ),
    max_leaves=24,
)


@st.composite
def deep(draw: st.DrawFn) -> str:
    """An array nested from a few to 100,000 levels, closed or not, around a scalar."""
    depth = draw(st.one_of(st.integers(0, 40), st.sampled_from([1_023, 1_024, 1_025, 1_100, 5_000, 100_000])))
    closed = draw(st.booleans())
    return "[" * depth + draw(SCALARS) + ("]" * depth if closed else "")


@st.composite
def instance(draw: st.DrawFn) -> str:
    """Near-valid instances: the right shape, mostly valid numbers, now and then something else."""
    rows = draw(st.integers(1, 3))
    row = st.lists(st.one_of(st.integers(0, 16).map(str), NUMBERS, JSON_TEXT), min_size=2, max_size=4)
    return _array([_array(draw(row)) for _ in range(rows)])


VALID_INSTANCE = st.lists(
    st.lists(st.floats(0, 16, allow_nan=False).map(repr), min_size=3, max_size=3).map(_array),
    min_size=2,
    max_size=2,
).map(_array)
INSTANCES = st.lists(st.one_of(VALID_INSTANCE, instance(), deep(), JSON_TEXT), min_size=0, max_size=6)


def _maybe_bom(text: str, bom: bool) -> bytes:
    return (b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8", "surrogatepass")


@st.composite
def v1_body(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["document", "duplicate", "deep", "any", "bytes"]))
    if kind == "bytes":
        return draw(st.binary(max_size=64))
    if kind == "any":
        text = draw(JSON_TEXT)
    elif kind == "deep":
        text = '{"instances": ' + draw(deep()) + "}"
    else:
        instances = '"instances": ' + _array(draw(INSTANCES))
        extra = ', "instances": ' + _array(draw(INSTANCES)) if kind == "duplicate" else ""
        text = "{" + instances + extra + "}"
    return _maybe_bom(text, draw(st.booleans()))


DATATYPES = st.sampled_from(["FP32", "FP64", "FP16", "INT8", "UINT64", "BOOL", "BYTES", "fp32", "1"])
SHAPES = st.one_of(
    st.lists(st.integers(-2, 6), min_size=3, max_size=3).map(lambda s: [s[0], 2, 3]),
    st.sampled_from(
        ["[1, 2, 3]", "[0, 2, 3]", "[5, 2, 3]", "[1, 3, 2]", "[]", "[1.0, 2, 3]", "[true, 2, 3]"]
    ),
    st.sampled_from(["[1" + "0" * 40 + ", 2, 3]", '"1,2,3"', "null", "[-1, 2, 3]"]),
)


def _shape_text(shape: list[int] | str) -> str:
    return shape if isinstance(shape, str) else json.dumps(shape)


@st.composite
def v2_tensor(
    draw: st.DrawFn, binary_size: str | None, n: int | None = None, datatype: str | None = None
) -> str:
    """One V2 input tensor: JSON ``data`` (flat, nested or odd) or a ``binary_data_size``.

    Given ``n``, the shape is mostly ``[n, 2, 3]`` and the data mostly that many valid values, so that
    valid requests are generated too, not only refusals.
    """
    coherent = n is not None and draw(st.integers(0, 3)) > 0
    pairs = [
        ('"name"', draw(st.sampled_from(['"input"'] * 3 + ['"x"', "1", '"\\ud800"']))),
        ('"shape"', f"[{n}, 2, 3]" if coherent else _shape_text(draw(SHAPES))),
        ('"datatype"', json.dumps(datatype or draw(DATATYPES))),
    ]
    if binary_size is not None:
        pairs.append(('"parameters"', _object([('"binary_data_size"', binary_size)])))
    else:
        count = 6 * n if coherent else draw(st.integers(0, 14))
        value = st.integers(0, 16).map(str) if draw(st.booleans()) else st.integers(0, 16).map(str) | NUMBERS
        values = _array(draw(st.lists(value, min_size=count, max_size=count)))
        pick = draw(st.integers(0, 9))
        odd = [st.sampled_from(['"abc"', "null", "[[1, 2], [3]]"]), deep(), JSON_TEXT][pick % 3]
        pairs.append(('"data"', values if pick < 7 else draw(odd)))
    if draw(st.integers(0, 3)) == 0:
        pairs.append(draw(st.tuples(KEYS, JSON_TEXT)))
    return _object(pairs)


@st.composite
def v2_header(draw: st.DrawFn, binary_size: str | None = None, **tensor: Any) -> str:
    tensors = [draw(v2_tensor(binary_size, **tensor)), *draw(st.lists(v2_tensor(None), max_size=1))]
    pairs = [('"inputs"', _array(tensors))]
    if draw(st.booleans()):
        pairs.append(('"id"', draw(STRINGS | NUMBERS)))
    if draw(st.booleans()):
        pairs.append(
            ('"parameters"', draw(st.sampled_from(['{"binary_data_output": true}', "[1]"]) | JSON_TEXT))
        )
    if draw(st.booleans()):
        outputs = draw(st.sampled_from(['[{"name": "label"}]', '[{"name": "x"}]', "[]", '"label"', "[1]"]))
        pairs.append(('"outputs"', outputs))
    return _object(pairs)


@st.composite
def v2_json_body(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["document", "deep", "any", "bytes"]))
    if kind == "bytes":
        return draw(st.binary(max_size=64))
    n, datatype = draw(st.integers(0, 5)), draw(st.sampled_from(["FP32", "FP32"]) | DATATYPES)
    text = {
        "document": lambda: draw(v2_header(n=n, datatype=datatype)),
        "deep": lambda: '{"inputs": ' + draw(deep()) + "}",
    }.get(kind, lambda: draw(JSON_TEXT))()
    return _maybe_bom(text, draw(st.booleans()))


ITEMSIZES = {"FP32": 4, "FP64": 8, "FP16": 2, "INT8": 1, "UINT64": 8, "BOOL": 1, "BYTES": 4}


@st.composite
def v2_binary_request(draw: st.DrawFn) -> tuple[bytes, bytes]:
    """A header, a binary section, and an ``Inference-Header-Content-Length`` at or past the edges."""
    datatype = draw(st.sampled_from(sorted(ITEMSIZES)))
    dtype = np.dtype(datatype.lower().replace("fp", "float").replace("bytes", "int32"))
    n = draw(st.integers(0, 5))
    right = n * 6 * ITEMSIZES[datatype]
    size = draw(
        st.sampled_from(
            [str(right)] * 4 + [str(right + 1), str(max(right - 1, 0)), "0", "-4", "1" + "0" * 30]
        )
        | st.sampled_from(['"24"', "24.0", "true", "null", "[24]"])
    )
    header = draw(v2_header(size, n=n, datatype=datatype)).encode("utf-8", "surrogatepass")
    values = np.full(n * 6, draw(st.integers(0, 17)), dtype=dtype).tobytes()
    blob = draw(st.sampled_from([values, values[:-1], values + b"\0"]) | st.binary(max_size=right + 8))
    body = header + blob
    length = draw(
        st.sampled_from(
            [str(len(header))] * 6
            + ["0", str(len(body)), str(len(body) + 1), "-1", "abc", " 12", "9" * 5000, ""]
        )
        | st.integers(0, len(body)).map(str)
    )
    return body, length.encode()


def assert_valid_array(array: np.ndarray) -> None:
    assert isinstance(array, np.ndarray) and array.dtype == np.float32 and array.flags.c_contiguous
    assert 1 <= array.shape[0] <= MAX_INSTANCES and array.shape[1:] == SPEC.shape
    assert np.isfinite(array).all() and (array >= SPEC.min_value).all() and (array <= SPEC.max_value).all()


def assert_client_error(error: ClientError) -> None:
    assert 400 <= error.status < 500, (error.status, error.message)
    assert error.message


@SETTINGS
@given(v1_body())
@example(b'{"instances": ' + b"[" * 1_100 + b"]" * 1_100 + b"}")
@example(b'{"instances": ' + b"[" * 100_000 + b"}")
@example(b'{"instances": [[[0, 1, 2], [3, 4, 5]]], "instances": [[[0, 1, 1e400], [3, 4, 5]]]}')
def test_v1_decoder_answers_an_array_or_a_4xx(body: bytes) -> None:
    try:
        array = decode_v1(body, SPEC, MAX_INSTANCES)
    except ClientError as error:
        assert_client_error(error)
    else:
        assert_valid_array(array)


@SETTINGS
@given(v2_json_body())
@example(
    b'{"inputs": [{"name": "input", "shape": [1, 2, 3], "datatype": "FP32", "data": ' + b"[" * 1_100 + b"]}]}"
)
@example(
    b'{"id": "\\ud800", "inputs": [{"name": "input", "shape": [1, 2, 3], "datatype": "FP32", "data": [0]}]}'
)
def test_v2_json_decoder_answers_an_array_or_a_4xx(body: bytes) -> None:
    try:
        array, request = decode_request(body, None, SPEC, MAX_INSTANCES)
    except ClientError as error:
        assert_client_error(error)
    else:
        assert_valid_array(array)
        assert request.id is None or (isinstance(request.id, str) and request.id.encode() is not None)


@SETTINGS
@given(v2_binary_request())
def test_v2_binary_decoder_answers_an_array_or_a_4xx(request: tuple[bytes, bytes]) -> None:
    body, header_length = request
    try:
        array, _ = decode_request(body, header_length, SPEC, MAX_INSTANCES)
    except ClientError as error:
        assert_client_error(error)
    else:
        assert_valid_array(array)


def decodes(decode) -> bool:
    try:
        decode()
    except ClientError:
        return False
    return True


def test_the_generators_reach_valid_requests_too() -> None:
    """The properties would hold vacuously if every input were refused: each generator reaches valid ones."""
    search = settings(
        max_examples=2_000, deadline=None, suppress_health_check=list(HealthCheck), database=None
    )
    find(v1_body(), lambda body: decodes(lambda: decode_v1(body, SPEC, MAX_INSTANCES)), settings=search)
    find(
        v2_json_body(),
        lambda body: decodes(lambda: decode_request(body, None, SPEC, MAX_INSTANCES)),
        settings=search,
    )
    find(
        v2_binary_request(),
        lambda r: decodes(lambda: decode_request(r[0], r[1], SPEC, MAX_INSTANCES)),
        settings=search,
    )


@pytest.mark.parametrize("depth", [9, 1_100, 100_000])
def test_deep_bodies_are_refused_saying_so(depth: int) -> None:
    v1 = b'{"instances": ' + b"[" * depth + b"0" + b"]" * depth + b"}"
    v2 = (
        b'{"inputs": [{"name": "input", "shape": [1, 2, 3], "datatype": "FP32", "data": ' + v1[14:-1] + b"}]}"
    )
    for decode, status in (
        (lambda: decode_v1(v1, SPEC, MAX_INSTANCES), 422),
        (lambda: decode_request(v2, None, SPEC, MAX_INSTANCES), 400),
    ):
        with pytest.raises(ClientError) as info:
            decode()
        assert info.value.status == status and "nested" in info.value.message, info.value.message


def test_brackets_inside_strings_do_not_count_as_nesting() -> None:
    assert nesting_depth(b'{"id": "[[[[[[[[", "x": [[1]]}') == 3
    assert nesting_depth(b'{"id": "]]]]\\"]]]", "x": [[[[1]]]]}') == 5
    assert nesting_depth(b"[" * 50) == 50
