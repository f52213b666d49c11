"""Issue 11, the run folder: a finished run is never silently replaced (``--overwrite`` replaces it on purpose),
automatic names never collide, two processes never train into one folder at once (a lock that a killed process
cannot leave stuck), run names stay inside ``train.output_dir``, non-positive lengths are refused at config
validation, and temporary files of a killed run are removed on the next start."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import pytest

from convunext.cli.main import main
from convunext.errors import ConvUNeXtError
from convunext.reproduce import BUDGETS, plan_runs, reproduce, resolve_experiment
from convunext.training import run_folder as run_folder_module
from convunext.training.config import ExperimentConfig
from convunext.training.run_folder import claim_run_dir
from convunext.training.trainer import Trainer
from convunext.utils import lock as lock_module
from convunext.utils.lock import LOCK_NAME, RunLock

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _snapshot(folder: Path) -> dict[str, bytes]:
    """Every file of ``folder`` but its lock (which a stale holder may have left)."""
    files = (p for p in sorted(folder.rglob("*")) if p.is_file() and p.name != LOCK_NAME)
    return {str(p.relative_to(folder)): p.read_bytes() for p in files}


def _temp_files(folder: Path) -> list[Path]:
    return sorted(folder.rglob(".*.tmp"))


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory, tiny_train_argv: Callable[..., list[str]]) -> Path:
    """A finished one-epoch run ``runs/a``."""
    out = tmp_path_factory.mktemp("runs")
    assert main(tiny_train_argv(out, "train.run_name=a")) == 0
    return out / "a"


def test_reusing_a_run_name_is_refused_and_the_run_is_untouched(
    finished: Path, capsys: pytest.CaptureFixture[str], tiny_train_argv: Callable[..., list[str]]
) -> None:
    before = _snapshot(finished)
    capsys.readouterr()
    assert main(tiny_train_argv(finished.parent, "train.run_name=a", epochs=2)) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    assert f"{finished}: this folder already holds a run" in err
    assert f"--resume {finished}" in err and "train.run_name" in err and "--overwrite" in err
    assert _snapshot(finished) == before


def test_a_folder_without_a_resumable_state_is_refused_without_suggesting_resume(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], tiny_train_argv: Callable[..., list[str]]
) -> None:
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "notes.txt").write_text("mine")
    assert main(tiny_train_argv(tmp_path, "train.run_name=b")) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'b'}: this folder is not empty (notes.txt) and holds no convunext run" in err  # issue 30
    assert "--resume" not in err and "--overwrite" not in err
    assert (tmp_path / "b" / "notes.txt").read_text() == "mine"


def test_overwrite_replaces_the_old_run_completely(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], tiny_train_argv: Callable[..., list[str]]
) -> None:
    assert main(tiny_train_argv(tmp_path, "train.run_name=c", epochs=2)) == 0
    (tmp_path / "c" / "test").mkdir()
    (tmp_path / "c" / "test" / "metrics.json").write_text("{}")  # e.g. an evaluation of the old weights
    # issue 30: --overwrite removes only what a run wrote, so a folder holding anything else is refused, untouched
    assert main([*tiny_train_argv(tmp_path, "train.run_name=c"), "--overwrite"]) == 2
    assert "also holds test/; nothing was deleted" in capsys.readouterr().err
    assert (tmp_path / "c" / "test" / "metrics.json").is_file()
    (tmp_path / "c" / "test" / "metrics.json").unlink()
    (tmp_path / "c" / "test").rmdir()
    assert main([*tiny_train_argv(tmp_path, "train.run_name=c"), "--overwrite"]) == 0
    assert (tmp_path / "c" / "metrics.csv").read_text().count("\n") == 2  # header + the new run's one epoch
    assert json.loads((tmp_path / "c" / "summary.json").read_text())["epochs_run"] == 1


def test_overwrite_and_resume_exclude_each_other(finished: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--resume", str(finished), "--overwrite"]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_several_seeds_into_an_existing_run_are_refused_before_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], tiny_train_argv: Callable[..., list[str]]
) -> None:
    (tmp_path / "n" / "seed2").mkdir(parents=True)
    (tmp_path / "n" / "seed2" / "summary.json").write_text("{}")
    assert main([*tiny_train_argv(tmp_path, "train.run_name=n"), "--seeds", "1", "2"]) == 2
    assert f"{tmp_path / 'n' / 'seed2'}: this folder is not empty (summary.json)" in capsys.readouterr().err
    assert not (tmp_path / "n" / "seed1").exists(), "refused before the first seed trains"


def test_automatic_names_never_collide(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_config: Callable[..., ExperimentConfig]
) -> None:
    class Frozen(datetime):
        @classmethod
        def now(cls, tz: object = None) -> Frozen:  # type: ignore[override]
            return cls(2030, 1, 2, 3, 4, 5)

    monkeypatch.setattr(run_folder_module, "datetime", Frozen)
    config = tiny_config("train.epochs=1", f"train.output_dir={tmp_path}")
    first, second = Trainer(config).fit().run_dir, Trainer(config).fit().run_dir
    assert first.name == "convunext-synthetic-20300102-030405"
    assert second.name == "convunext-synthetic-20300102-030405-2"
    assert (first / "best.json").is_file() and (second / "best.json").is_file()
    assert claim_run_dir(tmp_path, "x") == tmp_path / "x" and claim_run_dir(tmp_path, "x") == tmp_path / "x-2"


def _train_while_held(
    folder: Path, argv: list[str], hold_lock: Callable[[Path], subprocess.Popen[str]]
) -> tuple[subprocess.CompletedProcess[str], int]:
    """Run ``convunext ARGV`` in a new process while another process holds ``folder``'s lock; return the result
    and the holder's pid (the holder is gone afterwards)."""
    holder = hold_lock(folder)
    try:
        command = [sys.executable, "-m", "convunext", *argv]
        done = subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=120)
    finally:
        holder.kill()
        holder.wait()
    return done, holder.pid


