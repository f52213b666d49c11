"""Reproduce the paper's comparison: the five registry models x the chosen datasets x N seeds, one recipe for all.

Every ``(dataset, model, seed)`` is an ordinary, resumable training run (a :class:`~convunext.training.trainer.Trainer`
run folder) under ``REPORT/runs/<dataset>/<model>/seed<S>/``. A run is *finished* when its ``summary.json`` exists;
a re-invocation skips finished runs, resumes interrupted ones from their ``last`` checkpoint and starts the rest.
Model selection (the ``best`` checkpoint) uses the validation split only; each best checkpoint is then evaluated
once on the test split (``runs/.../seed<S>/test/metrics.json``, the report of ``convunext evaluate``). Finally
the report folder gets:

* ``results.csv`` — one row per run: params, GFLOPs, test metrics, best validation epoch, training time;
* ``summary.csv`` — mean and sample std over seeds per dataset and model;
* ``results.md`` — the paper-style table (params, GFLOPs at 3x480x480, Dice and mIoU per dataset as
  mean ± std over seeds), the vessel metrics inside the FOV for DRIVE/HRF, the budget that produced it, the
  recipe, and the protocol;
* ``dice_vs_params.png`` — test Dice against parameter count, one panel per dataset;
* ``reproduce.json`` — what was asked (budget, datasets, models, seeds, overrides, versions).

Budgets (:data:`BUDGETS`) change only the length and size of training, the same way for every model:

* ``paper`` — the dataset presets as they are: the paper's recipe (300 epochs, crop 480 / 480 / 960, AdamW
  lr 4e-4, batch 4, 5 warm-up epochs then exponential decay), evaluated every 5 epochs. Meant for a GPU.
* ``cpu`` — the paper's recipe compressed to about 160 optimiser steps of batch 4 at crop 192 (HRF: 384): DRIVE 40
  epochs (16 training images = 4 steps per epoch), GlaS 9 epochs (75 images = 18 steps), HRF 32 epochs (20 images
  = 5 steps). Warm-up and decay keep the paper's proportions (:func:`paper_schedule`). Measured on the project's
  2-core CPU (one thread, a busy machine; ``--estimate``), one training step of batch 4 at crop 192 takes ConvUNeXt
  3.0 s, UNet 1.6 s, Attention UNet 1.75 s, UNet++ 6.2 s, ResUNet 2.7 s, and one 565x584 DRIVE image evaluates in
  1.2-5.2 s: DRIVE for all five models, one seed, projects to about 51 minutes (``--estimate`` re-measures).
* ``smoke`` — width-8 models, one epoch on tiny crops (synthetic: 10 images of 64x64): a test of the plumbing.

Several processes may share one report folder (one per GPU, each with its own ``--models``): each run folder is
locked (:class:`~convunext.utils.lock.RunLock`) while it is trained or tested, so two processes never work on the
same run, and the report files are written under the report folder's lock, one process at a time.
"""

from __future__ import annotations

import csv
import json
import math
import platform
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from . import __version__
from .errors import ConvUNeXtError
from .utils.io import atomic_path, atomic_write_json, atomic_write_text, sha256_file
from .utils.lock import RunLock
from .utils.table import markdown_table

__all__ = [
    "BUDGETS",
    "DATASETS",
    "Budget",
    "RunSpec",
    "estimate",
    "locate_dataset",
    "model_cost",
    "paper_schedule",
    "plan_runs",
    "reproduce",
    "write_results",
]

DATASETS = ("drive", "glas", "hrf", "synthetic")
DATASET_DIRS = {"drive": "DRIVE", "glas": "GlaS", "hrf": "HRF"}
DATASET_TITLES = {"drive": "DRIVE", "glas": "GlaS", "hrf": "HRF", "synthetic": "Synthetic"}
VESSEL_DATASETS = ("drive", "hrf")
MODEL_TITLES = {
    "convunext": "ConvUNeXt",
    "unet": "UNet",
    "attention_unet": "Attention UNet",
    "unet_plus_plus": "UNet++",
    "resunet": "ResUNet",
}
FLOPS_SIZE = 480
FOV_METRICS = (
    ("fov_sensitivity", "Sensitivity"),
    ("fov_specificity", "Specificity"),
    ("fov_accuracy", "Accuracy"),
    ("fov_auc", "AUC"),
)
TEST_METRICS = ("dice_fg_mean", "miou_cm", "pixel_accuracy", "iou_fg_cm", *(key for key, _ in FOV_METRICS))
REPORT_LOCK_WAIT_S = 120.0  # writing the report files takes seconds; another process may be writing them
RUN_IN_USE = "another `convunext reproduce` (or `convunext train`) is working on this run; give it other --models"
# config fields that do not change what is trained (where it is written, how it is shown)
_NOT_RECIPE = {
    "data": ("root", "num_workers"),
    "train": ("output_dir", "run_name", "progress_bar", "tensorboard", "device"),
}


