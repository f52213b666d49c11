"""Typed experiment configuration: dataclasses that load from YAML, accept ``section.field=value`` overrides,
and are saved (resolved) in every run folder.

Two optimisation recipes are built in (SPEC section 5):

* ``paper`` (default): AdamW, lr 4e-4, weight decay 5e-5, batch 4, 300 epochs, 5 epochs of linear warm-up,
  then exponential decay by ``decay_gamma = 0.985`` per epoch (stepped smoothly per iteration). The paper
  gives no rate; 0.985 brings the lr to about 1% of its peak after 300 epochs (0.985^295 = 0.0116).
* ``reference`` (the authors' code): AdamW, lr 1.5e-3, weight decay 1e-4, 1 warm-up epoch starting at
  1e-3 x lr, then polynomial decay ``(1 - t)^0.9`` stepped per iteration.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable, Collection
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, Literal, get_args, get_origin, get_type_hints

import yaml

from ..errors import ConvUNeXtError

PRESET_DIR = Path(__file__).resolve().parent.parent / "configs"
RECIPES = ("paper", "reference")
Switch = Literal["auto", "on", "off"]
"""A speed switch: ``auto`` (on where it is faster for the model and device, see
:mod:`convunext.training.fast_paths`), ``on`` or ``off``; YAML ``true``/``false`` mean ``on``/``off``."""


EXECUTION_FIELDS = (
    "data.num_workers",
    "train.device",
    "train.threads",
    "train.progress_bar",
    "train.tensorboard",
    "train.output_dir",
    "train.run_name",
    "train.channels_last",
    "train.fused_kernels",
    "train.tune_malloc",
    "train.fast_validation",
)
"""The fields that change where a run is written, how it is shown or how its work is computed (the speed switches,
recorded resolved), never what it trains: a resumed run or a reproduction may differ in them."""


@dataclass
class ModelConfig:
    """Which registry model to build and with what constructor arguments (``in_channels`` and ``num_classes``
    come from the dataset unless given here)."""

    name: str = "convunext"
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class DataConfig:
    """Dataset and augmentation. ``name`` is a registered dataset (:func:`convunext.data.list_datasets`:
    ``synthetic``, ``drive``, ``glas``, ``hrf``, ``stare``, ``chase_db1``, ``mixed``, ``folder``); ``root`` is its
    folder (unused for ``synthetic``); ``options`` are extra arguments of :func:`convunext.data.open_dataset`.
    ``num_workers`` None picks DataLoader workers for the device: 0 on CPU (loading is cheap next to a training
    step, and worker processes would take cores from the step), ``min(8, cores - 1)`` with CUDA."""

    name: str = "synthetic"
    root: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    crop_size: int = 480
    scale_range: tuple[float, float] = (0.8, 1.5)
    hflip: bool = True
    vflip: bool = True
    num_workers: int | None = None
    eval_tile_size: int | None = None


@dataclass
class OptimConfig:
    """Optimiser and learning-rate schedule; ``recipe`` selects the defaults (``paper`` or ``reference``)."""

    recipe: Literal["paper", "reference"] = "paper"
    lr: float = 4e-4
    weight_decay: float = 5e-5
    batch_size: int = 4
    warmup_epochs: float = 5.0
    warmup_start_factor: float = 0.0
    decay: Literal["exponential", "poly", "cosine"] = "exponential"
    decay_gamma: float = 0.985
    poly_power: float = 0.9

    @classmethod
    def for_recipe(cls, recipe: str) -> OptimConfig:
        """The defaults of a named recipe (``paper`` or ``reference``)."""
        if recipe == "paper":
            return cls()
        if recipe == "reference":
            return cls(
                recipe="reference",
                lr=1.5e-3,
                weight_decay=1e-4,
                warmup_epochs=1.0,
                warmup_start_factor=1e-3,
                decay="poly",
            )
        raise ConvUNeXtError(f"optim.recipe={recipe!r} is not valid; choose one of {', '.join(RECIPES)}")


@dataclass
class TrainConfig:
    """The training loop: length, evaluation cadence, devices and numerics, output location.

    The speed switches (``channels_last``, ``fused_kernels``, ``tune_malloc``, ``fast_validation``) change how
    the work is computed, never the result; ``auto`` is resolved when training starts and the resolved value is
    what the run's ``config.yaml`` records. ``threads`` None uses PyTorch's default (the cores this process may
    use). ``steps`` (optimiser steps) fixes ``epochs`` once the training data is known: the fewest whole epochs
    that make at least that many steps, the schedule fitted to them in proportion (the warm-up keeps its fraction
    of the run); ``epochs`` is then the nominal length the schedule was written for, and the resolved one is
    what the run's ``config.yaml`` records. ``time_budget_minutes`` fixes ``epochs`` from the measured cost of a
    step and a validation, and compresses the schedule to that length (:mod:`convunext.training.time_budget`);
    the resolved length and the measurements are recorded in ``time_budget_plan`` (set: never measured again,
    e.g. on resume).
    ``precise_bn_batches`` > 0 (default 4) recomputes the BatchNorm statistics on that many batches of training
    crops before each validation, so the checkpoint saved after it carries them
    (:mod:`convunext.training.batchnorm_stats`); ``validate_running_bn`` also validates with the running
    statistics before they are recomputed (the ``val_dice_running_bn`` column; one more validation each time);
    ``ema_decay`` keeps an exponential moving average of the weights, validated and saved as ``ema_best.*``.
    ``recompute_activations`` has every block recompute its activations in backward instead of storing them
    (:meth:`~convunext.models.base.SegmentationModel.set_grad_checkpointing`): less memory for about one more
    forward pass, the same result.
    """

    epochs: int = 300
    steps: int | None = None
    eval_every: int = 1
    early_stopping_patience: int | None = None
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    cpu_bf16: bool = False
    channels_last: Switch = "auto"
    fused_kernels: Switch = "auto"
    tune_malloc: Switch = "auto"
    fast_validation: Switch = "auto"
    threads: int | None = None
    time_budget_minutes: float | None = None
    time_budget_plan: dict[str, Any] | None = None
    precise_bn_batches: int = 4
    validate_running_bn: bool = False
    ema_decay: float | None = None
    recompute_activations: bool = False
    grad_clip_norm: float | None = 1.0
    loss_ce_weight: float = 1.0
    loss_dice_weight: float = 1.0
    output_dir: str = "runs"
    run_name: str | None = None
    progress_bar: bool = True
    tensorboard: bool = False


@dataclass
class ExperimentConfig:
    """Everything one training run needs. ``ExperimentConfig.from_yaml(path, overrides)`` builds one."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def validate(self, source: str = "config") -> None:
        """Refuse values that would train nothing or something else than asked: a non-positive length (epochs,
        batch, crop, evaluation cadence...), a rate out of its range, or a run name that is not one plain folder
        name (it would write outside ``train.output_dir``). One line naming the field; ``source`` prefixes it."""
        for key, (valid, expected) in LIMITS.items():
            section, name = key.split(".")
            value = getattr(getattr(self, section), name)
            if value is not None and not valid(value):
                raise ConvUNeXtError(f"{source}: {key}={_shown(_plain(value))} is not valid; expected {expected}")
        if self.train.steps is not None and self.train.time_budget_minutes is not None:
            raise ConvUNeXtError(
                f"{source}: train.steps and train.time_budget_minutes both fix the run's length; set one of them"
            )
        if self.train.loss_ce_weight == 0 and self.train.loss_dice_weight == 0:
            raise ConvUNeXtError(
                f"{source}: train.loss_ce_weight and train.loss_dice_weight are both 0; the loss would be 0"
            )

    def to_dict(self) -> dict[str, Any]:
        """A plain, YAML/JSON-serialisable dict (tuples become lists)."""
        return _plain(asdict(self))

    def to_yaml(self, path: str | Path) -> None:
        """Write the resolved configuration to ``path``."""
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False), encoding="utf-8")

    def differences(self, other: ExperimentConfig, ignore: Collection[str] = ()) -> list[tuple[str, Any, Any]]:
        """``(SECTION.FIELD, this value, other's value)`` of every field where ``other`` differs, in field order,
        but those of ``ignore`` (a field, or a mapping and all its keys); mappings (``model.kwargs``,
        ``data.options``) are compared key by key (``model.kwargs.width``), a key that one side lacks counting as
        None there."""
        mine, theirs = _flat(self.to_dict()), _flat(other.to_dict())
        keys = list(mine) + [key for key in theirs if key not in mine]
        return [
            (key, mine.get(key), theirs.get(key))
            for key in keys
            if mine.get(key) != theirs.get(key) and not any(key == f or key.startswith(f"{f}.") for f in ignore)
        ]

    @classmethod
    def from_dict(
        cls, raw: dict[str, Any], source: str = "config", overrides: list[str] | None = None
    ) -> ExperimentConfig:
        """Build from a nested dict, then apply ``section.field=value`` overrides; unknown keys are errors."""
        raw = {key: dict(value) if isinstance(value, dict) else value for key, value in (raw or {}).items()}
        for override in overrides or []:
            _apply_override(raw, override)
        if not isinstance(raw, dict):
            raise ConvUNeXtError(f"{source}: expected a mapping of sections, got {type(raw).__name__}")
        _rename_fields(raw, source)
        unknown = set(raw) - {f.name for f in fields(cls)}
        if unknown:
            raise ConvUNeXtError(
                f"{source}: unknown section {sorted(unknown)[0]!r}; valid sections: model, data, optim, train"
            )
        optim_raw = raw.get("optim") or {}
        base_optim = OptimConfig.for_recipe(optim_raw.get("recipe", "paper"))
        config = cls(
            model=_build(ModelConfig, raw.get("model"), f"{source}: model", ModelConfig()),
            data=_build(DataConfig, raw.get("data"), f"{source}: data", DataConfig()),
            optim=_build(OptimConfig, optim_raw, f"{source}: optim", base_optim),
            train=_build(TrainConfig, raw.get("train"), f"{source}: train", TrainConfig()),
        )
        config.validate(source)
        return config

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: list[str] | None = None) -> ExperimentConfig:
        """Load ``path`` (a YAML file, or the name of a built-in preset) and apply ``overrides``."""
        resolved = resolve_preset(path)
        try:
            raw = yaml.safe_load(resolved.read_text(encoding="utf-8"))
        except UnicodeDecodeError as error:
            raise ConvUNeXtError(
                f"{resolved}: not UTF-8 text (byte 0x{error.object[error.start]:02x} at offset {error.start}); "
                "save it as UTF-8"
            ) from error
        except yaml.YAMLError as error:
            raise ConvUNeXtError(f"{resolved}: not valid YAML ({str(error).splitlines()[0]})") from error
        if raw is not None and not isinstance(raw, dict):
            raise ConvUNeXtError(f"{resolved}: expected a mapping of sections, got {type(raw).__name__}")
        return cls.from_dict(raw or {}, str(resolved), overrides)


