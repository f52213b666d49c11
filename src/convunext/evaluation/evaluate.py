"""Evaluate a model on a dataset split and write the report (``metrics.json``, ``per_image.csv``, ``metrics.md``).

For datasets with a field of view (DRIVE, HRF) pixels outside it are marked ignore (255) for Dice, mIoU and
pixel accuracy, as the authors' reference code does; the ``fov_*`` vessel metrics are computed inside the FOV.
For these vessel datasets the topology metrics (clDice, connected components; :mod:`~convunext.evaluation.topology`)
are on by default.
"""

from __future__ import annotations

import csv
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset
from tqdm import tqdm

from ..data import open_dataset
from ..data.base import Sample
from ..data.detect import detect_dataset
from ..data.io import IGNORE_INDEX
from ..errors import ConvUNeXtError
from ..inference.sliding_window import predict_probabilities
from ..pretrained import PRETRAINED_DIR
from ..utils.device import resolve_device
from ..utils.io import atomic_path, atomic_write_json, atomic_write_text
from ..utils.table import markdown_table
from .html_report import ReportGallery, write_html_report
from .metrics import SegmentationMetrics

if TYPE_CHECKING:
    from ..checkpoint import Checkpoint

# (key in SegmentationMetrics.compute(), label in the printed table)
REPORTED_METRICS: tuple[tuple[str, str], ...] = (
    ("dice_fg_mean", "Dice (per-image foreground, mean)"),
    ("dice_fg_std", "Dice std over images"),
    ("miou_cm", "mIoU (dataset confusion matrix, incl. background)"),
    ("iou_fg_cm", "foreground IoU (dataset confusion matrix)"),
    ("pixel_accuracy", "global pixel accuracy"),
    ("fov_sensitivity", "sensitivity inside FOV"),
    ("fov_specificity", "specificity inside FOV"),
    ("fov_accuracy", "accuracy inside FOV"),
    ("fov_auc", "AUC-ROC inside FOV"),
    ("cldice_mean", "clDice (per-image centreline Dice, mean)"),
    ("components_pred_mean", "connected components per image, prediction (mean)"),
    ("components_true_mean", "connected components per image, truth (mean)"),
)

TopologyMode = Literal["auto", "on", "off"]
"""Whether to compute the topology metrics: ``auto`` = for vessel datasets (those with a field of view)."""


def wants_topology(mode: TopologyMode, dataset: Dataset) -> bool:
    """Resolve ``mode`` for ``dataset``: ``on``, ``off``, or ``auto`` = whether ``dataset.info.has_fov``."""
    if mode not in ("auto", "on", "off"):
        raise ValueError(f"topology must be 'auto', 'on' or 'off', got {mode!r}")
    return mode == "on" or (mode == "auto" and _has_fov(dataset))


def _has_fov(dataset: Dataset) -> bool:
    return bool(getattr(getattr(dataset, "info", None), "has_fov", False))


@torch.inference_mode()
def evaluate_model(
    model: nn.Module,
    dataset: Dataset,
    transform: Callable[[dict[str, Any]], dict[str, Any]],
    num_classes: int,
    device: torch.device | str = "cpu",
    tile_size: int | None = None,
    overlap: float = 0.25,
    tta: bool = False,
    progress: bool = True,
    auc: Literal["exact", "binned"] = "exact",
    on_image: Callable[[Sample, Tensor], None] | None = None,
    topology: TopologyMode = "auto",
) -> SegmentationMetrics:
    """Run ``model`` over every sample of ``dataset`` (one image at a time, any size) and accumulate metrics.

    Args:
        model: returns ``N x K x H x W`` logits in eval mode.
        dataset: yields samples ``{"image": C x H x W, "mask": H x W, "fov": H x W bool, "name": str}``.
        transform: the evaluation transform (normalisation), applied to each sample.
        num_classes: ``K``.
        tile_size: sliding-window tile (``None``: whole images).
        auc: how the FOV AUC is computed: ``"exact"`` (keeps every FOV pixel's score, 4 bytes each) or
            ``"binned"`` (fixed memory, error at most the reported ``fov_auc_error_bound``); see
            :class:`~convunext.evaluation.metrics.FovMetrics`.
        on_image: called with each sample as the dataset gives it (before normalisation) and its
            ``1 x K x H x W`` probabilities, e.g. a :class:`~convunext.evaluation.html_report.ReportGallery`.
        topology: clDice and connected-component counts per image (:func:`wants_topology`: ``auto`` = for
            datasets with a field of view); each image's masks are skeletonised once on the CPU (about a second
            per HRF image).

    Images with a side under the model's minimum (16 px) are padded for the forward pass and cropped back
    (:func:`~convunext.inference.sliding_window.predict_probabilities`); the metrics count their own pixels only.
    """
    model.eval()
    metrics = SegmentationMetrics(
        num_classes=num_classes, ignore_index=IGNORE_INDEX, auc=auc, topology=wants_topology(topology, dataset)
    )
    has_fov = _has_fov(dataset)
    for index in tqdm(range(len(dataset)), desc="evaluate", unit="image", disable=not progress):  # type: ignore[arg-type]
        raw = dataset[index]
        sample = transform(raw)
        probabilities = predict_probabilities(
            model, sample["image"][None], tile_size=tile_size, overlap=overlap, tta_flips=tta, device=device
        )
        if on_image is not None:
            on_image(raw, probabilities)
        target = sample["mask"][None]
        fov = sample["fov"][None] if has_fov else None
        if fov is not None:
            target = target.masked_fill(~fov, IGNORE_INDEX)
        metrics.update(probabilities, target, fov, [sample["name"]], logits=False)
    return metrics


