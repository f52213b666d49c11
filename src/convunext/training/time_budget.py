"""``train.time_budget_minutes``: fix a run's length from the measured cost of its work.

Before the first epoch the trainer measures, on a copy of the model (the run itself is untouched), the median of
a few training steps, one validation pass (with whatever precise-BN and EMA work it carries) and one checkpoint
save. :func:`plan_epochs` then picks the largest number of epochs whose steps, validations and saves fit in what
is left of the budget, and the schedule is compressed to that length with the recipe's proportions
(:func:`~convunext.training.schedule.compress_schedule`). The plan is stored in ``train.time_budget_plan`` of the
run's ``config.yaml``: resuming the run (or re-running its config) never measures again, so its length and
schedule are deterministic.

A budget of minutes buys a few hundred optimiser steps on a CPU, where the dataset presets' recipe (the paper's:
lr 4e-4 with exponential decay, 480 crops, planned for 300 epochs on a GPU) barely starts to learn. The recipe
validated for short budgets (:data:`SHORT_BUDGET_RECIPE`, :func:`short_budget_overrides`) is the one that
``benchmarks/recipe_sweep.py`` chose on DRIVE's validation split at 10 minutes on a 2-core CPU (README, "Choosing
the short CPU recipe on validation") and that the ``cpu`` budget of ``convunext reproduce`` trains with. A plan of
fewer than :data:`MIN_LEARNING_STEPS` steps is warned about (:func:`too_few_steps_warning`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

__all__ = [
    "MIN_LEARNING_STEPS",
    "SHORT_BUDGET_RECIPE",
    "BudgetPlan",
    "RunCosts",
    "plan_epochs",
    "short_budget_crop",
    "short_budget_overrides",
    "too_few_steps_warning",
    "validations",
]

SHORT_BUDGET_RECIPE = ("optim.recipe=reference", "optim.batch_size=4", "train.precise_bn_batches=4")
"""The optimisation of the short-budget recipe: the reference code's (AdamW lr 1.5e-3, weight decay 1e-4, warm-up
from 1e-3 x lr over 1/300 of the run, poly decay), batch 4, BatchNorm statistics recomputed before each validation.
On DRIVE at 10 minutes it beat the paper's exponential shape by 0.018 to 0.038 validation Dice."""
_SHORT_BUDGET_CROPS = {"hrf": 384}  # HRF's 3504x2336 images keep a larger field of view
MIN_LEARNING_STEPS = 100
"""Fewer optimiser steps than this are too few to learn: ConvUNeXt's DRIVE validation Dice with the short-budget
recipe was 0.62 after 24 steps, 0.71 after 96 and 0.77 after 144 (``reports/drive-recipe-sweep``; every run of the
sweep had 132 to 248 steps), and 24 steps of the paper's recipe at crop 480 gave a user's own images a test Dice of
0.19 (issue 30)."""


def short_budget_crop(dataset: str) -> int:
    """The short-budget recipe's crop for ``dataset`` (or its preset): 256 (HRF: 384)."""
    return _SHORT_BUDGET_CROPS.get(dataset, 256)


def short_budget_overrides(dataset: str) -> tuple[str, ...]:
    """``--set`` overrides of the short-budget recipe for ``dataset``: :data:`SHORT_BUDGET_RECIPE` and its crop."""
    return (*SHORT_BUDGET_RECIPE, f"data.crop_size={short_budget_crop(dataset)}")


def validations(epochs: int, eval_every: int) -> int:
    """How many validations a run of ``epochs`` makes: every ``eval_every`` epochs, and always after the last."""
    return epochs // eval_every + (1 if epochs % eval_every else 0)


@dataclass(frozen=True)
class RunCosts:
    """The measured cost of each piece of a run's work (seconds), as :meth:`Trainer.measure_costs` times it."""

    steps_per_epoch: int
    step_seconds: float
    validation_seconds: float  # one validation pass with its precise-BN and EMA work, and the plot after it
    save_seconds: float  # one epoch's checkpoint set and metrics.csv (the plot counts with the validation)

    def seconds(self, epochs: int, eval_every: int) -> float:
        """A run of ``epochs``: every epoch's steps and save, and its validations."""
        return (
            epochs * (self.steps_per_epoch * self.step_seconds + self.save_seconds)
            + validations(epochs, eval_every) * self.validation_seconds
        )


@dataclass(frozen=True)
class BudgetPlan:
    """A run length fitted to a time budget, and the measurements it rests on (seconds)."""

    budget_minutes: float
    nominal_epochs: int
    epochs: int
    steps_per_epoch: int
    step_seconds: float
    validation_seconds: float
    save_seconds: float
    spent_seconds: float
    validation_count: int
    planned_seconds: float  # the whole run: what was spent before planning, then every epoch's work

    @property
    def steps(self) -> int:
        """The optimiser steps of the planned run."""
        return self.epochs * self.steps_per_epoch

    def to_dict(self) -> dict[str, Any]:
        """The record kept in ``train.time_budget_plan`` (rounded)."""
        record = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()}
        record["planned_minutes"] = round(self.planned_seconds / 60, 3)
        return record


def plan_epochs(
    budget_minutes: float, nominal_epochs: int, eval_every: int, costs: RunCosts, spent_seconds: float
) -> BudgetPlan:
    """The largest number of epochs (at least 1) whose training steps, validations (every ``eval_every`` epochs and
    after the last) and per-epoch saves fit in ``budget_minutes`` after ``spent_seconds``."""

    def plan(epochs: int) -> BudgetPlan:
        return BudgetPlan(
            budget_minutes,
            nominal_epochs,
            epochs,
            costs.steps_per_epoch,
            costs.step_seconds,
            costs.validation_seconds,
            costs.save_seconds,
            spent_seconds,
            validations(epochs, eval_every),
            spent_seconds + costs.seconds(epochs, eval_every),
        )

    budget = budget_minutes * 60
    per_epoch = costs.seconds(eval_every, eval_every) / eval_every
    epochs = max(1, int((budget - spent_seconds) / per_epoch) + 1)
    while epochs > 1 and spent_seconds + costs.seconds(epochs, eval_every) > budget:
        epochs -= 1
    return plan(epochs)


def too_few_steps_warning(plan: BudgetPlan) -> str | None:
    """A one-line warning when ``plan`` has fewer than :data:`MIN_LEARNING_STEPS` optimiser steps, with its count
    and what buys more; None otherwise."""
    if plan.steps >= MIN_LEARNING_STEPS:
        return None
    return (
        f"warning: time budget {plan.budget_minutes:g} min: {plan.steps} optimiser steps ({plan.epochs} epochs of "
        f"{plan.steps_per_epoch}), too few to learn (the short-budget recipe needed about {MIN_LEARNING_STEPS} on "
        "DRIVE); give more minutes, or a smaller data.crop_size for cheaper steps"
    )
