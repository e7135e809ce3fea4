"""Capture a drift reference: activation histograms of the monitored modules on a calibration set.

    python -m service.monitoring.calibrate digits-cnn                   # shipped model, held-out data
    python -m service.monitoring.calibrate resnet-bench                 # synthetic: example inputs
    python -m service.monitoring.calibrate pkg.mod:factory --data calib.npy --out w.reference.safetensors

Shipped models with a dataset calibrate on the even rows of its held-out split (the odd rows stay
unseen, to check that reference-like traffic scores PSI ~0), joined by the training split when the
held-out half is small (see ``MIN_CALIBRATION_ROWS``); a model without a dataset on seeded
``example_input`` batches; a user's model on an ``.npy`` array of raw instances ``(N, *input_shape)``.
The reference is written next to the checkpoint and records the weights' fingerprint, so the monitor
refuses it once the weights change.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from torch import nn

from service.monitoring.config import MonitorConfig
from service.monitoring.drift import Reference, build_reference, default_reference_path, weights_fingerprint
from service.monitoring.selection import select_modules
from service.monitoring.stats import first_tensor, take_subsample

logger = logging.getLogger(__name__)

SYNTHETIC_BATCHES = 16
# Below this many held-out rows, the training split joins the calibration set: a module with few values
# per row (a 2-class head) would otherwise get a reference so noisy that PSI reads ~(bins - 1) / values
# on unchanged traffic (breast cancer: 57 rows, 114 head values, PSI ~0.08 from noise alone).
MIN_CALIBRATION_ROWS = 100


def dataset_inputs(dataset: str, *, half: int = 0) -> torch.Tensor:
    """Rows ``half::2`` of ``dataset``'s held-out split: 0 calibrates, 1 is left for checking."""
    from models.datasets import load_dataset

    return load_dataset(dataset).test_x[half::2]


def dataset_calibration_inputs(dataset: str) -> torch.Tensor:
    """The even held-out rows, plus the training split when they are fewer than ``MIN_CALIBRATION_ROWS``."""
    from models.datasets import load_dataset

    held_out = dataset_inputs(dataset, half=0)
    if len(held_out) >= MIN_CALIBRATION_ROWS:
        return held_out
    return torch.cat([held_out, load_dataset(dataset).train_x])


def calibration_inputs(model_name: str, model: nn.Module, data: Path | None = None) -> torch.Tensor:
    """The raw calibration instances for ``model_name`` (see the module docstring for the rules)."""
    if data is not None:
        return torch.from_numpy(np.load(data, allow_pickle=False).astype(np.float32))
    from models.registry import get_card

    card = get_card(model_name)
    if card.dataset is not None:
        return dataset_calibration_inputs(card.dataset)
    batches = [model.example_input(8, seed=seed) for seed in range(SYNTHETIC_BATCHES)]
    return torch.cat(batches)


def batched(inputs: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
    yield from torch.split(inputs, batch_size)


def capture_reference(
    model: nn.Module,
    model_name: str,
    batches: Iterable[torch.Tensor],
    config: MonitorConfig | None = None,
) -> Reference:
    """Run ``batches`` through ``model`` (eval, inference mode) and build the reference of the modules
    ``config`` selects, from the same subsamples the live monitor takes."""
    config = config or MonitorConfig()
    selected = select_modules(model, config)
    values: dict[str, list[torch.Tensor]] = {name: [] for name, _ in selected}
    handles = [module.register_forward_hook(_collector(values[name], config)) for name, module in selected]
    device = next(iter(model.parameters()), torch.zeros(0)).device
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for batch in batches:
                model(batch.to(device))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    metadata = {
        "model": model_name,
        "weights_sha256": weights_fingerprint(model),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "sample_elements": str(config.sample_elements),
    }
    merged = {name: torch.cat(parts) for name, parts in values.items() if parts}
    return build_reference(merged, config.drift.bins, metadata)


def _collector(sink: list[torch.Tensor], config: MonitorConfig) -> Callable[..., None]:
    def hook(module: nn.Module, args: object, output: object) -> None:
        tensor = first_tensor(output)
        if tensor is not None and tensor.is_floating_point():
            sink.append(take_subsample(tensor, config.sample_elements).cpu())

    return hook


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", help="registered model name or 'package.module:factory'")
    parser.add_argument("--data", type=Path, help=".npy array of raw instances (N, *input_shape)")
    parser.add_argument("--checkpoint", type=Path, help="weights to load (default: the shipped checkpoint)")
    parser.add_argument(
        "--out", type=Path, help="output file (default: NAME.reference.safetensors beside it)"
    )
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--bins", type=int, default=MonitorConfig().drift.bins)
    parser.add_argument("--level", choices=["leaf", "block", "all"], default="block")
    parser.add_argument("--include", action="append", default=[], help="module glob (repeatable)")
    parser.add_argument("--exclude", action="append", default=[], help="module glob (repeatable)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    from models.checkpoint import load_pretrained

    model = load_pretrained(args.model, args.checkpoint)
    config = MonitorConfig.model_validate(
        {"level": args.level, "include": args.include, "exclude": args.exclude, "drift": {"bins": args.bins}}
    )
    inputs = calibration_inputs(args.model, model, args.data)
    reference = capture_reference(model, args.model, batched(inputs, args.batch_size), config)
    out = args.out or default_reference_path(args.model, args.checkpoint)
    reference.save(out)
    logger.info("wrote %s: %d modules from %d instances", out, len(reference.modules), len(inputs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