def test_a_run_folder_in_use_is_refused_with_the_holders_pid(
    tmp_path: Path,
    tiny_train_argv: Callable[..., list[str]],
    hold_lock: Callable[[Path], subprocess.Popen[str]],
) -> None:
    done, pid = _train_while_held(tmp_path / "busy", tiny_train_argv(tmp_path, "train.run_name=busy"), hold_lock)
    assert done.returncode == 2, done.stderr
    line = done.stderr.strip()
    assert "\n" not in line and f"{tmp_path / 'busy'}: in use by another process (pid {pid} on " in line
    assert not (tmp_path / "busy" / "config.yaml").exists(), "the refused run wrote nothing"


def test_resume_of_a_run_in_use_is_refused(
    finished: Path, capsys: pytest.CaptureFixture[str], hold_lock: Callable[[Path], subprocess.Popen[str]]
) -> None:
    holder = hold_lock(finished)
    try:
        assert main(["train", "--resume", str(finished)]) == 2
    finally:
        holder.kill()
        holder.wait()
    assert f"(pid {holder.pid} on " in capsys.readouterr().err


def test_a_lock_left_by_a_killed_process_does_not_block(
    tmp_path: Path, tiny_train_argv: Callable[..., list[str]], hold_lock: Callable[[Path], subprocess.Popen[str]]
) -> None:
    holder = hold_lock(tmp_path / "d")
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert json.loads((tmp_path / "d" / LOCK_NAME).read_text())["pid"] == holder.pid  # the file is left behind
    assert main(tiny_train_argv(tmp_path, "train.run_name=d")) == 0
    assert (tmp_path / "d" / "best.json").is_file() and not (tmp_path / "d" / LOCK_NAME).exists()


def test_the_lock_is_released_on_an_exception(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), RunLock(tmp_path):
        assert (tmp_path / LOCK_NAME).is_file()
        raise RuntimeError("boom")
    assert not (tmp_path / LOCK_NAME).exists()
    with RunLock(tmp_path), pytest.raises(ConvUNeXtError, match=rf"pid {os.getpid()} on "):
        RunLock(tmp_path).acquire()  # not re-entrant, even within one process


