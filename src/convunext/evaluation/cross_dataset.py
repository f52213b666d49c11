"""Cross-dataset evaluation (``convunext cross-evaluate``): every checkpoint on the test split of every retinal vessel
dataset under a data root, with and without scale matching, as a train-on-X / test-on-Y table.

Each (checkpoint, dataset, scale setting) is an ordinary evaluation report
(:func:`~convunext.evaluation.evaluate.evaluate_to_report`) in ``OUT/runs/LABEL/DATASET-SCALE/``, made at the
checkpoint's validation threshold. A report that still describes the pair (same weights, data, options, tile size,
overlap, TTA, threshold and scale setting) is reused, so an interrupted run continues where it stopped.
:func:`cross_evaluate` then writes ``cross-dataset.md``, ``cross-dataset.csv`` and ``cross-dataset.json`` into
``OUT``: Dice, AUC and clDice per model (rows) and test dataset (columns), the scale factors applied and the minutes
each evaluation took.
"""

from __future__ import annotations

import csv
import json
import math
import platform
import re
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from ..checkpoint import Checkpoint, load_checkpoint, read_checkpoint_meta
from ..data import default_data_root, open_dataset
from ..data.registry import dataset_spec, list_datasets
from ..errors import ConvUNeXtError
from ..inference.sliding_window import Inferer
from ..inference.threshold import resolve_threshold
from ..pretrained import checkpoint_reference, resolve_checkpoint, shipped_name
from ..pretrained.publish import trained_datasets
from ..utils.device import device_description
from ..utils.io import atomic_path, atomic_write_json, atomic_write_text
from ..utils.table import markdown_table
from .evaluate import EvaluationReport, check_evaluable, evaluate_to_report, operating_point
from .report_folder import EVALUATION_REPORT, ReportFolder, ReportKind

SPLIT = "test"
SCALE_SETTINGS = ("auto", "off")
"""The scale settings a cross-dataset evaluation compares (:mod:`~convunext.inference.scale`)."""
TABLE_METRICS: tuple[tuple[str, str], ...] = (
    ("dice_fg_mean", "Dice"),
    ("fov_auc", "AUC"),
    ("cldice_mean", "clDice"),
)
"""(key of ``metrics.json``, title) of the metrics tabulated, in order."""
DEFAULT_OUT = "reports/cross-dataset"
CROSS_DATASET_REPORT = ReportKind(
    "cross-dataset evaluation",
    "cross-dataset.json",
    ("cross-dataset.md", "cross-dataset.csv"),
    ("checkpoints", "pairs"),
)
CSV_FIELDS = (
    "checkpoint",
    "trained_on",
    "model",
    "dataset",
    "scale_setting",
    "in_domain",
    "dice",
    "auc",
    "cldice",
    "scale_median",
    "threshold",
    "images",
    "minutes",
    "reused",
    "report",
)


def vessel_datasets() -> list[str]:
    """The registered retinal vessel datasets (``vessel_metrics``) that have a folder of their own under a data root
    (``DRIVE/``, ...; not a combination of them), in registration order."""
    return [name for name in list_datasets() if dataset_spec(name).vessel_metrics and dataset_spec(name).folder_name]


@dataclass(frozen=True)
class CrossCheckpoint:
    """One evaluated checkpoint: ``label`` names its row and its folder ``OUT/runs/LABEL/``."""

    label: str
    path: Path
    meta: dict[str, Any]

    @property
    def trained_on(self) -> str | None:
        """The datasets it was trained on, ``"+"``-joined (``"drive"``; ``"drive+stare+hrf"`` for a ``mixed`` run,
        :func:`~convunext.pretrained.publish.trained_datasets`), or None if it does not say."""
        return "+".join(trained_datasets(self.meta)) or None

    @property
    def threshold(self) -> float | None:
        """Its validation threshold (None: the argmax, i.e. 0.5)."""
        return resolve_threshold("auto", self.meta)

    def row_title(self) -> str:
        """``LABEL (trained on DRIVE)``."""
        names = trained_datasets(self.meta)
        if not names:
            return f"{self.label} (training data unknown)"
        return f"{self.label} (trained on {' + '.join(_title(name) for name in names)})"


