"""Resuming a run: it continues as it was trained, or not at all.

Every epoch's training state records the configuration that trained it (``config`` in ``last_state.pt``; a state
from before that record is compared with the run's ``config.yaml``). :func:`check_resume` compares it with the
configuration a resume is given — the run's ``config.yaml`` (perhaps edited), or a preset or file with ``--data``,
``--set``... — and refuses every difference that would change what is trained (another dataset, schedule, width,
crop, seed...), naming the fields. What may change (:data:`CHANGEABLE_ON_RESUME`) is applied and reported, and
the run's ``config.yaml`` and next states record it:

* where the run is written, how it is shown and how its work is computed (:data:`~.config.EXECUTION_FIELDS`: the
  device, threads, data-loading workers, progress bar, TensorBoard and the speed switches);
* its length: ``train.epochs``, or ``train.steps`` for a run given in steps (a finished run is extended, and the
  learning-rate schedule follows the new length from the next step on — ``metrics.csv`` logs the rate of every
  epoch) and ``train.early_stopping_patience``.

A time-budgeted run is given its recorded plan when the resume names the same budget without one (a preset and
``--time-budget`` again: "the same launch, plus --resume"), so it keeps its measured length and schedule; a run
given as ``train.steps`` keeps the length those steps resolved to.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..checkpoint import STATE_FILE, load_training_state
from ..errors import ConvUNeXtError
from .config import EXECUTION_FIELDS, ExperimentConfig
from .run_folder import check_resumable
from .schedule import with_length

CHANGEABLE_ON_RESUME = (*EXECUTION_FIELDS, "train.epochs", "train.steps", "train.early_stopping_patience")
"""The fields a resumed run may change (see the module docstring)."""


def recorded_config(run_dir: Path, state: dict[str, Any]) -> ExperimentConfig:
    """The configuration that trained the epochs of ``state`` (the run's training state): the one it records, or
    for a state from before that record, the run's ``config.yaml``."""
    saved = state.get("config")
    if isinstance(saved, dict):
        return ExperimentConfig.from_dict(saved, str(run_dir / STATE_FILE))
    if not (run_dir / "config.yaml").is_file():
        raise ConvUNeXtError(
            f"{run_dir}: cannot tell what the run was trained with: no config.yaml, and its {STATE_FILE} does not "
            "record its configuration"
        )
    return ExperimentConfig.from_yaml(run_dir / "config.yaml")


def resumed_config(
    run_dir: Path, given: ExperimentConfig, recorded: ExperimentConfig
) -> tuple[ExperimentConfig, list[str]]:
    """The configuration to continue the run in ``run_dir`` with — ``given``, with the recorded time-budget plan
    when it names the same budget without one — and its changes from ``recorded`` (``"train.epochs 300 -> 400"``),
    all of :data:`CHANGEABLE_ON_RESUME`.

    Raises:
        ConvUNeXtError: ``given`` differs from ``recorded`` in another field; one line naming each such field with
            both values.
    """
    given = _with_recorded_plan(given, recorded)
    differences = [
        (key, old, new)
        for key, old, new in recorded.differences(given)
        if not (key == "data.root" and _same_folder(old, new))
    ]
    changeable = recorded.differences(given, ignore=CHANGEABLE_ON_RESUME)
    refused = [difference for difference in differences if difference in changeable]
    if refused:
        shown = ", ".join(f"{key} ({_value(old)} when trained, {_value(new)} now)" for key, old, new in refused[:4])
        more = f" and {len(refused) - 4} more" if len(refused) > 4 else ""
        raise ConvUNeXtError(
            f"{run_dir}: --resume continues the run as it was trained, but {shown}{more} would change it; give the "
            "run's own settings, or start a new run (another train.run_name) to train with these"
        )
    return given, [f"{key} {_value(old)} -> {_value(new)}" for key, old, new in differences]


def check_resume(run_dir: Path, given: ExperimentConfig) -> tuple[ExperimentConfig, list[str]]:
    """:func:`resumed_config` of the run in ``run_dir``, which must hold a training state to continue from
    (:func:`~.run_folder.check_resumable`); reads the state, writes nothing."""
    check_resumable(run_dir)
    return resumed_config(run_dir, given, recorded_config(run_dir, load_training_state(run_dir)))


def _with_recorded_plan(given: ExperimentConfig, recorded: ExperimentConfig) -> ExperimentConfig:
    """``given`` with ``recorded``'s resolved length — ``given``'s schedule compressed to it — when that length was
    resolved from what ``given`` asks for too: the same ``train.steps`` (resolved on the same training data), or
    the same time budget and ``given`` has no plan of its own (the recorded plan comes along); else ``given``."""
    plan = recorded.train.time_budget_plan
    budget = given.train.time_budget_minutes
    same_budget = plan is not None and given.train.time_budget_plan is None
    same_budget = same_budget and budget == recorded.train.time_budget_minutes
    same_steps = given.train.steps is not None and given.train.steps == recorded.train.steps
    if not (same_budget or same_steps):
        return given
    planned = with_length(given, plan["epochs"] if same_budget else recorded.train.epochs)  # type: ignore[index]
    if same_budget:
        planned.train.time_budget_plan = plan
    return planned


def _same_folder(old: Any, new: Any) -> bool:
    """Whether two ``data.root`` values name one folder (``data/DRIVE`` and its absolute path)."""
    if old is None or new is None:
        return old == new
    return Path(old).expanduser().resolve() == Path(new).expanduser().resolve()


def _value(value: Any) -> str:
    """A field's value as YAML and JSON write it: ``0.002``, ``"cpu"``, ``null``."""
    return json.dumps(value, default=str)
