"""Experiments: a configuration built as ``convunext train`` builds it, trained once per seed.

:func:`experiment_config` reads a preset or YAML file and applies ``--set``-style overrides; under a time budget, a
dataset preset's full-length recipe is replaced by the one validated for short budgets (:func:`short_budget_note`
says when). :func:`train_seeds` trains it once per seed, several seeds in ``BASE/seed<S>`` (:func:`seed_dir`), or
continues the seeds of an earlier call. Every seed's folder and configuration is checked before the first seed
trains; a new run never replaces a folder that holds one unless asked to (:mod:`~convunext.training.run_folder`),
and a resume only ever continues a run as it was trained (:mod:`~convunext.training.resume`).

A notebook trains as the command line does: see the example of :func:`train_seeds`.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..checkpoint import STATE_FILE
from ..errors import ConvUNeXtError
from .config import PRESET_DIR, ExperimentConfig, resolve_preset
from .distributed import DistributedContext, single_process
from .resume import check_resume
from .run_folder import check_new_run_dir, check_overwritable, check_resumable, claim_run_dir, default_run_name
from .time_budget import short_budget_overrides
from .trainer import Trainer, TrainResult

__all__ = [
    "check_seed_options",
    "experiment_config",
    "saved_config_file",
    "seed_dir",
    "short_budget_note",
    "train_seeds",
]

_SEED_PREFIX = "seed"


def experiment_config(source: str | Path, overrides: Sequence[str] = ()) -> ExperimentConfig:
    """The experiment of a preset (``synthetic``, ``drive``...) or YAML file ``source`` with ``overrides``
    (``SECTION.FIELD=VALUE``, applied in order).

    With a time budget (``train.time_budget_minutes``) on a dataset preset, the short-budget recipe
    (:func:`~convunext.training.time_budget.short_budget_overrides`) goes between the preset and ``overrides``: the
    presets' recipe is the paper's 300 epochs at crop 480, which a budget of minutes compresses into a few dozen
    steps that learn little. The ``synthetic`` preset is already a short CPU recipe, and a file of the user's (or a
    run's saved ``config.yaml``) keeps its own recipe; what ``overrides`` set always wins.
    """
    config = ExperimentConfig.from_yaml(source, list(overrides))
    preset = _short_budget_preset(source, config)
    if preset is None:
        return config
    # the preset's crop (HRF's is larger), whatever data it is given
    return ExperimentConfig.from_yaml(source, [*short_budget_overrides(preset), *overrides])


def short_budget_note(source: str | Path, config: ExperimentConfig) -> str | None:
    """The line that says :func:`experiment_config` replaced ``source``'s recipe by the short-budget one in
    ``config`` (built from ``source``), and which fields it set; None when it did not."""
    preset = _short_budget_preset(source, config)
    if preset is None:
        return None
    return (
        f"time budget: the short-budget recipe replaces the {preset} preset's "
        f"({', '.join(short_budget_overrides(preset))}: AdamW lr 1.5e-3, poly decay; chosen on DRIVE's validation "
        "split); --set any of them to choose otherwise"
    )


def _short_budget_preset(source: str | Path, config: ExperimentConfig) -> str | None:
    """The dataset preset whose recipe the short-budget one replaces in ``config``, or None."""
    file = resolve_preset(source)
    if config.train.time_budget_minutes and file.parent == PRESET_DIR and config.data.name != "synthetic":
        return file.stem
    return None


def saved_config_file(run_dir: str | Path) -> Path:
    """The configuration a resume of ``run_dir`` starts from: the run's resolved ``config.yaml``, or for a run of
    several seeds (``run_dir/seed<S>``), the first seed's that has one.

    Raises:
        ConvUNeXtError: there is none; the line says what the folder lacks.
    """
    base = Path(run_dir)
    candidates = [base / "config.yaml", *sorted(base.glob(f"{_SEED_PREFIX}*/config.yaml"))]
    existing = [path for path in candidates if path.is_file()]
    if not existing:
        check_resumable(base)  # says what the folder lacks
        raise ConvUNeXtError(f"{base}: nothing to resume: no config.yaml")
    return existing[0]


def seed_dir(base: str | Path, seed: int) -> Path:
    """The folder of ``seed``'s run in a run of several seeds: ``base/seed<S>``."""
    return Path(base) / f"{_SEED_PREFIX}{seed}"


