"""``train.time_budget_minutes``: fix a run's length from the measured cost of its work.

Before the first epoch the trainer measures, on a copy of the model (the run itself is untouched), the median of
a few training steps, one validation pass (with whatever precise-BN and EMA work it carries) and one checkpoint
save. :func:`plan_epochs` then picks the largest number of epochs whose steps, validations and saves fit in what
is left of the budget, and the schedule is compressed to that length with the recipe's proportions
(:func:`~convunext.training.schedule.compress_schedule`). The plan is stored in ``train.time_budget_plan`` of the
run's ``config.yaml``: resuming the run (or re-running its config) never measures again, so its length and
schedule are deterministic.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["BudgetPlan", "RunCosts", "plan_epochs", "validations"]


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
