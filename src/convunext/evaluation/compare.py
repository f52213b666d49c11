"""Paired comparison of models evaluated on the same images, and ``convunext compare``'s work.

:func:`paired_comparison` pairs two models' per-image scores by image name and gives the per-image differences
(B - A), their mean with a percentile-bootstrap confidence interval, the two-sided Wilcoxon signed-rank p-value
(scipy) and wins / ties / losses; :func:`plot_paired` draws one line per image from A to B. :func:`compare_runs`
finds (or makes) each run's evaluation report on a split and writes ``comparison.md``, ``comparison.json``,
``paired_differences.csv`` and one paired plot per run against the first.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..checkpoint import load_checkpoint, read_checkpoint_meta
from ..errors import ConvUNeXtError
from ..inference.scale import ScaleSetting
from ..inference.sliding_window import Inferer
from ..inference.threshold import ThresholdSetting
from ..utils.io import atomic_path, atomic_write_json, atomic_write_text
from ..utils.table import markdown_table
from .evaluate import (
    EvaluationReport,
    check_evaluable,
    evaluate_to_report,
    evaluated_dataset_name,
    open_evaluated_dataset,
    reusable_report,
)
from .report_folder import COMPARISON_REPORT, ReportFolder

NOT_METRICS = ("name", "pixels")
"""Columns of ``per_image.csv`` that are not scores."""
_BOOTSTRAP_BLOCK = 1 << 20
"""Resampled differences drawn at a time (8 MB of indices), whatever the number of images."""


@dataclass(frozen=True)
class PairedComparison:
    """Model B against model A on the same images, in the order of ``names``.

    ``differences`` are B - A, so a positive ``mean_difference`` and a *win* mean that B scored higher (every
    per-image metric of this package is better higher). A difference within the tie tolerance is a tie.
    """

    names: tuple[str, ...]
    scores_a: np.ndarray
    scores_b: np.ndarray
    mean_difference: float
    ci_low: float
    ci_high: float
    confidence: float
    p_value: float
    wins: int
    ties: int
    losses: int

    @property
    def n(self) -> int:
        """The number of paired images."""
        return len(self.names)

    @property
    def differences(self) -> np.ndarray:
        """B - A per image."""
        return self.scores_b - self.scores_a

    def summary(self) -> dict[str, Any]:
        """The scalar results, for JSON."""
        keys = ("mean_difference", "ci_low", "ci_high", "confidence", "p_value", "wins", "ties", "losses")
        return {"images": self.n, **{key: getattr(self, key) for key in keys}}


def _paired_names(scores_a: Mapping[str, float], scores_b: Mapping[str, float], labels: Sequence[str]) -> list[str]:
    """The image names of ``scores_a`` (in its order), which ``scores_b`` must hold too, and nothing else."""
    only_a = [name for name in scores_a if name not in scores_b]
    only_b = [name for name in scores_b if name not in scores_a]
    if only_a or only_b:
        parts = [
            f"{len(names)} only in {label} ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''})"
            for names, label in ((only_a, labels[0]), (only_b, labels[1]))
            if names
        ]
        raise ConvUNeXtError(f"{labels[0]} and {labels[1]} were not scored on the same images: {'; '.join(parts)}")
    return list(scores_a)


def _bootstrap_interval(differences: np.ndarray, resamples: int, confidence: float, seed: int) -> tuple[float, float]:
    """The percentile bootstrap interval of the mean of ``differences`` (images resampled with replacement)."""
    rng = np.random.default_rng(seed)
    count = len(differences)
    means = np.empty(resamples)
    block = max(1, _BOOTSTRAP_BLOCK // count)
    for start in range(0, resamples, block):
        rows = min(block, resamples - start)
        means[start : start + rows] = differences[rng.integers(0, count, size=(rows, count))].mean(axis=1)
    tail = (1 - confidence) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return float(low), float(high)


def _wilcoxon_p_value(differences: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p-value (scipy's default method: exact for small samples without ties);
    zero differences are left out (``zero_method="wilcox"``), and with every difference zero p is 1."""
    if not differences.any():
        return 1.0
    from scipy.stats import wilcoxon

    return float(wilcoxon(differences, zero_method="wilcox", alternative="two-sided").pvalue)