def test_the_lock_without_flock_detects_live_and_dead_holders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lock_module, "fcntl", None)  # the non-POSIX path: O_EXCL + pid liveness
    finished_process = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True)
    dead_pid = int(finished_process.stdout)
    holder = {"host": lock_module.socket.gethostname(), "started": "2030-01-01T00:00:00"}
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": dead_pid, **holder}))
    with RunLock(tmp_path):
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert not (tmp_path / LOCK_NAME).exists()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": live.pid, **holder}))
        with pytest.raises(ConvUNeXtError, match=rf"in use by another process \(pid {live.pid} on "):
            RunLock(tmp_path).acquire()
    finally:
        live.kill()
        live.wait()


def test_a_waiting_lock_gets_the_folder_once_it_is_free(
    tmp_path: Path, hold_lock: Callable[[Path], subprocess.Popen[str]]
) -> None:
    holder = hold_lock(tmp_path)
    start = time.monotonic()
    with pytest.raises(ConvUNeXtError, match="in use"):
        RunLock(tmp_path, timeout=0.3).acquire()
    assert time.monotonic() - start >= 0.3
    holder.kill()
    holder.wait()
    with RunLock(tmp_path, timeout=5):
        pass


@pytest.mark.parametrize("name", ["../../x", "/tmp/x", "a/b", "..", ".", "a\\b", "C:x"])
def test_run_names_outside_the_output_dir_are_refused(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], tiny_train_argv: Callable[..., list[str]]
) -> None:
    out = tmp_path / "deep" / "runs"
    assert main(tiny_train_argv(out, f"train.run_name={name}")) == 2
    err = capsys.readouterr().err.strip()
    assert f"train.run_name={name!r} is not valid" in err and "\n" not in err
    assert not (tmp_path / "x").exists() and not out.exists()


@pytest.mark.parametrize(
    "setting",
    [
        "train.epochs=0",
        "train.epochs=-3",
        "train.eval_every=0",
        "train.early_stopping_patience=0",
        "optim.batch_size=0",
        "data.crop_size=0",
        "data.eval_tile_size=0",
        "data.num_workers=-1",
        "optim.lr=0",
        "optim.lr=-1e-3",
        "optim.weight_decay=-1",
        "optim.warmup_epochs=-1",
        "optim.warmup_start_factor=2",
        "optim.decay_gamma=0",
        "optim.decay_gamma=1.5",
        "optim.poly_power=0",
        "train.grad_clip_norm=-1",
        "train.loss_ce_weight=-1",
        "data.scale_range=[0, 1]",
        "data.scale_range=[1.5, 0.8]",
    ],
)
def test_non_positive_lengths_and_bad_ranges_are_refused(
    setting: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], tiny_train_argv: Callable[..., list[str]]
) -> None:
    field, _, _ = setting.partition("=")
    assert main([*tiny_train_argv(tmp_path), "--set", setting]) == 2  # tiny: a missed refusal would train briefly
    err = capsys.readouterr().err.strip()
    assert f"{field}=" in err and "is not valid" in err and "\n" not in err
    assert not list(tmp_path.iterdir()), "nothing is written"


def test_epochs_zero_on_the_command_line_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], tiny_train_argv: Callable[..., list[str]]
) -> None:
    assert main(tiny_train_argv(tmp_path, epochs=0)) == 2
    assert "train.epochs=0 is not valid; expected a positive integer" in capsys.readouterr().err
    with pytest.raises(ConvUNeXtError, match="train.epochs=0"):
        ExperimentConfig.from_dict({"train": {"epochs": 0}})
    config = ExperimentConfig()
    config.train.epochs = 0  # built in code: the trainer validates too
    with pytest.raises(ConvUNeXtError, match="train.epochs=0"):
        Trainer(config)


def test_temp_files_of_a_killed_run_are_removed_on_resume(
    tmp_path: Path, tiny_train_argv: Callable[..., list[str]]
) -> None:
    assert main(tiny_train_argv(tmp_path, "train.run_name=e")) == 0
    run = tmp_path / "e"
    assert not _temp_files(tmp_path), "a normal exit leaves no temporary file"
    (run / "test").mkdir()
    left = [run / ".progress.png.k2j4.tmp", run / ".last.safetensors.x9.tmp", run / "test" / ".metrics.json.a1.tmp"]
    for path in left:
        path.write_bytes(b"half")
    assert main(["train", "--resume", str(run), "--set", "train.epochs=2"]) == 0
    assert not _temp_files(run)
    assert (run / "test").is_dir()


