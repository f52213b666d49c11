"""Choose the short-budget CPU recipe on **validation** only: peak lr x decay shape per model, at a fixed time budget.

Every run is ``convunext train drive`` with ``--time-budget MINUTES`` on 256x256 crops, batch 4, the reference
recipe's AdamW (weight decay 1e-4, linear warm-up from 1e-3 x lr) with the peak lr and decay shape of the grid
point; validation every ``--eval-every`` epochs. Each run also records the three validation Dice curves of the
BatchNorm study: eval mode with the running statistics (``val_dice_running_bn``), with the statistics recomputed
on ``--precise-bn-batches`` batches of training crops (``val_dice``, precise BN) and the EMA of the weights
(``val_dice_ema``) — none of them changes the training itself, so one run gives all three. The test split is never read.

Runs are resumable: a finished run (``summary.json``) is skipped, a stopped one resumed. Never run two heavy jobs
side by side on a small CPU.

    python benchmarks/recipe_sweep.py --data-root ../shared/data/DRIVE --out reports/drive-recipe-sweep \\
        --minutes 8 --models convunext unet --lrs 5e-4 1.5e-3 4e-3 --decays poly

Writes ``sweep.csv`` (one row per run), ``sweep.md``, ``val_dice_vs_lr.png`` and ``bn_curves.png`` to ``--out``.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

CURVES = (
    ("val_dice_running_bn", "running BN statistics"),
    ("val_dice", "precise BN"),
    ("val_dice_ema", "EMA weights + precise BN"),
)


def run_name(model: str, decay: str, lr: float) -> str:
    return f"{model}-{decay}-lr{lr:g}"


def train_command(args: argparse.Namespace, model: str, decay: str, lr: float) -> list[str]:
    runs = Path(args.out) / "runs"
    sets = [
        "data.crop_size=256",
        "optim.batch_size=4",
        "optim.recipe=reference",
        f"optim.lr={lr}",
        f"optim.decay={decay}",
        f"train.eval_every={args.eval_every}",
        f"train.precise_bn_batches={args.precise_bn_batches}",
        "train.validate_running_bn=true",
        f"train.ema_decay={args.ema_decay}",
        f"train.output_dir={runs}",
        f"train.run_name={run_name(model, decay, lr)}",
        "train.progress_bar=false",
        f"train.seed={args.seed}",
    ]
    command = [sys.executable, "-m", "convunext", "train", "drive", "--data-root", args.data_root, "--model", model]
    command += ["--time-budget", str(args.minutes), *[part for s in sets for part in ("--set", s)]]
    return command + (["--threads", str(args.threads)] if args.threads else [])


def train(args: argparse.Namespace, model: str, decay: str, lr: float) -> None:
    run = Path(args.out) / "runs" / run_name(model, decay, lr)
    if (run / "summary.json").is_file():
        return
    if (run / "last_state.pt").is_file():
        command = [sys.executable, "-m", "convunext", "train", "--resume", str(run)]
    else:
        command = train_command(args, model, decay, lr) + (["--overwrite"] if run.exists() else [])
    print("+ " + " ".join(command), flush=True)
    subprocess.run(command, check=True)


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return math.nan


def summarise(run: Path) -> dict[str, object]:
    """One row of ``sweep.csv``: the grid point and the best validation Dice of each curve."""
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    summary = json.loads((run / "summary.json").read_text())
    plan = summary.get("time_budget") or {}
    record: dict[str, object] = {"run": run.name}
    model, decay, lr = run.name.rsplit("-", 2)
    record.update(model=model, decay=decay, lr=float(lr[2:]))
    for key, _ in CURVES:
        values = [_float(r[key]) for r in rows if not math.isnan(_float(r[key]))]
        best = max(values) if values else math.nan
        record[f"best_{key}"] = round(best, 4)
        record[f"best_{key}_epoch"] = next((int(r["epoch"]) for r in rows if _float(r[key]) == best), "")
    record.update(
        epochs=len(rows),
        steps=int(rows[-1]["step"]),
        planned_minutes=plan.get("planned_minutes", ""),
        actual_minutes=plan.get("actual_minutes", round(summary["seconds_this_session"] / 60, 2)),
    )
    return record


def write_report(args: argparse.Namespace, records: list[dict[str, object]]) -> None:
    out = Path(args.out)
    with (out / "sweep.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(records[0]))
        writer.writeheader()
        writer.writerows(records)
    models = sorted({str(r["model"]) for r in records}, key=args.models.index)
    figure, axes = plt.subplots(1, len(models), figsize=(5 * len(models), 4), squeeze=False)
    for axis, model in zip(axes[0], models):
        for decay in args.decays:
            points = sorted(
                (r["lr"], r["best_val_dice"]) for r in records if r["model"] == model and r["decay"] == decay
            )
            if points:
                axis.plot(*zip(*points), marker="o", label=decay)
        axis.set(xscale="log", xlabel="peak learning rate", ylabel="best validation Dice", title=model)
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    figure.savefig(out / "val_dice_vs_lr.png", dpi=120)
    plt.close(figure)

    chosen = {m: max((r for r in records if r["model"] == m), key=lambda r: r["best_val_dice"]) for m in models}
    figure, axes = plt.subplots(1, len(models), figsize=(5 * len(models), 4), squeeze=False)
    for axis, model in zip(axes[0], models):
        rows = list(csv.DictReader((out / "runs" / str(chosen[model]["run"]) / "metrics.csv").open()))
        for key, label in CURVES:
            points = [(int(r["step"]), _float(r[key])) for r in rows if not math.isnan(_float(r[key]))]
            if points:
                axis.plot(*zip(*points), marker=".", label=label)
        axis.set(xlabel="optimiser step", ylabel="validation Dice", title=f"{model} ({chosen[model]['run']})")
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    figure.savefig(out / "bn_curves.png", dpi=120)
    plt.close(figure)

    columns = ["model", "decay", "lr", "steps", "actual_minutes"] + [f"best_{k}" for k, _ in CURVES]
    lines = [
        "# DRIVE short-budget recipe sweep (validation split only)",
        "",
        f"Command: `python benchmarks/recipe_sweep.py {' '.join(sys.argv[1:])}`",
        "",
        f"Each run: `convunext train drive --time-budget {args.minutes:g}` (2-core CPU), crop 256, batch 4, AdamW "
        "(weight decay 1e-4, warm-up from 1e-3 x lr over 1/300 of the run), the grid's peak lr and decay shape; "
        f"validation every {args.eval_every} epochs on the 4 validation images carved from DRIVE's training set.",
        "",
        "| " + " | ".join(columns) + " |",
        "|" + "|".join("---" for _ in columns) + "|",
    ]
    for record in records:
        lines.append("| " + " | ".join(str(record[c]) for c in columns) + " |")
    lines += ["", "Chosen per model (highest best validation Dice, precise BN):", ""]
    lines += [f"- {m}: {r['decay']}, lr {r['lr']:g} (validation Dice {r['best_val_dice']})" for m, r in chosen.items()]
    (out / "sweep.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", required=True, help="the DRIVE folder")
    parser.add_argument("--out", default="reports/drive-recipe-sweep")
    parser.add_argument("--minutes", type=float, default=8.0, help="time budget of each run")
    parser.add_argument("--models", nargs="+", default=["convunext", "unet"])
    parser.add_argument("--lrs", nargs="+", type=float, default=[5e-4, 1.5e-3, 4e-3])
    parser.add_argument("--decays", nargs="+", default=["poly"], choices=["poly", "exponential", "cosine"])
    parser.add_argument("--eval-every", type=int, default=2)
    parser.add_argument("--precise-bn-batches", type=int, default=8)
    parser.add_argument("--ema-decay", type=float, default=0.99)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: convunext's default)")
    parser.add_argument("--report-only", action="store_true", help="summarise the finished runs, train nothing")
    args = parser.parse_args()
    grid = [(m, d, lr) for m in args.models for d in args.decays for lr in args.lrs]
    if not args.report_only:
        for point in grid:
            train(args, *point)
    runs = [Path(args.out) / "runs" / run_name(*point) for point in grid]
    records = [summarise(run) for run in runs if (run / "summary.json").is_file()]
    if records:
        write_report(args, records)
    return 0


if __name__ == "__main__":
    sys.exit(main())
