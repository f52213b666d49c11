"""``train.time_budget_minutes``: the plan's arithmetic, schedule compression, and a planned run that is recorded,
untouched by its measurements and never measured again on resume."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from convunext.cli.main import main
from convunext.training.config import ExperimentConfig, OptimConfig
from convunext.training.schedule import compress_schedule, lr_factor
from convunext.training.time_budget import RunCosts, plan_epochs, validations
from convunext.training.trainer import Trainer


def test_validations_count_the_last_epoch() -> None:
    assert [validations(e, 3) for e in (1, 2, 3, 4, 6, 7)] == [1, 1, 1, 2, 2, 3]


def test_plan_fits_steps_validations_and_saves() -> None:
    # 10 steps of 1 s + a 0.5 s save per epoch, a 4 s validation every 2nd epoch and after the last; 20 s spent
    costs = RunCosts(steps_per_epoch=10, step_seconds=1.0, validation_seconds=4.0, save_seconds=0.5)
    plan = plan_epochs(2.0, 300, 2, costs, 20.0)
    assert plan.epochs == 8  # 20 + 8 * 10.5 + 4 * 4 = 120 s exactly
    assert plan.planned_seconds == pytest.approx(120.0) and plan.validation_count == 4
    assert plan_epochs(2.0, 300, 2, costs, 20.1).epochs == 7  # a tenth of a second too many
    assert plan_epochs(0.1, 300, 1, costs, 0.0).epochs == 1  # never less than one epoch
    record = plan.to_dict()
    assert record["epochs"] == 8 and record["planned_minutes"] == 2.0 and record["nominal_epochs"] == 300
    assert costs.seconds(8, 2) == pytest.approx(100.0) and costs.seconds(7, 2) == pytest.approx(89.5)


@pytest.mark.parametrize("decay", ["exponential", "poly", "cosine"])
def test_compressed_schedule_keeps_the_proportions(decay: str) -> None:
    optim = OptimConfig(decay=decay, warmup_epochs=5.0)
    short = compress_schedule(optim, 300, 40)
    assert short.warmup_epochs == pytest.approx(5 * 40 / 300, abs=1e-6)
    steps = 15  # whole warm-up steps at both lengths
    for fraction in (0.0, 0.01, 0.5, 1.0):  # the same lr at the same fraction of the run
        assert lr_factor(round(fraction * 40 * steps), steps, 40, short) == pytest.approx(
            lr_factor(round(fraction * 300 * steps), steps, 300, optim), rel=1e-4, abs=1e-9
        ), fraction


def test_cosine_decay() -> None:
    optim = OptimConfig(decay="cosine", warmup_epochs=0.0)
    assert [lr_factor(s, 10, 10, optim) for s in (0, 50, 100)] == pytest.approx([1.0, 0.5, 0.0], abs=1e-12)
    assert lr_factor(25, 10, 10, optim) == pytest.approx((1 + math.cos(math.pi / 4)) / 2)


def test_planned_run_is_recorded_and_untouched_by_its_measurements(
    tmp_path: Path, tiny_run: Callable[..., ExperimentConfig], one_thread: None
) -> None:
    planned = Trainer(tiny_run("train.time_budget_minutes=0.25", "train.run_name=planned"))
    result = planned.fit()
    saved = ExperimentConfig.from_yaml(tmp_path / "planned" / "config.yaml")
    plan = saved.train.time_budget_plan
    assert plan is not None and plan["nominal_epochs"] == 12 and plan["epochs"] == saved.train.epochs
    assert result.epochs_run == saved.train.epochs > 1 and result.planned_seconds is not None
    assert saved.optim == compress_schedule(tiny_run().optim, 12, saved.train.epochs)
    assert result.seconds <= 0.25 * 60 * 1.5  # a quiet machine lands within 10%; a shared CI runner may not
    # the same resolved config trained again (the plan is set: nothing is measured) ends with the same weights
    again = ExperimentConfig.from_yaml(tmp_path / "planned" / "config.yaml", ["train.run_name=again"])
    Trainer(again).fit()
    expected = load_file(str(tmp_path / "planned" / "last.safetensors"))
    actual = load_file(str(tmp_path / "again" / "last.safetensors"))
    assert all(torch.equal(expected[k], actual[k]) for k in expected)


def test_measuring_costs_touches_neither_the_run_nor_its_folder(
    tmp_path: Path, tiny_run: Callable[..., ExperimentConfig], one_thread: None
) -> None:
    trainer = Trainer(tiny_run("train.run_name=run"))
    weights = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    rng = torch.get_rng_state()
    costs = trainer.measure_costs()
    assert costs.steps_per_epoch == 3 and min(costs.step_seconds, costs.validation_seconds, costs.save_seconds) > 0
    assert all(torch.equal(weights[k], v) for k, v in trainer.model.state_dict().items())
    assert torch.equal(rng, torch.get_rng_state()) and not (tmp_path / "run").exists()


def test_resume_never_measures_again(
    tmp_path: Path, tiny_run: Callable[..., ExperimentConfig], one_thread: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = tmp_path / "run"
    first = Trainer(tiny_run("train.time_budget_minutes=0.1", "train.run_name=run"))
    monkeypatch.setattr(Trainer, "_early_stop", lambda self, loop: loop.epoch == 1)
    first.fit()
    monkeypatch.undo()
    monkeypatch.setattr(Trainer, "_measure_costs", lambda *a: pytest.fail("a resumed run measured again"))
    saved = ExperimentConfig.from_yaml(run / "config.yaml")
    resumed = Trainer(saved, run_dir=run, resume=True).fit()
    assert resumed.epochs_run == saved.train.epochs and resumed.planned_seconds is None


def test_time_budget_flag_prints_planned_and_actual(
    tiny_run_arguments: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["train", *tiny_run_arguments, "--time-budget", "0.1", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "time budget 0.1 min:" in out and "epochs of 3 steps" in out
    assert "planned 0.1 min, took" in out
    with pytest.raises(SystemExit):
        main(["train", "--threads", "0"])
    assert "'0': expected a number of threads, an integer of at least 1" in capsys.readouterr().err
