"""Pretrained models shipped inside the package: ``load_pretrained("drive-vessels")`` works after ``pip install``,
with no download.

Each model is a checkpoint in this folder (``NAME.safetensors``, float16 to keep the wheel small, and ``NAME.json``)
whose JSON carries a ``pretrained`` card: what it segments, the data and recipe it was trained with, how the run
was chosen, its test metrics and the data set's terms of use. Loading verifies the weights' SHA-256 (as every
checkpoint load does) and widens them to float32.

A better run replaces a model with one command: ``convunext export RUN --pretrained NAME`` (:func:`publish_pretrained`).
"""

from __future__ import annotations

import csv
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save

from ..checkpoint import Checkpoint, load_checkpoint, read_checkpoint_meta
from ..errors import ConvUNeXtError
from ..utils.io import atomic_write_files, sha256_bytes

__all__ = [
    "DATASET_TERMS",
    "PRETRAINED_DIR",
    "PretrainedCard",
    "list_pretrained",
    "load_pretrained",
    "pretrained_path",
    "publish_pretrained",
    "resolve_checkpoint",
    "shipped_name",
]

PRETRAINED_DIR = Path(__file__).resolve().parent
"""Where the shipped models live (package data)."""

DATASET_TERMS = {
    "drive": "DRIVE (Staal et al., IEEE TMI 2004) is distributed by its authors for research use; cite the paper. "
    "These weights are derived from it: research use only, not for diagnosis.",
    "glas": "GlaS (Sirinukunwattana et al., Medical Image Analysis 2017) is distributed for research use by the "
    "challenge organisers; cite the paper. These weights are derived from it: research use only, not for diagnosis.",
    "hrf": "HRF (Budai et al., International Journal of Biomedical Imaging 2013) is distributed for research use; "
    "cite the paper. These weights are derived from it: research use only, not for diagnosis.",
}
"""Terms of use of each data set, as stated on the cards of models trained on it."""


@dataclass(frozen=True)
class PretrainedCard:
    """What a shipped model is: its name, architecture, task, data, test metrics and terms of use."""

    name: str
    model: str
    task: str
    data: str
    selection: str
    test_metrics: dict[str, float]
    terms: str
    reference_image: dict[str, Any] | None = None
    """The first test image's ``name`` and ``dice_fg``, to check the weights on one image."""

    @classmethod
    def from_meta(cls, name: str, meta: dict[str, Any]) -> PretrainedCard:
        card = meta.get("pretrained")
        if not isinstance(card, dict):
            raise ConvUNeXtError(f"pretrained model {name!r}: its JSON has no 'pretrained' card")
        return cls(
            name=name,
            model=meta["model"]["name"],
            task=card["task"],
            data=card["data"],
            selection=card["selection"],
            test_metrics=dict(card["test_metrics"]),
            terms=card["terms"],
            reference_image=card.get("reference_image"),
        )


def _folder(folder: str | Path | None) -> Path:
    return Path(folder) if folder is not None else PRETRAINED_DIR


def list_pretrained(folder: str | Path | None = None) -> list[PretrainedCard]:
    """The cards of every model in ``folder`` (default: the shipped ones), by name."""
    cards = []
    for path in sorted(_folder(folder).glob("*.json")):
        meta, _ = read_checkpoint_meta(path)
        cards.append(PretrainedCard.from_meta(path.stem, meta))
    return cards


def available_names(folder: str | Path | None = None) -> str:
    """The shipped models' names for an error message: ``"a, b"``, or ``"none"``."""
    return ", ".join(card.name for card in list_pretrained(folder)) or "none"


def pretrained_path(name: str, folder: str | Path | None = None) -> Path:
    """The ``NAME.json`` of a shipped model; a one-line error listing the available names if there is none."""
    path = _folder(folder) / f"{name}.json"
    if not path.is_file():
        raise ConvUNeXtError(f"no pretrained model named {name!r} (available: {available_names(folder)})")
    return path


def load_pretrained(
    name: str, map_location: str | torch.device = "cpu", folder: str | Path | None = None
) -> Checkpoint:
    """Load a shipped model (weights checked against their SHA-256, widened to float32), ready for
    :class:`~convunext.inference.predictor.Predictor` or :func:`~convunext.evaluation.evaluate.evaluate_checkpoint`.

    The model returns ``N x K x H x W`` logits for ``N x C x H x W`` images normalised with the checkpoint's
    ``mean`` and ``std``.
    """
    checkpoint = load_checkpoint(pretrained_path(name, folder), map_location)
    checkpoint.model.float()
    return checkpoint


def _is_model_name(text: str) -> bool:
    """Whether ``text`` can name a shipped model: letters, digits and ``-`` (so never a path)."""
    return bool(text) and all(c.isalnum() or c == "-" for c in text)


def shipped_name(checkpoint_path: str | Path, folder: str | Path | None = None) -> str | None:
    """The name of the shipped model whose checkpoint JSON ``checkpoint_path`` is, or None for any other path."""
    path = Path(checkpoint_path)
    return path.stem if path.parent.resolve() == _folder(folder).resolve() else None


def resolve_checkpoint(argument: str, folder: str | Path | None = None) -> str:
    """A CLI checkpoint argument: a path as given, or the name of a shipped model (its JSON path).

    When the argument is both a shipped model's name and a local path, the path wins if it is a folder holding a
    checkpoint (``best.json`` or ``last.json``: a run), else the shipped model does (a report folder named after
    the model, say); one line on stderr says which was used.
    """
    shipped = _folder(folder) / f"{argument}.json"
    local = Path(argument)
    if not _is_model_name(argument) or not shipped.is_file():
        return argument
    if not local.exists():
        return str(shipped)
    if local.is_dir() and any((local / f"{tag}.json").is_file() for tag in ("best", "last")):
        print(f"convunext: {argument}: using the run folder here, not the shipped pretrained model", file=sys.stderr)
        return argument
    print(
        f"convunext: {argument}: using the shipped pretrained model ({local} here holds no checkpoint)",
        file=sys.stderr,
    )
    return str(shipped)


