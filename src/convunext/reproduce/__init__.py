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

from .budgets import BUDGETS, Budget, paper_schedule
from .estimate import estimate
from .plan import DATASETS, RunSpec, available_datasets, locate_dataset, plan_runs
from .run import ReproduceResult, evaluate_run, reproduce, train_run, write_results

__all__ = [
    "BUDGETS",
    "DATASETS",
    "Budget",
    "ReproduceResult",
    "RunSpec",
    "available_datasets",
    "estimate",
    "evaluate_run",
    "locate_dataset",
    "paper_schedule",
    "plan_runs",
    "reproduce",
    "train_run",
    "write_results",
]
