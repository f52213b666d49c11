"""The run folder of a training run, safe from mistakes: a new run never replaces a folder that already holds one
unless asked to (``overwrite``), automatic names never collide (:func:`claim_run_dir`), the folder is locked for the
whole run (:class:`~convunext.utils.lock.RunLock`), and temporary files that a killed run left are removed."""

from __future__ import annotations

import contextlib
import fnmatch
import shutil
from datetime import datetime
from pathlib import Path

from ..errors import ConvUNeXtError
from ..utils.lock import LOCK_NAME, RunLock
from .config import ExperimentConfig

TEMP_FILES = ".*.tmp"  # the temporary files of convunext.utils.io.atomic_path


def default_run_name(config: ExperimentConfig) -> str:
    """The automatic run name, ``<model>-<data>-<YYYYmmdd-HHMMSS>`` (:func:`claim_run_dir` makes it unique)."""
    return datetime.now().strftime(f"{config.model.name}-{config.data.name}-%Y%m%d-%H%M%S")


def claim_run_dir(output_dir: str | Path, name: str) -> Path:
    """Create and return a new, empty folder ``output_dir/name``, or ``name-2``, ``name-3``... when taken: automatic
    run names never share a folder, even for runs started in the same second."""
    parent = Path(output_dir)
    parent.mkdir(parents=True, exist_ok=True)
    index = 1
    while True:
        folder = parent / (name if index == 1 else f"{name}-{index}")
        try:
            folder.mkdir()
            return folder
        except FileExistsError:
            index += 1


def check_new_run_dir(run_dir: Path) -> None:
    """Refuse to start a new run in a folder that already holds files: the old run's checkpoints and metrics
    would be replaced, or mixed with the new run's. Its lock and temporary files do not count."""
    if not run_dir.exists():
        return
    if not run_dir.is_dir():
        raise ConvUNeXtError(f"{run_dir}: exists and is not a folder; choose another train.run_name")
    holder = RunLock(run_dir).busy()
    if holder is not None:  # a run in progress: say so, rather than suggest resuming it
        raise ConvUNeXtError(
            f"{run_dir}: in use by another process ({holder}); wait for it to finish, or choose another train.run_name"
        )
    held = sorted(path.name for path in run_dir.iterdir() if not _disposable(path))
    if not held:
        return
    resume = f"continue it with --resume {run_dir}, " if (run_dir / "last_state.pt").is_file() else ""
    shown = ", ".join(held[:3]) + (", ..." if len(held) > 3 else "")
    raise ConvUNeXtError(
        f"{run_dir}: this folder already holds a run ({shown}); {resume}choose another train.run_name, "
        "or pass --overwrite to delete it and start again"
    )


def clear_run_dir(run_dir: Path) -> None:
    """Delete everything in ``run_dir`` but its lock (``overwrite``), so that no file of the old run is left
    beside the new run's."""
    for path in run_dir.iterdir():
        if path.name == LOCK_NAME:
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


def remove_temp_files(run_dir: Path) -> None:
    """Delete the temporary files that a killed run left half-written, in ``run_dir`` and its sub-folders."""
    for path in run_dir.rglob(TEMP_FILES):
        if path.is_file():
            path.unlink(missing_ok=True)


def _disposable(path: Path) -> bool:
    return path.name == LOCK_NAME or (path.is_file() and fnmatch.fnmatch(path.name, TEMP_FILES))


def open_run_dir(run_dir: Path, held: contextlib.ExitStack, *, auto_name: bool, resume: bool, overwrite: bool) -> Path:
    """Claim the run folder and lock it for the run (the lock joins ``held``); return the folder.

    With ``auto_name`` the folder is a new one named after ``run_dir`` (:func:`claim_run_dir`). A new run (not
    ``resume``) refuses a folder that holds another run's files, or deletes them with ``overwrite``; stale
    temporary files go in every case.
    """
    if auto_name:
        try:
            run_dir = claim_run_dir(run_dir.parent, run_dir.name)
        except OSError as error:
            raise ConvUNeXtError(f"{run_dir}: cannot create the run folder ({error.strerror or error})") from error
    elif run_dir.exists() and not run_dir.is_dir():
        raise ConvUNeXtError(f"{run_dir}: exists and is not a folder; choose another train.run_name")
    held.enter_context(RunLock(run_dir, hint="wait for it to finish, or choose another train.run_name"))
    if not resume:
        if overwrite:
            clear_run_dir(run_dir)
        else:
            check_new_run_dir(run_dir)
    remove_temp_files(run_dir)
    return run_dir