def paper_schedule(epochs: int) -> tuple[str, ...]:
    """``--set`` overrides that compress the paper's schedule (5 warm-up epochs of 300, then the lr decays by
    0.985 per epoch to 0.985^295 = 1.16% of its peak) into ``epochs`` epochs with the same proportions."""
    warmup = epochs * 5 / 300
    gamma = 0.985 ** (295 / (epochs - warmup))
    return (f"train.epochs={epochs}", f"optim.warmup_epochs={warmup:.4f}", f"optim.decay_gamma={gamma:.6f}")


@dataclass(frozen=True)
class Budget:
    """How long and on how large crops every model trains: ``--set`` overrides on top of each dataset's preset.

    ``overrides[dataset]`` applies to that dataset, ``overrides["*"]`` to every dataset (first).
    """

    name: str
    description: str
    overrides: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    default_seeds: tuple[int, ...] = (0,)

    def overrides_for(self, dataset: str) -> list[str]:
        """The overrides of ``dataset`` under this budget."""
        return [*self.overrides.get("*", ()), *self.overrides.get(dataset, ())]


BUDGETS: dict[str, Budget] = {
    "paper": Budget(
        "paper",
        "the paper's full recipe, unchanged: the dataset presets (300 epochs, crop 480 for DRIVE and GlaS, 960 for "
        "HRF, AdamW lr 4e-4, weight decay 5e-5, batch 4, 5 warm-up epochs then exponential decay), validation every "
        "5 epochs. Meant for a GPU (hours per model).",
        {},
        default_seeds=(0, 1, 2),
    ),
    "cpu": Budget(
        "cpu",
        "a short CPU budget: the paper's recipe compressed to about 160 optimiser steps of batch 4 on 192x192 crops "
        "(HRF: 384x384) — DRIVE 40 epochs, GlaS 9, HRF 32 — with warm-up and exponential decay in the paper's "
        "proportions (warm-up 5/300 of the run, final lr 1.16% of the peak). About an hour for DRIVE x five models "
        "x one seed on a 2-core CPU. The models are under-trained compared with the paper: compare them with each "
        "other, not with the paper's numbers.",
        {
            "drive": (*paper_schedule(40), "data.crop_size=192", "train.eval_every=5"),
            "glas": (*paper_schedule(9), "data.crop_size=192", "train.eval_every=3"),
            "hrf": (*paper_schedule(32), "data.crop_size=384", "data.eval_tile_size=960", "train.eval_every=8"),
            "synthetic": (),  # the synthetic preset is already a CPU recipe (12 epochs on 128x128 crops)
        },
    ),
    "smoke": Budget(
        "smoke",
        "a plumbing test, not a result: width-8 models, two epochs without warm-up on 64x64 crops (synthetic: 10 "
        "images of 64x64, 48x48 crops).",
        {
            "*": (
                "model.kwargs.width=8",
                "train.epochs=2",
                "optim.warmup_epochs=0",
                "train.eval_every=1",
                "data.crop_size=64",
            ),
            "synthetic": ("data.options.num_images=10", "data.options.size=64", "data.crop_size=48"),
        },
        default_seeds=(0, 1),
    ),
}


