"""``convunext ablate``: the paper's Section 3 studies (:mod:`convunext.models.variants`) run as a reproduction.

Each model of the study x dataset x seed is an ordinary resumable run of :func:`~convunext.reproduce.run.
run_experiment` (the same run folders, locks, budgets, and test-once protocol as ``convunext reproduce``), under
``REPORT/runs/<dataset>/<model>/seed<S>/``: a model in both studies (``convunext``, ``roadmap9_gate``), or in a
reproduction (``unet``, ``convunext``) with the same budget in the same folder, is trained once. The report files
are named after the study, so both studies can share a folder:

* ``STUDY.md`` — one table per dataset (step, change, model, params, GFLOPs at 3x480x480, Dice and mIoU as
  mean ± std over seeds, the difference to the previous step and to ConvUNeXt) with the paired tests of those
  Dice differences over the test images, the models' arguments, the runs and the recipe;
* ``STUDY.csv`` — those tables (with mIoU differences); ``STUDY-runs.csv`` — one row per run;
* ``STUDY.png`` — the roadmap figure (:func:`~convunext.reproduce.plots.plot_study`);
* ``STUDY.json`` — what was asked, with every invocation on the folder.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import ConvUNeXtError
from ..models.variants import Study, study
from ..utils.io import atomic_write_text
from .ablation_report import study_markdown, study_summary
from .budgets import Budget
from .plan import RunSpec
from .plots import plot_study
from .report import write_csv
from .run import Experiment, ReproduceResult, report_context, report_lock, run_experiment


def study_models(name: str, models: Sequence[str] | None = None) -> tuple[Study, list[str]]:
    """The study ``name`` and the models to run: ``models`` (each one of the study's), or all of the study's."""
    chosen = study(name)
    foreign = [model for model in models or () if model not in chosen.models]
    if foreign:
        raise ConvUNeXtError(
            f"{foreign[0]!r} is not a model of the {name} study; its models: {', '.join(chosen.models)}"
        )
    return chosen, list(models or chosen.models)


def write_study_report(
    report_dir: Path,
    chosen: Study,
    rows: Sequence[Mapping[str, Any]],
    budget: Budget,
    context: Mapping[str, Any],
    specs: Sequence[RunSpec],
) -> None:
    """Write ``STUDY.csv``, ``STUDY-runs.csv``, ``STUDY.md`` and ``STUDY.png`` into ``report_dir``."""
    summary = study_summary(chosen, rows, specs)
    write_csv(report_dir / f"{chosen.name}-runs.csv", rows)
    write_csv(report_dir / f"{chosen.name}.csv", summary)
    atomic_write_text(report_dir / f"{chosen.name}.md", study_markdown(chosen, summary, rows, budget, context, specs))
    title = f"ConvUNeXt ablation: {chosen.title} — budget {budget.name}, {len({r['seed'] for r in rows})} seed(s)"
    plot_study(summary, title, chosen.final, report_dir / f"{chosen.name}.png")


def ablate(
    experiment: Experiment,
    study_name: str = "roadmap",
    command: str | None = None,
    log: Callable[[str], None] = print,
) -> ReproduceResult:
    """Train, test and tabulate every model of ``experiment`` (:func:`~convunext.reproduce.run.resolve_experiment`
    of some or all of the study's models, :func:`study_models`) x dataset x seed; see the module docstring.

    Args:
        experiment: the runs and how they are made.
        study_name: ``roadmap`` or ``leave-one-out``.
        command: the command line to quote in ``STUDY.md``.
        log: receives a line per step of every run.

    Raises:
        ConvUNeXtError: an unknown study, or a model of ``experiment`` that is not one of the study's.
    """
    start = time.perf_counter()
    chosen, _ = study_models(study_name, experiment.models)
    record = {"study": chosen.name, **experiment.record(command)}
    specs, rows, trained, skipped = run_experiment(experiment, chosen.models, f"{chosen.name}.json", record, log)
    command = command or f"convunext ablate --study {chosen.name}"
    context = report_context(command, experiment.inferer.device, f"{chosen.name}.json")
    with report_lock(experiment.report_dir):
        write_study_report(experiment.report_dir, chosen, rows, experiment.budget, context, specs)
    return ReproduceResult(experiment.report_dir, rows, trained, skipped, time.perf_counter() - start)