def check_seed_options(seeds: Sequence[int] | None, *, resume: bool = False, overwrite: bool = False) -> None:
    """Refuse :func:`train_seeds` options that contradict each other: ``resume`` with ``overwrite``, no seed, or a
    seed given twice (its runs would share one folder, and count twice in a mean over seeds)."""
    if resume and overwrite:
        raise ConvUNeXtError("--overwrite starts the run again and --resume continues it; give one of them")
    if seeds is None:
        return
    if not seeds:
        raise ConvUNeXtError("--seeds: no seed given; give at least one, or leave --seeds out to train train.seed")
    repeated = next((seed for index, seed in enumerate(seeds) if seed in seeds[:index]), None)
    if repeated is not None:
        raise ConvUNeXtError(
            f"--seeds {' '.join(map(str, seeds))}: seed {repeated} is given twice (its runs would share one folder); "
            "give each seed once"
        )


def train_seeds(
    config: ExperimentConfig,
    seeds: Sequence[int] | None = None,
    *,
    resume_from: str | Path | None = None,
    overwrite: bool = False,
    dist: DistributedContext | None = None,
) -> dict[int, TrainResult]:
    """Train ``config`` once per seed (``convunext train --seeds``) and return each seed's result, in order.

    One seed trains in the :class:`~convunext.training.trainer.Trainer`'s folder (``train.output_dir/train.run_name``,
    or a new automatically named one); several train in ``BASE/seed<S>`` (:func:`seed_dir`) of that folder. Every
    seed's configuration and folder is checked before the first seed trains. Later seeds keep the switches and
    time-budget plan that the first one resolved.

    Args:
        config: the experiment (see :func:`experiment_config`); not modified.
        seeds: the seeds to train (default: ``train.seed``; with ``resume_from``, the seeds that started there).
        resume_from: a run folder to continue, as it was trained, from its last checkpoint: a run of one seed, or
            the ``BASE`` of several, where each seed that started is continued (a finished one is reported and left
            as it is), each that never did starts, and a folder that holds files but no training state is refused.
        overwrite: a new run in a folder that holds an old run (of the same ``train.run_name``) deletes the old
            run's files first; without it such a folder is refused, and a folder that holds anything else is
            refused in any case.
        dist: the distributed context of this process (default: a single process); only rank 0 writes files.

    Returns:
        ``{seed: result}`` in the order the seeds trained.

    Raises:
        ConvUNeXtError: before any seed trains, a seed or folder that cannot run, saying which and why.

    Example:
        Two seeds on DRIVE with a 10-minute budget each (the short-budget recipe replaces the preset's), then,
        after an interruption, the seeds that did not finish:

        >>> from convunext.training import experiment_config, train_seeds
        >>> config = experiment_config("drive", ["data.root=data/DRIVE", "train.time_budget_minutes=10"])
        >>> results = train_seeds(config, seeds=[0, 1])  # doctest: +SKIP
        >>> [result.run_dir.name for result in results.values()]  # doctest: +SKIP
        ['seed0', 'seed1']
        >>> dice = {seed: result.best_metrics["dice_fg_mean"] for seed, result in results.items()}  # doctest: +SKIP
        >>> train_seeds(config, resume_from=results[0].run_dir.parent)  # doctest: +SKIP
    """
    check_seed_options(seeds, resume=resume_from is not None, overwrite=overwrite)
    config = copy.deepcopy(config)
    runs = _seed_runs(config, seeds, resume_from, dist or single_process())
    _check_seed_runs(runs, config, overwrite=overwrite)
    results = {}
    for run in runs:
        config.train.seed = run.seed
        trainer = Trainer(config, run_dir=run.run_dir, resume=run.resume, dist=dist, overwrite=overwrite)
        results[run.seed] = trainer.fit()
        config = trainer.config  # resolved: later seeds keep the first one's switches and time-budget plan
    return results