@dataclass
class RunSpec:
    """One training run of the reproduction: a dataset, a model, a seed, its config and its folder."""

    dataset: str
    model: str
    seed: int
    config: Any  # ExperimentConfig
    run_dir: Path

    @property
    def label(self) -> str:
        return f"{self.dataset} / {self.model} / seed {self.seed}"

    @property
    def test_dir(self) -> Path:
        return self.run_dir / "test"

    def status(self) -> str:
        """``done`` (trained and tested), ``evaluate`` (trained, test pending), ``resume`` or ``new``."""
        if (self.run_dir / "summary.json").is_file():
            return "done" if self._tested() else "evaluate"
        if (self.run_dir / "last_state.pt").is_file():
            return "resume"
        return "new"

    def _tested(self) -> bool:
        report = self.test_dir / "metrics.json"
        best = self.run_dir / "best.safetensors"
        if not (report.is_file() and best.is_file()):
            return False
        return json.loads(report.read_text()).get("weights_sha256") == sha256_file(best)

    def check_recipe(self) -> None:
        """Refuse to continue a run folder that was made with another recipe (e.g. another budget)."""
        from .training.config import ExperimentConfig

        saved = self.run_dir / "config.yaml"
        if not saved.is_file():
            return
        if _recipe(ExperimentConfig.from_yaml(saved)) != _recipe(self.config):
            raise ConvUNeXtError(
                f"{self.run_dir}: this run folder was trained with another recipe (budget or --set changed); "
                "use another --out folder, or delete the folder to start this run again"
            )


def _recipe(config: Any) -> dict[str, Any]:
    raw = config.to_dict()
    for section, keys in _NOT_RECIPE.items():
        for key in keys:
            raw[section].pop(key, None)
    return raw


def locate_dataset(name: str, data_root: str | Path) -> Path:
    """The folder of dataset ``name`` under ``data_root`` (``DRIVE/``, ``GlaS/``, ``HRF/``; any case), or
    ``data_root`` itself when it holds that dataset's layout."""
    root = Path(data_root).expanduser()
    wanted = DATASET_DIRS[name]
    if root.is_dir():
        for child in sorted(root.iterdir()):
            if child.is_dir() and child.name.lower() == wanted.lower():
                return child
        from .data.detect import detect_dataset

        try:
            if detect_dataset(root) == name:
                return root
        except ConvUNeXtError:
            pass
    raise ConvUNeXtError(
        f"{wanted} not found under {root} (expected {root / wanted}); pass --data-root, or leave {name} out of "
        "--datasets"
    )


def available_datasets(data_root: str | Path) -> list[str]:
    """The paper's datasets (drive, glas, hrf) present under ``data_root``."""
    found = []
    for name in DATASET_DIRS:
        try:
            locate_dataset(name, data_root)
        except ConvUNeXtError:
            continue
        found.append(name)
    return found


def plan_runs(
    report_dir: str | Path,
    models: Sequence[str],
    datasets: Sequence[str],
    seeds: Sequence[int],
    budget: Budget,
    data_root: str | Path,
    overrides: Sequence[str] = (),
) -> list[RunSpec]:
    """Every run of the reproduction, dataset-major, with its config (preset + budget + ``overrides``)."""
    from .models import list_models
    from .training.config import ExperimentConfig

    unknown = sorted(set(models) - set(list_models()))
    if unknown:
        raise ConvUNeXtError(f"unknown model {unknown[0]!r}; valid models: {', '.join(list_models())}")
    bad = sorted(set(datasets) - set(DATASETS))
    if bad:
        raise ConvUNeXtError(f"unknown dataset {bad[0]!r}; choose from {', '.join(DATASETS)}")
    report_dir = Path(report_dir)
    specs = []
    for dataset in datasets:
        root = None if dataset == "synthetic" else locate_dataset(dataset, data_root)
        for model in models:
            for seed in seeds:
                run_dir = report_dir / "runs" / dataset / model / f"seed{seed}"
                sets = [
                    f"data.name={dataset}",
                    *([f"data.root={root}"] if root is not None else []),
                    *budget.overrides_for(dataset),
                    *overrides,
                    f"model.name={model}",
                    f"train.seed={seed}",
                    f"train.output_dir={run_dir.parent}",
                    f"train.run_name={run_dir.name}",
                ]
                config = ExperimentConfig.from_yaml(dataset, sets)
                specs.append(RunSpec(dataset, model, seed, config, run_dir))
    return specs


def train_run(spec: RunSpec) -> None:
    """Train (or resume) one run to its end; a finished run is left alone."""
    from .training.trainer import Trainer

    if (spec.run_dir / "summary.json").is_file():
        return
    spec.check_recipe()
    resume = (spec.run_dir / "last_state.pt").is_file()
    # not resumable = killed before its first epoch ended: whatever it left is replaced
    Trainer(spec.config, run_dir=spec.run_dir, resume=resume, overwrite=not resume).fit()