def evaluate_checkpoint(
    checkpoint: Checkpoint,
    dataset: Dataset,
    device: torch.device | str = "cpu",
    tile_size: int | None = None,
    tta: bool = False,
    progress: bool = True,
    auc: Literal["exact", "binned"] = "exact",
    backend: str = "fast",
    on_image: Callable[[Sample, Tensor], None] | None = None,
    topology: TopologyMode = "auto",
) -> SegmentationMetrics:
    """:func:`evaluate_model` with a checkpoint's own model, normalisation and classes, run by ``backend``
    (:func:`~convunext.inference.optimize.make_backend`; ``fast`` equals ``eager`` within float32 rounding)."""
    from ..data import EvalTransform
    from ..inference.optimize import make_backend

    return evaluate_model(
        make_backend(checkpoint.model.to(device).eval(), backend),
        dataset,
        EvalTransform(checkpoint.mean, checkpoint.std),
        len(checkpoint.class_names),
        device=device,
        tile_size=tile_size,
        tta=tta,
        progress=progress,
        auc=auc,
        on_image=on_image,
        topology=topology,
    )


def metrics_table(results: dict[str, Any]) -> str:
    """The dataset-level metrics as a two-column Markdown table (only those present)."""
    rows = [
        [label, f"{results[key]:.4f}"]
        for key, label in REPORTED_METRICS
        if key in results and not (isinstance(results[key], float) and math.isnan(results[key]))
    ]
    rows.append(["images", str(results["num_images"])])
    return markdown_table(["metric", "value"], rows)


def write_report(
    metrics: SegmentationMetrics,
    out_dir: str | Path,
    context: dict[str, Any],
    class_names: Sequence[str],
    gallery: ReportGallery | None = None,
    html: bool = True,
) -> tuple[str, dict[str, Any]]:
    """Write ``metrics.json`` (with ``context``: checkpoint, dataset, split...), ``per_image.csv``, ``metrics.md``
    and (``html``) ``report.html`` with ``gallery``'s pictures into ``out_dir``; return the printed table and the
    results."""
    out_dir = Path(out_dir)
    results = metrics.compute()
    results["iou_per_class"] = dict(zip(class_names, results["iou_per_class"]))
    atomic_write_json(out_dir / "metrics.json", {**context, "metrics": _json_safe(results)})
    rows = metrics.per_image()
    with atomic_path(out_dir / "per_image.csv") as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]) if rows else ["name"])
        writer.writeheader()
        writer.writerows({k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in row.items()} for row in rows)
    table = metrics_table(results)
    header = "\n".join(f"- {key}: {value}" for key, value in context.items())
    atomic_write_text(out_dir / "metrics.md", f"# Evaluation\n\n{header}\n\n{table}\n")
    if html:
        roc = metrics.fov.roc_curve() if "fov_auc" in results else None
        write_html_report(out_dir / "report.html", results, rows, context, REPORTED_METRICS, gallery, roc)
    return table, results


@dataclass
class EvaluationReport:
    """An evaluation report folder (``metrics.json``, ``per_image.csv``, ``metrics.md``) and what it holds."""

    out_dir: Path
    context: dict[str, Any]
    results: dict[str, Any]


def evaluated_dataset_name(data: str | Path, layout: str | None = None) -> str:
    """The dataset that DATA names, as ``convunext evaluate`` reads it: ``synthetic``, else ``layout`` or the layout
    detected in the folder (``drive``, ``glas``, ``hrf``, ``folder``)."""
    if str(data) == "synthetic":
        return "synthetic"
    return layout or detect_dataset(Path(data))


def default_report_dir(checkpoint_path: Path, dataset: str, split: str) -> Path:
    """Where ``convunext evaluate`` writes a checkpoint's report unless told otherwise: ``RUN/eval-DATASET-SPLIT``;
    for a model shipped with the package, ``./NAME/eval-DATASET-SPLIT`` (never into the installed package)."""
    base = Path(checkpoint_path.stem) if checkpoint_path.parent == PRETRAINED_DIR else checkpoint_path.parent
    return base / f"eval-{dataset}-{split}"