@dataclass(frozen=True)
class CrossPair:
    """One evaluation: a checkpoint on a dataset's test split at one scale setting."""

    checkpoint: CrossCheckpoint
    dataset: str
    scale: str
    report: EvaluationReport
    reused: bool
    scale_median: float | None
    """The median of the per-image resize factors (``per_image.csv``'s ``scale``)."""

    @property
    def in_domain(self) -> bool:
        """Whether the checkpoint was trained on this dataset (one of them, for a ``mixed`` run)."""
        return self.dataset in trained_datasets(self.checkpoint.meta)

    def metric(self, key: str) -> float | None:
        """A dataset-level metric of the report (None when absent or not a number)."""
        value = self.report.results.get(key)
        return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None

    @property
    def minutes(self) -> float:
        """The minutes the evaluation took (when it was made, for a reused report)."""
        return float(self.report.context.get("seconds", math.nan)) / 60


@dataclass
class CrossDatasetResult:
    """What :func:`cross_evaluate` evaluated and wrote."""

    out_dir: Path
    data_root: Path
    datasets: list[str]
    scales: tuple[str, ...]
    checkpoints: list[CrossCheckpoint]
    pairs: list[CrossPair]

    @property
    def table(self) -> str:
        """The Dice table (Markdown)."""
        return _metric_table(self, "dice_fg_mean")

    def pair(self, label: str, dataset: str, scale: str) -> CrossPair:
        """The evaluation of checkpoint ``label`` on ``dataset`` at ``scale``."""
        return next(p for p in self.pairs if (p.checkpoint.label, p.dataset, p.scale) == (label, dataset, scale))


def cross_evaluate(
    checkpoints: Sequence[str | Path],
    data_root: str | Path | None = None,
    datasets: Sequence[str] | None = None,
    scales: Sequence[str] = SCALE_SETTINGS,
    out_dir: str | Path = DEFAULT_OUT,
    inferer: Inferer | None = None,
    data_options: Mapping[str, Mapping[str, Any]] | None = None,
    *,
    html: bool = False,
    progress: bool = True,
    command: str | None = None,
    log: Callable[[str], None] = print,
) -> CrossDatasetResult:
    """Evaluate every checkpoint on the test split of every vessel dataset, once per scale setting, and write the
    train-on-X / test-on-Y tables (see the module docstring).

    Args:
        checkpoints: run folders, checkpoint files or names of shipped models.
        data_root: the folder holding ``DRIVE/``, ``HRF/``, ``STARE/``, ``CHASE_DB1/`` (each found as
            :meth:`~convunext.data.registry.DatasetSpec.locate` finds it; default
            :func:`~convunext.data.default_data_root`).
        datasets: the test datasets (default: every vessel dataset found under ``data_root``).
        scales: ``"auto"`` and/or ``"off"``, the order of each cell's values.
        out_dir: the report folder; an earlier cross-dataset report there is replaced whole.
        inferer: how the models run (default: each checkpoint's own tile size, no TTA, the fast back-end on the best
            device).
        data_options: reader options per dataset name, e.g. ``{"hrf": {"skip_unannotated": True}}``; those of
            datasets not evaluated are not used.
        html: also write each evaluation's ``report.html``.
        progress: show each evaluation's progress bar.
        command: the command line, quoted in the report.
        log: receives one line per pair (evaluating, or reusing its report).

    Everything is checked before any image is scored: the scale settings, the datasets, that every checkpoint fits
    every dataset (:func:`~convunext.evaluation.evaluate.check_evaluable`) and that ``out_dir`` may be written.

    Raises:
        ConvUNeXtError: a scale setting other than auto/off, an unknown or missing dataset, a data root without any
            vessel dataset, a checkpoint named twice, or one of other channels or classes than a vessel dataset's.
    """
    scales = _check_scales(scales)
    root = Path(data_root).expanduser() if data_root is not None else default_data_root()
    options = {dataset_spec(name).name: dict(values) for name, values in (data_options or {}).items()}
    folders = _locate_datasets(root, datasets)
    opened = {name: open_dataset(name, folder, SPLIT, **options.get(name, {})) for name, folder in folders.items()}
    entries = _checkpoints(checkpoints)
    for entry in entries:
        for name, dataset in opened.items():
            check_evaluable(entry.path, entry.meta, folders[name], dataset)
    inferer = inferer or Inferer()
    out = Path(out_dir)
    total = len(entries) * len(folders) * len(scales)
    with ReportFolder(out, CROSS_DATASET_REPORT) as report_folder:
        pairs = []
        for entry in entries:
            checkpoint: Checkpoint | None = None  # loaded for the first pair that is not reused
            for name, folder in folders.items():
                for scale in scales:
                    where = f"[{len(pairs) + 1}/{total}] {entry.label} on {_title(name)} ({SPLIT}, scale {scale})"
                    pair_dir = out / "runs" / entry.label / f"{name}-{scale}"
                    report = _reusable(pair_dir, entry, inferer, name, folder, scale, options.get(name))
                    reused = report is not None
                    if report is not None:
                        log(f"{where}: reused {pair_dir}")
                    else:
                        log(f"{where}: evaluating")
                        checkpoint = checkpoint or load_checkpoint(entry.path)
                        report = evaluate_to_report(
                            checkpoint,
                            folder,
                            SPLIT,
                            layout=name,
                            out_dir=pair_dir,
                            inferer=inferer,
                            progress=progress,
                            html=html,
                            data_options=options.get(name),
                            threshold="auto",
                            scale=scale,
                        )
                    median = _median_scale(report.out_dir / "per_image.csv")
                    pairs.append(CrossPair(entry, name, scale, report, reused, median))
        result = CrossDatasetResult(out, root, list(folders), scales, entries, pairs)
        _write_report(result, report_folder.staging, inferer, command)
    return result