def evaluate_run(spec: RunSpec, device: str = "auto") -> dict[str, Any]:
    """Evaluate the run's best (validation-selected) checkpoint on the test split; return the test metrics.

    Writes ``test/metrics.json``, ``per_image.csv`` and ``metrics.md`` (as ``convunext evaluate``), with the
    SHA-256 of the evaluated weights so that a later invocation knows the report is current. The run folder is
    locked meanwhile.
    """
    if spec.status() == "done":
        return json.loads((spec.test_dir / "metrics.json").read_text())["metrics"]
    with RunLock(spec.run_dir, hint=RUN_IN_USE):
        return _evaluate_best(spec, device)


def _evaluate_best(spec: RunSpec, device: str) -> dict[str, Any]:
    """:func:`evaluate_run`'s work, in the locked run folder."""
    from .checkpoint import load_checkpoint
    from .data import open_dataset
    from .evaluation.evaluate import evaluate_checkpoint, write_report
    from .training.trainer import remove_temp_files
    from .utils.device import resolve_device

    remove_temp_files(spec.test_dir)
    checkpoint = load_checkpoint(spec.run_dir / "best.json")
    data = spec.config.data
    dataset = open_dataset(data.name, data.root, "test", **data.options)
    torch_device = resolve_device(device)
    start = time.perf_counter()
    metrics = evaluate_checkpoint(checkpoint, dataset, torch_device, tile_size=data.eval_tile_size, progress=False)
    context = {
        "checkpoint": str(checkpoint.path),
        "weights_sha256": checkpoint.meta["weights"]["sha256"],
        "model": spec.model,
        "dataset": spec.dataset,
        "split": "test",
        "seed": spec.seed,
        "best_val_epoch": checkpoint.meta.get("epoch"),
        "images": len(dataset),  # type: ignore[arg-type]
        "tile_size": data.eval_tile_size,
        "seconds": round(time.perf_counter() - start, 1),
    }
    _, results = write_report(metrics, spec.test_dir, context, checkpoint.class_names)
    return results


_COST_CACHE: dict[str, tuple[int, float]] = {}


def model_cost(name: str, kwargs: Mapping[str, Any], size: int = FLOPS_SIZE) -> tuple[int, float]:
    """``(parameters, GFLOPs)`` of registry model ``name`` with ``kwargs`` (in_channels/num_classes included),
    GFLOPs of one eval-mode forward pass on an ``in_channels x size x size`` image (a multiply-add = 2 FLOPs,
    as :mod:`convunext.utils.flops`; counted on the meta device, so nothing is computed)."""
    from torch.utils.flop_counter import FlopCounterMode

    from .models import create_model
    from .utils.flops import count_parameters

    key = json.dumps([name, dict(kwargs), size], sort_keys=True, default=str)
    if key not in _COST_CACHE:
        with torch.device("meta"):
            model = create_model(name, **kwargs)
        model.eval()
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            model(torch.zeros(1, int(kwargs.get("in_channels", 3)), size, size, device="meta"))
        _COST_CACHE[key] = (count_parameters(model), counter.get_total_flops() / 1e9)
    return _COST_CACHE[key]


def _training_seconds(run_dir: Path) -> float:
    with open(run_dir / "metrics.csv", newline="") as handle:
        return math.fsum(float(row["epoch_seconds"]) for row in csv.DictReader(handle))


