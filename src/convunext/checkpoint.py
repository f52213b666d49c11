"""Safe, complete checkpoints.

A checkpoint called ``TAG`` (``last`` or ``best``) in a run folder is three files:

* ``TAG.safetensors`` — the model weights (no pickle, safe to load from anyone);
* ``TAG.json`` — everything needed to rebuild and use the model without the training config: registry name and
  constructor arguments, class names, the input normalisation, the recipe, epoch, validation metrics and the
  SHA-256 of the weights file (so a tampered or truncated file is detected); ``last.json`` also holds the SHA-256
  of ``last_state.pt``;
* ``last_state.pt`` (``last`` only) — optimiser, scheduler, AMP scaler and RNG state for ``--resume``; plain
  tensors and numbers only, loaded with ``torch.load(..., weights_only=True)``.

The trainer writes an epoch's files as one set (:func:`save_checkpoint_set`): all are written to temporary files
and synced first, then renamed into place, so a full disk leaves the previous epoch's set whole. Loading checks
the weights' header against the architecture the JSON describes before the model is built (:func:`load_checkpoint`),
so a crafted or mistaken description cannot make it allocate more than the weights file holds.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import pickle
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes
from torch import nn

from .errors import ConvUNeXtError
from .models import create_model
from .utils.io import atomic_write_files, sha256_bytes, sha256_file

CHECKPOINT_FORMAT = "convunext-checkpoint"
CHECKPOINT_VERSION = 1
STATE_FILE = "last_state.pt"
_RESTART_HINT = "resume from an earlier copy of the run folder, or start the run again (train --overwrite)"


class CheckpointNotFoundError(ConvUNeXtError):
    """No checkpoint at ``path``; ``is_bare_name`` when the path has no folder and no suffix (perhaps a mistyped
    pretrained model's name, which the CLI then lists)."""

    def __init__(self, path: Path) -> None:
        super().__init__(f"{path}: checkpoint not found")
        self.path = path

    @property
    def is_bare_name(self) -> bool:
        return self.path.parent == Path(".") and not self.path.suffix


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

    @property
    def volume(self) -> dict[str, Any] | None:
        """A model trained on slices of volumes: its slicing and normalisation record
        (:class:`~convunext.data.volumes.VolumeSettings`); None for a model of 2D images."""
        return self.meta.get("volume")

    @property
    def weights_path(self) -> Path:
        """The ``TAG.safetensors`` file beside the description."""
        return self.path.parent / self.meta["weights"]["file"]


def _unwrap(model: nn.Module) -> nn.Module:
    """The plain model inside DDP / torch.compile wrappers."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


def _weights_bytes(model: nn.Module) -> bytes:
    state = {k: v.detach().to("cpu").contiguous() for k, v in _unwrap(model).state_dict().items()}
    return safetensors_bytes(state, metadata={"format": CHECKPOINT_FORMAT})


def _state_bytes(state: dict[str, Any]) -> bytes:
    # Serialised in memory and written by Python, so a failed write raises OSError with its errno (disk full,
    # file size limit) rather than torch's RuntimeError without one.
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def _checkpoint_files(
    run_dir: Path, tag: str, meta: dict[str, Any], weights: bytes, state: bytes | None = None
) -> list[tuple[Path, bytes]]:
    """``TAG.safetensors`` and ``TAG.json`` (weights first: the JSON names what it describes)."""
    weights_path = run_dir / f"{tag}.safetensors"
    record = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **meta}
    record["weights"] = {"file": weights_path.name, "sha256": sha256_bytes(weights)}
    if state is not None:
        record["state"] = {"file": STATE_FILE, "sha256": sha256_bytes(state)}
    text = json.dumps(record, indent=2, sort_keys=False) + "\n"
    return [(weights_path, weights), (run_dir / f"{tag}.json", text.encode("utf-8"))]


def save_checkpoint(run_dir: str | Path, tag: str, model: nn.Module, meta: dict[str, Any]) -> Path:
    """Write ``TAG.safetensors`` and ``TAG.json`` into ``run_dir`` (both or neither); return the JSON's path.

    ``meta`` must hold ``model`` (``{"name", "kwargs"}``), ``classes`` and ``normalization`` (``{"mean", "std"}``);
    anything else (epoch, metrics, recipe) is stored as given.

    Raises:
        ConvUNeXtError: the disk is full (or another machine-side write failure), naming the file.
    """
    files = _checkpoint_files(Path(run_dir), tag, meta, _weights_bytes(model))
    atomic_write_files(files)
    return files[-1][0]


def save_checkpoint_set(
    run_dir: str | Path,
    model: nn.Module,
    meta: dict[str, Any],
    state: dict[str, Any],
    best: bool,
    extra: Sequence[tuple[str, nn.Module, dict[str, Any]]] = (),
) -> None:
    """Write one epoch's checkpoint set: ``last.*`` and ``last_state.pt``, plus ``best.*`` when ``best`` and one
    ``TAG.*`` pair per ``(tag, model, meta)`` of ``extra`` (e.g. the EMA weights' ``ema_best``).

    Every file is written to a temporary file and synced before any is renamed into place, so a failure (a full
    disk, say) leaves the whole previous set as it was. The training state is renamed last: even a crash during
    the renames never leaves it newer than ``last.*``, and ``--resume`` then repeats the epoch.

    Raises:
        ConvUNeXtError: the disk is full (or another machine-side write failure), naming the file.
    """
    run_dir = Path(run_dir)
    weights, state_data = _weights_bytes(model), _state_bytes(state)
    files = _checkpoint_files(run_dir, "best", meta, weights) if best else []
    for tag, other, other_meta in extra:
        files += _checkpoint_files(run_dir, tag, other_meta, _weights_bytes(other))
    files += _checkpoint_files(run_dir, "last", meta, weights, state_data)
    files.append((run_dir / STATE_FILE, state_data))
    atomic_write_files(files)


CHECKPOINT_FORMS = "give a run folder, its CHECKPOINT.json or .safetensors, or a pretrained model's name"


def _not_a_checkpoint(path: Path) -> ConvUNeXtError:
    """The refusal of an existing file that is no checkpoint, saying what it is when its name tells."""
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        return ConvUNeXtError(
            f"{path}: an ONNX model, not a convunext checkpoint: it lacks the input normalisation and class names; "
            f"{CHECKPOINT_FORMS} (to run the model with ONNX Runtime, give that checkpoint and --backend onnx)"
        )
    if path.name == STATE_FILE:
        return ConvUNeXtError(
            f"{path}: the training state of --resume, not a checkpoint; give the run folder {path.parent}"
        )
    if suffix in (".pt", ".pth", ".ts", ".jit"):
        return ConvUNeXtError(
            f"{path}: a PyTorch file (TorchScript or pickle), not a convunext checkpoint; {CHECKPOINT_FORMS} "
            "(a TorchScript export runs with torch.jit.load)"
        )
    return ConvUNeXtError(f"{path}: not a checkpoint; {CHECKPOINT_FORMS}")


RUN_TAGS = ("best", "last")
"""The checkpoints of a run folder, in the order a folder is read (:func:`folder_checkpoint`)."""


def folder_checkpoint(folder: Path) -> Path | None:
    """The checkpoint description a folder holds: a run folder's ``best.json`` (else ``last.json``), or the one
    top-level ``NAME.json`` of a pretrained folder (:func:`convunext.pretrained.save_pretrained`); None when it
    holds neither (no JSON file, or several and no run checkpoint)."""
    for tag in RUN_TAGS:
        if (folder / f"{tag}.json").is_file():
            return folder / f"{tag}.json"
    found = list(folder.glob("*.json"))
    return found[0] if len(found) == 1 else None


def _resolve(path: str | Path) -> Path:
    path = Path(path)
    if path.is_dir():
        found = folder_checkpoint(path)
        if found is None:
            raise ConvUNeXtError(
                f"{path}: no checkpoint in this folder (expected best.json or last.json, or the one NAME.json of a "
                "pretrained folder)"
            )
        return found
    if path.suffix == ".safetensors":
        if path.is_file() and not path.with_suffix(".json").is_file():
            raise ConvUNeXtError(
                f"{path}: its description {path.with_suffix('.json').name} is missing beside it (a checkpoint is "
                "the pair TAG.json and TAG.safetensors)"
            )
        path = path.with_suffix(".json")
    if not path.is_file():
        raise CheckpointNotFoundError(path)
    if path.suffix != ".json":
        raise _not_a_checkpoint(path)
    return path


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _description_problem(meta: dict[str, Any]) -> tuple[str, str] | None:
    """The first ``(field, what is wrong)`` of a checkpoint description's required fields, or None."""
    model, normalization, weights = meta["model"], meta["normalization"], meta["weights"]
    if not isinstance(model, dict):
        return "model", "expected {name, kwargs}"
    if not isinstance(model.get("name"), str):
        return "model.name", "expected a registry model name"
    if not isinstance(model.get("kwargs", {}), dict):
        return "model.kwargs", "expected a mapping of constructor arguments"
    classes = meta["classes"]
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        return "classes", "expected a list of class names"
    if not isinstance(normalization, dict):
        return "normalization", "expected {mean, std}"
    for key in ("mean", "std"):
        values = normalization.get(key)
        if not isinstance(values, list) or not values or not all(_is_number(v) for v in values):
            return f"normalization.{key}", "expected a list of numbers, one per input channel"
    if len(normalization["std"]) != len(normalization["mean"]) or min(normalization["std"]) <= 0:
        return "normalization.std", "expected one positive number per entry of normalization.mean"
    if not isinstance(weights, dict):
        return "weights", "expected {file, sha256}"
    file = weights.get("file")
    if not isinstance(file, str) or not file or Path(file).name != file:
        return "weights.file", "expected a file name beside the JSON"
    if not isinstance(weights.get("sha256"), str):
        return "weights.sha256", "expected the hex SHA-256 of the weights file"
    return None


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
    problem = _description_problem(meta)
    if problem is not None:
        raise ConvUNeXtError(f"{json_path}: checkpoint description has an invalid {problem[0]!r} ({problem[1]})")
    return meta, json_path


class _TooManyTensors(Exception):
    """Raised while building a model that registers more parameters than the weights file holds."""


@contextlib.contextmanager
def _parameter_budget(limit: int) -> Iterator[None]:
    """Abort any module construction in this block once it has registered more than ``limit`` parameters, so
    absurd constructor arguments (a depth of millions) cost no more than the weights file they must match.
    (The hook is process-wide: do not build other models in other threads meanwhile.)"""
    count = 0

    def hook(module: nn.Module, name: str, parameter: nn.Parameter | None) -> None:
        nonlocal count
        count += 1
        if count > limit:
            raise _TooManyTensors

    handle = nn.modules.module.register_module_parameter_registration_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def _shape(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape)) or "scalar"


def _check_architecture(weights_path: Path, json_path: Path, meta: dict[str, Any]) -> None:
    """Compare the tensor names and shapes in the weights' header with the model the description builds, on the
    ``meta`` device (no memory is allocated for it); raise naming the first mismatch."""
    try:
        with safe_open(str(weights_path), framework="pt") as handle:
            shapes = {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}  # noqa: SIM118
    except (SafetensorError, OSError) as error:
        raise ConvUNeXtError(f"{weights_path}: cannot read weights ({str(error).strip()})") from error
    name, kwargs = meta["model"]["name"], meta["model"].get("kwargs", {})
    prefix = f"{weights_path}: weights do not fit model {name!r} as described in {json_path.name}"
    try:
        with torch.device("meta"), _parameter_budget(len(shapes)):
            model = create_model(name, **kwargs)
    except _TooManyTensors:
        raise ConvUNeXtError(f"{prefix} (its arguments build more tensors than the file's {len(shapes)})") from None
    except (ValueError, RuntimeError) as error:
        raise ConvUNeXtError(f"{prefix} ({str(error).strip().splitlines()[0]})") from None
    expected = {key: tuple(tensor.shape) for key, tensor in model.state_dict().items()}
    for key, shape in expected.items():
        if key not in shapes:
            raise ConvUNeXtError(f"{prefix} ({key}: the model needs {_shape(shape)}, the file has no such tensor)")
        if shapes[key] != shape:
            found = _shape(shapes[key])
            raise ConvUNeXtError(f"{prefix} ({key}: the file has {found}, the model needs {_shape(shape)})")
    extra = [key for key in shapes if key not in expected]
    if extra:
        raise ConvUNeXtError(f"{prefix} ({extra[0]}: in the file, not in the model)")
    for attribute, described, field in (
        ("num_classes", len(meta["classes"]), "classes"),
        ("in_channels", len(meta["normalization"]["mean"]), "normalization.mean"),
    ):
        value = getattr(model, attribute, described)
        if value != described:
            raise ConvUNeXtError(f"{json_path}: the model has {attribute}={value} but {field!r} has {described}")


def _check_finite(state: dict[str, torch.Tensor], weights_path: Path) -> None:
    """Refuse weights holding NaN or Inf, naming the first such tensor. The checksum cannot catch them: a run that
    diverged saves them faithfully, and every prediction made with them would be silently wrong."""
    for key, tensor in state.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            bad = int((~torch.isfinite(tensor)).sum())
            raise ConvUNeXtError(
                f"{weights_path}: weights hold non-finite values (NaN or Inf: {bad} of {tensor.numel()} in tensor "
                f"{key!r}), the run diverged; use an earlier checkpoint of it or train it again"
            )


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Rebuild the model of a checkpoint from the checkpoint alone, weights verified against their SHA-256 and
    their header against the described architecture before the model is built.

    Args:
        path: a run folder (its ``best`` checkpoint, else ``last``), a ``TAG.json`` or a ``TAG.safetensors``.
        map_location: device for the weights.

    Raises:
        ConvUNeXtError: missing, truncated, tampered or mismatched files, files that are no checkpoint (ONNX,
            TorchScript, images), or weights holding NaN or Inf, with the file named.
    """
    meta, json_path = read_checkpoint_meta(path)
    weights_path = json_path.parent / meta["weights"]["file"]
    if not weights_path.is_file():
        raise ConvUNeXtError(f"{weights_path}: weights file of checkpoint {json_path.name} not found")
    if sha256_file(weights_path) != meta["weights"]["sha256"]:
        raise ConvUNeXtError(f"{weights_path}: weights do not match their checksum (file truncated or modified)")
    _check_architecture(weights_path, json_path, meta)
    try:
        state = load_file(str(weights_path), device=str(map_location))
    except (SafetensorError, OSError) as error:
        raise ConvUNeXtError(f"{weights_path}: cannot read weights ({error})") from error
    _check_finite(state, weights_path)
    model = create_model(meta["model"]["name"], **meta["model"].get("kwargs", {}))
    model.load_state_dict(state, strict=True)
    model.to(map_location).eval()
    return Checkpoint(model=model, meta=meta, path=json_path)


def save_training_state(run_dir: str | Path, state: dict[str, Any]) -> None:
    """Atomically write the resumable training state (``last_state.pt``) alone; tensors and plain values only.

    The trainer writes it with its checkpoint instead (:func:`save_checkpoint_set`).
    """
    atomic_write_files([(Path(run_dir) / STATE_FILE, _state_bytes(state))])


def _read_state(path: Path) -> Any:
    """``torch.load(path, weights_only=True)`` with a one-line error for unsafe and for corrupt files."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "Unsupported global" in str(error):  # a well-formed file holding more than tensors and plain values
            raise ConvUNeXtError(
                f"{path}: cannot read training state: it holds objects other than tensors and plain values, "
                "which are never loaded (torch.load weights_only=True)"
            ) from error
        corrupt: Exception = error
    except Exception as error:  # torch raises RuntimeError, EOFError, OSError, ... for damaged archives
        corrupt = error
    raise ConvUNeXtError(
        f"{path}: cannot read training state: the file is corrupt or truncated ({type(corrupt).__name__}); "
        f"{_RESTART_HINT}"
    ) from corrupt


def load_training_state(run_dir: str | Path) -> dict[str, Any]:
    """Read ``last_state.pt`` with ``weights_only=True`` and check that it belongs to ``last.json``.

    A state one epoch older than ``last.json`` is accepted: the renames of the last save were interrupted and
    resuming repeats that epoch. A state of the same epoch whose SHA-256 differs from the one ``last.json``
    records is refused (a file from another run, or damaged).

    Raises:
        ConvUNeXtError: missing, corrupt, unsafe or foreign state file, naming it.
    """
    path = Path(run_dir) / STATE_FILE
    if not path.is_file():
        raise ConvUNeXtError(f"{path}: no training state to resume from (has the run finished one epoch?)")
    state = _read_state(path)
    epoch = state.get("epoch") if isinstance(state, dict) else None
    if not isinstance(epoch, int) or isinstance(epoch, bool):
        raise ConvUNeXtError(f"{path}: not a convunext training state (no epoch number); {_RESTART_HINT}")
    try:
        last = json.loads((path.parent / "last.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):  # no readable last.json: the state alone is enough to resume
        return state
    recorded = last.get("state") if isinstance(last, dict) else None
    if isinstance(recorded, dict) and last.get("epoch") == epoch and recorded.get("sha256") != sha256_file(path):
        raise ConvUNeXtError(
            f"{path}: does not belong to last.json (both say epoch {epoch}, but its SHA-256 differs from the "
            f"recorded one: a file from another run, or damaged); {_RESTART_HINT}"
        )
    return state