def _check_scales(scales: Sequence[str]) -> tuple[str, ...]:
    if not scales or any(scale not in SCALE_SETTINGS for scale in scales) or len(set(scales)) < len(scales):
        given = " ".join(map(str, scales)) or "none"
        raise ConvUNeXtError(f"scales {given}: give auto, off or both, each once")
    return tuple(scales)


def _title(name: str) -> str:
    try:
        return dataset_spec(name).title
    except ConvUNeXtError:
        return name


def _locate_datasets(root: Path, datasets: Sequence[str] | None) -> dict[str, Path]:
    """``{name: folder}`` of the test datasets under ``root``: those named (each must be there), else every vessel
    dataset present (at least one)."""
    vessel = vessel_datasets()
    if datasets is None:
        found = {}
        for name in vessel:
            try:
                found[name] = dataset_spec(name).locate(root)
            except ConvUNeXtError:
                continue
        if not found:
            titles = ", ".join(f"{dataset_spec(name).folder_name}/" for name in vessel)
            raise ConvUNeXtError(f"{root}: no vessel dataset found (looked for {titles})")
        return found  # type: ignore[return-value]  # vessel datasets are read from files
    named = [str(name).lower() for name in datasets]
    if not named:
        raise ConvUNeXtError(f"no dataset named; choose from {', '.join(vessel)}, or name none to take those found")
    for index, name in enumerate(named):
        if name not in vessel:
            raise ConvUNeXtError(f"unknown vessel dataset {datasets[index]!r}; choose from {', '.join(vessel)}")
        if name in named[:index]:
            raise ConvUNeXtError(f"dataset {name} is named twice; name each once")
    return {name: dataset_spec(name).locate(root) for name in named}  # type: ignore[misc]


def _checkpoints(checkpoints: Sequence[str | Path]) -> list[CrossCheckpoint]:
    """Each checkpoint with its description and its label (:func:`checkpoint_labels`)."""
    if not checkpoints:
        raise ConvUNeXtError("cross-evaluate needs at least one checkpoint")
    described = [read_checkpoint_meta(resolve_checkpoint(str(checkpoint))) for checkpoint in checkpoints]
    resolved = [path.resolve() for _, path in described]
    repeated = next((checkpoints[i] for i, path in enumerate(resolved) if path in resolved[:i]), None)
    if repeated is not None:
        raise ConvUNeXtError(f"{repeated}: the same checkpoint is named twice")
    labels = checkpoint_labels(resolved, [meta for meta, _ in described])
    # each keeps its path as given: the reports name it so, not by a path of this machine
    return [CrossCheckpoint(label, path, meta) for label, (meta, path) in zip(labels, described)]


def _is_reproduce_run(folder: Path, model: str) -> bool:
    """Whether ``folder`` is laid out as ``convunext reproduce`` writes a run: ``DATASET/MODEL/seedN``."""
    return re.fullmatch(r"seed\d+", folder.name) is not None and folder.parent.name == model and len(folder.parts) > 3