def test_temp_files_do_not_count_as_a_run(tmp_path: Path, tiny_train_argv: Callable[..., list[str]]) -> None:
    (tmp_path / "f").mkdir()
    (tmp_path / "f" / ".progress.png.k2j4.tmp").write_bytes(b"half")
    (tmp_path / "f" / LOCK_NAME).write_text("")
    assert main(tiny_train_argv(tmp_path, "train.run_name=f")) == 0
    assert not _temp_files(tmp_path) and (tmp_path / "f" / "best.json").is_file()


def test_reproduce_restarts_a_run_killed_before_its_first_epoch(tmp_path: Path) -> None:
    (spec,) = plan_runs(
        tmp_path, ["unet"], ["synthetic"], [0], BUDGETS["smoke"], tmp_path, ["train.progress_bar=false"]
    )
    spec.run_dir.mkdir(parents=True)
    spec.config.to_yaml(spec.run_dir / "config.yaml")  # what a run killed in epoch 1 leaves
    (spec.run_dir / ".best.safetensors.x1.tmp").write_bytes(b"half")
    assert spec.status() == "new"
    result = reproduce(resolve_experiment(tmp_path, ["unet"], "smoke", ["synthetic"], [0]), log=lambda _: None)
    assert result.trained == 1 and spec.status() == "done"
    assert not _temp_files(tmp_path) and not (tmp_path / LOCK_NAME).exists()


def test_reproduce_refuses_a_run_another_process_works_on(
    tmp_path: Path, hold_lock: Callable[[Path], subprocess.Popen[str]]
) -> None:
    (spec,) = plan_runs(
        tmp_path, ["unet"], ["synthetic"], [0], BUDGETS["smoke"], tmp_path, ["train.progress_bar=false"]
    )
    holder = hold_lock(spec.run_dir)
    try:
        expected = re.escape(f"{spec.run_dir}: in use by another process (pid {holder.pid} on ")
        with pytest.raises(ConvUNeXtError, match=expected):
            reproduce(resolve_experiment(tmp_path, ["unet"], "smoke", ["synthetic"], [0]), log=lambda _: None)
    finally:
        holder.kill()
        holder.wait()


def test_under_ddp_every_rank_refuses_a_taken_folder_without_hanging(
    finished: Path, tiny_train_argv: Callable[..., list[str]]
) -> None:
    """Rank 0 alone checks and locks the folder; the other ranks get its verdict instead of waiting for it."""
    before = _snapshot(finished)
    argv = [
        sys.executable,
        "-m",
        "convunext",
        *tiny_train_argv(finished.parent, "train.run_name=a", "optim.batch_size=2"),
    ]
    done = subprocess.run([*argv, "--devices", "2"], capture_output=True, text=True, env=ENV, timeout=300)
    assert done.returncode != 0
    refusal = f"convunext train: error: {finished}: this folder already holds a run"
    assert done.stderr.count(refusal) == 2, done.stderr[-3000:]  # both ranks, each with the one line
    assert _snapshot(finished) == before


def test_a_seed_run_in_progress_is_reported_as_in_use_not_as_resumable(
    tmp_path: Path,
    tiny_train_argv: Callable[..., list[str]],
    hold_lock: Callable[[Path], subprocess.Popen[str]],
) -> None:
    """--seeds checks every seed's folder before training: one that holds files because a process is training into
    it right now is reported with its holder, not as a finished run to resume or overwrite."""
    busy = tmp_path / "n" / "seed1"
    busy.mkdir(parents=True)
    (busy / "metrics.csv").write_text("epoch\n")
    argv = [*tiny_train_argv(tmp_path, "train.run_name=n"), "--seeds", "1", "2"]
    done, pid = _train_while_held(busy, argv, hold_lock)
    assert done.returncode == 2, done.stderr
    line = done.stderr.strip()
    assert f"{busy}: in use by another process (pid {pid} on " in line and "--overwrite" not in line
    assert RunLock(busy).busy() is None  # the holder is gone: free again
