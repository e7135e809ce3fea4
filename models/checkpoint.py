"""Save and load model weights without ever unpickling arbitrary code.

Two formats are read:

* ``.safetensors`` (what we write): tensors plus string metadata, no code at all;
* ``.pt`` / ``.pth``: a ``torch.save``\\ d state dict, accepted only if ``torch.load(weights_only=True)``
  can read it. That loader refuses any pickle that would import or call something outside tensors and
  plain containers, so a booby-trapped checkpoint is rejected before its payload runs.

Metadata records the model name and the overrides it was built with, so :func:`load_pretrained` can
rebuild the same architecture from the checkpoint alone.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file
from torch import nn

from models.registry import create_model, get_card

CHECKPOINT_DIR = Path(__file__).resolve().parent / "checkpoints"
SAFETENSORS_SUFFIXES = (".safetensors",)
TORCH_SUFFIXES = (".pt", ".pth")


class UnsafeCheckpointError(ValueError):
    """A checkpoint that cannot be read without executing pickled code (or is not a checkpoint at all)."""


def default_checkpoint_path(name: str) -> Path:
    """Where the shipped checkpoint of model ``name`` lives, independent of the working directory."""
    return CHECKPOINT_DIR / f"{name}.safetensors"


def save_checkpoint(model: nn.Module, path: str | Path, *, name: str, overrides: dict[str, Any]) -> Path:
    """Write ``model``'s state dict to ``path`` (format chosen by suffix) with name/overrides metadata."""
    path = Path(path)
    metadata = {
        "model": name,
        "overrides": json.dumps(overrides, sort_keys=True),
        "torch_version": str(torch.__version__),  # a TorchVersion would not unpickle weights-only
    }
    # Buffers and parameters may share storage or be views: safetensors wants contiguous, unshared tensors.
    state = {key: tensor.detach().cpu().contiguous().clone() for key, tensor in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix in SAFETENSORS_SUFFIXES:
        save_file(state, str(path), metadata=metadata)
    elif path.suffix in TORCH_SUFFIXES:
        torch.save({"state_dict": state, "metadata": metadata}, path)
    else:
        raise ValueError(f"unsupported checkpoint suffix {path.suffix!r}; use .safetensors or .pt")
    # safetensors creates files owner-only (0600); a checkpoint is meant to be shipped and read by others.
    path.chmod(0o644)
    return path


def load_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read ``(state_dict, metadata)`` from ``path`` on CPU; never executes code stored in the file.

    Raises ``FileNotFoundError`` for a missing file and :class:`UnsafeCheckpointError` for a file that is
    not a plain-weights checkpoint (including any pickle that needs more than tensors and containers).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    if path.suffix in SAFETENSORS_SUFFIXES:
        return _load_safetensors(path)
    if path.suffix in TORCH_SUFFIXES:
        return _load_torch_weights_only(path)
    raise UnsafeCheckpointError(
        f"checkpoint {str(path)!r}: unsupported suffix {path.suffix!r}; use .safetensors, or .pt/.pth "
        "holding a plain state dict"
    )


def _load_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
        return load_file(str(path)), metadata
    except SafetensorError as exc:
        raise UnsafeCheckpointError(
            f"checkpoint {str(path)!r} is not a valid safetensors file: {exc}"
        ) from exc


def _load_torch_weights_only(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # the weights-only unpickler raises plain UnpicklingError/RuntimeError
        raise UnsafeCheckpointError(
            f"refusing checkpoint {str(path)!r}: it does not load with torch.load(weights_only=True), "
            f"so it may execute code when unpickled ({type(exc).__name__}); convert it to .safetensors"
        ) from exc
    if isinstance(payload, dict) and isinstance(payload.get("state_dict"), dict):
        state, metadata = payload["state_dict"], payload.get("metadata") or {}
    else:
        state, metadata = payload, {}
    if not isinstance(state, dict) or not all(isinstance(t, torch.Tensor) for t in state.values()):
        raise UnsafeCheckpointError(f"checkpoint {str(path)!r} does not hold a state dict of tensors")
    return state, {str(k): str(v) for k, v in metadata.items()}


def load_pretrained(name: str, checkpoint: str | Path | None = None, **overrides: Any) -> nn.Module:
    """Build model ``name`` with its trained weights, in eval mode.

    The architecture overrides stored in the checkpoint are applied first, then ``overrides`` (which
    must not change parameter shapes: weights load strictly). Without ``checkpoint``:

    * a registered model with synthetic weights (``card.synthetic_weights``) is built from its seed;
    * another registered model loads ``models/checkpoints/{name}.safetensors``;
    * an import-path model is returned as its factory builds it (the factory owns its weights).
    """
    if checkpoint is None:
        if get_card(name).synthetic_weights or ":" in name:
            return create_model(name, **overrides).eval()
        checkpoint = default_checkpoint_path(name)
        if not checkpoint.is_file():
            raise FileNotFoundError(
                f"no checkpoint for model {name!r} at {str(checkpoint)!r}; train it with "
                f"`python -m models.train {name}` or pass checkpoint=PATH"
            )
    state, metadata = load_checkpoint(checkpoint)
    stored_name = metadata.get("model")
    if stored_name is not None and stored_name != name:
        raise ValueError(f"checkpoint {str(checkpoint)!r} holds model {stored_name!r}, not {name!r}")
    model = create_model(name, **{**json.loads(metadata.get("overrides", "{}")), **overrides})
    model.load_state_dict(state, strict=True)
    return model.eval()
