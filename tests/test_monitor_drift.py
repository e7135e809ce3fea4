"""Drift: PSI near 0 on reference-like traffic, high on shifted traffic; references survive a round
trip and are refused for other weights."""

from __future__ import annotations

import itertools
import logging
from pathlib import Path

import pytest
import torch
from prometheus_client import REGISTRY
from torch import nn

from models.registry import create_model
from service.monitoring import ModelMonitor, MonitorConfig
from service.monitoring.calibrate import batched, capture_reference, dataset_inputs
from service.monitoring.drift import DriftTracker, Reference, build_reference, default_reference_path

_names = itertools.count()
CONFIG = MonitorConfig.model_validate(
    {"guard_every": 1, "stats_every": 1, "publish_interval_s": 0, "drift": {"window_batches": 8}}
)


@pytest.fixture(scope="module")
def digits_cnn() -> tuple[nn.Module, Reference]:
    """digits-cnn (seeded random weights: drift needs no training) and its reference from the even rows
    of the held-out split."""
    torch.manual_seed(0)
    model = create_model("digits-cnn").eval()
    reference = capture_reference(model, "digits-cnn", batched(dataset_inputs("digits", half=0), 64), CONFIG)
    return model, reference


def live_psi(model: nn.Module, reference: Reference, data: torch.Tensor) -> dict[str, float]:
    """Serve 8 batches of 32 instances drawn from ``data``; the published PSI per module."""
    name = f"drift-{next(_names)}"
    monitor = ModelMonitor(model, name, CONFIG, reference=reference)
    monitor.attach()
    generator = torch.Generator().manual_seed(1)
    with torch.inference_mode():
        for _ in range(8):
            with monitor.observe_batch():
                model(data[torch.randint(0, len(data), (32,), generator=generator)])
    monitor.detach()
    return {
        module: REGISTRY.get_sample_value(
            "hookserve_activation_drift_psi", {"model": name, "version": "1", "module": module}
        )
        for module in monitor.module_names
    }


def test_psi_is_near_zero_on_other_held_out_samples(digits_cnn: tuple[nn.Module, Reference]) -> None:
    model, reference = digits_cnn
    psi = live_psi(model, reference, dataset_inputs("digits", half=1))
    assert set(psi) == set(reference.modules)
    assert all(value < 0.1 for value in psi.values()), psi


def test_psi_is_high_on_rescaled_inputs(digits_cnn: tuple[nn.Module, Reference]) -> None:
    model, reference = digits_cnn
    psi = live_psi(model, reference, dataset_inputs("digits", half=1) * 0.5)  # e.g. a 0..8 pixel scale
    assert all(value > 0.25 for value in psi.values()), psi


def test_psi_localizes_input_noise_at_the_first_layer(digits_cnn: tuple[nn.Module, Reference]) -> None:
    model, reference = digits_cnn
    held_out = dataset_inputs("digits", half=1)
    noisy = held_out + 2.0 * torch.randn(held_out.shape, generator=torch.Generator().manual_seed(2))
    psi = live_psi(model, reference, noisy)
    assert psi["features.conv1"] > 0.25, psi


def test_psi_waits_for_a_full_window() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8)).eval()
    reference = capture_reference(model, "window", [torch.randn(256, 4)], CONFIG)
    config = CONFIG.model_copy(update={"drift": CONFIG.drift.model_copy(update={"window_batches": 3})})
    monitor = ModelMonitor(model, "drift-window", config, reference=reference)
    monitor.attach()
    seen = []
    with torch.inference_mode():
        for _ in range(4):
            with monitor.observe_batch():
                model(torch.randn(64, 4))
            seen.append(
                REGISTRY.get_sample_value(
                    "hookserve_activation_drift_psi", {"model": "drift-window", "version": "1", "module": "0"}
                )
            )
    monitor.detach()
    assert seen[:2] == [None, None]
    assert seen[2] is not None and seen[3] is not None


def test_tracker_psi_on_a_known_shift() -> None:
    generator = torch.Generator().manual_seed(0)
    reference = build_reference({"m": torch.randn(200_000, generator=generator)}, bins=10, metadata={})
    for shift, low, high in [(0.0, 0.0, 0.01), (1.0, 0.6, 1.6)]:
        tracker = DriftTracker(reference, ["m"], window=4, device=torch.device("cpu"))
        for _ in range(4):
            tracker.update([torch.randn(4096, generator=generator) + shift])
        assert low <= tracker.psi().item() <= high, shift


def test_relu_zeros_get_their_own_bin() -> None:
    values = torch.relu(torch.randn(10_000, generator=torch.Generator().manual_seed(0)))
    reference = build_reference({"relu": values}, bins=10, metadata={})
    edges, proportions = reference.edges["relu"], reference.proportions["relu"]
    zero_bin = int(torch.bucketize(torch.tensor(0.0), edges, right=True))
    assert proportions[zero_bin].item() == pytest.approx((values == 0).float().mean().item())
    assert proportions.sum().item() == pytest.approx(1.0)


def test_reference_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)).eval()
    reference = capture_reference(model, "roundtrip", [torch.randn(128, 4)], CONFIG)
    path = reference.save(tmp_path / "m.reference.safetensors")
    loaded = Reference.load(path)
    assert loaded.modules == reference.modules == ["0", "2"]
    for name in reference.modules:
        assert torch.equal(loaded.edges[name], reference.edges[name])
        assert torch.equal(loaded.proportions[name], reference.proportions[name])
    assert loaded.metadata["weights_sha256"] == reference.metadata["weights_sha256"]


def test_reference_from_other_weights_is_refused(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8)).eval()
    path = capture_reference(model, "stale", [torch.randn(64, 4)], CONFIG).save(tmp_path / "r.safetensors")
    with torch.no_grad():
        model[0].weight.add_(0.1)  # retrained since the reference was captured
    config = CONFIG.model_copy(update={"drift": CONFIG.drift.model_copy(update={"reference": path})})
    with caplog.at_level(logging.WARNING):
        monitor = ModelMonitor(model, "drift-stale", config)
        monitor.attach()
    monitor.detach()
    assert monitor.drift_modules == []
    assert "other weights" in caplog.text


def test_reference_lives_next_to_the_checkpoint() -> None:
    assert default_reference_path("x", "/ckpt/digits-cnn.safetensors") == Path(
        "/ckpt/digits-cnn.reference.safetensors"
    )
    assert default_reference_path("digits-cnn").name == "digits-cnn.reference.safetensors"
    assert default_reference_path("digits-cnn").parent.name == "checkpoints"


@pytest.mark.parametrize("model_name", ["digits-cnn", "tabular-mlp", "digits-transformer", "resnet-bench"])
def test_shipped_references_match_their_weights_and_cover_the_default_modules(model_name: str) -> None:
    from models.checkpoint import default_checkpoint_path, load_pretrained
    from models.registry import get_card

    if not get_card(model_name).synthetic_weights and not default_checkpoint_path(model_name).is_file():
        pytest.skip(f"no trained checkpoint for {model_name}")
    model = load_pretrained(model_name)
    monitor = ModelMonitor(model, model_name, MonitorConfig())
    monitor.attach()
    monitor.detach()
    assert monitor.drift_modules == monitor.module_names