NAME_MAX_BYTES = 255
"""The longest file or folder name that common file systems take (ext4, APFS, NTFS: 255 bytes or characters)."""


def _plain_folder_name(name: str) -> bool:
    """One path component on every OS: no ``/`` or ``\\``, no drive, not ``.`` or ``..``, not over-long."""
    plain = name not in (".", "..") and PurePosixPath(name).name == name and PureWindowsPath(name).name == name
    return plain and len(name.encode()) <= NAME_MAX_BYTES


def _short_names(path: str) -> bool:
    return all(len(part.encode()) <= NAME_MAX_BYTES for part in Path(path).parts)


_POSITIVE_INTEGER = (lambda v: v >= 1, "a positive integer")
_POSITIVE = (lambda v: v > 0 and math.isfinite(v), "a positive number")
_NON_NEGATIVE = (lambda v: v >= 0 and math.isfinite(v), "a number >= 0")
LIMITS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "data.crop_size": _POSITIVE_INTEGER,
    "data.eval_tile_size": _POSITIVE_INTEGER,
    "data.num_workers": (lambda v: v >= 0, "an integer >= 0"),
    "data.scale_range": (lambda v: 0 < v[0] <= v[1] and math.isfinite(v[1]), "[low, high] with 0 < low <= high"),
    "optim.lr": _POSITIVE,
    "optim.weight_decay": _NON_NEGATIVE,
    "optim.batch_size": _POSITIVE_INTEGER,
    "optim.warmup_epochs": _NON_NEGATIVE,
    "optim.warmup_start_factor": (lambda v: 0 <= v <= 1, "a number from 0 to 1"),
    "optim.decay_gamma": (lambda v: 0 < v <= 1, "a number in (0, 1] (a decay)"),
    "optim.poly_power": _POSITIVE,
    "train.epochs": _POSITIVE_INTEGER,
    "train.steps": _POSITIVE_INTEGER,
    "train.seed": (lambda v: 0 <= v < 2**32, "an integer from 0 to 4294967295"),
    "train.threads": _POSITIVE_INTEGER,
    "train.time_budget_minutes": _POSITIVE,
    "train.precise_bn_batches": (lambda v: v >= 0, "an integer >= 0 (0 = off)"),
    "train.ema_decay": (lambda v: 0 < v < 1, "a number in (0, 1), e.g. 0.999"),
    "train.eval_every": _POSITIVE_INTEGER,
    "train.early_stopping_patience": _POSITIVE_INTEGER,
    "train.grad_clip_norm": _NON_NEGATIVE,
    "train.loss_ce_weight": _NON_NEGATIVE,
    "train.loss_dice_weight": _NON_NEGATIVE,
    "train.run_name": (
        _plain_folder_name,
        f"a plain folder name of at most {NAME_MAX_BYTES} bytes inside train.output_dir (no '/', '\\', '.' or '..')",
    ),
    "train.output_dir": (_short_names, f"a path whose every folder name has at most {NAME_MAX_BYTES} bytes"),
}
"""What :meth:`ExperimentConfig.validate` accepts per field (``None`` is always accepted where the type allows it)."""


