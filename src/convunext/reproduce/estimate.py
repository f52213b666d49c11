"""``convunext reproduce --estimate``: time a few training steps and evaluations, and project each run's length."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from .plan import RunSpec


def estimate(specs: Sequence[RunSpec], log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Time each dataset and model's own work with the trainer (:meth:`~convunext.training.trainer.Trainer.
    measure_costs`: a training step on the run's fast paths, a validation with its precise-BN work, a save) and
    project each run's length: its epochs' steps and saves, its validations, and the test images (at a validation
    image's cost, BatchNorm recomputation included: a slight over-estimate); with ``train.time_budget_minutes``,
    the epochs that fit in it. Writes nothing; one row per dataset and model."""
    from ..data import open_dataset
    from ..training.time_budget import plan_epochs
    from ..training.trainer import Trainer

    rows = []
    seen: set[tuple[str, str]] = set()
    for spec in specs:
        if (spec.dataset, spec.model) in seen:
            continue
        seen.add((spec.dataset, spec.model))
        cfg = spec.config
        trainer = Trainer(cfg, run_dir=spec.run_dir)  # builds data and model; writes nothing until fit()
        costs = trainer.measure_costs()
        test_images = len(open_dataset(cfg.data.name, cfg.data.root, "test", **cfg.data.options))  # type: ignore[arg-type]
        test_seconds = costs.validation_seconds * test_images / len(trainer.val_set)  # type: ignore[arg-type]
        epochs = cfg.train.epochs
        if cfg.train.time_budget_minutes:  # the run's length is fitted to its budget, as the trainer will
            epochs = plan_epochs(cfg.train.time_budget_minutes, epochs, cfg.train.eval_every, costs, 0.0).epochs
        seconds = costs.seconds(epochs, cfg.train.eval_every) + test_seconds
        steps = epochs * costs.steps_per_epoch
        rows.append(
            {
                "dataset": spec.dataset,
                "model": spec.model,
                "step_seconds": costs.step_seconds,
                "steps": steps,
                "validation_seconds": costs.validation_seconds,
                "run_minutes": seconds / 60,
            }
        )
        log(
            f"{spec.dataset} / {spec.model}: step {costs.step_seconds:.2f} s (batch {cfg.optim.batch_size}, crop "
            f"{cfg.data.crop_size}), {steps} steps, validation {costs.validation_seconds:.1f} s "
            f"-> {seconds / 60:.1f} min per seed"
        )
    return rows
