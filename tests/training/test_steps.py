"""``train.steps``: a run's length given in optimiser steps, fixed in whole epochs once the training data is known
(the ``cpu`` reproduce budget's 600 HRF steps stay 600 when HRF trains without its unannotated image), kept on
resume, extended by a larger ``train.steps``, and compared at its resolved length by ``reproduce``."""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from convunext.errors import ConvUNeXtError
from convunext.reproduce.plan import RunSpec
from convunext.training.config import EXECUTION_FIELDS, ExperimentConfig
from convunext.training.resume import resumed_config
from convunext.training.schedule import steps_epochs, with_length
from convunext.training.trainer import Trainer


def _steps_logged(run: Path) -> list[int]:
    return [int(row["step"]) for row in csv.DictReader((run / "metrics.csv").open())]


@pytest.mark.parametrize(("batch_size", "steps_per_epoch", "epochs"), [(2, 3, 3), (3, 2, 4)])
def test_steps_fix_the_epochs_once_the_training_data_is_known(
    tiny_run: Callable[..., ExperimentConfig], batch_size: int, steps_per_epoch: int, epochs: int
) -> None:
    """7 steps of the tiny run's 6 training images: 3 epochs of 3 steps at batch 2, 4 of 2 at batch 3 — the
    warm-up keeping its twelfth of the nominal 12 epochs, and config.yaml recording the resolved length."""
    config = tiny_run(
        "train.steps=7",
        "train.epochs=12",
        "optim.warmup_epochs=1",
        f"optim.batch_size={batch_size}",
        "train.eval_every=100",
        "train.run_name=run",
    )
    trainer = Trainer(config)
    trainer.fit()
    assert _steps_logged(trainer.run_dir) == [steps_per_epoch * (epoch + 1) for epoch in range(epochs)]
    saved = yaml.safe_load((trainer.run_dir / "config.yaml").read_text())
    assert saved["train"]["steps"] == 7 and saved["train"]["epochs"] == epochs
    assert saved["optim"]["warmup_epochs"] == pytest.approx(epochs / 12)


def test_a_resumed_steps_run_keeps_its_length_and_a_larger_steps_extends_it(
    tiny_run: Callable[..., ExperimentConfig], capsys: pytest.CaptureFixture[str]
) -> None:
    launch = ("train.steps=7", "train.epochs=12", "optim.warmup_epochs=1", "train.run_name=run")
    first = Trainer(tiny_run(*launch))
    first.fit()
    recorded = ExperimentConfig.from_yaml(first.run_dir / "config.yaml")
    # the same launch, plus --resume: the nominal 12 epochs resolve to the recorded 3, the recipe unchanged
    config, changes = resumed_config(first.run_dir, tiny_run(*launch), recorded)
    assert (config.train.epochs, config.optim) == (3, recorded.optim)
    assert [change for change in changes if change.split()[0] not in EXECUTION_FIELDS] == []  # (auto switches)
    capsys.readouterr()
    Trainer(tiny_run(*launch), resume=True).fit()
    assert _steps_logged(first.run_dir) == [3, 6, 9]
    assert "nothing to train (a larger train.steps extends it)" in capsys.readouterr().out
    # the run's own config.yaml with more steps trains on to ceil(10 / 3) = 4 epochs
    extended = ExperimentConfig.from_yaml(first.run_dir / "config.yaml", ["train.steps=10"])
    Trainer(extended, run_dir=first.run_dir, resume=True).fit()
    assert _steps_logged(first.run_dir) == [3, 6, 9, 12]
    assert "train.steps 7 -> 10" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["train.steps=0"], "train.steps=0 is not valid; expected a positive integer"),
        (
            ["train.steps=100", "train.time_budget_minutes=5"],
            "train.steps and train.time_budget_minutes both fix the run's length; set one of them",
        ),
    ],
)
def test_invalid_steps_are_refused_naming_the_field(overrides: list[str], message: str) -> None:
    with pytest.raises(ConvUNeXtError, match=message):
        ExperimentConfig.from_yaml("synthetic", overrides)


def test_steps_epochs_is_the_fewest_whole_epochs() -> None:
    assert [steps_epochs(600, spe) for spe in (5, 4, 7, 600, 601)] == [120, 150, 86, 1, 1]


def _saved_run(folder: Path, config: ExperimentConfig, steps_per_epoch: int | None) -> RunSpec:
    """A reproduce run folder trained with ``config`` (its config.yaml; ``steps_per_epoch`` steps in each of its
    epochs in metrics.csv, or no epoch yet)."""
    folder.mkdir(parents=True)
    config.to_yaml(folder / "config.yaml")
    if steps_per_epoch is not None:
        rows = [f"{epoch},{epoch * steps_per_epoch}" for epoch in range(1, config.train.epochs + 1)]
        (folder / "metrics.csv").write_text("epoch,step\n" + "\n".join(rows) + "\n")
    return RunSpec("hrf", "convunext", 0, None, folder)


HRF_BUDGET = ("train.steps=600", "train.epochs=120", "optim.warmup_epochs=0.4", "optim.recipe=reference")
"""The ``cpu`` budget's length of HRF (20 training images in its split: 120 epochs of 5 steps)."""


@pytest.mark.parametrize(
    ("saved_steps", "saved_epochs", "steps_per_epoch", "matches"),
    [
        (600, 150, 4, True),  # trained in steps: 19 images, 4 steps per epoch
        (None, 120, 5, True),  # from before train.steps: 120 epochs of 5 steps made the 600 steps
        (None, 120, 4, False),  # ... but 120 epochs of 4 are 480 steps: not this recipe
        (600, 150, None, True),  # nothing trained yet: what it was asked for
        (480, 120, None, False),
    ],
)
def test_reproduce_compares_a_run_in_steps_at_the_length_it_resolved_to(
    tmp_path: Path, saved_steps: int | None, saved_epochs: int, steps_per_epoch: int | None, matches: bool
) -> None:
    planned = ExperimentConfig.from_yaml("hrf", list(HRF_BUDGET))
    saved = with_length(planned, saved_epochs)
    saved.train.steps = saved_steps
    spec = _saved_run(tmp_path / "run", saved, steps_per_epoch)
    spec.config = planned
    if matches:
        spec.check_recipe()
    else:
        with pytest.raises(ConvUNeXtError, match=r"another recipe \(train.steps differ"):
            spec.check_recipe()


def test_reproduce_still_names_the_other_fields_of_a_run_in_steps(tmp_path: Path) -> None:
    planned = ExperimentConfig.from_yaml("hrf", list(HRF_BUDGET))
    saved = with_length(planned, 150)
    saved.optim.lr = 0.01
    spec = _saved_run(tmp_path / "run", saved, 4)
    spec.config = planned
    with pytest.raises(ConvUNeXtError, match=r"another recipe \(optim.lr differ"):
        spec.check_recipe()
