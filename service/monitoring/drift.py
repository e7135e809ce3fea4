"""Activation drift: per-module histograms of live traffic vs a calibration reference, as PSI.

A :class:`Reference` holds, per module, bin edges (quantiles of the calibration activations, so each
bin starts with ~1/bins of the mass, plus a bin of its own for any value that is a big atom, such as
the exact zeros after a ReLU) and the reference proportion in each bin. It is stored as safetensors next
to the checkpoint (``NAME.reference.safetensors``), with a fingerprint of the weights it was captured
with: a reference from other weights would report drift on every module.

:class:`DriftTracker` bins the stats subsamples of each sampled batch (one ``bucketize`` per module, one
``bincount`` for all), keeps the last ``window`` batches' counts in a ring on the device, and computes
the population stability index ``sum((live - ref) * ln(live / ref))`` per module. Rule of thumb:
< 0.1 stable, 0.1-0.25 moderate shift, > 0.25 significant shift.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from service.monitoring.config import DriftConfig

logger = logging.getLogger(__name__)

FORMAT = "hookserve-drift-reference/1"
# Proportions below this are floored on both sides: an empty bin must not make PSI infinite.
PROPORTION_FLOOR = 1e-4
# Values needed per module for quantile edges; more are thinned with a fixed seed.
MAX_REFERENCE_VALUES = 1_000_000
# Live histograms bin at most this many values of each stats subsample: bucketize is a binary search per
# value (~6-14 ns here), and a window of 32 batches x 256 values bounds PSI's own sampling noise near
# (bins - 1) / 8192 ~ 0.001, far below the 0.1 that reads as drift.
HISTOGRAM_VALUES = 256


@dataclass
class Reference:
    """Per-module bin edges (inner, ascending) and reference proportions (``len(edges) + 1`` bins)."""

    edges: dict[str, torch.Tensor]
    proportions: dict[str, torch.Tensor]
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def modules(self) -> list[str]:
        return list(self.edges)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors: dict[str, torch.Tensor] = {}
        for name in self.edges:
            tensors[f"{name}/edges"] = self.edges[name].detach().cpu().float().contiguous()
            tensors[f"{name}/proportions"] = self.proportions[name].detach().cpu().float().contiguous()
        metadata = {**self.metadata, "format": FORMAT, "modules": json.dumps(self.modules)}
        save_file(tensors, str(path), metadata=metadata)
        path.chmod(0o644)  # save_file creates 0600; the service may run as another (non-root) user
        return path

    @classmethod
    def load(cls, path: str | Path) -> Reference:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
        if metadata.get("format") != FORMAT:
            raise ValueError(f"{path}: not a drift reference (format {metadata.get('format')!r})")
        tensors = load_file(str(path))
        modules = json.loads(metadata["modules"])
        return cls(
            edges={name: tensors[f"{name}/edges"] for name in modules},
            proportions={name: tensors[f"{name}/proportions"] for name in modules},
            metadata=metadata,
        )


def default_reference_path(model_name: str, checkpoint: str | Path | None = None) -> Path:
    """``NAME.reference.safetensors`` beside the checkpoint (the shipped one by default)."""
    if checkpoint is not None:
        checkpoint = Path(checkpoint)
        return checkpoint.with_name(f"{checkpoint.stem}.reference.safetensors")
    from models.checkpoint import CHECKPOINT_DIR

    return CHECKPOINT_DIR / f"{model_name.replace(':', '_').replace('/', '_')}.reference.safetensors"


def load_tracker(
    model: nn.Module,
    model_name: str,
    config: DriftConfig,
    module_names: list[str],
    device: torch.device,
    reference: Reference | None = None,
) -> DriftTracker | None:
    """A monitor's drift tracker (``reference``, else the file ``config.reference`` or the default path
    names), or None, with the reason logged: drift is off, there is no reference, it was captured with
    other weights (it would report drift on every module), or it covers none of ``module_names``."""
    if not config.enabled or not module_names:
        return None
    if reference is None:
        path = config.reference or default_reference_path(model_name)
        if not Path(path).is_file():
            logger.info("model %s: no drift reference at %s; drift is off", model_name, path)
            return None
        reference = Reference.load(path)
        expected = reference.metadata.get("weights_sha256")
        if expected and expected != weights_fingerprint(model):
            logger.warning(
                "model %s: drift reference %s was captured with other weights; drift is off "
                "(recapture it: python -m service.monitoring.calibrate %s)",
                model_name, path, model_name,
            )  # fmt: skip
            return None
    with torch.inference_mode():
        tracker = DriftTracker(reference, module_names, config.window_batches, device)
    if not tracker.names:
        logger.warning("model %s: drift reference covers none of the monitored modules", model_name)
        return None
    return tracker


def weights_fingerprint(model: nn.Module) -> str:
    """SHA-256 of every parameter (name, shape, float32 bytes): which weights a reference describes.

    Parameters only: buffers such as BatchNorm running statistics of a synthetic-weights model are
    computed by a forward pass, whose last bits vary with the CPU's kernels, while retraining always
    changes parameters. Runs once at attach; ~30 ms for resnet-bench's 17 MB.
    """
    digest = hashlib.sha256()
    for name, tensor in model.named_parameters():
        digest.update(f"{name}:{tuple(tensor.shape)}".encode())
        if tensor.is_floating_point():
            tensor = tensor.float()
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def build_reference(values: dict[str, torch.Tensor], bins: int, metadata: dict[str, str]) -> Reference:
    """Quantile edges and proportions from each module's calibration values (1-D, any length)."""
    edges: dict[str, torch.Tensor] = {}
    proportions: dict[str, torch.Tensor] = {}
    generator = torch.Generator().manual_seed(0)
    for name, sample in values.items():
        sample = sample.detach().cpu().float().reshape(-1)
        sample = sample[torch.isfinite(sample)]
        if sample.numel() == 0:
            continue
        if sample.numel() > MAX_REFERENCE_VALUES:
            keep = torch.randperm(sample.numel(), generator=generator)[:MAX_REFERENCE_VALUES]
            sample = sample[keep]
        edges[name] = quantile_edges(sample, bins)
        counts = histogram(sample, edges[name])
        proportions[name] = counts / counts.sum()
    return Reference(edges, proportions, {**metadata, "bins": str(bins)})