def collect_row(spec: RunSpec, test_metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The ``results.csv`` row of a finished, tested run."""
    meta = json.loads((spec.run_dir / "best.json").read_text())
    summary = json.loads((spec.run_dir / "summary.json").read_text())
    params, gflops = model_cost(spec.model, meta["model"]["kwargs"])
    row: dict[str, Any] = {
        "dataset": spec.dataset,
        "model": spec.model,
        "seed": spec.seed,
        "params": params,
        f"gflops_{FLOPS_SIZE}": gflops,
    }
    for key in TEST_METRICS:
        value = test_metrics.get(key)
        row[f"test_{key}"] = math.nan if value is None else float(value)
    row["best_val_epoch"] = summary["best_epoch"]
    row["best_val_dice"] = summary["best_val_metrics"].get("dice_fg_mean", math.nan)
    row["epochs_run"] = summary["epochs_run"]
    row["train_seconds"] = _training_seconds(spec.run_dir)
    row["run_dir"] = str(spec.run_dir)
    return row


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    kept = [v for v in values if not math.isnan(v)]
    if not kept:
        return math.nan, math.nan
    return statistics.fmean(kept), (statistics.stdev(kept) if len(kept) > 1 else math.nan)


def _pm(values: Sequence[float], digits: int = 4) -> str:
    mean, std = _mean_std(values)
    if math.isnan(mean):
        return "—"
    return f"{mean:.{digits}f}" if math.isnan(std) else f"{mean:.{digits}f} ± {std:.{digits}f}"


def _group(rows: Sequence[Mapping[str, Any]]) -> dict[tuple[str, str], list[Mapping[str, Any]]]:
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["dataset"], row["model"]), []).append(row)
    return groups


def summarize(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """``summary.csv``: per dataset and model, the mean and sample std (n-1) over seeds of every test metric."""
    out = []
    for (dataset, model), group in _group(rows).items():
        entry: dict[str, Any] = {
            "dataset": dataset,
            "model": model,
            "seeds": len(group),
            "params": group[0]["params"],
            f"gflops_{FLOPS_SIZE}": group[0][f"gflops_{FLOPS_SIZE}"],
        }
        for key in (*(f"test_{k}" for k in TEST_METRICS), "train_seconds"):
            mean, std = _mean_std([float(r[key]) for r in group])
            entry[f"{key}_mean"], entry[f"{key}_std"] = mean, std
        out.append(entry)
    return out


def _write_csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    fields = list(rows[0]) if rows else ["dataset", "model", "seed"]
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})


def _params_text(params: int) -> str:
    return f"{params / 1e6:.2f}M" if params >= 1e5 else f"{params / 1e3:.1f}k"


def results_markdown(
    rows: Sequence[Mapping[str, Any]], budget: Budget, context: Mapping[str, Any], specs: Sequence[RunSpec]
) -> str:
    """The text of ``results.md``: the budget, the paper-style tables, the recipe and the protocol."""
    groups = _group(rows)
    datasets = list(dict.fromkeys(row["dataset"] for row in rows))
    models = list(dict.fromkeys(row["model"] for row in rows))
    seeds = sorted({int(row["seed"]) for row in rows})
    title = lambda m: MODEL_TITLES.get(m, m)  # noqa: E731
    lines = [
        f"# ConvUNeXt reproduction — budget `{budget.name}`",
        "",
        f"**Produced by the `{budget.name}` budget**: {budget.description}",
        "",
        f"- command: `{context.get('command', 'convunext reproduce')}`",
        f"- finished: {context.get('finished')}; convunext {__version__}, torch {torch.__version__}, "
        f"{context.get('device')}; seeds: {', '.join(map(str, seeds))} ({len(seeds)} per model)",
        "- protocol: the best checkpoint of each run is chosen on the **validation** split (carved from the "
        "training images); the **test** split is evaluated once, with that checkpoint. Same recipe for every model.",
        "- Dice = mean over test images of the per-image foreground Dice; mIoU = mean IoU over classes *including "
        "background* from one confusion matrix over the test set (the paper's definitions; see SPEC section 6). "
        "Values are mean ± sample std over seeds (no ± with one seed).",
        "",
    ]
    headers = ["Model", "Params", f"GFLOPs (3x{FLOPS_SIZE}x{FLOPS_SIZE})"]
    for dataset in datasets:
        headers += [f"{DATASET_TITLES[dataset]} Dice", f"{DATASET_TITLES[dataset]} mIoU"]
    table = []
    for model in models:
        first = next(group[0] for (d, m), group in groups.items() if m == model)
        line = [title(model), _params_text(int(first["params"])), f"{float(first[f'gflops_{FLOPS_SIZE}']):.1f}"]
        for dataset in datasets:
            group = groups.get((dataset, model), [])
            line += [_pm([float(r["test_dice_fg_mean"]) for r in group])]
            line += [_pm([float(r["test_miou_cm"]) for r in group])]
        table.append(line)
    lines += ["## Test results", "", markdown_table(headers, table), ""]
    for dataset in (d for d in datasets if d in VESSEL_DATASETS):
        vessel = []
        for model in models:
            group = groups.get((dataset, model), [])
            vessel.append([title(model), *(_pm([float(r[f"test_{key}"]) for r in group]) for key, _ in FOV_METRICS)])
        lines += [
            f"### {DATASET_TITLES[dataset]}: vessel metrics inside the field of view",
            "",
            markdown_table(["Model", *(label for _, label in FOV_METRICS)], vessel),
            "",
        ]
    runs = []
    for (dataset, model), group in groups.items():
        runs.append(
            [
                DATASET_TITLES[dataset],
                title(model),
                str(len(group)),
                ", ".join(f"{int(r['best_val_epoch'])}/{int(r['epochs_run'])}" for r in group),
                _pm([float(r["best_val_dice"]) for r in group]),
                f"{statistics.fmean(float(r['train_seconds']) for r in group) / 60:.1f}",
            ]
        )
    lines += [
        "## Runs",
        "",
        markdown_table(["Dataset", "Model", "Seeds", "Best val epoch / epochs", "Val Dice", "Train min / seed"], runs),
        "",
        "## Recipe",
        "",
    ]
    for dataset in datasets:
        config = next(spec.config for spec in specs if spec.dataset == dataset)
        optim, train, data = config.optim, config.train, config.data
        lines.append(
            f"- {DATASET_TITLES[dataset]}: {train.epochs} epoch(s), crop {data.crop_size}, batch {optim.batch_size} "
            f"(per process), AdamW lr {optim.lr:g}, weight decay {optim.weight_decay:g}, {optim.recipe} schedule "
            f"(warm-up {optim.warmup_epochs:g} epoch(s), "
            + (f"decay x{optim.decay_gamma:g} per epoch" if optim.decay == "exponential" else "poly decay")
            + f"), validation every {train.eval_every} epoch(s)"
            + (f", model kwargs {config.model.kwargs}" if config.model.kwargs else "")
        )
    lines += [
        "",
        f"Files: `results.csv` (one row per run), `summary.csv` (mean/std), `dice_vs_params.png`, and the run "
        f"folders under `runs/` ({len(rows)} runs).",
        "",
    ]
    return "\n".join(lines)


def plot_dice_vs_params(rows: Sequence[Mapping[str, Any]], path: Path, budget: str = "") -> None:
    """``dice_vs_params.png``: test Dice (mean ± std over seeds) against parameters, one panel per dataset."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = _group(rows)
    datasets = list(dict.fromkeys(row["dataset"] for row in rows))
    figure, axes = plt.subplots(1, len(datasets), figsize=(5 * len(datasets), 4), squeeze=False)
    for axis, dataset in zip(axes[0], datasets):
        for (d, model), group in groups.items():
            if d != dataset:
                continue
            mean, std = _mean_std([float(r["test_dice_fg_mean"]) for r in group])
            params = int(group[0]["params"]) / 1e6
            axis.errorbar(params, mean, yerr=0 if math.isnan(std) else std, marker="o", capsize=4)
            axis.annotate(MODEL_TITLES.get(model, model), (params, mean), textcoords="offset points", xytext=(6, 4))
        axis.set_xlabel("parameters (millions)")
        axis.set_ylabel("test Dice (per-image foreground, mean)")
        axis.set_title(DATASET_TITLES[dataset])
        axis.grid(alpha=0.3)
    seeds = len({row["seed"] for row in rows})
    figure.suptitle(f"test Dice vs parameters — budget {budget or '?'}, mean ± std over {seeds} seed(s)", fontsize=10)
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=100)
    plt.close(figure)


