"""Issue 30, training inputs validated at the boundary, before any work: the model's channels and classes against
the data's (item 12, every registered model), over-long run names and `convunext models` sizes (13), repeated seeds
and a config file that is not UTF-8 (14), and the recipe and warning of a time-budgeted run (16)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from convunext.cli.main import build_parser, main
from convunext.cli.train import build_config
from convunext.models import list_models, list_variants
from convunext.training.time_budget import RunCosts
from convunext.training.trainer import Trainer


def _one_line_error(capsys: pytest.CaptureFixture[str], command: str = "train") -> str:
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    assert err.startswith(f"convunext {command}: error: "), err
    return err


def _gray_folder(root: Path, stems: tuple[str, ...] = ("a", "b", "c", "d", "e", "f"), size: int = 48) -> Path:
    """A folder dataset of single-channel (grey) PNG images and {0, 255} masks."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for stem in stems:
        Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8)).save(root / "images" / f"{stem}.png")
        Image.fromarray((rng.random((size, size)) < 0.3).astype(np.uint8) * 255).save(root / "masks" / f"{stem}.png")
    return root


# -- item 12: the model's channels and classes must be the data's ---------------------------------------------------


@pytest.mark.parametrize("model", list_models() + list_variants())
@pytest.mark.parametrize(
    ("data", "setting", "expected"),
    [
        ("rgb", "model.kwargs.in_channels=1", "model.kwargs.in_channels=1, but the synthetic data has 3-channel"),
        ("grey", "model.kwargs.in_channels=3", "model.kwargs.in_channels=3, but the folder data has 1-channel"),
        ("rgb", "model.kwargs.num_classes=3", "model.kwargs.num_classes=3, but the synthetic data has 2 classes"),
    ],
)
def test_channels_or_classes_other_than_the_datas_are_refused_before_training(
    model: str,
    data: str,
    setting: str,
    expected: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    tiny_train_argv: Callable[..., list[str]],
) -> None:
    if data == "grey":
        tiny = ["model.kwargs.width=8", "data.crop_size=32", "train.progress_bar=false", setting]
        argv = ["train", "--data", "folder", "--data-root", str(_gray_folder(tmp_path / "grey")), "--epochs", "1"]
        argv += ["--output-dir", str(tmp_path / "runs"), *[arg for item in tiny for arg in ("--set", item)]]
    else:
        argv = tiny_train_argv(tmp_path / "runs", setting)
    assert main([*argv, "--model", model]) == 2
    assert expected in _one_line_error(capsys)
    assert not (tmp_path / "runs").exists(), "refused before anything was written"


# -- item 13: names and sizes at the boundary ---------------------------------------------------------------------


def test_an_over_long_run_name_is_refused_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], tiny_train_argv: Callable[..., list[str]]
) -> None:
    assert main(tiny_train_argv(tmp_path / "runs", "train.run_name=" + "x" * 300)) == 2
    err = _one_line_error(capsys)
    assert "train.run_name=" in err and "at most 255 bytes" in err and len(err) < 400
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    ("option", "value", "expected"),
    [
        ("--size", "0", "--size 0: expected an image side of at least 16 pixels"),
        ("--size", "8", "--size 8: expected an image side of at least 16 pixels"),
        ("--size", "-5", "--size -5: expected an image side of at least 16 pixels"),
        ("--in-channels", "0", "in_channels=0 is not valid; use a positive integer"),
        ("--num-classes", "0", "num_classes=0 is not valid; use a positive integer"),
    ],
)
@pytest.mark.parametrize("variants", [False, True])
def test_models_refuses_sizes_it_cannot_count(
    option: str, value: str, expected: str, variants: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["models", option, value, *(["--variants"] if variants else [])]) == 2
    assert _one_line_error(capsys, "models").startswith(f"convunext models: error: {expected}")


# -- item 14: everything validated before the first seed trains ----------------------------------------------------


