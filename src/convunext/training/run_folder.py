"""The run folder of a training run, safe from mistakes: a new run never replaces a folder that already holds one
unless asked to (``overwrite``), and then removes only what a run writes; ``resume`` only ever continues a run;
automatic names never collide (:func:`claim_run_dir`); the folder is locked for the whole run
(:class:`~convunext.utils.lock.RunLock`); temporary files that a killed run left are removed.

A run marks its folder with :data:`RUN_MARKER` before it writes anything else, so that a folder holding a run is
told apart from any other folder; a folder of a run from before the marker existed is recognised by its
``config.yaml`` (:func:`holds_run`). Whatever else a folder holds (the user's notes, an
evaluation, a thesis) is never deleted: ``overwrite`` refuses such a folder, saying what is there.
"""

from __future__ import annotations

import contextlib
import fnmatch
import shutil
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path

import yaml

from ..checkpoint import STATE_FILE
from ..errors import ConvUNeXtError
from ..utils.io import atomic_write_json, temporary_files
from ..utils.lock import LOCK_NAME, RunLock
from .config import ExperimentConfig

TEMP_FILES = temporary_files()  # the temporary files of convunext.utils.io.atomic_path
SCRATCH_FOLDERS = ".time-budget-*"  # the time budget's measurements (Trainer.measure_costs), left by a killed run
RUN_MARKER = "convunext-run.json"
"""Written first into every run folder: the folder holds a run (and ``overwrite`` may replace it)."""
RUN_FILES = frozenset(
    {
        RUN_MARKER,
        "config.yaml",
        "metrics.csv",
        "progress.png",
        "summary.json",
        STATE_FILE,
        *(f"{tag}.{suffix}" for tag in ("best", "last", "ema_best") for suffix in ("json", "safetensors")),
        "tensorboard",  # a folder
    }
)
"""Every name a run writes into its folder: all that ``overwrite`` removes."""
_CHECKPOINTS = (STATE_FILE, "last.json", "best.json")


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


