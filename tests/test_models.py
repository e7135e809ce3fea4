"""The shipped models: both forward branches, per-mode dropout/BatchNorm, naming, resnet-bench's cost."""

from __future__ import annotations

import time

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from models.base import ServableModel, TrainingOutput
from models.datasets import load_dataset
from models.registry import create_model, get_card

MODELS = ["digits-cnn", "tabular-mlp", "digits-transformer", "resnet-bench"]
MODELS_WITH_DROPOUT = ["digits-cnn", "tabular-mlp", "digits-transformer"]
BATCH = 4


def build(name: str) -> ServableModel:
    torch.manual_seed(0)
    return create_model(name)


def targets_for(model: ServableModel, batch: int = BATCH) -> torch.Tensor:
    return torch.arange(batch) % len(model.output_spec.labels)


@pytest.mark.parametrize("name", MODELS)
def test_training_branch_returns_logits_of_shape_batch_by_labels(name: str) -> None:
    model = build(name).train()
    out = model(model.example_input(BATCH), targets_for(model))
    assert isinstance(out, TrainingOutput)
    assert out.logits.shape == (BATCH, len(model.output_spec.labels))


@pytest.mark.parametrize("name", MODELS)
def test_training_loss_is_finite_and_reaches_every_parameter(name: str) -> None:
    model = build(name).train()
    loss = model(model.example_input(BATCH), targets_for(model)).loss
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert missing == []
    assert any(p.grad.abs().sum() > 0 for p in model.parameters())


@pytest.mark.parametrize("name", MODELS)
def test_training_branch_without_targets_has_no_loss(name: str) -> None:
    model = build(name).train()
    assert model(model.example_input(BATCH)).loss is None


@pytest.mark.parametrize("name", MODELS)
def test_inference_branch_returns_float32_probabilities(name: str) -> None:
    model = build(name).eval()
    with torch.inference_mode():
        probs = model(model.example_input(BATCH))
    assert probs.dtype == torch.float32
    assert probs.shape == (BATCH, len(model.output_spec.labels))
    assert ((probs >= 0) & (probs <= 1)).all()
    torch.testing.assert_close(probs.sum(dim=-1), torch.ones(BATCH))


@pytest.mark.parametrize("name", MODELS)
def test_inference_branch_is_deterministic_across_calls(name: str) -> None:
    model = build(name).eval()
    x = model.example_input(BATCH)
    with torch.inference_mode():
        assert torch.equal(model(x), model(x))


@pytest.mark.parametrize("name", MODELS)
def test_training_mode_output_differs_from_inference_output(name: str) -> None:
    model = build(name)
    x = model.example_input(BATCH)
    with torch.no_grad():
        train_probs = torch.softmax(model.train()(x).logits, dim=-1)
        eval_probs = model.eval()(x)
    assert not torch.allclose(train_probs, eval_probs)


@pytest.mark.parametrize("name", MODELS_WITH_DROPOUT)
def test_dropout_makes_two_training_calls_differ(name: str) -> None:
    model = build(name).train()
    x = model.example_input(BATCH)
    with torch.no_grad():
        assert not torch.equal(model(x).logits, model(x).logits)


@pytest.mark.parametrize("name", MODELS)
def test_inference_branch_accepts_a_single_instance(name: str) -> None:
    model = build(name).eval()
    with torch.inference_mode():
        assert model(model.example_input(1)).shape == (1, len(model.output_spec.labels))


@pytest.mark.parametrize(
    ("name", "module"),
    [
        ("digits-cnn", "features.conv1"),
        ("tabular-mlp", "blocks.0.fc"),
        ("digits-transformer", "blocks.0.attn"),
        ("resnet-bench", "layer1.0.conv1"),
    ],
)
def test_modules_have_meaningful_names_for_metric_labels(name: str, module: str) -> None:
    assert module in dict(build(name).named_modules())


@pytest.mark.parametrize("name", ["digits-cnn", "digits-transformer"])
def test_digit_models_accept_the_raw_dataset_instances(name: str) -> None:
    data = load_dataset("digits")
    model = build(name)
    assert tuple(data.test_x.shape[1:]) == model.input_spec.shape
    assert data.test_x.max() <= model.input_spec.max_value


def test_tabular_mlp_fits_standardization_on_the_training_split() -> None:
    data = load_dataset("breast_cancer")
    model = build("tabular-mlp")
    model.fit_preprocessing(data.train_x)
    torch.testing.assert_close(model.feature_mean, data.train_x.mean(dim=0))
    assert {"feature_mean", "feature_std"} <= set(model.state_dict())


def test_dataset_split_is_stratified_and_disjoint() -> None:
    data = load_dataset("digits")
    assert len(data.test_x) == 360 and len(data.train_x) == 1797 - 360
    assert torch.bincount(data.test_y).min() >= 35  # every class held out in proportion (~36 each)
    train_rows = {tuple(row.tolist()) for row in data.train_x.flatten(1)}
    overlap = sum(tuple(row.tolist()) in train_rows for row in data.test_x.flatten(1))
    assert overlap < 5  # a few digits are pixel-identical duplicates in the source data


def test_unknown_dataset_is_refused_with_the_known_names() -> None:
    with pytest.raises(ValueError, match="known datasets: digits, breast_cancer"):
        load_dataset("mnist")


def test_resnet_bench_flops_per_image_are_in_the_stated_range() -> None:
    model = build("resnet-bench").eval()
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model(model.example_input(2))
    gflop_per_image = counter.get_total_flops() / 2 / 1e9
    assert 0.3 <= gflop_per_image <= 1.0
    assert gflop_per_image == pytest.approx(get_card("resnet-bench").extra["gflop_per_image"], rel=0.01)


def test_resnet_bench_weights_come_from_its_seed_not_the_global_rng() -> None:
    torch.manual_seed(1)
    first = create_model("resnet-bench").state_dict()
    torch.manual_seed(2)
    rng_before = torch.get_rng_state()
    second = create_model("resnet-bench").state_dict()
    assert torch.equal(rng_before, torch.get_rng_state())
    assert all(torch.equal(first[key], second[key]) for key in first)


def test_resnet_bench_seed_override_changes_the_weights() -> None:
    a, b = create_model("resnet-bench", seed=0), create_model("resnet-bench", seed=1)
    assert not torch.equal(a.fc.weight, b.fc.weight)


def test_resnet_bench_is_labelled_synthetic_with_ten_labels() -> None:
    assert get_card("resnet-bench").synthetic_weights
    assert len(build("resnet-bench").output_spec.labels) == 10


def test_resnet_bench_builds_in_under_two_seconds() -> None:
    started = time.perf_counter()
    create_model("resnet-bench")
    assert time.perf_counter() - started < 2.0


def test_resnet_bench_width_and_depth_are_configurable() -> None:
    small = create_model("resnet-bench", width=8, depth=1)
    assert small.layer4[0].conv1.out_channels == 64
    assert len(small.layer1) == 1
    n_params = [sum(p.numel() for p in model.parameters()) for model in (small, build("resnet-bench"))]
    assert n_params[0] < n_params[1]


def test_resnet_bench_eval_activations_stay_in_a_realistic_range() -> None:
    model = build("resnet-bench").eval()
    captured: list[torch.Tensor] = []
    model.layer4.register_forward_hook(lambda module, args, out: captured.append(out))
    with torch.inference_mode():
        probs = model(model.example_input(4, seed=3))
    assert 0.05 < captured[0].std() < 20  # calibrated BatchNorm: no vanishing or exploding activations
    assert probs.max() < 0.99  # random weights must not produce saturated predictions
