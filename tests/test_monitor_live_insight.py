"""Model insight against a real hookserve: a poisoned request's NaN origin tied to its request id
(counted once at the block where it starts, logged under its id, answered 5xx with the id; the requests
batched with it succeed), and the live fp32 precision shadow of a bf16 model."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from benchmarks.metrics_text import samples, sum_samples
from benchmarks.servers import ServerProcess
from tests.fixtures.nan_model import HEALTHY, ORIGIN_BLOCK, POISONED

pytestmark = pytest.mark.slow

MODULES = ["blocks.0", "blocks.1", "blocks.2", "head"]


def config() -> dict:
    return {
        "server": {"api_servers": 1, "request_timeout_s": 20},
        "models": [
            {
                "name": "nan-blocks",
                "source": "tests.fixtures.nan_model:build",
                "max_batch_size": 16,
                "batch_timeout_ms": 200,  # concurrent requests share a batch
                "monitoring": {"drift": {"enabled": False}},
            },
            {
                "name": "digits-bf16",
                "source": "digits-cnn",
                "precision": "bf16",
                "min_precision_agreement": 0.9,
                "torch_threads": 1,
                # every batch armed and shadowed: the test sees the shadow after a few requests
                "monitoring": {
                    "guard_every": 1,
                    "stats_every": 1,
                    "shadow": {"every": 1, "min_instances": 1},
                },
            },
        ],
    }


@pytest.fixture(scope="module")
def server(server_factory) -> ServerProcess:
    return server_factory(config())


def post(
    server: ServerProcess, model: str, instances: list, request_id: str | None = None
) -> requests.Response:
    headers = {"X-Request-ID": request_id} if request_id else {}
    return requests.post(
        f"{server.base_url}/v1/models/{model}:predict",
        json={"instances": instances},
        headers=headers,
        timeout=30,
    )


def metrics(server: ServerProcess) -> str:
    return requests.get(f"{server.base_url}/metrics", timeout=10).text


def test_origin_is_exported_at_zero_for_every_monitored_block(server: ServerProcess) -> None:
    text = metrics(server)
    for module in MODULES:
        assert samples(text, "hookserve_nonfinite_origin_total", model="nan-blocks", module=module), module


def test_a_poisoned_request_is_tied_to_its_origin_and_its_request_id(server: ServerProcess) -> None:
    before = metrics(server)
    ids = [f"insight-{i}" for i in range(6)]
    with ThreadPoolExecutor(max_workers=6) as pool:
        futures = [
            pool.submit(post, server, "nan-blocks", [POISONED if i == 2 else HEALTHY], request_id)
            for i, request_id in enumerate(ids)
        ]
        responses = [f.result() for f in futures]
    assert [r.status_code for r in responses] == [200, 200, 500, 200, 200, 200]
    poisoned = responses[2]
    assert poisoned.json()["request_id"] == "insight-2" and poisoned.headers["X-Request-ID"] == "insight-2"
    assert "NaN" not in poisoned.text and "not finite" in poisoned.json()["error"]
    assert all(r.headers["X-Request-ID"] == i for r, i in zip(responses, ids, strict=True))

    after = metrics(server)

    def origin(text: str, module: str) -> float:
        return sum_samples(text, "hookserve_nonfinite_origin_total", model="nan-blocks", module=module)

    assert origin(after, ORIGIN_BLOCK) - origin(before, ORIGIN_BLOCK) == 1.0  # once, at the block
    for module in MODULES:
        if module != ORIGIN_BLOCK:
            assert origin(after, module) == 0.0, module  # never for the healthy requests
    lines = [line for line in server.log().splitlines() if "insight-" in line and "non-finite" in line]
    assert len(lines) == 1, lines
    assert "insight-2" in lines[0] and "nan-blocks" in lines[0] and f"'{ORIGIN_BLOCK}'" in lines[0]


def test_a_generated_request_id_is_in_the_error_body_and_the_header(server: ServerProcess) -> None:
    response = post(server, "nan-blocks", [POISONED])
    assert response.status_code == 500
    request_id = response.json()["request_id"]
    assert request_id and response.headers["X-Request-ID"] == request_id
    assert any(request_id in line and ORIGIN_BLOCK in line for line in server.log().splitlines())


def test_the_bf16_model_is_shadowed_in_fp32_live(server: ServerProcess) -> None:
    from models.datasets import load_dataset
    from models.registry import get_card

    digits = load_dataset(get_card("digits-cnn").dataset).test_x[:20].tolist()  # held-out digits
    for i in range(5):
        assert post(server, "digits-bf16", digits[4 * i : 4 * i + 4]).status_code == 200
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        text = metrics(server)
        if sum_samples(text, "hookserve_shadow_batches_total", model="digits-bf16") >= 2:
            break
        time.sleep(0.2)
    assert sum_samples(text, "hookserve_shadow_batches_total", model="digits-bf16") >= 2
    agreement = samples(text, "hookserve_shadow_top1_agreement", model="digits-bf16")
    assert len(agreement) == 1 and 0.9 <= agreement[0].value <= 1.0
    diffs = {
        s.labels["module"]: s.value
        for s in samples(text, "hookserve_shadow_max_abs_diff", model="digits-bf16")
    }
    assert {"features.conv1", "head.fc", "<output>"} <= diffs.keys() and all(v >= 0 for v in diffs.values())
    assert samples(text, "hookserve_precision_min_agreement", model="digits-bf16")[0].value == 0.9
    # fp32 models have no shadow: agreement 1 by definition, so the alert finds a series.
    assert samples(text, "hookserve_shadow_top1_agreement", model="nan-blocks")[0].value == 1.0
