"""Where and how a model runs: device, precision, warm-up, and the reduced-precision check.

Everything here runs inside the inference worker (a spawned process), except :func:`check_device_request`,
which the main process uses to refuse an impossible device before any worker starts, without
initializing CUDA itself.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass

import torch

from models.base import ServableModel, example_batch

logger = logging.getLogger(__name__)

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class StartupError(RuntimeError):
    """A configuration the machine cannot serve; the message says what to change."""


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def check_device_request(device: str) -> None:
    """Refuse a CUDA device the machine does not have (cheap: does not create a CUDA context)."""
    if not device.startswith("cuda"):
        return
    if not torch.cuda.is_available():
        raise StartupError(f"device {device!r} requested but CUDA is not available; use device: cpu or auto")
    index = int(device.split(":")[1]) if ":" in device else 0
    if index >= torch.cuda.device_count():
        raise StartupError(
            f"device {device!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist"
        )


def check_precision(device: torch.device, precision: str) -> None:
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise StartupError(f"bf16 is not supported on {torch.cuda.get_device_name(device)}; use fp16 or fp32")
    if precision in AUTOCAST_DTYPES and not torch.amp.is_autocast_available(device.type):
        raise StartupError(f"autocast is not available on device type {device.type!r}; use fp32")


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """``torch.autocast`` at the served precision (a no-op context for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=AUTOCAST_DTYPES[precision])


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def serving_mode(model: torch.nn.Module, device: torch.device, precision: str) -> Iterator[None]:
    """Inference mode plus autocast: how every served forward pass runs."""
    with torch.inference_mode(), autocast(device, precision):
        yield


@dataclass(frozen=True)
class PrecisionReport:
    precision: str
    max_abs_diff: float
    top1_agreement: float
    calibration_instances: int


def compare_with_fp32(
    model: ServableModel, batch: torch.Tensor, device: torch.device, precision: str
) -> PrecisionReport:
    """Run the calibration batch in fp32 and at the served precision; report how far they differ."""
    x = batch.to(device)
    with serving_mode(model, device, "fp32"):
        reference = model(x).float()
    with serving_mode(model, device, precision):
        served = model(x).float()
    agreement = (reference.argmax(dim=1) == served.argmax(dim=1)).float().mean().item()
    max_diff = (reference - served).abs().max().item()
    return PrecisionReport(precision, max_diff, agreement, int(x.shape[0]))


def calibration_batch(model: ServableModel, dataset: str | None, size: int = 256) -> torch.Tensor:
    """Held-out data when the model has a dataset (meaningful agreement), else valid random input."""
    if dataset:
        try:
            from models.datasets import load_dataset

            return load_dataset(dataset).test_x[:size]
        except (ImportError, KeyError, ValueError) as exc:
            logger.warning("no calibration data from dataset %r (%s); using random input", dataset, exc)
    return example_batch(model.input_spec, min(size, 64), seed=1)


def warm_up(
    model: ServableModel,
    device: torch.device,
    precision: str,
    max_batch_size: int,
    observe: Callable[[int, float], None] | None = None,
) -> float:
    """Run a few batches of typical sizes so the first request pays no lazy-initialization cost.

    ``observe(batch_size, seconds)`` gets each size's second, warmed-up forward time (it seeds the cost
    model the scheduler learns)."""
    start = time.perf_counter()
    sizes = sorted({1, min(8, max_batch_size), max_batch_size})
    for size in sizes:
        x = example_batch(model.input_spec, size).to(device)
        for _ in range(2):
            began = time.perf_counter()
            with serving_mode(model, device, precision):
                model(x)
            synchronize(device)
        if observe is not None:
            observe(size, time.perf_counter() - began)
    return time.perf_counter() - start


def precision_report_dict(report: PrecisionReport) -> dict:
    return asdict(report)
