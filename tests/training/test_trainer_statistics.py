"""Precise BatchNorm statistics and the EMA of the weights inside training: logged, saved, training unchanged,
and exactly resumable."""

from __future__ import annotations

import csv
import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from convunext.checkpoint import load_checkpoint
from convunext.training.config import ExperimentConfig
from convunext.training.trainer import Trainer

OPTIONS = ("train.epochs=3", "train.precise_bn_batches=2", "train.validate_running_bn=true", "train.ema_decay=0.9")


def _rows(run: Path) -> list[dict[str, str]]:
    return list(csv.DictReader((run / "metrics.csv").open()))


def test_statistics_options_are_logged_and_saved_without_changing_training(
    tmp_path: Path, tiny_run: Callable[..., ExperimentConfig], one_thread: None
) -> None:
    Trainer(tiny_run(*OPTIONS, "train.run_name=with")).fit()
    Trainer(tiny_run("train.epochs=3", "train.precise_bn_batches=0", "train.run_name=without")).fit()
    rows = _rows(tmp_path / "with")
    assert all(not math.isnan(float(r[k])) for r in rows for k in ("val_dice_running_bn", "val_dice_ema"))
    assert all(
        math.isnan(float(r[k])) for r in _rows(tmp_path / "without") for k in ("val_dice_running_bn", "val_dice_ema")
    )
    ema = load_checkpoint(tmp_path / "with" / "ema_best.json")  # its own checkpoint, loadable like best
    assert ema.meta["epoch"] >= 1 and "dice_fg_mean" in ema.meta["val_metrics"]
    with_bn, without = (load_file(str(tmp_path / r / "last.safetensors")) for r in ("with", "without"))
    for key, value in without.items():
        if "running" in key or "num_batches" in key:  # recomputed from the crops, not the momentum average
            continue
        assert torch.equal(with_bn[key], value), key  # training itself is unchanged
    assert any(not torch.equal(with_bn[k], without[k]) for k in without if k.endswith("running_var"))


def test_recomputed_statistics_are_the_population_statistics_of_the_crops(
    tiny_run: Callable[..., ExperimentConfig], one_thread: None
) -> None:
    trainer = Trainer(tiny_run("train.precise_bn_batches=3", "train.run_name=run"))
    loop = trainer._prepare(0.0)
    loop.augmented.set_epoch(2)
    inputs: list[torch.Tensor] = []
    stem_norm = trainer.model.stem.norm
    handle = stem_norm.register_forward_pre_hook(lambda module, args: inputs.append(args[0].detach().double()))
    trainer._validation.recompute_statistics(trainer.model, loop.augmented, 2)
    handle.remove()
    seen = torch.cat(inputs)  # 3 batches of 2 crops
    assert seen.shape[0] == 6
    torch.testing.assert_close(stem_norm.running_mean.double(), seen.mean((0, 2, 3)), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(
        stem_norm.running_var.double(), seen.transpose(0, 1).flatten(1).var(1), rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize("validate_running_bn", [False, True])
def test_running_statistics_are_validated_only_when_asked(
    tiny_run: Callable[..., ExperimentConfig], one_thread: None, validate_running_bn: bool
) -> None:
    trainer = Trainer(tiny_run(f"train.validate_running_bn={validate_running_bn}", "train.run_name=run"))
    loop = trainer._prepare(0.0)
    calls: list[nn.Module] = []
    validate = trainer._validation.metrics
    trainer._validation.metrics = lambda model: calls.append(model) or validate(model)  # type: ignore[method-assign]
    metrics, running_bn_dice, _ = trainer._validation.point(trainer.model, None, loop.augmented, 1)
    assert len(calls) == (2 if validate_running_bn else 1)
    assert math.isnan(running_bn_dice) != validate_running_bn and "dice_fg_mean" in metrics


def test_interrupted_run_with_both_options_resumes_exactly(
    tmp_path: Path, tiny_run: Callable[..., ExperimentConfig], one_thread: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    Trainer(tiny_run(*OPTIONS, "train.run_name=straight")).fit()
    monkeypatch.setattr(Trainer, "_early_stop", lambda self, loop: loop.epoch == 1)
    Trainer(tiny_run(*OPTIONS, "train.run_name=cut")).fit()
    monkeypatch.undo()
    run = tmp_path / "cut"
    assert len(_rows(run)) == 1
    Trainer(ExperimentConfig.from_yaml(run / "config.yaml"), run_dir=run, resume=True).fit()
    for name in ("last.safetensors", "ema_best.safetensors"):
        expected, actual = (load_file(str(tmp_path / r / name)) for r in ("straight", "cut"))
        assert all(torch.equal(expected[k], actual[k]) for k in expected), name
    timeless = [{k: v for k, v in row.items() if k != "epoch_seconds"} for row in _rows(run)]
    assert timeless == [{k: v for k, v in row.items() if k != "epoch_seconds"} for row in _rows(tmp_path / "straight")]