def list_presets() -> list[str]:
    """Names of the built-in YAML presets (``synthetic``, ``drive``, ``glas``, ``hrf``)."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def resolve_preset(name_or_path: str | Path) -> Path:
    """A path to an existing YAML file, or a built-in preset's file for a bare preset name."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    preset = PRESET_DIR / f"{name_or_path}.yaml"
    if preset.is_file():
        return preset
    raise ConvUNeXtError(f"{name_or_path}: no such config file or preset; presets: {', '.join(list_presets())}")


RENAMED_FIELDS = {"train.activation_checkpointing": "train.recompute_activations"}
"""Fields renamed since the runs in ``reports/`` were recorded: a configuration that uses the old name (a run's
``config.yaml``, the configuration in its training state) loads as if it used the new one."""


def _rename_fields(raw: dict[str, Any], source: str) -> None:
    """Move the values of :data:`RENAMED_FIELDS`'s old names in ``raw`` (its sections are copies) to the new."""
    for old, new in RENAMED_FIELDS.items():
        section, old_name = old.split(".")
        new_name = new.split(".")[1]
        values = raw.get(section)
        if isinstance(values, dict) and old_name in values:
            if new_name in values:
                raise ConvUNeXtError(f"{source}: {old} is the old name of {new}; give only {new}")
            values[new_name] = values.pop(old_name)