def evaluate_to_report(
    checkpoint: Checkpoint,
    data: str | Path,
    split: str = "test",
    *,
    layout: str | None = None,
    out_dir: str | Path | None = None,
    device: str = "auto",
    tile_size: int | None = None,
    tta: bool = False,
    auc: Literal["exact", "binned"] = "exact",
    backend: str = "fast",
    progress: bool = True,
    topology: TopologyMode = "auto",
    html: bool = True,
    full_maps: bool = False,
) -> EvaluationReport:
    """Evaluate ``checkpoint`` on a split of DATA and write the report (``convunext evaluate``).

    Args:
        data: ``"synthetic"`` (with the options the checkpoint was trained on) or a dataset folder.
        layout: the folder's layout (default: detected, :func:`evaluated_dataset_name`).
        out_dir: the report folder (default: :func:`default_report_dir`).
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        tile_size: sliding-window tile (default: the checkpoint's training setting; ``0``: whole images).
        tta, auc, backend, progress, topology: as :func:`evaluate_checkpoint`.
        html: also write ``report.html`` (:mod:`~convunext.evaluation.html_report`) with each image's thumbnails.
        full_maps: also write each image's full-size prediction and error map under ``OUT/maps/``.

    The context in ``metrics.json`` records the checkpoint, the SHA-256 of its weights, the data and the settings,
    so that :func:`reusable_report` can tell later whether the report still describes the checkpoint.

    Raises:
        ConvUNeXtError: a missing or malformed dataset, or images with another number of channels than the
            checkpoint expects.
    """
    trained_on = checkpoint.meta.get("data", {})
    name = evaluated_dataset_name(data, layout)
    root = None if name == "synthetic" else Path(data)
    options = trained_on.get("options", {}) if name == "synthetic" and trained_on.get("name") == "synthetic" else {}
    dataset = open_dataset(name, root, split, **options)
    expected_channels = len(checkpoint.mean)
    if dataset.info.in_channels != expected_channels:  # type: ignore[attr-defined]
        raise ConvUNeXtError(
            f"{data}: images have {dataset.info.in_channels} channels, "  # type: ignore[attr-defined]
            f"the checkpoint expects {expected_channels}"
        )
    tile = tile_size if tile_size is not None else trained_on.get("eval_tile_size")
    out = Path(out_dir) if out_dir else default_report_dir(checkpoint.path, name, split)
    gallery = ReportGallery(full_maps_dir=out / "maps" if full_maps else None) if html else None
    start = time.perf_counter()
    metrics = evaluate_checkpoint(
        checkpoint,
        dataset,
        device=resolve_device(device),
        tile_size=tile or None,
        tta=tta,
        progress=progress,
        auc=auc,
        backend=backend,
        on_image=gallery,
        topology=topology,
    )
    context = {
        "checkpoint": str(checkpoint.path),
        "weights_sha256": checkpoint.meta["weights"]["sha256"],
        "model": checkpoint.meta["model"]["name"],
        "dataset": name,
        "data": str(root) if root else name,
        "split": split,
        "images": len(dataset),  # type: ignore[arg-type]
        "tta": tta,
        "tile_size": tile,
        "auc": auc,
        "topology": topology,
        "backend": backend,
        "seconds": round(time.perf_counter() - start, 1),
    }
    _, results = write_report(metrics, out, context, checkpoint.class_names, gallery, html=html)
    return EvaluationReport(out, context, results)


def reusable_report(
    checkpoint_path: Path, meta: Mapping[str, Any], data: str | Path, split: str, layout: str | None = None
) -> EvaluationReport | None:
    """An existing report that evaluating the checkpoint again (:func:`evaluate_to_report` with its default tile
    size and no TTA) would reproduce, or None.

    Looked for beside the checkpoint ``checkpoint_path`` (described by ``meta``): in ``eval-DATASET-SPLIT/``
    (``convunext evaluate``) and, for the test split, ``test/`` (``convunext reproduce``). A report is reused when it
    has ``metrics.json`` and ``per_image.csv`` and was made from the same weights (SHA-256), dataset and split, at
    the checkpoint's tile size and without TTA, and, when it names its data folder, from the same folder.
    """
    name = evaluated_dataset_name(data, layout)
    folders = [default_report_dir(checkpoint_path, name, split)]
    if split == "test":
        folders.append(checkpoint_path.parent / "test")
    wanted = {
        "weights_sha256": meta["weights"]["sha256"],
        "dataset": name,
        "split": split,
        "tta": False,
        "tile_size": meta.get("data", {}).get("eval_tile_size") or None,
    }
    for folder in folders:
        if not ((folder / "metrics.json").is_file() and (folder / "per_image.csv").is_file()):
            continue
        report = json.loads((folder / "metrics.json").read_text())
        found = {**report, "tta": bool(report.get("tta")), "tile_size": report.get("tile_size") or None}
        same_data = "data" not in report or Path(report["data"]).resolve() == Path(data).resolve()
        if same_data and all(found.get(key) == value for key, value in wanted.items()):
            return EvaluationReport(folder, report, report.pop("metrics"))
    return None


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value