def write_results(
    report_dir: str | Path,
    rows: Sequence[Mapping[str, Any]],
    budget: Budget,
    context: Mapping[str, Any],
    specs: Sequence[RunSpec],
) -> None:
    """Write ``results.csv``, ``summary.csv``, ``results.md`` and ``dice_vs_params.png`` into ``report_dir``."""
    report_dir = Path(report_dir)
    _write_csv(report_dir / "results.csv", rows)
    _write_csv(report_dir / "summary.csv", summarize(rows))
    atomic_write_text(report_dir / "results.md", results_markdown(rows, budget, context, specs))
    plot_dice_vs_params(rows, report_dir / "dice_vs_params.png", budget.name)


@dataclass
class ReproduceResult:
    """What :func:`reproduce` did: the report folder, one row per run, and how many runs it trained."""

    report_dir: Path
    rows: list[dict[str, Any]]
    trained: int
    skipped: int
    seconds: float


def reproduce(
    report_dir: str | Path,
    budget: str | Budget = "cpu",
    datasets: Sequence[str] | None = None,
    models: Sequence[str] | None = None,
    seeds: Sequence[int] | None = None,
    data_root: str | Path | None = None,
    overrides: Sequence[str] = (),
    device: str = "auto",
    command: str | None = None,
    log: Callable[[str], None] = print,
) -> ReproduceResult:
    """Train, test and tabulate every model x dataset x seed; see the module docstring.

    Args:
        report_dir: the report folder (created; runs live under ``report_dir/runs``).
        budget: ``paper``, ``cpu``, ``smoke`` or a :class:`Budget`.
        datasets: among ``drive, glas, hrf, synthetic`` (default: the paper's datasets found under ``data_root``).
        models: registry names (default: every registered model).
        seeds: default: the budget's (paper: 0 1 2, cpu: 0, smoke: 0 1).
        data_root: folder holding ``DRIVE/``, ``GlaS/``, ``HRF/`` (default :func:`convunext.data.default_data_root`).
        overrides: extra ``section.field=value`` settings for every run (after the budget's).
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` for training and testing.
        command: the command line to quote in ``results.md``.
    """
    import os

    from .data import default_data_root
    from .models import list_models
    from .training.trainer import TEMP_FILES

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConvUNeXtError(
            "reproduce runs one process per model; for several GPUs start one `convunext reproduce --models ...` "
            "per GPU (CUDA_VISIBLE_DEVICES) on the same --out folder, then run it once more to write the report"
        )
    start = time.perf_counter()
    chosen = BUDGETS[budget] if isinstance(budget, str) else budget
    root = Path(data_root) if data_root is not None else default_data_root()
    if not datasets:
        datasets = available_datasets(root)
        if not datasets:
            raise ConvUNeXtError(
                f"none of DRIVE, GlaS, HRF found under {root}; pass --data-root, or --datasets synthetic"
            )
        log(f"datasets found under {root}: {', '.join(datasets)}")
    models = list(models or list_models())
    seeds = list(seeds if seeds is not None else chosen.default_seeds)
    overrides = [*overrides, f"train.device={device}"]
    specs = plan_runs(report_dir, models, datasets, seeds, chosen, root, overrides)
    for spec in specs:  # before training anything: a report never mixes budgets
        spec.check_recipe()
    report_dir = Path(report_dir)
    with _report_lock(report_dir):
        for stale in report_dir.glob(TEMP_FILES):  # the run folders below clean their own, under their locks
            stale.unlink(missing_ok=True)
        atomic_write_json(
            report_dir / "reproduce.json",
            {
                "budget": chosen.name,
                "budget_description": chosen.description,
                "datasets": list(datasets),
                "models": models,
                "seeds": seeds,
                "data_root": str(root),
                "overrides": list(overrides),
                "command": command,
                "convunext": __version__,
                "torch": torch.__version__,
            },
        )
    rows, trained, skipped = [], 0, 0
    for index, spec in enumerate(specs, 1):
        status = spec.status()
        prefix = f"[{index}/{len(specs)}] {spec.label}"
        if status == "done":
            skipped += 1
            log(f"{prefix}: finished earlier, skipped")
        else:
            if status in ("new", "resume"):
                log(f"{prefix}: {'resuming' if status == 'resume' else 'training'} ({spec.run_dir})")
                run_start = time.perf_counter()
                train_run(spec)
                trained += 1
                log(f"{prefix}: trained in {(time.perf_counter() - run_start) / 60:.1f} min")
            else:
                skipped += 1
            log(f"{prefix}: testing the best validation checkpoint")
        test_metrics = evaluate_run(spec, device)
        rows.append(collect_row(spec, test_metrics))
        log(
            f"{prefix}: test Dice {rows[-1]['test_dice_fg_mean']:.4f}, mIoU {rows[-1]['test_miou_cm']:.4f} "
            f"(best validation epoch {rows[-1]['best_val_epoch']})"
        )
    context = {
        "command": command or "convunext reproduce",
        "finished": datetime.now().strftime("%Y-%m-%d %H:%M"),
        "device": _device_text(device),
    }
    with _report_lock(report_dir):
        write_results(report_dir, rows, chosen, context, specs)
    return ReproduceResult(report_dir, rows, trained, skipped, time.perf_counter() - start)