def quantile_edges(sample: torch.Tensor, bins: int) -> torch.Tensor:
    """Inner edges at the ``k/bins`` quantiles, deduplicated; an atom (a single value holding over half
    a bin's mass, e.g. ReLU zeros) gets a bin of its own so its share moving shows up in PSI."""
    levels = torch.arange(1, bins, dtype=torch.float64) / bins
    edges = torch.quantile(sample.double(), levels).float()
    atoms = [value for value in torch.unique(edges).tolist() if (sample == value).float().mean() > 0.5 / bins]
    if atoms:
        atom_values = torch.tensor(atoms)
        upper = torch.nextafter(atom_values, torch.full_like(atom_values, float("inf")))
        edges = torch.cat([edges, atom_values, upper])
    return torch.unique(edges)  # sorted


def histogram(sample: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """Counts per bin, float32; bin ``i`` holds ``edges[i-1] <= x < edges[i]`` (open-ended outer bins)."""
    index = torch.bucketize(sample, edges, right=True)
    return torch.bincount(index, minlength=edges.numel() + 1).float()


def psi_terms(live: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Per-bin PSI terms between proportions (sum them per module), with floors on both sides."""
    live = live.clamp_min(PROPORTION_FLOOR)
    reference = reference.clamp_min(PROPORTION_FLOOR)
    return (live - reference) * torch.log(live / reference)


class DriftTracker:
    """Rolling-window histograms of the monitored modules that the reference covers.

    All state is one ``(window, total_bins)`` ring and its running sum, on the monitor's device;
    :meth:`update` costs one ``bucketize`` per module plus one ``bincount``, and :meth:`psi` a handful
    of ops for all modules together.
    """

    def __init__(self, reference: Reference, module_names: list[str], window: int, device: torch.device):
        # Positions in the monitor's module list that the reference covers, and their edges/offsets.
        self.positions = [i for i, name in enumerate(module_names) if name in reference.edges]
        self.names = [module_names[i] for i in self.positions]
        self._edges = [reference.edges[name].to(device) for name in self.names]
        sizes = [edge.numel() + 1 for edge in self._edges]
        self._offsets = torch.tensor([0, *sizes[:-1]], dtype=torch.int64).cumsum(0).tolist()
        self._total_bins = sum(sizes)
        self._segment = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes)).to(device)
        self._reference = torch.cat([reference.proportions[name] for name in self.names]).to(device)
        self._ring = torch.zeros(window, self._total_bins, device=device)
        self._sum = torch.zeros(self._total_bins, device=device)
        self._ones = torch.ones(HISTOGRAM_VALUES * len(self.names), device=device)
        self._window = window
        self._next = 0
        self.batches = 0

    @property
    def ready(self) -> bool:
        """Whether the window is full: PSI over fewer batches is too noisy to publish."""
        return self.batches >= self._window

    def update(self, samples: list[torch.Tensor | None]) -> None:
        """Add one sampled batch: ``samples`` is indexed like the monitor's modules (None: not seen)."""
        parts = []
        for j, position in enumerate(self.positions):
            sample = samples[position]
            if sample is not None:
                # Any prefix of a subsample is spread over the whole output (stats.take_subsample).
                sample = sample[:HISTOGRAM_VALUES]
                parts.append(torch.bucketize(sample, self._edges[j], right=True) + self._offsets[j])
        if not parts:
            return
        index = torch.cat(parts)
        # index_add_, not bincount: CUDA's bincount reads the max index back to the host (a sync).
        counts = torch.zeros_like(self._sum).index_add_(0, index, self._ones[: index.numel()])
        slot = self._ring[self._next]
        self._sum += counts - slot
        slot.copy_(counts)
        self._next = (self._next + 1) % self._window
        self.batches += 1

    def psi(self) -> torch.Tensor:
        """PSI per tracked module (``self.names`` order); NaN for a module with no values in the window."""
        n = len(self.names)
        totals = torch.zeros(n, device=self._sum.device).index_add_(0, self._segment, self._sum)
        terms = psi_terms(self._sum / totals[self._segment], self._reference)
        values = torch.zeros(n, device=self._sum.device).index_add_(0, self._segment, terms)
        return torch.where(totals > 0, values, torch.full_like(values, float("nan")))
