"""Issue 30, resume and overwrite: ``--resume`` only ever continues a run and deletes nothing, ``--overwrite``
removes only what a run wrote (and refuses any other folder), and a resumed run trains as it was started: a changed
dataset, schedule or width is refused naming the field, while the settings that are safe to change are applied and
recorded (items 1, 2, 10 and the resumed width of 13)."""

from __future__ import annotations

import csv
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml

from convunext.cli.main import main
from convunext.utils.lock import LOCK_NAME

FILES_OF_AN_OLD_RUN = {  # what a run wrote before runs carried a marker file
    "best.json",
    "best.safetensors",
    "config.yaml",
    "last.json",
    "last.safetensors",
    "last_state.pt",
    "metrics.csv",
    "progress.png",
    "summary.json",
}


def _snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every file (its bytes) and folder (None) under ``folder``, but its lock."""
    return {
        str(path.relative_to(folder)): path.read_bytes() if path.is_file() else None
        for path in sorted(folder.rglob("*"))
        if path.name != LOCK_NAME
    }


def _one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    assert err.startswith("convunext train: error: "), err
    return err


def _add_user_files(folder: Path) -> None:
    (folder / "NOTES.txt").write_text("my notes")
    (folder / "analysis").mkdir()
    (folder / "analysis" / "fig.csv").write_text("x,y\n1,2\n")


def _epochs_logged(run: Path) -> list[str]:
    return [row["epoch"] for row in csv.DictReader((run / "metrics.csv").open())]


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory, tiny_train_argv: Callable[..., list[str]]) -> Path:
    """A finished one-epoch run (copied by each test that changes it)."""
    out = tmp_path_factory.mktemp("finished")
    assert main(tiny_train_argv(out, "train.run_name=run")) == 0
    return out / "run"


@pytest.fixture
def run_copy(finished: Path, tmp_path: Path) -> Path:
    """A copy of the finished run, ``tmp_path/runs/run``."""
    copy = tmp_path / "runs" / "run"
    shutil.copytree(finished, copy)
    return copy


# -- item 1: --resume only ever continues a run -------------------------------------------------------------------


def test_resume_of_a_run_without_a_training_state_is_refused_and_deletes_nothing(
    run_copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (run_copy / "last_state.pt").unlink()
    _add_user_files(run_copy)
    (run_copy / "eval-synthetic-test").mkdir()
    (run_copy / "eval-synthetic-test" / "metrics.json").write_text("{}")
    before = _snapshot(run_copy)
    assert main(["train", "--resume", str(run_copy)]) == 2
    err = _one_line_error(capsys)
    assert f"{run_copy}: nothing to resume: no last_state.pt" in err
    assert _snapshot(run_copy) == before


@pytest.mark.parametrize("contents", ["nothing", "thesis", "config only"])
def test_resume_of_a_folder_that_holds_no_resumable_run_is_refused_saying_what_it_lacks(
    contents: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "folder"
    folder.mkdir()
    if contents == "thesis":
        (folder / "thesis.tex").write_text("\\chapter{}")
        (folder / "sub").mkdir()
    if contents == "config only":  # a run killed before its first epoch ended, and the user's notes
        (folder / "config.yaml").write_text("train:\n  epochs: 1\n")
        (folder / "NOTES.txt").write_text("mine")
    before = _snapshot(folder)
    assert main(["train", "--resume", str(folder)]) == 2
    err = _one_line_error(capsys)
    assert f"{folder}: nothing to resume" in err
    expected = {"nothing": "the folder is empty", "thesis": "sub/, thesis.tex", "config only": "no last_state.pt"}
    assert expected[contents] in err
    assert _snapshot(folder) == before


def test_resume_of_several_seeds_continues_each_started_seed_and_never_deletes_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], tiny_train_argv: Callable[..., list[str]]
) -> None:
    """``--resume BASE --seeds ...``: a finished seed is reported done (its files untouched), a seed that never
    started starts; a seed folder that holds files but no training state is refused before any seed trains."""
    base = tmp_path / "multi"
    assert main([*tiny_train_argv(tmp_path, "train.run_name=multi"), "--seeds", "0", "1"]) == 0
    seed0 = _snapshot(base / "seed0")
    (base / "seed1" / "last_state.pt").unlink()
    _add_user_files(base / "seed1")
    before = _snapshot(base)
    capsys.readouterr()

    assert main(["train", "--resume", str(base), "--seeds", "0", "1", "2"]) == 2
    assert f"{base / 'seed1'}: nothing to resume: no last_state.pt" in _one_line_error(capsys)
    assert _snapshot(base) == before, "refused before seed 0 was looked at again or seed 2 started"

    shutil.rmtree(base / "seed1")
    assert main(["train", "--resume", str(base), "--seeds", "0", "1"]) == 0
    out = capsys.readouterr().out
    assert f"{base / 'seed0'}: finished (epoch 1 of 1); nothing to train" in out
    assert _snapshot(base / "seed0") == seed0, "a finished seed is neither trained again nor rewritten"
    assert _epochs_logged(base / "seed1") == ["1"] and (base / "seed1" / "best.json").is_file()

    assert main(["train", "--resume", str(base)]) == 0  # no --seeds: the seeds found in BASE
    out = capsys.readouterr().out
    assert "seed 0:" in out and "seed 1:" in out
    assert _snapshot(base / "seed0") == seed0


# -- item 2: --overwrite only removes what a run wrote --------------------------------------------------------------


def _thesis(folder: Path) -> Path:
    (folder / "sub").mkdir(parents=True)
    (folder / "thesis.tex").write_text("\\chapter{}")
    (folder / "sub" / "ch1.tex").write_text("text")
    return folder


@pytest.mark.parametrize("overwrite", [True, False])
def test_a_folder_that_holds_no_run_is_refused_saying_what_it_holds(
    overwrite: bool, tmp_path: Path, capsys: pytest.CaptureFixture[str], tiny_train_argv: Callable[..., list[str]]
) -> None:
    folder = _thesis(tmp_path / "thesis")
    before = _snapshot(folder)
    argv = tiny_train_argv(tmp_path, "train.run_name=thesis") + (["--overwrite"] if overwrite else [])
    assert main(argv) == 2
    err = _one_line_error(capsys)
    assert f"{folder}: " in err and "sub/, thesis.tex" in err and "holds no convunext run" in err
    assert "already holds a run" not in err and "pass --overwrite" not in err
    assert _snapshot(folder) == before


def test_overwrite_of_a_run_that_holds_the_users_files_is_refused_and_deletes_nothing(
    run_copy: Path, capsys: pytest.CaptureFixture[str], tiny_train_argv: Callable[..., list[str]]
) -> None:
    _add_user_files(run_copy)
    (run_copy / "eval-synthetic-test").mkdir()  # an evaluation: not what the run wrote either
    before = _snapshot(run_copy)
    assert main([*tiny_train_argv(run_copy.parent, "train.run_name=run"), "--overwrite"]) == 2
    err = _one_line_error(capsys)
    assert f"{run_copy}: --overwrite deletes only what a run writes" in err
    assert "NOTES.txt, analysis/, eval-synthetic-test/" in err and "nothing was deleted" in err
    assert _snapshot(run_copy) == before


@pytest.mark.parametrize("marker", ["kept", "an older run without one"])
def test_overwrite_replaces_a_run_that_holds_only_its_own_files(
    marker: str, run_copy: Path, tiny_train_argv: Callable[..., list[str]]
) -> None:
    if marker != "kept":
        for path in run_copy.iterdir():
            if path.name not in FILES_OF_AN_OLD_RUN:
                path.unlink()
    (run_copy / ".progress.png.k2j4.tmp").write_bytes(b"half")  # a killed run's temporary file
    assert main([*tiny_train_argv(run_copy.parent, "train.run_name=run", epochs=2), "--overwrite"]) == 0
    assert _epochs_logged(run_copy) == ["1", "2"]
    assert not list(run_copy.glob(".*.tmp"))


# -- item 10 (and 13's resumed width): a resumed run trains as it started ------------------------------------------


@pytest.mark.parametrize(
    ("arguments", "field"),
    [
        (["--data", "folder", "--data-root", "OTHER"], "data.name"),
        (["--set", "data.options.num_images=7"], "data.options.num_images"),
        (["--set", "model.kwargs.width=16"], "model.kwargs.width"),
        (["--set", "optim.lr=0.01"], "optim.lr"),
        (["--set", "optim.decay=poly"], "optim.decay"),
        (["--set", "data.crop_size=32"], "data.crop_size"),
        (["synthetic"], "model.kwargs.width"),  # the preset, without the run's tiny settings
    ],
)
def test_resume_refuses_a_change_that_changes_the_run_naming_the_field(
    arguments: list[str], field: str, run_copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    arguments = [str(run_copy.parent / "other") if arg == "OTHER" else arg for arg in arguments]
    before = _snapshot(run_copy)
    assert main(["train", "--resume", str(run_copy), *arguments]) == 2
    err = _one_line_error(capsys)
    assert f"{run_copy}: --resume continues the run as it was trained, but " in err and f"{field} " in err
    assert _snapshot(run_copy) == before


def test_resume_refuses_an_edited_config_yaml(run_copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    saved = yaml.safe_load((run_copy / "config.yaml").read_text())
    saved["optim"]["lr"] = 0.01
    saved["model"]["kwargs"]["width"] = 16
    (run_copy / "config.yaml").write_text(yaml.safe_dump(saved, sort_keys=False))
    before = _snapshot(run_copy)
    assert main(["train", "--resume", str(run_copy)]) == 2
    err = _one_line_error(capsys)
    assert "model.kwargs.width (8 when trained, 16 now)" in err and "optim.lr (0.002 when trained, 0.01 now)" in err
    assert _snapshot(run_copy) == before


def test_resume_applies_and_records_the_changes_that_are_safe(
    run_copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    threads = torch.get_num_threads()
    argv = ["train", "--resume", str(run_copy), "--epochs", "2", "--threads", str(threads), "--device", "cpu"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert f'train.epochs 1 -> 2, train.device "auto" -> "cpu", train.threads null -> {threads}' in out
    saved = yaml.safe_load((run_copy / "config.yaml").read_text())
    assert saved["train"]["epochs"] == 2 and saved["train"]["threads"] == threads and saved["train"]["device"] == "cpu"
    assert _epochs_logged(run_copy) == ["1", "2"]


def test_a_resumed_time_budget_run_keeps_its_plan_when_given_its_preset_again(
    tiny_config: Callable[..., object],
) -> None:
    """The README's "the same launch, plus --resume": a preset with --time-budget, compared with a run whose length
    and schedule the budget resolved, continues with the recorded plan rather than the preset's nominal length."""
    from convunext.training.resume import resumed_config
    from convunext.training.schedule import compress_schedule

    given = tiny_config("train.time_budget_minutes=2")
    recorded = tiny_config("train.time_budget_minutes=2")
    recorded.train.time_budget_plan = {"nominal_epochs": 12, "epochs": 5}
    recorded.optim = compress_schedule(recorded.optim, 12, 5)
    recorded.train.epochs = 5
    config, changes = resumed_config(Path("run"), given, recorded)
    assert config.train.epochs == 5 and config.optim == recorded.optim and changes == []