def paired_comparison(
    scores_a: Mapping[str, float],
    scores_b: Mapping[str, float],
    *,
    resamples: int = 10_000,
    confidence: float = 0.95,
    seed: int = 0,
    tie_tolerance: float = 0.0,
    labels: Sequence[str] = ("A", "B"),
) -> PairedComparison:
    """Compare model B with model A on the same images (paired by image name).

    Args:
        scores_a: per-image scores of A (e.g. Dice), by image name.
        scores_b: per-image scores of B, by image name: the same images as ``scores_a``.
        resamples: bootstrap resamples of the images for the confidence interval of the mean difference.
        confidence: the interval's coverage (0.95: the 2.5th and 97.5th percentiles of the resampled means).
        seed: the bootstrap's random seed (a NumPy ``Generator``): the same inputs give the same interval.
        tie_tolerance: differences with ``|B - A| <= tie_tolerance`` are ties (and zero for the Wilcoxon test).
        labels: names of A and B for error messages.

    Raises:
        ConvUNeXtError: the image sets differ (the message names the missing images), fewer than 2 images, or a
            score that is not a number.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie strictly between 0 and 1, got {confidence}")
    if resamples < 1 or tie_tolerance < 0:
        raise ValueError("resamples must be positive and tie_tolerance not negative")
    names = _paired_names(scores_a, scores_b, labels)
    if len(names) < 2:
        raise ConvUNeXtError(f"a paired comparison needs at least 2 images; {labels[0]} has {len(names)}")
    a = np.array([scores_a[name] for name in names], dtype=np.float64)
    b = np.array([scores_b[name] for name in names], dtype=np.float64)
    for scores, label in ((a, labels[0]), (b, labels[1])):
        if not np.isfinite(scores).all():
            raise ConvUNeXtError(f"{label}: image {names[int(np.argmin(np.isfinite(scores)))]} has no score (NaN)")
    differences = b - a
    tied = np.abs(differences) <= tie_tolerance
    low, high = _bootstrap_interval(differences, resamples, confidence, seed)
    return PairedComparison(
        names=tuple(names),
        scores_a=a,
        scores_b=b,
        mean_difference=float(differences.mean()),
        ci_low=low,
        ci_high=high,
        confidence=confidence,
        p_value=_wilcoxon_p_value(np.where(tied, 0.0, differences)),
        wins=int((~tied & (differences > 0)).sum()),
        ties=int(tied.sum()),
        losses=int((~tied & (differences < 0)).sum()),
    )


def average_scores(score_sets: Sequence[Mapping[str, float]], labels: Sequence[str]) -> dict[str, float]:
    """Per image, the mean of its scores over ``score_sets`` (e.g. one per seed), which must name the same images;
    ``labels`` names the sets in error messages."""
    for scores, label in zip(score_sets[1:], labels[1:]):
        _paired_names(score_sets[0], scores, (labels[0], label))
    return {name: math.fsum(scores[name] for scores in score_sets) / len(score_sets) for name in score_sets[0]}


def read_scores(per_image_csv: str | Path, metric: str = "dice_fg") -> dict[str, float]:
    """One metric's per-image scores, by image name, from an evaluation report's ``per_image.csv``.

    Raises:
        ConvUNeXtError: ``metric`` is not one of the file's per-image metrics (the message lists them).
    """
    with open(per_image_csv, newline="") as handle:
        reader = csv.DictReader(handle)
        metrics = [column for column in reader.fieldnames or () if column not in NOT_METRICS]
        if metric not in metrics:
            raise ConvUNeXtError(
                f"{metric!r} is not a per-image metric of {per_image_csv} (choose from {', '.join(metrics)})"
            )
        return {row["name"]: float(row[metric]) for row in reader}


def comparison_table(
    headers: Sequence[str],
    reference: Sequence[str],
    others: Sequence[tuple[Sequence[str], PairedComparison]],
    reference_name: str = "reference",
) -> str:
    """A Markdown table of comparisons with one reference: the reference's row (its ``reference`` cells under
    ``headers``, then "reference"), then one row per other model (its cells, then the mean difference, confidence
    interval, p-value and wins / ties / losses of its comparison)."""
    confidence = others[0][1].confidence
    columns = [f"difference vs {reference_name}", f"{confidence:.0%} CI", "Wilcoxon p", "wins / ties / losses"]
    rows = [[*reference, "reference", "—", "—", "—"]]
    for cells, comparison in others:
        rows.append(
            [
                *cells,
                f"{comparison.mean_difference:+.4f}",
                f"[{comparison.ci_low:+.4f}, {comparison.ci_high:+.4f}]",
                f"{comparison.p_value:.3g}",
                f"{comparison.wins} / {comparison.ties} / {comparison.losses}",
            ]
        )
    return markdown_table([*headers, *columns], rows)


def statistics_note(confidence: float = 0.95, resamples: int = 10_000, seed: int = 0) -> str:
    """How :func:`paired_comparison`'s interval and p-value are computed, for a report."""
    return (
        f"{confidence:.0%} CI: percentile bootstrap of the mean difference ({resamples:,} resamples of the images, "
        f"seed {seed}); p: two-sided Wilcoxon signed-rank test (scipy; tied images left out)."
    )


