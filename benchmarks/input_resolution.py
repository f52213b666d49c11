"""Does a model's score depend on the resolution its input comes at? Each checkpoint is evaluated on a dataset's
split as distributed and with every image (and its labels and field of view) resized by each ``--factors`` value,
with scale matching on (``auto``: each image resized to the model's training scale and back) and off.

    python benchmarks/input_resolution.py reports/hrf-cpu/runs/hrf/convunext/seed0 drive-vessels \\
        --data ../shared/data/HRF --dataset hrf --skip-unannotated --factors 1 0.5 \\
        --out reports/hrf-cpu/input-resolution.md

A tool without scale matching loses accuracy when images come at another resolution than its training data (a
published vessel tool loses 0.06-0.09 F1 on HRF at full instead of half resolution); with it, each row's Dice
should hardly move across factors. Images are resized as ``convunext.data.mixed.rescale_sample`` does (bilinear,
antialiased when shrinking; labels and field of view nearest), and each evaluation is scored at the resized
resolution, against the resized labels. Prints a markdown table (Dice, AUC, clDice, the median scale factor
applied, minutes) and writes it to ``--out``.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from convunext.checkpoint import load_checkpoint
from convunext.data import open_dataset
from convunext.data.base import Sample
from convunext.data.mixed import rescale_sample
from convunext.evaluation.evaluate import evaluate_checkpoint
from convunext.inference import Inferer
from convunext.pretrained import resolve_checkpoint
from convunext.utils.device import device_description
from convunext.utils.table import markdown_table


class Resized(Dataset):
    """``dataset`` with every sample's sides resized by ``factor``."""

    def __init__(self, dataset: Dataset, factor: float) -> None:
        self.dataset, self.factor, self.info = dataset, factor, dataset.info  # type: ignore[attr-defined]

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Sample:
        return rescale_sample(self.dataset[index], self.factor)


def _row(label: str, factor: float, scale: str, metrics: Any, minutes: float) -> list[str]:
    results = metrics.compute()
    factors = [row["scale"] for row in metrics.per_image() if "scale" in row]
    applied = f"{statistics.median(factors):.3f}" if factors else "1"
    cldice = results.get("cldice_mean")
    return [
        label,
        f"{factor:g}",
        scale,
        applied,
        f"{results['dice_fg_mean']:.4f}",
        f"{results['fov_auc']:.4f}",
        "" if cldice is None else f"{cldice:.4f}",
        f"{minutes:.1f}",
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", nargs="+", help="run folders, checkpoint files or pretrained names")
    parser.add_argument("--data", type=Path, required=True, help="the dataset folder")
    parser.add_argument("--dataset", required=True, help="its registry name (hrf, drive, stare, ...)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--factors", type=float, nargs="+", default=[1.0, 0.5])
    parser.add_argument("--scales", nargs="+", default=["auto", "off"], choices=["auto", "off"])
    parser.add_argument("--skip-unannotated", action="store_true", help="HRF copies without some annotations")
    parser.add_argument("--tile-size", type=int, default=960, help="sliding-window tile (0: whole images)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, required=True, help="markdown file to write")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    options = {"skip_unannotated": True} if args.skip_unannotated else {}
    dataset = open_dataset(args.dataset, args.data, args.split, **options)
    inferer = Inferer(tile_size=args.tile_size or None)
    rows = []
    for path in args.checkpoints:
        checkpoint = load_checkpoint(resolve_checkpoint(path))
        for factor in args.factors:
            for scale in args.scales:
                start = time.perf_counter()
                metrics = evaluate_checkpoint(
                    checkpoint, Resized(dataset, factor), inferer, scale=scale, progress=True, topology="on"
                )
                rows.append(_row(path, factor, scale, metrics, (time.perf_counter() - start) / 60))
                print(" | ".join(rows[-1]), flush=True)
    headers = ["checkpoint", "input size", "scale", "median factor", "Dice", "AUC", "clDice", "minutes"]
    table = markdown_table(headers, rows)
    command = " ".join(["python", "benchmarks/input_resolution.py", *sys.argv[1:]])
    text = (
        f"# Input resolution: {args.dataset} {args.split} ({len(dataset)} images)\n\n"  # type: ignore[arg-type]
        f"Produced by `{command}` on {device_description(torch.device('cpu'))} ({platform.machine()}), "
        f"torch {torch.__version__}.\n\n"
        "Input size: every image, label and field of view resized by that factor (bilinear, antialiased when "
        "shrinking; labels nearest) and scored at that size. Scale auto: each image resized to the model's training "
        "scale (its field-of-view diameter) and the probabilities back; off: run as it comes. Median factor: the "
        "resize applied to the images by scale matching. Each model at its validation threshold.\n\n"
        f"{table}\n"
    )
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