def holds_run(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a run: its :data:`RUN_MARKER`, or (a run from before the marker) its
    ``config.yaml`` beside a checkpoint or training state, or alone but complete as only a run writes it (every
    field of every section: a run killed before its first epoch ended)."""
    if (run_dir / RUN_MARKER).is_file():
        return True
    config = run_dir / "config.yaml"
    if not config.is_file():
        return False
    return any((run_dir / name).is_file() for name in _CHECKPOINTS) or _written_by_a_run(config)


def _written_by_a_run(config: Path) -> bool:
    """Whether ``config`` holds every field of :class:`ExperimentConfig`, as the resolved copy a run saves does."""
    try:
        saved = yaml.safe_load(config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False
    complete = ExperimentConfig().to_dict()
    return isinstance(saved, dict) and all(
        isinstance(saved.get(section), dict) and set(fields) <= set(saved[section])
        for section, fields in complete.items()
    )


def check_new_run_dir(run_dir: Path) -> None:
    """Refuse to start a new run in a folder that already holds files: the old run's checkpoints and metrics
    would be replaced, or mixed with the new run's. Its lock and temporary files do not count. The refusal says
    what the folder holds: a run (which ``--resume`` or ``--overwrite`` can take), or files that are no run."""
    held = _held_entries(run_dir)
    if not held:
        return
    own, others = _split(held)
    if not holds_run(run_dir):
        raise ConvUNeXtError(
            f"{run_dir}: this folder is not empty ({_listed(held)}) and holds no convunext run; choose another "
            "train.run_name, or empty the folder"
        )
    resume = f"continue it with --resume {run_dir}, " if (run_dir / STATE_FILE).is_file() else ""
    if others:
        raise ConvUNeXtError(
            f"{run_dir}: this folder already holds a run ({_listed(own)}) and other files ({_listed(others)}); "
            f"{resume}choose another train.run_name, or move the other files out before --overwrite (which "
            "deletes only what a run writes)"
        )
    raise ConvUNeXtError(
        f"{run_dir}: this folder already holds a run ({_listed(own)}); {resume}choose another train.run_name, "
        "or pass --overwrite to delete it and start again"
    )


def check_overwritable(run_dir: Path) -> None:
    """Refuse ``overwrite`` of a folder that holds anything but one run's own files (:data:`RUN_FILES`): a folder
    that holds no run, or a run beside the user's files (notes, an evaluation, analyses). Nothing is deleted
    then; it is the user who moves such files, never ``overwrite``."""
    held = _held_entries(run_dir)
    if not held:
        return
    if not holds_run(run_dir):
        raise ConvUNeXtError(
            f"{run_dir}: this folder holds no convunext run ({_listed(held)}), and --overwrite deletes only a run's "
            "files; nothing was deleted: choose another train.run_name"
        )
    _, others = _split(held)
    if others:
        raise ConvUNeXtError(
            f"{run_dir}: --overwrite deletes only what a run writes, and this folder also holds {_listed(others)}; "
            "nothing was deleted: move them out of the folder, or choose another train.run_name"
        )


def check_resumable(run_dir: Path) -> None:
    """Refuse ``resume`` of a folder that has no training state to continue from, saying what it lacks (and
    deleting nothing: a run that cannot be continued is never started again in its place)."""
    if not run_dir.is_dir():
        lacks = "no such folder" if not run_dir.exists() else "not a folder"
        raise ConvUNeXtError(f"{run_dir}: nothing to resume: {lacks}")
    held = _held_entries(run_dir)
    if (run_dir / STATE_FILE).is_file():
        return
    if not held:
        raise ConvUNeXtError(f"{run_dir}: nothing to resume: the folder is empty")
    if holds_run(run_dir) or (run_dir / "config.yaml").is_file():
        raise ConvUNeXtError(
            f"{run_dir}: nothing to resume: no {STATE_FILE} (the run finished no epoch, or its state was removed); "
            "nothing was deleted: start a new run under another train.run_name, or delete this folder to train it "
            "again"
        )
    raise ConvUNeXtError(
        f"{run_dir}: nothing to resume: not a run folder (no {STATE_FILE} or config.yaml; it holds {_listed(held)})"
    )


def clear_run_dir(run_dir: Path) -> None:
    """Delete the files of the run in ``run_dir`` (``overwrite``), so that none of them is left beside the new
    run's: every :data:`RUN_FILES` entry and leftover temporary file, never anything else — a folder holding
    anything else is refused first (:func:`check_overwritable`)."""
    check_overwritable(run_dir)
    for path in _held_entries(run_dir) + _disposable_entries(run_dir):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


def remove_temp_files(run_dir: Path) -> None:
    """Delete the temporary files (and time-budget scratch folders) that a killed run left, in ``run_dir`` and
    its sub-folders."""
    for path in run_dir.rglob(TEMP_FILES):
        if path.is_file():
            path.unlink(missing_ok=True)
    for path in run_dir.glob(SCRATCH_FOLDERS):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)


def _disposable(path: Path) -> bool:
    if path.name == LOCK_NAME:
        return True
    if path.is_dir() and not path.is_symlink():
        return fnmatch.fnmatch(path.name, SCRATCH_FOLDERS)
    return path.is_file() and fnmatch.fnmatch(path.name, TEMP_FILES)


def _held_entries(run_dir: Path) -> list[Path]:
    """What ``run_dir`` holds but its lock and leftover temporary files (sorted; none when it does not exist).
    Refuses a path that is not a folder, and a folder that another process is working in (a run in progress:
    say so, rather than suggest resuming or overwriting it)."""
    if not run_dir.exists():
        return []
    if not run_dir.is_dir():
        raise ConvUNeXtError(f"{run_dir}: exists and is not a folder; choose another train.run_name")
    holder = RunLock(run_dir).busy()
    if holder is not None:
        raise ConvUNeXtError(
            f"{run_dir}: in use by another process ({holder}); wait for it to finish, or choose another train.run_name"
        )
    return sorted(path for path in run_dir.iterdir() if not _disposable(path))


def _disposable_entries(run_dir: Path) -> list[Path]:
    return sorted(path for path in run_dir.iterdir() if _disposable(path) and path.name != LOCK_NAME)


def _split(entries: Iterable[Path]) -> tuple[list[Path], list[Path]]:
    """``entries`` as (a run's own, everything else)."""
    entries = list(entries)
    return [p for p in entries if p.name in RUN_FILES], [p for p in entries if p.name not in RUN_FILES]


def _listed(entries: list[Path], shown: int = 4) -> str:
    """``a.txt, sub/, ...``: the first ``shown`` names, folders with a trailing slash."""
    names = [path.name + ("/" if path.is_dir() else "") for path in entries]
    return ", ".join(names[:shown]) + (", ..." if len(names) > shown else "")


def open_run_dir(run_dir: Path, held: contextlib.ExitStack, *, auto_name: bool, resume: bool, overwrite: bool) -> Path:
    """Claim the run folder and lock it for the run (the lock joins ``held``); return the folder.

    With ``auto_name`` the folder is a new one named after ``run_dir`` (:func:`claim_run_dir`). ``resume`` needs a
    training state to continue (:func:`check_resumable`). A new run refuses a folder that holds files
    (:func:`check_new_run_dir`), or with ``overwrite`` deletes the old run's files (:func:`clear_run_dir`, which
    refuses a folder holding anything else). Stale temporary files go in every case, and the folder is marked
    (:data:`RUN_MARKER`) before the run writes anything else.
    """
    if auto_name:
        try:
            run_dir = claim_run_dir(run_dir.parent, run_dir.name)
        except OSError as error:
            raise ConvUNeXtError(f"{run_dir}: cannot create the run folder ({error.strerror or error})") from error
    elif run_dir.exists() and not run_dir.is_dir():
        raise ConvUNeXtError(f"{run_dir}: exists and is not a folder; choose another train.run_name")
    held.enter_context(RunLock(run_dir, hint="wait for it to finish, or choose another train.run_name"))
    if resume:
        check_resumable(run_dir)
    elif overwrite:
        clear_run_dir(run_dir)
    else:
        check_new_run_dir(run_dir)
    remove_temp_files(run_dir)
    if not (run_dir / RUN_MARKER).is_file():
        atomic_write_json(run_dir / RUN_MARKER, {"convunext_run": True, "started": datetime.now().isoformat()})
    return run_dir