def _report_lock(report_dir: Path) -> RunLock:
    """The report folder's lock: processes sharing the folder write its files one at a time (waiting their turn)."""
    return RunLock(report_dir, timeout=REPORT_LOCK_WAIT_S, hint="another `convunext reproduce` is writing its report")


def _device_text(device: str) -> str:
    from .utils.device import resolve_device

    resolved = resolve_device(device)
    if resolved.type == "cuda":
        return f"GPU {torch.cuda.get_device_name(resolved)}"
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} thread(s))"


def estimate(specs: Sequence[RunSpec], steps: int = 2, log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Time ``steps`` training steps (after one warm-up step) and one validation image per dataset and model,
    and project each run's length: ``epochs x steps/epoch x step + evaluations x val images x image time +
    test images x image time``. Writes nothing; one row per dataset and model."""
    from torch import nn
    from torch.utils.data import DataLoader

    from .data import EvalTransform, TrainTransform, TransformedDataset, open_dataset, pad_collate
    from .inference.sliding_window import predict_probabilities
    from .training.losses import SegmentationLoss
    from .training.trainer import Trainer

    rows = []
    seen: set[tuple[str, str]] = set()
    for spec in specs:
        if (spec.dataset, spec.model) in seen:
            continue
        seen.add((spec.dataset, spec.model))
        cfg = spec.config
        trainer = Trainer(cfg, run_dir=spec.run_dir)  # builds data and model; writes nothing until fit()
        info, model, device = trainer.info, trainer.model, trainer.device
        transform = TrainTransform(cfg.data.crop_size, info.mean, info.std, scale_range=cfg.data.scale_range)
        augmented = TransformedDataset(trainer.train_set, transform, seed=cfg.train.seed)
        batch = cfg.optim.batch_size
        loader = DataLoader(augmented, batch_size=batch, shuffle=True, collate_fn=pad_collate, drop_last=True)
        steps_per_epoch = max(1, len(augmented) // batch)
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr)
        loss_fn = SegmentationLoss()
        model.train()
        times = []
        iterator = iter(loader)
        for _ in range(steps + 1):
            try:
                sample = next(iterator)
            except StopIteration:
                iterator = iter(loader)
                sample = next(iterator)
            tick = time.perf_counter()
            loss = loss_fn(model(sample["image"].to(device)), sample["mask"].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - tick)
        step = statistics.median(times[1:])
        image = EvalTransform(info.mean, info.std)(trainer.val_set[0])["image"][None]
        model.eval()
        predict_probabilities(model, image, tile_size=cfg.data.eval_tile_size, device=device)  # warm-up
        tick = time.perf_counter()
        predict_probabilities(model, image, tile_size=cfg.data.eval_tile_size, device=device)
        per_image = time.perf_counter() - tick
        epochs, every = cfg.train.epochs, cfg.train.eval_every
        evaluations = sum(1 for e in range(1, epochs + 1) if e % every == 0 or e == epochs)
        test_images = len(open_dataset(cfg.data.name, cfg.data.root, "test", **cfg.data.options))  # type: ignore[arg-type]
        seconds = (
            epochs * steps_per_epoch * step
            + evaluations * len(trainer.val_set) * per_image  # type: ignore[arg-type]
            + test_images * per_image
        )
        rows.append(
            {
                "dataset": spec.dataset,
                "model": spec.model,
                "step_seconds": step,
                "steps": epochs * steps_per_epoch,
                "eval_image_seconds": per_image,
                "run_minutes": seconds / 60,
            }
        )
        log(
            f"{spec.dataset} / {spec.model}: step {step:.2f} s (batch {batch}, crop {cfg.data.crop_size}), "
            f"{epochs * steps_per_epoch} steps, {per_image:.2f} s per evaluation image "
            f"-> {seconds / 60:.1f} min per seed"
        )
    return rows