def _reference_image(per_image_csv: Path) -> dict[str, Any] | None:
    """The first test image's name and Dice (``per_image.csv`` beside the test report), for a quick check of the
    shipped weights on one image; None without the file."""
    if not per_image_csv.is_file():
        return None
    with open(per_image_csv, newline="") as handle:
        first = next(csv.DictReader(handle), None)
    return None if first is None else {"name": first["name"], "dice_fg": float(first["dice_fg"])}


def _read_test_report(path: Path) -> dict[str, Any]:
    """An evaluation report's ``metrics.json`` (its context and ``metrics``), or a one-line error naming it."""
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ConvUNeXtError(f"{path}: cannot read the test report ({error})") from error
    if not isinstance(report, dict) or not isinstance(report.get("metrics"), dict):
        raise ConvUNeXtError(f"{path}: not an evaluation report (no 'metrics'); give the metrics.json of one")
    return report


def _card_dataset(checkpoint: Checkpoint, report: dict[str, Any], report_path: Path) -> str:
    """The data set the card names: the one the checkpoint was trained on, which the report must be an evaluation
    on (a checkpoint that does not record its training data takes the report's)."""
    evaluated_on = report.get("dataset")
    if not isinstance(evaluated_on, str) or not evaluated_on:
        raise ConvUNeXtError(
            f"{report_path}: names no dataset, so the card could not say what its metrics were measured on; "
            "give the metrics.json of a `convunext evaluate` run"
        )
    trained_on = checkpoint.meta.get("data", {}).get("name")
    if trained_on and evaluated_on != trained_on:
        raise ConvUNeXtError(
            f"{report_path}: an evaluation on {evaluated_on!r}, but {checkpoint.path} was trained on "
            f"{trained_on!r}; the card states test metrics on its training data: evaluate it on {trained_on!r}"
        )
    return trained_on or evaluated_on


def publish_pretrained(
    checkpoint_path: str | Path,
    name: str,
    test_report: str | Path,
    task: str,
    selection: str,
    folder: str | Path | None = None,
) -> Path:
    """Write a checkpoint as a pretrained model ``folder/NAME.{safetensors,json}`` (float16 weights, the card).

    Args:
        checkpoint_path: the run's checkpoint (run folder, ``.json`` or ``.safetensors``).
        name: the model's name (``drive-vessels``); letters, digits and ``-``.
        test_report: the ``metrics.json`` of that checkpoint's test evaluation (``convunext evaluate``, or a
            reproduce run's ``test/metrics.json``); its weights must be the checkpoint's and its dataset the one
            the checkpoint was trained on, which the card names.
        task: one line on what the model segments.
        selection: one line on how the run was chosen (on validation).

    Both files are written together (:func:`~convunext.utils.io.atomic_write_files`): a failure leaves the
    earlier pair, if any, as it was.

    Returns:
        The JSON path written.

    Raises:
        ConvUNeXtError: a bad name, or a report that is unreadable or not of these weights, split or data set.
    """
    if not _is_model_name(name):
        raise ConvUNeXtError(f"pretrained name {name!r}: use letters, digits and '-' only")
    checkpoint = load_checkpoint(checkpoint_path)
    report_path = Path(test_report)
    report = _read_test_report(report_path)
    if report.get("weights_sha256") != checkpoint.meta["weights"]["sha256"]:
        raise ConvUNeXtError(f"{report_path}: this report is not of {checkpoint.path} (other weights, or none named)")
    if report.get("split") != "test":
        raise ConvUNeXtError(
            f"{report_path}: the card states test metrics, this report is of the {report.get('split')!r} split"
        )
    dataset = _card_dataset(checkpoint, report, report_path)
    reference = _reference_image(report_path.parent / "per_image.csv")
    folder = _folder(folder)
    weights_path, json_path = folder / f"{name}.safetensors", folder / f"{name}.json"
    state = {
        key: (tensor.half() if tensor.is_floating_point() else tensor).contiguous()
        for key, tensor in checkpoint.model.state_dict().items()
    }
    weights = save(state)
    metrics = report["metrics"]
    keys = ("dice_fg_mean", "miou_cm", "fov_sensitivity", "fov_specificity", "fov_accuracy", "fov_auc", "cldice_mean")
    meta = {key: value for key, value in checkpoint.meta.items() if key not in ("weights", "state")}
    meta["weights"] = {"file": weights_path.name, "sha256": sha256_bytes(weights), "dtype": "float16"}
    meta["pretrained"] = {
        "task": task,
        "data": f"{dataset} ({report.get('images')} test images evaluated)",
        "selection": selection,
        "test_metrics": {key: metrics[key] for key in keys if metrics.get(key) is not None},
        "test_evaluation": {k: report.get(k) for k in ("dataset", "split", "images", "tile_size")},
        "terms": DATASET_TERMS.get(dataset, "see the terms of use of the data set it was trained on"),
    }
    if reference is not None:
        meta["pretrained"]["reference_image"] = reference
    card = (json.dumps(meta, indent=2) + "\n").encode("utf-8")
    atomic_write_files([(weights_path, weights), (json_path, card)])  # both or neither; the JSON names the weights
    return json_path