@pytest.mark.parametrize(
    ("seeds", "expected"),
    [
        (["0", "0"], "--seeds 0 0: seed 0 is given twice"),
        (["1", "2", "1"], "--seeds 1 2 1: seed 1 is given twice"),
        (["0", "99999999999999999999"], "train.seed=99999999999999999999 is not valid"),
        (["0", "-1"], "train.seed=-1 is not valid"),
    ],
)
def test_bad_seeds_are_refused_before_any_seed_trains(
    seeds: list[str],
    expected: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    tiny_train_argv: Callable[..., list[str]],
) -> None:
    assert main([*tiny_train_argv(tmp_path / "runs", "train.run_name=s"), "--seeds", *seeds]) == 2
    assert expected in _one_line_error(capsys)
    assert not (tmp_path / "runs").exists(), "refused before the first seed trained"


def test_a_config_file_that_is_not_utf8_is_one_line_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "latin1.yaml"
    config.write_bytes("# réglages\ntrain:\n  epochs: 1\n".encode("latin-1"))
    assert main(["train", str(config), "--output-dir", str(tmp_path / "runs")]) == 2
    err = _one_line_error(capsys)
    assert f"{config}: not UTF-8 text" in err and "save it as UTF-8" in err
    assert not (tmp_path / "runs").exists()


# -- item 16: a time-budgeted run uses the short-budget recipe and says when it is too short to learn -------------


def _config(argv: list[str]) -> tuple[object, str | None]:
    return build_config(build_parser().parse_args(["train", *argv]))


@pytest.mark.parametrize("preset", ["drive", "glas", "hrf"])
def test_a_time_budget_on_a_preset_trains_with_the_short_budget_recipe(preset: str) -> None:
    config, note = _config([preset, "--data", "folder", "--data-root", "MY_DATA", "--time-budget", "10"])
    assert (config.optim.recipe, config.optim.lr, config.optim.decay) == ("reference", 1.5e-3, "poly")
    assert config.optim.weight_decay == 1e-4 and config.optim.batch_size == 4
    assert config.data.crop_size == (384 if preset == "hrf" else 256)
    assert note is not None and "optim.recipe=reference" in note and "data.crop_size=" in note


def test_the_short_budget_recipe_yields_to_what_the_user_sets() -> None:
    config, _ = _config(["drive", "--time-budget", "10", "--set", "optim.lr=5e-4", "--set", "data.crop_size=320"])
    assert (config.optim.recipe, config.optim.lr, config.data.crop_size) == ("reference", 5e-4, 320)
    plain, note = _config(["drive"])  # without a budget: the paper's recipe, unchanged
    assert (plain.optim.recipe, plain.data.crop_size, note) == ("paper", 480, None)
    synthetic, note = _config(["--time-budget", "1"])  # the synthetic preset is its own short CPU recipe
    assert (synthetic.optim.recipe, synthetic.data.crop_size, note) == ("paper", 128, None)


def test_a_time_budget_too_short_to_learn_is_warned_with_its_step_count(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tiny_config: Callable[..., object],
) -> None:
    # one step of 2 s (4 training images, batch 4), a 1.5 s validation and a 0.5 s save: 4 s per epoch, and a
    # 15-second budget plans 3 epochs, 3 steps
    monkeypatch.setattr(Trainer, "_measure_costs", lambda self, augmented, loader: RunCosts(len(loader), 2, 1.5, 0.5))
    config = tiny_config("train.time_budget_minutes=0.25", f"train.output_dir={tmp_path}", "train.run_name=short")
    result = Trainer(config).fit()
    out = capsys.readouterr().out
    assert result.epochs_run == 3
    assert "warning: time budget 0.25 min: 3 optimiser steps (3 epochs of 1)" in out
    assert "too few to learn" in out


@pytest.mark.parametrize("command", ["reproduce", "ablate"])
def test_a_repeated_seed_of_a_reproduction_is_refused_before_any_run(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The same class as ``--seeds 0 0``: a seed given twice would count its run twice in the mean ± std."""
    out = tmp_path / "out"
    argv = [command, "--budget", "smoke", "--datasets", "synthetic", "--seeds", "0", "0", "--out", str(out)]
    assert main(argv) == 2
    assert "--seeds 0 0: 0 is given twice" in _one_line_error(capsys, command)
    assert not (out / "runs").exists()