def checkpoint_labels(paths: Sequence[Path], metas: Sequence[Mapping[str, Any]]) -> list[str]:
    """The label of each checkpoint (absolute JSON ``paths``, described by ``metas``): a shipped model's name, else
    its run folder's name (with the checkpoint's tag when it is not ``best``) and its model, ``my-run-convunext``;
    a run of ``convunext reproduce`` (``DATASET/MODEL/seedN``) by all three, ``hrf-convunext-seed0``. Labels that
    would coincide take more of their folders' parents until they differ.

    Raises:
        ConvUNeXtError: two checkpoints that no folder name tells apart.
    """
    depths = [3 if _is_reproduce_run(path.parent, meta["model"]["name"]) else 1 for path, meta in zip(paths, metas)]

    def label(index: int) -> str:
        path = paths[index]
        name = shipped_name(path)
        if name is not None:
            return name
        parts = [
            *path.parent.parts[-depths[index] :],
            *([path.stem] if path.stem not in ("best", path.parent.name) else []),
        ]
        model = metas[index]["model"]["name"]
        return "-".join(parts if model in parts else [*parts, model])

    while True:
        labels = [label(index) for index in range(len(paths))]
        clashing = [index for index, text in enumerate(labels) if labels.count(text) > 1]
        growing = [index for index in clashing if depths[index] < len(paths[index].parent.parts) - 1]
        if not growing:
            break
        for index in growing:
            depths[index] += 1
    if clashing:
        same = [str(paths[index]) for index in clashing[:2]]
        raise ConvUNeXtError(f"{same[0]} and {same[1]} would share the label {labels[clashing[0]]!r}; rename a folder")
    return labels


def _reusable(
    folder: Path,
    entry: CrossCheckpoint,
    inferer: Inferer,
    dataset: str,
    data: Path,
    scale: str,
    options: Mapping[str, Any] | None,
) -> EvaluationReport | None:
    """The report in ``folder`` if it evaluated this checkpoint's weights on this data with these reader options,
    inference settings (:meth:`~convunext.inference.sliding_window.Inferer.record`), threshold and scale setting;
    else None."""
    record = folder / EVALUATION_REPORT.record
    if not (EVALUATION_REPORT.is_record(record) and (folder / "per_image.csv").is_file()):
        return None
    report = json.loads(record.read_text(encoding="utf-8"))
    wanted = {
        "weights_sha256": entry.meta["weights"]["sha256"],
        "dataset": dataset,
        "split": SPLIT,
        **inferer.for_checkpoint(entry.meta).record(),
        **operating_point(entry.meta, "auto", scale),
    }
    same_data = Path(report.get("data", "")).resolve() == data.resolve()
    same_options = report.get("data_options", {}) == dict(options or {})
    if same_data and same_options and all(report.get(key) == value for key, value in wanted.items()):
        return EvaluationReport(folder, report, report.pop("metrics"))
    return None


def _median_scale(per_image_csv: Path) -> float | None:
    with open(per_image_csv, newline="") as handle:
        factors = [float(row["scale"]) for row in csv.DictReader(handle) if row.get("scale")]
    return statistics.median(factors) if factors else None


def _cells(result: CrossDatasetResult, value: Callable[[CrossPair], str]) -> list[list[str]]:
    """One row per checkpoint, one cell per dataset: ``value`` of each scale setting joined by `` / ``, in bold for
    the in-domain cell."""
    rows = []
    for entry in result.checkpoints:
        row = [entry.row_title()]
        for dataset in result.datasets:
            pairs = [result.pair(entry.label, dataset, scale) for scale in result.scales]
            text = " / ".join(value(pair) for pair in pairs)
            row.append(f"**{text}**" if pairs[0].in_domain else text)
        rows.append(row)
    return rows


def _number(value: float | None, digits: int = 4) -> str:
    return "—" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def _table(result: CrossDatasetResult, value: Callable[[CrossPair], str]) -> str:
    headers = ["trained \\ tested", *(_title(dataset) for dataset in result.datasets)]
    return markdown_table(headers, _cells(result, value))


def _metric_table(result: CrossDatasetResult, key: str) -> str:
    return _table(result, lambda pair: _number(pair.metric(key)))