@dataclass(frozen=True)
class _SeedRun:
    """One seed's run: its seed, its folder (None: the trainer's choice) and whether it resumes."""

    seed: int
    run_dir: Path | None
    resume: bool


def _seed_runs(
    config: ExperimentConfig,
    seeds: Sequence[int] | None,
    resume_from: str | Path | None,
    dist: DistributedContext,
) -> list[_SeedRun]:
    """The run of each seed. One seed: ``resume_from``, or the trainer's choice. Several: ``BASE/seed<S>`` under
    ``resume_from``, ``train.output_dir/train.run_name`` or a new automatically named BASE.

    ``resume_from`` without ``seeds`` continues the seeds whose folders it holds; with several seeds, a seed whose
    folder does not exist (or is empty) starts, and the others resume (:func:`_check_seed_runs` refuses a folder
    that holds files but no training state)."""
    if resume_from is not None:
        base = Path(resume_from)
        started = _started_seeds(base)
        seeds = list(seeds or started or [config.train.seed])
        if len(seeds) == 1 and (not started or _is_run(base)):
            return [_SeedRun(seeds[0], base, resume=True)]
        runs = [_SeedRun(seed, seed_dir(base, seed), resume=_started(seed_dir(base, seed))) for seed in seeds]
        if not any(run.resume for run in runs):
            names = ", ".join(seed_dir(base, seed).name for seed in seeds)
            raise ConvUNeXtError(f"{base}: nothing to resume: none of {names} has started")
        return runs
    seeds = list(seeds or [config.train.seed])
    if len(seeds) == 1:
        return [_SeedRun(seeds[0], None, resume=False)]
    if config.train.run_name:
        base = Path(config.train.output_dir) / config.train.run_name
    else:  # rank 0 claims a fresh folder, the other ranks use it
        claimed = claim_run_dir(config.train.output_dir, default_run_name(config)) if dist.is_main else None
        base = dist.broadcast_object(claimed)
    return [_SeedRun(seed, seed_dir(base, seed), resume=False) for seed in seeds]


def _check_seed_runs(runs: list[_SeedRun], config: ExperimentConfig, *, overwrite: bool) -> None:
    """Refuse, before any seed trains, a seed that cannot run: an invalid seed, a resume that cannot continue or
    would change the run, a folder that a new run (or ``overwrite``) may not take."""
    for run in runs:
        seeded = copy.deepcopy(config)
        seeded.train.seed = run.seed
        seeded.validate("--seeds")
        if run.resume:
            check_resume(run.run_dir, seeded)  # type: ignore[arg-type]
        elif run.run_dir is not None:
            (check_overwritable if overwrite else check_new_run_dir)(run.run_dir)


def _is_run(folder: Path) -> bool:
    return (folder / STATE_FILE).is_file() or (folder / "config.yaml").is_file()


def _started(folder: Path) -> bool:
    """Whether a seed's folder under ``resume_from`` holds anything but hidden files (a lock, temporary files): a
    missing or empty one starts afresh."""
    return folder.is_dir() and any(not path.name.startswith(".") for path in folder.iterdir())


def _started_seeds(base: Path) -> list[int]:
    """The seeds whose ``seed<S>`` folders under ``base`` hold a run's config or state."""
    found = (path.name[len(_SEED_PREFIX) :] for path in base.glob(f"{_SEED_PREFIX}*") if _is_run(path))
    return sorted(int(seed) for seed in found if seed.isdigit())