def _apply_override(raw: dict[str, Any], override: str) -> None:
    key, sep, text = override.partition("=")
    parts = key.strip().split(".")
    if not sep or len(parts) < 2 or not all(parts):
        raise ConvUNeXtError(f"--set {override!r}: expected SECTION.FIELD=VALUE, e.g. train.epochs=20")
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError as error:
        raise ConvUNeXtError(f"--set {override!r}: value is not valid YAML") from error
    node = raw
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        elif not isinstance(child, dict):
            raise ConvUNeXtError(f"--set {override!r}: {part!r} is not a section")
        else:
            child = node[part] = dict(child)
        node = child
    node[parts[-1]] = value


def _build(cls: type, raw: Any, where: str, base: Any) -> Any:
    if raw is None:
        return base
    if not isinstance(raw, dict):
        raise ConvUNeXtError(f"{where}: expected a mapping, got {type(raw).__name__}")
    hints = get_type_hints(cls)
    valid = {f.name for f in fields(cls)}
    values = {}
    for key, value in raw.items():
        if key not in valid:
            raise ConvUNeXtError(f"{where}: unknown field {key!r}; valid fields: {', '.join(sorted(valid))}")
        values[key] = _coerce(value, hints[key], f"{where}.{key}")
    return dataclasses.replace(base, **values)


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Check ``value`` against the type ``hint`` (int accepted for float; lists for tuples); raise on mismatch."""
    origin, args = get_origin(hint), get_args(hint)
    if origin is Literal:
        if isinstance(value, bool) and {"on", "off"} <= set(args):  # YAML reads on/off/yes/no as booleans
            value = "on" if value else "off"
        if isinstance(value, bool) or value not in args:
            raise ConvUNeXtError(f"{where}={value!r} is not valid; choose one of {', '.join(map(str, args))}")
        return value
    if args and type(None) in args:  # Optional[...]
        if value is None:
            return None
        remaining = [a for a in args if a is not type(None)]
        return _coerce(value, remaining[0], where)
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConvUNeXtError(f"{where}={value!r} is not valid; expected a list of {len(args)} numbers")
        return tuple(_coerce(v, a, where) for v, a in zip(value, args))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConvUNeXtError(f"{where}={value!r} is not valid; expected a mapping")
        return dict(value)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConvUNeXtError(f"{where}={value!r} is not valid; expected true or false")
        return value
    if hint is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
            with contextlib.suppress(ValueError):
                value = float(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConvUNeXtError(f"{where}={value!r} is not valid; expected a number")
        return float(value)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConvUNeXtError(f"{where}={value!r} is not valid; expected an integer")
        return value
    if hint is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConvUNeXtError(f"{where}={value!r} is not valid; expected a string")
        return str(value)
    return value


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}, "c": {}}`` as ``{"a.b": 1}``: the leaves of nested mappings, by dotted key."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _shown(value: Any, limit: int = 60) -> str:
    """``repr(value)``, cut to about ``limit`` characters (a 300-character run name stays a readable line)."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 5]}...{text[-2:]}"


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