def _versions(inferer: Inferer) -> dict[str, str]:
    return {
        "machine": device_description(torch.device(inferer.device)),
        "convunext": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def _csv_row(pair: CrossPair) -> dict[str, Any]:
    entry = pair.checkpoint
    return {
        "checkpoint": entry.label,
        "trained_on": entry.trained_on,
        "model": entry.meta["model"]["name"],
        "dataset": pair.dataset,
        "scale_setting": pair.scale,
        "in_domain": pair.in_domain,
        "dice": pair.metric("dice_fg_mean"),
        "auc": pair.metric("fov_auc"),
        "cldice": pair.metric("cldice_mean"),
        "scale_median": pair.scale_median,
        "threshold": pair.report.context.get("threshold"),
        "images": pair.report.context.get("images"),
        "minutes": round(pair.minutes, 3),
        "reused": pair.reused,
        "report": str(pair.report.out_dir),
    }


def _explanation(result: CrossDatasetResult) -> list[str]:
    thresholds = ", ".join(
        f"{entry.label} {'0.5 (argmax)' if entry.threshold is None else f'{entry.threshold:g}'}"
        for entry in result.checkpoints
    )
    return [
        "Rows: the models, with the dataset each was trained on; columns: the datasets each model is tested on "
        f"({SPLIT} split). A cell gives the score with scale matching {' / '.join(result.scales)}; **bold**: "
        "in-domain (tested on the dataset the model was trained on).",
        "",
        "- scale auto: each image is resized so that its field of view has the diameter of the model's training "
        "images (`meta.scale.fov_diameter`), and the probabilities are resized back; off: every image runs at its "
        "own resolution.",
        f"- threshold: each model's own validation threshold, chosen on its training dataset's validation split "
        f"and stored with the checkpoint (0.5 where it has none): {thresholds}.",
        "- the metrics are computed at each dataset's own resolution, inside its field of view (the dataset's FOV "
        "masks, or the FOV derived from each image where it ships none). Dice: per-image foreground Dice, mean "
        "over images; AUC: ROC AUC over the split's FOV pixels; clDice: per-image centreline Dice, mean over images.",
        f"- each evaluation is a report folder of its own: `runs/LABEL/DATASET-SCALE/` under {result.out_dir}.",
    ]


def _write_report(result: CrossDatasetResult, folder: Path, inferer: Inferer, command: str | None) -> None:
    """``cross-dataset.md``, ``cross-dataset.csv`` and ``cross-dataset.json`` (the record, last) into ``folder``."""
    versions = _versions(inferer)
    sections = [f"## {title}\n\n{_metric_table(result, key)}" for key, title in TABLE_METRICS]
    sections.append(
        "## Scale factors\n\nThe median over images of the factor each image was resized by (auto: the model's "
        "training FOV diameter over the image's, 1 within 10% of it; off: 1).\n\n"
        + _table(result, lambda pair: _number(pair.scale_median, 3))
    )
    sections.append("## Minutes per evaluation\n\n" + _table(result, lambda pair: _number(pair.minutes, 2)))
    run = "\n".join(
        [
            f"- command: `{command}`" if command else "- command: (the Python API)",
            f"- data root: {result.data_root}",
            *(f"- {key}: {value}" for key, value in versions.items()),
        ]
    )
    text = "\n\n".join(["# Cross-dataset evaluation", "\n".join(_explanation(result)), *sections, "## Run", run])
    atomic_write_text(folder / "cross-dataset.md", text + "\n")
    rows = [_csv_row(pair) for pair in result.pairs]
    with atomic_path(folder / "cross-dataset.csv") as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_FIELDS)
        writer.writeheader()
        writer.writerows({key: "" if value is None else value for key, value in row.items()} for row in rows)
    atomic_write_json(
        folder / "cross-dataset.json",
        {
            "command": command,
            "data_root": str(result.data_root),
            "split": SPLIT,
            "threshold": "auto: each checkpoint's validation threshold",
            "scales": list(result.scales),
            "datasets": result.datasets,
            "checkpoints": [
                {
                    "label": entry.label,
                    "checkpoint": checkpoint_reference(entry.path),
                    "model": entry.meta["model"]["name"],
                    "trained_on": entry.trained_on,
                    "weights_sha256": entry.meta["weights"]["sha256"],
                    "threshold": entry.threshold,
                }
                for entry in result.checkpoints
            ],
            "pairs": rows,
            **versions,
        },
    )
