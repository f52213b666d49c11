"""Safe, complete checkpoints.

A checkpoint called ``TAG`` (``last`` or ``best``) in a run folder is three files, each written atomically:

* ``TAG.safetensors`` — the model weights (no pickle, safe to load from anyone);
* ``TAG.json`` — everything needed to rebuild and use the model without the training config: registry name and
  constructor arguments, class names, the input normalisation, the recipe, epoch, validation metrics and the
  SHA-256 of the weights file (so a tampered or truncated file is detected);
* ``TAG_state.pt`` (``last`` only) — optimiser, scheduler, AMP scaler and RNG state for ``--resume``; plain
  tensors and numbers only, loaded with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import ConvUNeXtError
from ..models import create_model
from ..utils.io import atomic_path, atomic_write, atomic_write_json, sha256_file

CHECKPOINT_FORMAT = "convunext-checkpoint"
CHECKPOINT_VERSION = 1


@dataclass
class Checkpoint:
    """A model rebuilt from a checkpoint, with its metadata (the parsed ``TAG.json``)."""

    model: nn.Module
    meta: dict[str, Any]
    path: Path

    @property
    def mean(self) -> tuple[float, ...]:
        return tuple(self.meta["normalization"]["mean"])

    @property
    def std(self) -> tuple[float, ...]:
        return tuple(self.meta["normalization"]["std"])

    @property
    def class_names(self) -> list[str]:
        return list(self.meta["classes"])


def _unwrap(model: nn.Module) -> nn.Module:
    """The plain model inside DDP / torch.compile wrappers."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


def save_checkpoint(run_dir: str | Path, tag: str, model: nn.Module, meta: dict[str, Any]) -> Path:
    """Write ``TAG.safetensors`` and ``TAG.json`` into ``run_dir`` atomically; return the JSON's path.

    ``meta`` must hold ``model`` (``{"name", "kwargs"}``), ``classes`` and ``normalization`` (``{"mean", "std"}``);
    anything else (epoch, metrics, recipe) is stored as given.
    """
    run_dir = Path(run_dir)
    weights_path = run_dir / f"{tag}.safetensors"
    state = {k: v.detach().to("cpu").contiguous() for k, v in _unwrap(model).state_dict().items()}
    with atomic_path(weights_path) as tmp:
        save_file(state, str(tmp), metadata={"format": CHECKPOINT_FORMAT})
        digest = sha256_file(tmp)
    record = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **meta}
    record["weights"] = {"file": weights_path.name, "sha256": digest}
    json_path = run_dir / f"{tag}.json"
    atomic_write_json(json_path, record)
    return json_path


def _resolve(path: str | Path) -> Path:
    path = Path(path)
    if path.is_dir():
        for tag in ("best", "last"):
            if (path / f"{tag}.json").is_file():
                return path / f"{tag}.json"
        raise ConvUNeXtError(f"{path}: no checkpoint in this folder (expected best.json or last.json)")
    if path.suffix == ".safetensors":
        path = path.with_suffix(".json")
    if not path.is_file():
        raise ConvUNeXtError(f"{path}: checkpoint not found")
    return path


def read_checkpoint_meta(path: str | Path) -> tuple[dict[str, Any], Path]:
    """Parse and validate a checkpoint's JSON (``path`` may be a run folder, ``.json`` or ``.safetensors``)."""
    json_path = _resolve(path)
    try:
        meta = json.loads(json_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ConvUNeXtError(f"{json_path}: not a valid checkpoint description (corrupt JSON: {error})") from error
    if not isinstance(meta, dict) or meta.get("format") != CHECKPOINT_FORMAT:
        raise ConvUNeXtError(f"{json_path}: not a convunext checkpoint description")
    for key in ("model", "classes", "normalization", "weights"):
        if key not in meta:
            raise ConvUNeXtError(f"{json_path}: checkpoint description lacks {key!r}")
    return meta, json_path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Rebuild the model of a checkpoint from the checkpoint alone, weights verified against their SHA-256.

    Args:
        path: a run folder (its ``best`` checkpoint, else ``last``), a ``TAG.json`` or a ``TAG.safetensors``.
        map_location: device for the weights.

    Raises:
        ConvUNeXtError: missing, truncated, tampered or mismatched files, with the file named.
    """
    meta, json_path = read_checkpoint_meta(path)
    weights_path = json_path.parent / meta["weights"]["file"]
    if not weights_path.is_file():
        raise ConvUNeXtError(f"{weights_path}: weights file of checkpoint {json_path.name} not found")
    if sha256_file(weights_path) != meta["weights"]["sha256"]:
        raise ConvUNeXtError(f"{weights_path}: weights do not match their checksum (file truncated or modified)")
    try:
        state = load_file(str(weights_path), device=str(map_location))
    except (SafetensorError, OSError) as error:
        raise ConvUNeXtError(f"{weights_path}: cannot read weights ({error})") from error
    try:
        model = create_model(meta["model"]["name"], **meta["model"].get("kwargs", {}))
        model.load_state_dict(state, strict=True)
    except (ValueError, RuntimeError) as error:
        first_line = str(error).strip().splitlines()[0]
        raise ConvUNeXtError(
            f"{weights_path}: weights do not fit model {meta['model']['name']!r} ({first_line})"
        ) from None
    model.to(map_location).eval()
    return Checkpoint(model=model, meta=meta, path=json_path)


def save_training_state(run_dir: str | Path, state: dict[str, Any]) -> None:
    """Atomically write the resumable training state (``last_state.pt``); tensors and plain values only."""
    atomic_write(Path(run_dir) / "last_state.pt", lambda tmp: torch.save(state, tmp))


def load_training_state(run_dir: str | Path) -> dict[str, Any]:
    """Read ``last_state.pt`` with ``weights_only=True``; a clear error if it is missing or unreadable."""
    path = Path(run_dir) / "last_state.pt"
    if not path.is_file():
        raise ConvUNeXtError(f"{path}: no training state to resume from (has the run finished one epoch?)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for corrupt/unsafe pickles
        raise ConvUNeXtError(f"{path}: cannot read training state ({type(error).__name__})") from error