def plot_paired(comparison: PairedComparison, path: str | Path, labels: Sequence[str], metric: str) -> None:
    """A paired plot (PNG): one line per image from its score under A to its score under B (green: B higher, red:
    B lower, grey: tie), the means in black; the title gives the mean difference, its interval and the p-value."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(4.5, 5))
    for a, b in zip(comparison.scores_a, comparison.scores_b):
        color = "tab:green" if b - a > 0 else "tab:red" if b - a < 0 else "grey"
        axis.plot([0, 1], [a, b], color=color, alpha=0.5, marker="o", markersize=3, linewidth=1)
    means = [float(comparison.scores_a.mean()), float(comparison.scores_b.mean())]
    axis.plot([0, 1], means, color="black", marker="D", linewidth=2.5, label="mean")
    axis.set_xticks([0, 1], [str(label) for label in labels])
    axis.set_xlim(-0.3, 1.3)
    axis.set_ylabel(f"{metric} per image")
    axis.grid(alpha=0.3)
    axis.legend(loc="best")
    axis.set_title(
        f"{comparison.n} images: mean difference {comparison.mean_difference:+.4f}\n"
        f"{comparison.confidence:.0%} CI [{comparison.ci_low:+.4f}, {comparison.ci_high:+.4f}], "
        f"Wilcoxon p = {comparison.p_value:.3g}",
        fontsize=9,
    )
    figure.tight_layout()
    with atomic_path(Path(path)) as tmp:
        figure.savefig(tmp, format="png", dpi=100)
    plt.close(figure)


@dataclass
class RunScores:
    """One run of a comparison: its model, the evaluation report its scores come from (reused or just written), and
    the scores by image name."""

    run: str
    model: str
    report: EvaluationReport
    reused: bool
    scores: dict[str, float]

    @property
    def mean(self) -> float:
        """The mean score over the images."""
        return math.fsum(self.scores.values()) / len(self.scores)


@dataclass
class ComparisonResult:
    """What :func:`compare_runs` compared and wrote: every run, and each run after the first against the first."""

    dataset: str
    split: str
    metric: str
    out_dir: Path
    runs: list[RunScores]
    comparisons: list[PairedComparison]
    table: str


def compare_runs(
    runs: Sequence[str | Path],
    data: str | Path,
    *,
    split: str = "test",
    metric: str = "dice_fg",
    layout: str | None = None,
    out_dir: str | Path | None = None,
    inferer: Inferer | None = None,
    threshold: ThresholdSetting = "auto",
    scale: ScaleSetting = "auto",
    resamples: int = 10_000,
    confidence: float = 0.95,
    seed: int = 0,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> ComparisonResult:
    """``convunext compare``: score each run on a split of DATA and compare every run with the first.

    A run's scores come from its existing evaluation report when one still describes its checkpoint and the
    inference settings (:func:`~convunext.evaluation.evaluate.reusable_report`: ``RUN/eval-DATASET-SPLIT/`` or a
    reproduction's ``RUN/test/``); otherwise the run is evaluated and its report written to
    ``RUN/eval-DATASET-SPLIT/``, as ``convunext evaluate`` does. Writes into ``out_dir``: ``comparison.md``,
    ``comparison.json``, ``paired_differences.csv`` and ``paired-K-MODEL.png`` for the K-th run, replacing an
    earlier comparison there whole (:class:`~convunext.evaluation.report_folder.ReportFolder`). Every run is checked
    against the data, and the folder, before any run is evaluated.

    Args:
        runs: run folders or checkpoint files (as ``convunext evaluate`` takes them); the first is the reference.
        data: ``"synthetic"`` or a dataset folder.
        split: the split the runs are scored on.
        metric: a per-image column of ``per_image.csv`` (``dice_fg``, ``iou_fg``, ``pixel_accuracy``, ...).
        layout: the layout of ``data`` (default: detected).
        out_dir: the comparison's folder (default ``compare-DATASET-SPLIT``).
        inferer: how each run is evaluated, as by :func:`~convunext.evaluation.evaluate.evaluate_to_report`
            (default: each checkpoint's own tile size, no TTA, the fast back-end on the best device).
        threshold: each run's threshold, as for :func:`~convunext.evaluation.evaluate.evaluate_to_report`
            (default: each checkpoint's validation threshold).
        scale: each run's scale setting, as for :func:`~convunext.evaluation.evaluate.evaluate_to_report`.
        resamples: the bootstrap's resamples (:func:`paired_comparison`).
        confidence: the bootstrap interval's coverage.
        seed: the bootstrap's random seed.
        progress: show a progress bar while a run is evaluated.
        log: receives one line per run (reused or evaluated).

    Raises:
        ConvUNeXtError: fewer than two runs, the same checkpoint twice, runs trained for different classes or for
            other classes or channels than the data's, an output folder that cannot hold the comparison, a metric
            that is not a per-image column, or runs scored on different images.
    """
    if len(runs) < 2:
        raise ConvUNeXtError(f"compare needs at least two runs (got {len(runs)}): RUN_A RUN_B [RUN ...] DATA")
    dataset = evaluated_dataset_name(data, layout)
    checkpoints = [read_checkpoint_meta(run) for run in runs]
    paths = [path.resolve() for _, path in checkpoints]
    repeated = next((runs[i] for i, path in enumerate(paths) if path in paths[:i]), None)
    if repeated is not None:
        raise ConvUNeXtError(f"{repeated}: the same checkpoint is named twice")
    classes = [len(meta["classes"]) for meta, _ in checkpoints]
    if len(set(classes)) > 1:
        counts = ", ".join(f"{run}: {count}" for run, count in zip(runs, classes))
        raise ConvUNeXtError(f"the runs were trained for different numbers of classes ({counts})")
    for meta, path in checkpoints:  # every run fits the data before any is evaluated
        check_evaluable(path, meta, data, open_evaluated_dataset(meta, data, split, layout)[2])
    out = Path(out_dir) if out_dir else Path(f"compare-{dataset}-{split}")
    inferer = inferer or Inferer()
    with ReportFolder(out, COMPARISON_REPORT) as folder:
        scored = []
        for run, (meta, path) in zip(runs, checkpoints):
            report = reusable_report(path, meta, data, split, layout, inferer, threshold, scale)
            reused = report is not None
            if report is None:
                log(f"{run}: evaluating {meta['model']['name']} on {dataset} ({split})")
                report = evaluate_to_report(
                    load_checkpoint(path),
                    data,
                    split,
                    layout=layout,
                    inferer=inferer,
                    progress=progress,
                    threshold=threshold,
                    scale=scale,
                )
            else:
                log(f"{run}: reusing the report in {report.out_dir} (same weights)")
            scores = read_scores(report.out_dir / "per_image.csv", metric)
            scored.append(RunScores(str(run), meta["model"]["name"], report, reused, scores))
        reference = scored[0]
        comparisons = [
            paired_comparison(
                reference.scores,
                other.scores,
                resamples=resamples,
                confidence=confidence,
                seed=seed,
                labels=(reference.run, other.run),
            )
            for other in scored[1:]
        ]
        table = comparison_table(
            ["run", "model", "mean"],
            [reference.run, reference.model, f"{reference.mean:.4f}"],
            [([run.run, run.model, f"{run.mean:.4f}"], comparison) for run, comparison in zip(scored[1:], comparisons)],
        )
        result = ComparisonResult(dataset, split, metric, out, scored, comparisons, table)
        _write_comparison(result, folder.staging, resamples, seed)
    if folder.replaces:
        log(f"replaced the earlier comparison in {out} (its files only; other files were left alone)")
    return result


def _write_comparison(result: ComparisonResult, folder: Path, resamples: int, seed: int) -> None:
    """``comparison.md``, ``paired_differences.csv``, the paired plots and ``comparison.json`` (the record of the
    comparison, last) into ``folder``."""
    reference, others = result.runs[0], result.runs[1:]
    confidence = result.comparisons[0].confidence
    method = (
        "per image, difference = run - reference; win / tie / loss = the run scored higher / the same / lower. "
        + statistics_note(confidence, resamples, seed)
    )
    header = [
        f"- dataset: {result.dataset}, split: {result.split}, {result.comparisons[0].n} images",
        f"- metric: `{result.metric}` (per image; the mean is over images)",
        f"- reference: {reference.run} ({reference.model})",
        f"- {method}",
    ]
    text = "\n".join(["# Paired comparison", "", *header, "", result.table, ""])
    atomic_write_text(folder / "comparison.md", text)
    with atomic_path(folder / "paired_differences.csv") as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["name", "run", "model", "reference", "score", "difference"])
        for run, comparison in zip(others, result.comparisons):
            for name, a, b in zip(comparison.names, comparison.scores_a, comparison.scores_b):
                writer.writerow([name, run.run, run.model, f"{a:.6f}", f"{b:.6f}", f"{b - a:+.6f}"])
    for index, (run, comparison) in enumerate(zip(others, result.comparisons), 2):
        labels = (f"{reference.model} (1)", f"{run.model} ({index})")
        plot_paired(comparison, folder / f"paired-{index}-{run.model}.png", labels, result.metric)
    atomic_write_json(
        folder / "comparison.json",
        {
            "dataset": result.dataset,
            "split": result.split,
            "metric": result.metric,
            "reference": reference.run,
            "bootstrap": {"resamples": resamples, "seed": seed, "confidence": confidence},
            "runs": [
                {
                    "run": run.run,
                    "model": run.model,
                    "checkpoint": run.report.context.get("checkpoint"),
                    "report": str(run.report.out_dir),
                    "reused": run.reused,
                    "mean": run.mean,
                }
                for run in result.runs
            ],
            "comparisons": [
                {"run": run.run, **comparison.summary()} for run, comparison in zip(others, result.comparisons)
            ],
        },
    )
