"""The training loop: the paper's (or the reference code's) recipe with an honest protocol.

Model selection (the ``best`` checkpoint, early stopping) uses the validation split carved from the training images;
the test split is never touched here (``convunext evaluate`` does that). Runs are reproducible from their seed:
the sample order of epoch ``e`` and every augmentation draw are functions of ``(seed, epoch, index)`` only, so a run
resumed from its ``last`` checkpoint ends with the same weights as the same run uninterrupted.

The run folder is safe from mistakes: before anything is written the crop is checked against the training images
and the memory of one training step against the machine's (:mod:`convunext.training.memory`); a new run never
replaces a folder that already holds one unless asked to (``overwrite``), automatic names never collide, and rank 0
holds the folder's :class:`~convunext.utils.lock.RunLock` for the whole run, so a second process training into the
same folder is refused (:mod:`convunext.training.run_folder`).

The pieces a run is made of live beside this module: its training batches (:mod:`~convunext.training.loading`),
step (:mod:`~convunext.training.step`), validation (:mod:`~convunext.training.validation`), state
(:mod:`~convunext.training.state`), records (:mod:`~convunext.training.run_log`) and the measurements behind a
time budget (:mod:`~convunext.training.calibration`). The trainer tunes its process (``train.threads``,
``train.tune_malloc``) with :func:`convunext.runtime.configure`.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..checkpoint import load_training_state, save_checkpoint_set
from ..data import DatasetInfo, TransformedDataset, open_dataset
from ..data.fov import dataset_fov_diameter
from ..errors import ConvUNeXtError
from ..models import create_model, model_arguments
from ..runtime import configure
from ..utils.device import device_description, resolve_device
from ..utils.io import atomic_write_json
from .calibration import measure_run_costs
from .config import ExperimentConfig
from .distributed import DistributedContext, single_process
from .ema import ModelEma
from .fast_paths import enable_fast_paths, resolve_fast_paths
from .loading import training_batches
from .memory import check_crop_size, check_step_memory, estimate_step_memory
from .resume import check_resume
from .run_folder import default_run_name, open_run_dir
from .run_log import RunLog
from .schedule import build_scheduler, steps_epochs, with_length
from .state import TrainingState, no_best_yet
from .step import TrainingStep
from .time_budget import RunCosts, plan_epochs, too_few_steps_warning
from .validation import Validation, selection_dice, threshold_record

_T = TypeVar("_T")


@dataclass
class TrainResult:
    """What a finished run reports: its folder, the best validation epoch and metrics, and the time it took."""

    run_dir: Path
    best_epoch: int
    best_metrics: dict[str, float]
    epochs_run: int
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)
    planned_seconds: float | None = None  # the time-budget plan of this session's run, if it made one


def check_model_matches_data(config: ExperimentConfig, info: DatasetInfo) -> None:
    """Refuse ``model.kwargs.in_channels`` or ``num_classes`` other than the data's: the first batch would fail
    deep in a convolution (or the loss), after the run folder was written. Both follow the data when left out."""
    has = {
        "in_channels": (info.in_channels, f"{info.in_channels}-channel images"),
        "num_classes": (info.num_classes, f"{info.num_classes} classes ({', '.join(info.class_names)})"),
    }
    for key, (count, description) in has.items():
        given = config.model.kwargs.get(key, count)
        if given != count:
            raise ConvUNeXtError(
                f"model.kwargs.{key}={given!r}, but the {config.data.name} data has {description}; leave "
                f"model.kwargs.{key} out (it follows the data) or set it to {count}"
            )


def model_kwargs_from_config(config: ExperimentConfig, info: DatasetInfo) -> dict[str, Any]:
    """The arguments ``config`` builds its model with: ``model.kwargs`` over the defaults of the dataset's channels
    and classes and, for a model that has it, deep supervision on (what the trainer builds and checkpoints)."""
    defaults: dict[str, Any] = {"in_channels": info.in_channels, "num_classes": info.num_classes}
    if "deep_supervision" in model_arguments(config.model.name):
        defaults["deep_supervision"] = True
    return {**defaults, **config.model.kwargs}


class Trainer:
    """Train one model on one dataset with one recipe; see :meth:`fit`.

    Args:
        config: the experiment (model, data, optimiser, loop settings); validated here.
        run_dir: where checkpoints, logs and plots go (default ``train.output_dir/<run_name>``, or a new folder
            named by :func:`~convunext.training.run_folder.default_run_name`).
        resume: continue the run in ``run_dir`` from its ``last`` checkpoint, as it was trained: ``config`` may
            differ from the configuration the run records only where that is safe (the length, the device...; see
            :mod:`~convunext.training.resume`). A folder without a training state is refused, never replaced.
        dist: the distributed context (default: a single process); only rank 0 writes files.
        overwrite: a new run (not ``resume``) in a folder that holds an old run deletes the old run's files first;
            without it such a folder is refused (:func:`~convunext.training.run_folder.check_new_run_dir`), and a
            folder holding anything else is refused in any case
            (:func:`~convunext.training.run_folder.check_overwritable`).
    """

    def __init__(
        self,
        config: ExperimentConfig,
        run_dir: str | Path | None = None,
        resume: bool = False,
        dist: DistributedContext | None = None,
        overwrite: bool = False,
    ) -> None:
        config.validate()
        config = copy.deepcopy(config)  # the run resolves its auto switches and time budget in its own copy
        self.resume, self.overwrite = resume, overwrite
        self.dist = dist or single_process()
        self.device = self.dist.device if dist is not None else resolve_device(config.train.device, "train.device")
        self.auto_name = run_dir is None and not config.train.run_name
        name = config.train.run_name or default_run_name(config)
        name = self.dist.broadcast_object(name)  # every rank must agree on the folder (timestamps may differ)
        self.run_dir = Path(run_dir) if run_dir is not None else Path(config.train.output_dir) / name
        self.resume_changes: list[str] = []
        if resume:  # before the data is opened: a resume with another dataset is refused, not started
            config, self.resume_changes = check_resume(self.run_dir, config)
        self.config = config

        data = config.data
        self.train_set = open_dataset(data.name, data.root, "train", **data.options)
        self.val_set = open_dataset(data.name, data.root, "val", **data.options)
        self.info: DatasetInfo = self.train_set.info
        self.fov_diameter = dataset_fov_diameter(self.train_set)  # the scale the model learns (inference.scale)
        check_model_matches_data(config, self.info)
        self.model_kwargs = model_kwargs_from_config(config, self.info)
        torch.manual_seed(config.train.seed)
        self.model = create_model(config.model.name, **self.model_kwargs).to(self.device)
        self.fast_paths = resolve_fast_paths(config.train, self.model, self.device)
        self.fast_paths.apply_to(config.train)
        tuned = configure(threads=config.train.threads, tune_malloc=self.fast_paths.tune_malloc)
        if self.fast_paths.tune_malloc and not tuned.malloc_tuned:
            print("train.tune_malloc=on: this system's C library is not glibc; malloc left as it is")
        self.model = enable_fast_paths(self.model, self.fast_paths)
        if config.train.recompute_activations:
            self.model.set_grad_checkpointing()  # type: ignore[operator]
        self.train_model: nn.Module = self.dist.wrap(self.model)
        self.step = TrainingStep(config, self.device, self.fast_paths.channels_last)
        self._validation = Validation(
            config, self.val_set, self.info, self.device, self.dist, self.fast_paths.fast_validation, self.step.forward
        )
        self.planned_seconds: float | None = None

    def checkpoint_meta(self, epoch: int, metrics: dict[str, float]) -> dict[str, Any]:
        """The JSON record stored beside the weights: enough to rebuild and use the model on its own."""
        config = self.config.to_dict()
        return {
            "model": {"name": self.config.model.name, "kwargs": self.model_kwargs},
            "classes": list(self.info.class_names),
            "normalization": {"mean": list(self.info.mean), "std": list(self.info.std)},
            "data": {
                "name": self.config.data.name,
                "options": config["data"]["options"],
                "crop_size": config["data"]["crop_size"],
                "eval_tile_size": config["data"]["eval_tile_size"],
                "has_fov": self.info.has_fov,
            },
            **({"scale": {"fov_diameter": self.fov_diameter}} if self.fov_diameter is not None else {}),
            **({"volume": self.info.volume} if self.info.volume is not None else {}),
            "recipe": config["optim"],
            "seed": self.config.train.seed,
            "world_size": self.dist.world_size,  # optim.batch_size is per process: global batch = batch x this
            "epoch": epoch,
            "val_metrics": metrics,
            **({"threshold": threshold_record(metrics)} if "threshold" in metrics else {}),
        }

    def estimate_step_memory(self, crop_size: int | None = None, batch_size: int | None = None) -> int:
        """Bytes that one training step needs (default: at the configured crop and batch), estimated without
        running one (:func:`~convunext.training.memory.estimate_step_memory`)."""
        crop = self.config.data.crop_size if crop_size is None else crop_size
        batch = self.config.optim.batch_size if batch_size is None else batch_size
        return estimate_step_memory(self.model, self._probe, self.device, crop, batch)

    def _probe(self, model: nn.Module, side: int) -> None:
        """The forward pass and loss of a training step on one blank ``side x side`` crop."""
        images = torch.zeros(1, self.info.in_channels, side, side, device=self.device)
        targets = torch.zeros(1, side, side, dtype=torch.long, device=self.device)
        self.step.loss(model, images, targets)

    def check_memory(self) -> None:
        """Refuse a training step estimated (:meth:`estimate_step_memory`) to need more memory than the device
        has available (:func:`~convunext.training.memory.check_step_memory`)."""
        check_step_memory(self.config, self.device, self.estimate_step_memory)

    def _preflight(self) -> None:
        check_crop_size(self.train_set, self.config.data)
        self.check_memory()

    def _open_run_dir(self, held: contextlib.ExitStack) -> Path:
        """Rank 0: claim and lock the run folder for the run (:func:`~convunext.training.run_folder.open_run_dir`)."""
        return open_run_dir(self.run_dir, held, auto_name=self.auto_name, resume=self.resume, overwrite=self.overwrite)

    def _on_main(self, action: Callable[[], _T]) -> _T:
        """Run ``action`` on rank 0 and give its result to every rank; a user error there is raised on every rank,
        so that no rank is left waiting for rank 0 in a collective."""
        result, message, error = None, None, None
        if self.dist.is_main:
            try:
                result = action()
            except ConvUNeXtError as raised:
                message, error = str(raised), raised
        result, message = self.dist.broadcast_object((result, message))
        if error is not None:
            raise error
        if message is not None:
            raise ConvUNeXtError(message)
        return result  # type: ignore[return-value]

    def fit(self) -> TrainResult:
        """Run (or resume) training; return the best validation result. Writes into :attr:`run_dir` on rank 0.

        Before anything is written, the crop and the memory of a training step are checked; rank 0 then holds
        the run folder's lock until the run ends, however it ends."""
        self._on_main(self._preflight)
        with contextlib.ExitStack() as held:
            self.run_dir = self._on_main(lambda: self._open_run_dir(held))
            start_time = time.perf_counter()
            state = self._prepare(start_time)
            if self.resume:
                self._load(state)
                if self._finished(state):  # reported, not trained again or rewritten
                    return self._result(state, 0.0)
            self._start(state)
            for epoch in range(state.epoch + 1, self.config.train.epochs + 1):
                epoch_start = time.perf_counter()
                train_loss = self._train_epoch(state, epoch)
                self._validate_and_save(state, epoch, train_loss, epoch_start)
                if self._early_stop(state):
                    break
            return self._finish(state, time.perf_counter() - start_time)

    def _prepare(self, start_time: float) -> TrainingState:
        """The augmented, sharded training data and the optimiser, schedule and gradient scaler of a fresh run
        (its length first fitted to ``train.steps``, or to ``train.time_budget_minutes`` when that is set and not
        yet planned)."""
        cfg = self.config
        augmented, sampler, loader = training_batches(cfg, self.train_set, self.info, self.dist, self.device)
        ema = ModelEma(self.model, cfg.train.ema_decay) if cfg.train.ema_decay else None
        if cfg.train.steps is not None:
            self._fit_to_steps(cfg.train.steps, len(loader))
        if cfg.train.time_budget_minutes and cfg.train.time_budget_plan is None and not self.resume:
            self._plan_time_budget(self._measure_costs(augmented, loader), start_time)
        optimizer = self.step.optimizer(self.model)
        scheduler = build_scheduler(optimizer, len(loader), cfg.train.epochs, cfg.optim)
        scaler = self.step.scaler()
        return TrainingState(augmented, sampler, loader, optimizer, scheduler, scaler, RunLog(self.run_dir), ema=ema)

    def measure_costs(self) -> RunCosts:
        """Time this run's own work — a training step (the median of a few, after one), a validation pass with
        its precise-BN and EMA work, an epoch's save — on a copy of the model; the run itself is untouched (its
        weights, random state and data order). Writes only to a temporary folder, removed after."""
        augmented, _, loader = training_batches(self.config, self.train_set, self.info, self.dist, self.device)
        return self._measure_costs(augmented, loader)

    def _measure_costs(self, augmented: TransformedDataset, loader: DataLoader) -> RunCosts:
        save_near = self.run_dir if self.dist.is_main else None
        return measure_run_costs(self.model, self.step, self._validation, augmented, loader, save_near)

    def _fit_to_steps(self, steps: int, steps_per_epoch: int) -> None:
        """Fix ``train.epochs`` to the fewest whole epochs of ``steps_per_epoch`` that make ``steps`` optimiser
        steps, the schedule fitted to that length in proportion (a resumed run resolves to its recorded length)."""
        epochs = steps_epochs(steps, steps_per_epoch)
        if epochs == self.config.train.epochs:
            return
        if self.dist.is_main:
            print(
                f"train.steps={steps}: {epochs} epochs of {steps_per_epoch} steps; schedule fitted from "
                f"{self.config.train.epochs} epochs"
            )
        self._set_length(epochs)

    def _set_length(self, epochs: int) -> None:
        """Train ``epochs`` epochs, the schedule fitted to them (:func:`~.schedule.with_length`), in this run's own
        config object: the training step and the validation hold it."""
        self.config.optim = with_length(self.config, epochs).optim
        self.config.train.epochs = epochs

    def _plan_time_budget(self, costs: RunCosts, start_time: float) -> None:
        """Fix ``train.epochs`` from the measured ``costs`` and compress the schedule to fit
        ``train.time_budget_minutes`` (:mod:`~convunext.training.time_budget`)."""
        cfg = self.config
        plan = plan_epochs(
            cfg.train.time_budget_minutes,  # type: ignore[arg-type]
            cfg.train.epochs,
            cfg.train.eval_every,
            costs,
            time.perf_counter() - start_time,
        )
        plan = self.dist.broadcast_object(plan)  # every rank trains as long as rank 0 planned
        self._set_length(plan.epochs)
        cfg.train.time_budget_plan = plan.to_dict()
        self.planned_seconds = plan.planned_seconds
        if self.dist.is_main:
            print(
                f"time budget {plan.budget_minutes:g} min: {plan.epochs} epochs of {plan.steps_per_epoch} steps "
                f"(step {plan.step_seconds:.2f} s, validation {plan.validation_seconds:.1f} s, save "
                f"{plan.save_seconds:.2f} s; planned {plan.planned_seconds / 60:.1f} min); schedule compressed from "
                f"{plan.nominal_epochs} epochs"
            )
            warning = too_few_steps_warning(plan)
            if warning:
                print(warning)

    def _load(self, state: TrainingState) -> None:
        """Continue from the run's ``last`` state."""
        saved = load_training_state(self.run_dir)
        state.load_state_dict(saved, self.model)
        best_metrics = state.best.get("metrics") or {}
        if self.info.volume and best_metrics and "volume_dice_fg_mean" not in best_metrics:
            # saved by a version that chose volume runs on the per-slice Dice: not comparable with whole volumes
            state.best = no_best_yet()
            if self.dist.is_main:
                print(
                    "note: the best checkpoint so far was chosen on the per-slice Dice; choosing anew on whole volumes"
                )
        saved_world = int(saved.get("world_size", 1))
        if saved_world != self.dist.world_size and self.dist.is_main:
            print(
                f"warning: resuming a run saved with {saved_world} process(es) on {self.dist.world_size}: "
                "the global batch, sample order and steps per epoch change"
            )

    def _finished(self, state: TrainingState) -> bool:
        """Whether the loaded run has nothing left to train (all its epochs, or stopped early); says so."""
        epochs, patience = self.config.train.epochs, self.config.train.early_stopping_patience
        if state.epoch >= epochs:
            longer = "train.steps" if self.config.train.steps is not None else "train.epochs"
            reason = f"finished (epoch {state.epoch} of {epochs}); nothing to train (a larger {longer} extends it)"
        elif patience is not None and state.best["stale"] >= patience:
            reason = (
                f"stopped early at epoch {state.epoch} (no validation Dice gain for {patience} evaluations); nothing "
                "to train (a larger train.early_stopping_patience continues it)"
            )
        else:
            return False
        if self.dist.is_main:
            print(f"{self.run_dir}: {reason}")
        return True

    def _start(self, state: TrainingState) -> None:
        """Rank 0 writes the run's ``config.yaml`` and says how it runs (and what a resume changed)."""
        if self.dist.is_main:
            if self.resume_changes:
                print(f"resuming {self.run_dir} after epoch {state.epoch} with: {', '.join(self.resume_changes)}")
            self.config.to_yaml(self.run_dir / "config.yaml")
            if self.config.train.tensorboard:
                state.log.start_tensorboard()
        if self.dist.enabled and self.dist.is_main:
            batch = self.config.optim.batch_size
            print(
                f"distributed: {self.dist.world_size} processes ({self.dist.device.type}) x batch "
                f"{batch} = global batch {batch * self.dist.world_size}, "
                f"SyncBatchNorm {'on' if self.dist.sync_batchnorm else 'off'}"
            )

    def _train_epoch(self, state: TrainingState, epoch: int) -> float:
        """One pass over the training data; returns the mean training loss over every rank's images."""
        cfg = self.config
        state.sampler.set_epoch(epoch)
        state.augmented.set_epoch(epoch)
        self.train_model.train()
        total_loss = torch.zeros((), device=self.device, dtype=torch.float64)
        seen = 0
        bar = tqdm(
            state.loader,
            desc=f"epoch {epoch}/{cfg.train.epochs}",
            leave=False,
            unit="batch",
            disable=not (cfg.train.progress_bar and self.dist.is_main),
        )
        for step_in_epoch, batch in enumerate(bar):
            images = batch["image"].to(self.device, non_blocking=True)
            targets = batch["mask"].to(self.device, non_blocking=True)
            loss = self.step.loss(self.train_model, images, targets)
            if not torch.isfinite(loss):
                raise ConvUNeXtError(
                    f"loss became {loss.item()} at epoch {epoch}, step {step_in_epoch + 1}/{len(state.loader)} "
                    f"(lr {state.scheduler.get_last_lr()[0]:.3g}); lower optim.lr or check the data"
                )
            self.step.update(self.model, state.optimizer, loss, state.scaler, state.scheduler, state.ema)
            total_loss += loss.detach().double() * images.shape[0]
            seen += images.shape[0]
            bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{state.scheduler.get_last_lr()[0]:.2e}")
        bar.close()
        return self.dist.mean_of(total_loss, seen)

    def _validate_and_save(self, state: TrainingState, epoch: int, train_loss: float, epoch_start: float) -> None:
        """Validate (on evaluation epochs), track the best epoch, then on rank 0 save the checkpoint set and the
        logs of ``epoch``."""
        metrics: dict[str, float] = {}
        running_bn_dice = ema_dice = math.nan
        extra: list[tuple[str, nn.Module, dict[str, Any]]] = []
        if epoch % self.config.train.eval_every == 0 or epoch == self.config.train.epochs:
            metrics, running_bn_dice, ema_metrics = self._validation.point(
                self.model, state.ema, state.augmented, epoch
            )
            dice = selection_dice(metrics)
            if dice > state.best["dice"]:
                state.best = {"epoch": epoch, "dice": dice, "metrics": metrics, "stale": 0}
            else:
                state.best["stale"] += 1
            if state.ema is not None and ema_metrics:
                ema_dice = selection_dice(ema_metrics)
                if ema_dice > state.best_ema["dice"]:
                    state.best_ema = {"epoch": epoch, "dice": ema_dice}
                    extra.append(("ema_best", state.ema.module, self.checkpoint_meta(epoch, ema_metrics)))
        row: dict[str, float] = {
            "epoch": epoch,
            "step": epoch * len(state.loader),
            "lr": state.scheduler.get_last_lr()[0],
            "train_loss": train_loss,
            "val_dice": selection_dice(metrics),
            "val_miou": metrics.get("miou_cm", math.nan),
            "val_accuracy": metrics.get("pixel_accuracy", math.nan),
            "val_dice_running_bn": running_bn_dice,
            "val_dice_ema": ema_dice,
            "epoch_seconds": time.perf_counter() - epoch_start,
        }
        state.epoch = epoch
        state.history.append(row)
        if self.dist.is_main:
            save_checkpoint_set(  # best.*, last.* and last_state.pt together: all or none
                self.run_dir,
                self.model,
                self.checkpoint_meta(epoch, metrics),
                state.state_dict(self.model, self.dist.world_size, self.config.to_dict()),
                best=state.best["epoch"] == epoch,
                extra=extra,
            )
            state.log.add(state.history)  # after the state: a listed epoch is always resumable
        self.dist.barrier()

    def _early_stop(self, state: TrainingState) -> bool:
        """Whether the last ``train.early_stopping_patience`` evaluations brought no validation Dice gain."""
        patience = self.config.train.early_stopping_patience
        if patience is None or state.best["stale"] < patience:
            return False
        if self.dist.is_main:
            print(f"early stopping: no validation Dice gain for {patience} evaluations")
        return True

    def _result(self, state: TrainingState, seconds: float) -> TrainResult:
        best = state.best
        return TrainResult(
            self.run_dir, best["epoch"], best["metrics"], state.epoch, seconds, state.history, self.planned_seconds
        )

    def _finish(self, state: TrainingState, seconds: float) -> TrainResult:
        """Close the logs; rank 0 writes ``summary.json``; every rank returns the result once it is written."""
        state.log.close()
        result = self._result(state, seconds)
        if self.dist.is_main:
            summary: dict[str, Any] = {
                "best_epoch": result.best_epoch,
                "best_val_metrics": result.best_metrics,
                "epochs_run": result.epochs_run,
                "seconds_this_session": round(result.seconds, 2),
                "world_size": self.dist.world_size,
                "fast_paths": asdict(self.fast_paths),
                "threads": torch.get_num_threads(),
                "device": device_description(self.device),
            }
            if state.ema is not None:
                summary["ema_best"] = {"epoch": state.best_ema["epoch"], "val_dice": state.best_ema["dice"]}
            if self.planned_seconds is not None:
                summary["time_budget"] = {
                    "budget_minutes": self.config.train.time_budget_minutes,
                    "planned_minutes": round(self.planned_seconds / 60, 3),
                    "actual_minutes": round(seconds / 60, 3),
                }
            atomic_write_json(self.run_dir / "summary.json", summary)
        self.dist.barrier()  # no rank returns (or leaves the process group) before rank 0's files are written
        return result

    def validate(self, model: nn.Module | None = None) -> dict[str, float]:
        """Metrics of ``model`` (default: the current model) on the validation split (sharded across ranks,
        reduced exactly); with ``train.fast_validation`` through :func:`~convunext.inference.optimize_for_inference`
        of its weights."""
        return self._validation.metrics(self.model if model is None else model)
