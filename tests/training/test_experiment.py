"""The Python API of ``convunext train``: :func:`experiment_config` builds the experiment as the command line does,
and :func:`train_seeds` trains it once per seed, or continues it, with every seed checked before the first trains."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from convunext.errors import ConvUNeXtError
from convunext.training import ExperimentConfig, experiment_config, train_seeds
from convunext.training.config import PRESET_DIR
from convunext.training.experiment import check_seed_options, saved_config_file, seed_dir, short_budget_note
from convunext.training.trainer import TrainResult
from convunext.utils.lock import LOCK_NAME

TinyRun = Callable[..., ExperimentConfig]


def _snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every file (its bytes) and folder (None) under ``folder``, but the lock."""
    return {
        str(path.relative_to(folder)): path.read_bytes() if path.is_file() else None
        for path in sorted(folder.rglob("*"))
        if path.name != LOCK_NAME
    }


@pytest.fixture
def two_seeds(tiny_run: TinyRun) -> tuple[ExperimentConfig, dict[int, TrainResult]]:
    """The tiny run's one-epoch config (``train.seed=7``, an automatic run name) and its seeds 0 and 1, trained."""
    config = tiny_run("train.epochs=1", "train.seed=7")
    return config, train_seeds(config, seeds=[0, 1])


def test_two_seeds_from_python_train_in_the_seed_folders_of_one_new_run(
    two_seeds: tuple[ExperimentConfig, dict[int, TrainResult]],
) -> None:
    config, results = two_seeds
    assert list(results) == [0, 1]
    base = results[0].run_dir.parent
    assert base.parent == Path(config.train.output_dir) and base.name.startswith("convunext-synthetic-")
    for seed, result in results.items():
        assert result.run_dir == seed_dir(base, seed) == base / f"seed{seed}"
        assert result.epochs_run == 1 and (result.run_dir / "best.json").is_file()
        assert yaml.safe_load((result.run_dir / "config.yaml").read_text())["train"]["seed"] == seed
    assert config.train.seed == 7, "the caller's config is left as it was"
    assert saved_config_file(base) == base / "seed0" / "config.yaml"
    assert saved_config_file(results[1].run_dir) == base / "seed1" / "config.yaml"


def test_a_resume_from_python_that_cannot_continue_a_seed_is_refused_before_any_seed_trains(
    two_seeds: tuple[ExperimentConfig, dict[int, TrainResult]], tmp_path: Path
) -> None:
    config, results = two_seeds
    base = tmp_path / "copy"
    shutil.copytree(results[0].run_dir.parent, base)
    (base / "seed1" / "last_state.pt").unlink()
    (base / "seed1" / "NOTES.txt").write_text("mine")
    before = _snapshot(base)
    with pytest.raises(ConvUNeXtError, match=r"seed1: nothing to resume: no last_state\.pt"):
        train_seeds(config, seeds=[0, 1, 2], resume_from=base)
    assert _snapshot(base) == before, "seed 0 was not looked at again, seed 2 did not start, nothing was deleted"


def test_a_resume_from_python_of_finished_seeds_reports_them_and_rewrites_nothing(
    two_seeds: tuple[ExperimentConfig, dict[int, TrainResult]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config, results = two_seeds
    base = tmp_path / "copy"
    shutil.copytree(results[0].run_dir.parent, base)
    before = _snapshot(base)
    resumed = train_seeds(config, resume_from=base)  # no seeds: the ones that started in base
    assert list(resumed) == [0, 1]
    assert [result.best_metrics for result in resumed.values()] == [result.best_metrics for result in results.values()]
    assert f"{base / 'seed1'}: finished (epoch 1 of 1); nothing to train" in capsys.readouterr().out
    assert _snapshot(base) == before


def test_a_resume_of_seeds_none_of_which_started_is_refused(tiny_run: TinyRun, tmp_path: Path) -> None:
    (tmp_path / "base" / "seed3").mkdir(parents=True)
    with pytest.raises(ConvUNeXtError, match=r"base: nothing to resume: none of seed3, seed4 has started"):
        train_seeds(tiny_run(), seeds=[3, 4], resume_from=tmp_path / "base")


@pytest.mark.parametrize(
    ("seeds", "options", "expected"),
    [
        ([0, 0], {}, "--seeds 0 0: seed 0 is given twice (its runs would share one folder); give each seed once"),
        ([], {}, "--seeds: no seed given; give at least one"),
        ([0], {"overwrite": True, "resume_from": "somewhere"}, "--overwrite starts the run again and --resume"),
    ],
)
def test_contradicting_options_are_refused_before_anything_is_read_or_written(
    seeds: list[int], options: dict[str, object], expected: str, tiny_run: TinyRun, tmp_path: Path
) -> None:
    with pytest.raises(ConvUNeXtError) as refused:
        train_seeds(tiny_run(), seeds, **options)  # type: ignore[arg-type]
    assert expected in str(refused.value)
    assert not list(tmp_path.iterdir()), "nothing was written"
    check_seed_options([1, 2], resume=True)  # a resume of several seeds is fine


@pytest.mark.parametrize(("preset", "crop"), [("drive", 256), ("hrf", 384)])
def test_a_time_budget_on_a_dataset_preset_takes_the_short_budget_recipe(preset: str, crop: int) -> None:
    overrides = ["train.time_budget_minutes=10", "optim.lr=5e-4"]
    config = experiment_config(preset, overrides)
    assert (config.optim.recipe, config.optim.decay, config.data.crop_size) == ("reference", "poly", crop)
    assert config.optim.lr == 5e-4, "what the overrides set wins over the recipe"
    note = short_budget_note(preset, config)
    assert note is not None and f"replaces the {preset} preset's (optim.recipe=reference" in note
    assert f"data.crop_size={crop}" in note


def test_the_recipe_is_kept_without_a_budget_on_the_synthetic_preset_and_in_a_users_file(tmp_path: Path) -> None:
    plain = experiment_config("drive")
    assert (plain.optim.recipe, plain.data.crop_size, short_budget_note("drive", plain)) == ("paper", 480, None)
    synthetic = experiment_config("synthetic", ["train.time_budget_minutes=1"])
    assert (synthetic.optim.recipe, short_budget_note("synthetic", synthetic)) == ("paper", None)
    mine = tmp_path / "mine.yaml"
    shutil.copy(PRESET_DIR / "drive.yaml", mine)
    own = experiment_config(mine, ["train.time_budget_minutes=10"])
    assert (own.optim.recipe, own.data.crop_size, short_budget_note(mine, own)) == ("paper", 480, None)


def test_a_resume_of_a_folder_without_a_config_says_what_it_lacks(tmp_path: Path) -> None:
    with pytest.raises(ConvUNeXtError, match="nothing to resume: the folder is empty"):
        saved_config_file(tmp_path)
    with pytest.raises(ConvUNeXtError, match="nothing to resume: no such folder"):
        saved_config_file(tmp_path / "missing")
