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
* ``reproduce.json`` — what was asked (budget, datasets, models, seeds, overrides, versions), with every invocation
  on the folder.

Budgets (:data:`BUDGETS`) change only the length and size of training, the same way for every model:

* ``paper`` — the dataset presets as they are: the paper's recipe (300 epochs, crop 480 / 480 / 960, AdamW
  lr 4e-4, batch 4, 5 warm-up epochs then exponential decay), evaluated every 5 epochs. Meant for a GPU.
* ``cpu`` — the short CPU recipe chosen on DRIVE's validation split (``reports/drive-recipe-sweep``): the reference
  code's recipe (AdamW lr 1.5e-3, weight decay 1e-4, 1/300 of the run warm-up, poly decay) for the same
  :data:`CPU_STEPS` = 1,200 optimiser steps of batch 4 for every model and dataset (:func:`step_budget`: DRIVE 300
  epochs of 4 steps, GlaS 67 of 18; HRF :data:`HRF_CPU_STEPS` = 600 steps of larger crops, 120 epochs of 5 —
  150 of 4 when ``data.options.skip_unannotated`` leaves one of its training images out: ``train.steps`` fixes the
  epochs once the training data is known),
  crop 256 (HRF 384), BatchNorm statistics recomputed on 4 batches
  before each validation. One DRIVE training step takes ConvUNeXt about 1.9 s and UNet 1.1 s (trainer defaults) on
  a 2-core Xeon with AVX-512, 4.3 s and 3.5 s on a 2-core EPYC with AVX2 only: DRIVE takes ConvUNeXt 50 to 95
  minutes, all five models x one seed 4 to 8 hours (``--estimate`` re-measures).
* ``smoke`` — width-8 models, one epoch on tiny crops (synthetic: 10 images of 64x64): a test of the plumbing.

Several processes may share one report folder (one per GPU, each with its own ``--models``): each run folder is
locked (:class:`~convunext.utils.lock.RunLock`) while it is trained or tested, so two processes never work on the
same run, and the report files are written under the report folder's lock, one process at a time.

``convunext ablate`` (:mod:`~convunext.reproduce.ablate`) runs the paper's Section 3 studies — the roadmap from
UNet to ConvUNeXt and the leave-one-out study — with the same machinery (:func:`~convunext.reproduce.run.
run_experiment`), into ``STUDY.md``, ``STUDY.csv`` and the roadmap figure ``STUDY.png``.
"""

from __future__ import annotations

from .ablate import ablate, study_models
from .budgets import BUDGETS, CPU_STEPS, Budget, step_budget
from .estimate import estimate
from .plan import DATASETS, RunSpec, available_datasets, locate_dataset, plan_runs
from .run import (
    Experiment,
    ReproduceResult,
    evaluate_run,
    reproduce,
    resolve_experiment,
    run_experiment,
    train_run,
    write_results,
)

__all__ = [
    "BUDGETS",
    "CPU_STEPS",
    "DATASETS",
    "Budget",
    "Experiment",
    "ReproduceResult",
    "RunSpec",
    "ablate",
    "available_datasets",
    "estimate",
    "evaluate_run",
    "locate_dataset",
    "plan_runs",
    "reproduce",
    "resolve_experiment",
    "run_experiment",
    "step_budget",
    "study_models",
    "train_run",
    "write_results",
]
