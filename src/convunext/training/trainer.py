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
"""

from __future__ import annotations

import contextlib
import copy
import csv
import math
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm import tqdm

from ..checkpoint import load_training_state, save_checkpoint_set
from ..data import DatasetInfo, EvalTransform, TrainTransform, TransformedDataset, open_dataset, pad_collate
from ..errors import ConvUNeXtError
from ..evaluation.evaluate import evaluate_model
from ..inference.optimize import optimize_for_inference
from ..models import create_model, model_arguments
from ..utils.device import device_description, resolve_device
from ..utils.io import atomic_path, atomic_write_json
from .batchnorm_stats import recompute_batchnorm_statistics
from .config import ExperimentConfig
from .distributed import DistributedContext, single_process
from .ema import ModelEma
from .fast_paths import enable_fast_paths, resolve_fast_paths
from .losses import SegmentationLoss
from .memory import check_crop_size, check_step_memory, estimate_step_memory
from .plots import plot_progress
from .resume import check_resume
from .run_folder import default_run_name, open_run_dir
from .schedule import build_scheduler, compress_schedule
from .time_budget import RunCosts, plan_epochs, too_few_steps_warning

METRIC_COLUMNS = (
    "epoch",
    "step",
    "lr",
    "train_loss",
    "val_dice",
    "val_miou",
    "val_accuracy",
    "val_dice_running_bn",
    "val_dice_ema",
    "epoch_seconds",
)
"""``metrics.csv``'s columns: ``val_*`` are the model's validation metrics (after the BatchNorm statistics are
recomputed, with ``train.precise_bn_batches``); ``val_dice_running_bn`` is the Dice before that recomputation
(``train.validate_running_bn``) and ``val_dice_ema`` the EMA weights' Dice (NaN when the option is off or the epoch
not validated)."""
CALIBRATION_STEPS = 5
"""Timed training steps (after one untimed) behind :meth:`Trainer.measure_costs`: with 3, one 10-minute DRIVE
run timed its step at a slow moment (2.40 s against 1.95-2.05 s in its neighbours) and ended 17% short."""
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


@dataclass
class _Loop:
    """The objects of one :meth:`Trainer.fit` and the progress that its ``last_state.pt`` checkpoint keeps."""

    augmented: TransformedDataset
    sampler: DistributedSampler
    loader: DataLoader
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    writer: Any = None  # tensorboard's SummaryWriter, when on
    epoch: int = 0  # the last epoch trained
    best: dict[str, Any] = field(default_factory=lambda: {"epoch": 0, "dice": -math.inf, "metrics": {}, "stale": 0})
    best_ema: dict[str, Any] = field(default_factory=lambda: {"epoch": 0, "dice": -math.inf})
    history: list[dict[str, float]] = field(default_factory=list)
    ema: ModelEma | None = None

    def state(self, model: nn.Module, world_size: int, config: dict[str, Any]) -> dict[str, Any]:
        """The training state after :attr:`epoch`, for ``last_state.pt``, with the ``config`` that trained it (what
        a resume is compared with: :mod:`~convunext.training.resume`)."""
        return {
            "config": config,
            "model": model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng_cpu": torch.get_rng_state(),
            "world_size": world_size,
            "epoch": self.epoch,
            "best": self.best,
            "best_ema": self.best_ema,
            "history": self.history,
            "ema": None if self.ema is None else self.ema.state_dict(),
        }

    def load(self, state: dict[str, Any], model: nn.Module) -> None:
        """Continue from a :meth:`state` (``model`` too): the next epoch is the one after the saved one."""
        model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng_cpu"])
        self.epoch, self.best, self.history = state["epoch"], state["best"], state["history"]
        self.best_ema = state.get("best_ema", self.best_ema)
        if self.ema is not None and state.get("ema") is not None:
            self.ema.load_state_dict(state["ema"])


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
        check_model_matches_data(config, self.info)
        self.model_kwargs = model_kwargs_from_config(config, self.info)
        if config.train.threads is not None:
            torch.set_num_threads(config.train.threads)
        torch.manual_seed(config.train.seed)
        self.model = create_model(config.model.name, **self.model_kwargs).to(self.device)
        self.fast_paths = resolve_fast_paths(config.train, self.model, self.device)
        self.fast_paths.apply_to(config.train)
        self.model = enable_fast_paths(self.model, self.fast_paths)
        if config.train.activation_checkpointing:
            from ..models.checkpointing import enable_activation_checkpointing

            enable_activation_checkpointing(self.model)
        self.train_model: nn.Module = self.dist.wrap(self.model)
        self.loss_fn = SegmentationLoss(
            ce_weight=config.train.loss_ce_weight, dice_weight=config.train.loss_dice_weight
        )
        self.autocast_enabled, self.amp_dtype = self._autocast()
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
            "recipe": config["optim"],
            "seed": self.config.train.seed,
            "world_size": self.dist.world_size,  # optim.batch_size is per process: global batch = batch x this
            "epoch": epoch,
            "val_metrics": metrics,
        }

    def _loader(self, augmented: TransformedDataset, sampler: DistributedSampler) -> DataLoader:
        workers = self.config.data.num_workers
        if workers is None:
            workers = min(8, max(0, (os.cpu_count() or 1) - 1)) if self.device.type == "cuda" else 0
        return DataLoader(
            augmented,
            batch_size=self.config.optim.batch_size,
            sampler=sampler,
            num_workers=workers,
            collate_fn=pad_collate,
            pin_memory=self.device.type == "cuda",
            drop_last=len(augmented) >= self.config.optim.batch_size * self.dist.world_size,
            persistent_workers=False,
        )

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
        self._forward_loss(model, images, targets)

    def _forward(self, model: nn.Module, images: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """``model``'s training-mode outputs on a batch, in the run's memory format and under its autocast."""
        if self.fast_paths.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.autocast_enabled):
            return model(images)

    def _forward_loss(self, model: nn.Module, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The training loss of ``model`` on a batch (the forward pass under the run's autocast)."""
        return self.loss_fn(_to_float(self._forward(model, images)), targets)

    def _autocast(self) -> tuple[bool, torch.dtype]:
        """Whether the training step runs under autocast, and in which dtype."""
        cfg, device = self.config, self.device
        use_amp = cfg.train.amp and device.type == "cuda"
        amp_dtype = torch.bfloat16 if (device.type == "cpu" or torch.cuda.is_bf16_supported()) else torch.float16
        return use_amp or (device.type == "cpu" and cfg.train.cpu_bf16), amp_dtype

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
            loop = self._prepare(start_time)
            if self.resume:
                self._load(loop)
                if self._finished(loop):  # reported, not trained again or rewritten
                    return self._result(loop, 0.0)
            self._start(loop)
            for epoch in range(loop.epoch + 1, self.config.train.epochs + 1):
                epoch_start = time.perf_counter()
                train_loss = self._train_epoch(loop, epoch)
                self._validate_and_save(loop, epoch, train_loss, epoch_start)
                if self._early_stop(loop):
                    break
            return self._finish(loop, time.perf_counter() - start_time)

    def _prepare(self, start_time: float) -> _Loop:
        """The augmented, sharded training data and the optimiser, schedule and gradient scaler of a fresh run
        (its length first fitted to ``train.time_budget_minutes``, when that is set and not yet planned)."""
        cfg = self.config
        augmented, sampler, loader = self._training_data()
        ema = ModelEma(self.model, cfg.train.ema_decay) if cfg.train.ema_decay else None
        if cfg.train.time_budget_minutes and cfg.train.time_budget_plan is None and not self.resume:
            self._plan_time_budget(self._measure_costs(augmented, loader), start_time)
        optimizer = self._optimizer(self.model)
        scheduler = build_scheduler(optimizer, len(loader), cfg.train.epochs, cfg.optim)
        scaler = torch.amp.GradScaler("cuda", enabled=self.autocast_enabled and self.amp_dtype == torch.float16)
        return _Loop(augmented, sampler, loader, optimizer, scheduler, scaler, ema=ema)

    def _training_data(self) -> tuple[TransformedDataset, DistributedSampler, DataLoader]:
        """The augmented training crops, their sampler (this rank's shard) and loader."""
        cfg = self.config
        transform = TrainTransform(
            cfg.data.crop_size,
            self.info.mean,
            self.info.std,
            scale_range=cfg.data.scale_range,
            hflip=cfg.data.hflip,
            vflip=cfg.data.vflip,
        )
        augmented = TransformedDataset(self.train_set, transform, seed=cfg.train.seed)
        sampler = DistributedSampler(
            augmented, num_replicas=self.dist.world_size, rank=self.dist.rank, shuffle=True, seed=cfg.train.seed
        )
        loader = self._loader(augmented, sampler)
        if len(loader) == 0:
            raise ConvUNeXtError(f"dataset {self.info.name!r}: the training split is empty")
        return augmented, sampler, loader

    def _optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        return torch.optim.AdamW(
            model.parameters(), lr=self.config.optim.lr, weight_decay=self.config.optim.weight_decay
        )

    def measure_costs(self) -> RunCosts:
        """Time this run's own work — a training step (the median of a few, after one), a validation pass with
        its precise-BN and EMA work, an epoch's save — on a copy of the model; the run itself is untouched (its
        weights, random state and data order). Writes only to a temporary folder, removed after."""
        augmented, _, loader = self._training_data()
        return self._measure_costs(augmented, loader)

    def _measure_costs(self, augmented: TransformedDataset, loader: DataLoader) -> RunCosts:
        cfg = self.config
        rng = torch.get_rng_state()
        probe = copy.deepcopy(self.model)
        probe_ema = ModelEma(probe, cfg.train.ema_decay) if cfg.train.ema_decay else None
        optimizer = self._optimizer(probe)
        probe.train()
        augmented.set_epoch(0)  # epochs start at 1: the run never sees these crops
        times: list[float] = []
        while len(times) < CALIBRATION_STEPS + 1:
            for batch in loader:
                began = time.perf_counter()
                loss = self._forward_loss(probe, batch["image"].to(self.device), batch["mask"].to(self.device))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.train.grad_clip_norm:
                    nn.utils.clip_grad_norm_(probe.parameters(), cfg.train.grad_clip_norm)
                optimizer.step()
                if probe_ema is not None:
                    probe_ema.update(probe)
                times.append(time.perf_counter() - began)
                if len(times) > CALIBRATION_STEPS:
                    break
        began = time.perf_counter()
        self._evaluations(probe, probe_ema, augmented, 0)
        validation_seconds = time.perf_counter() - began
        save_seconds = 0.0
        if self.dist.is_main:
            state = {"model": probe.state_dict(), "optimizer": optimizer.state_dict()}
            history = [{**dict.fromkeys(METRIC_COLUMNS, 0.5), "epoch": epoch} for epoch in range(1, 3)]
            same_disk = self.run_dir if self.run_dir.is_dir() else None
            with tempfile.TemporaryDirectory(prefix=".time-budget-", dir=same_disk) as scratch:
                for _ in range(2):  # the second time: the first pays one-off costs (matplotlib's start-up)
                    began = time.perf_counter()
                    save_checkpoint_set(Path(scratch), probe, {}, state, best=True)
                    _write_logs(Path(scratch), history, plot=False)
                    save_seconds = time.perf_counter() - began
                    plot_progress(history, Path(scratch) / "progress.png")  # drawn after each validation
                    plot_seconds = time.perf_counter() - began - save_seconds
                validation_seconds += plot_seconds
        torch.set_rng_state(rng)
        return RunCosts(len(loader), statistics.median(times[1:]), validation_seconds, save_seconds)

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
        cfg.optim = compress_schedule(cfg.optim, cfg.train.epochs, plan.epochs)
        cfg.train.epochs = plan.epochs
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

    def _load(self, loop: _Loop) -> None:
        """Continue from the run's ``last`` state."""
        state = load_training_state(self.run_dir)
        loop.load(state, self.model)
        saved_world = int(state.get("world_size", 1))
        if saved_world != self.dist.world_size and self.dist.is_main:
            print(
                f"warning: resuming a run saved with {saved_world} process(es) on {self.dist.world_size}: "
                "the global batch, sample order and steps per epoch change"
            )

    def _finished(self, loop: _Loop) -> bool:
        """Whether the loaded run has nothing left to train (all its epochs, or stopped early); says so."""
        epochs, patience = self.config.train.epochs, self.config.train.early_stopping_patience
        if loop.epoch >= epochs:
            reason = f"finished (epoch {loop.epoch} of {epochs}); nothing to train (a larger train.epochs extends it)"
        elif patience is not None and loop.best["stale"] >= patience:
            reason = (
                f"stopped early at epoch {loop.epoch} (no validation Dice gain for {patience} evaluations); nothing "
                "to train (a larger train.early_stopping_patience continues it)"
            )
        else:
            return False
        if self.dist.is_main:
            print(f"{self.run_dir}: {reason}")
        return True

    def _start(self, loop: _Loop) -> None:
        """Rank 0 writes the run's ``config.yaml`` and says how it runs (and what a resume changed)."""
        if self.dist.is_main:
            if self.resume_changes:
                print(f"resuming {self.run_dir} after epoch {loop.epoch} with: {', '.join(self.resume_changes)}")
            self.config.to_yaml(self.run_dir / "config.yaml")
        loop.writer = self._tensorboard()
        if self.dist.enabled and self.dist.is_main:
            batch = self.config.optim.batch_size
            print(
                f"distributed: {self.dist.world_size} processes ({self.dist.device.type}) x batch "
                f"{batch} = global batch {batch * self.dist.world_size}, "
                f"SyncBatchNorm {'on' if self.dist.sync_batchnorm else 'off'}"
            )

    def _train_epoch(self, loop: _Loop, epoch: int) -> float:
        """One pass over the training data; returns the mean training loss over every rank's images."""
        cfg = self.config
        loop.sampler.set_epoch(epoch)
        loop.augmented.set_epoch(epoch)
        self.train_model.train()
        total_loss = torch.zeros((), device=self.device, dtype=torch.float64)
        seen = 0
        bar = tqdm(
            loop.loader,
            desc=f"epoch {epoch}/{cfg.train.epochs}",
            leave=False,
            unit="batch",
            disable=not (cfg.train.progress_bar and self.dist.is_main),
        )
        for step_in_epoch, batch in enumerate(bar):
            images = batch["image"].to(self.device, non_blocking=True)
            targets = batch["mask"].to(self.device, non_blocking=True)
            loss = self._forward_loss(self.train_model, images, targets)
            if not torch.isfinite(loss):
                raise ConvUNeXtError(
                    f"loss became {loss.item()} at epoch {epoch}, step {step_in_epoch + 1}/{len(loop.loader)} "
                    f"(lr {loop.scheduler.get_last_lr()[0]:.3g}); lower optim.lr or check the data"
                )
            self._optimizer_step(loop, loss)
            total_loss += loss.detach().double() * images.shape[0]
            seen += images.shape[0]
            bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{loop.scheduler.get_last_lr()[0]:.2e}")
        bar.close()
        return self.dist.mean_of(total_loss, seen)

    def _optimizer_step(self, loop: _Loop, loss: torch.Tensor) -> None:
        """Backward pass (scaled, gradients clipped if asked), optimiser step and schedule step."""
        loop.optimizer.zero_grad(set_to_none=True)
        loop.scaler.scale(loss).backward()
        if self.config.train.grad_clip_norm:
            loop.scaler.unscale_(loop.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.config.train.grad_clip_norm)
        loop.scaler.step(loop.optimizer)
        loop.scaler.update()
        loop.scheduler.step()
        if loop.ema is not None:
            loop.ema.update(self.model)

    def _validate_and_save(self, loop: _Loop, epoch: int, train_loss: float, epoch_start: float) -> None:
        """Validate (on evaluation epochs), track the best epoch, then on rank 0 save the checkpoint set and the
        logs of ``epoch``."""
        metrics: dict[str, float] = {}
        running_bn_dice = ema_dice = math.nan
        extra: list[tuple[str, nn.Module, dict[str, Any]]] = []
        if epoch % self.config.train.eval_every == 0 or epoch == self.config.train.epochs:
            metrics, running_bn_dice, ema_metrics = self._evaluations(self.model, loop.ema, loop.augmented, epoch)
            if metrics["dice_fg_mean"] > loop.best["dice"]:
                loop.best = {"epoch": epoch, "dice": metrics["dice_fg_mean"], "metrics": metrics, "stale": 0}
            else:
                loop.best["stale"] += 1
            if loop.ema is not None and ema_metrics:
                ema_dice = ema_metrics["dice_fg_mean"]
                if ema_dice > loop.best_ema["dice"]:
                    loop.best_ema = {"epoch": epoch, "dice": ema_dice}
                    extra.append(("ema_best", loop.ema.module, self.checkpoint_meta(epoch, ema_metrics)))
        row: dict[str, float] = {
            "epoch": epoch,
            "step": epoch * len(loop.loader),
            "lr": loop.scheduler.get_last_lr()[0],
            "train_loss": train_loss,
            "val_dice": metrics.get("dice_fg_mean", math.nan),
            "val_miou": metrics.get("miou_cm", math.nan),
            "val_accuracy": metrics.get("pixel_accuracy", math.nan),
            "val_dice_running_bn": running_bn_dice,
            "val_dice_ema": ema_dice,
            "epoch_seconds": time.perf_counter() - epoch_start,
        }
        loop.epoch = epoch
        loop.history.append(row)
        if self.dist.is_main:
            save_checkpoint_set(  # best.*, last.* and last_state.pt together: all or none
                self.run_dir,
                self.model,
                self.checkpoint_meta(epoch, metrics),
                loop.state(self.model, self.dist.world_size, self.config.to_dict()),
                best=loop.best["epoch"] == epoch,
                extra=extra,
            )
            self._log(row, loop.history, loop.writer)  # after the state: a listed epoch is always resumable
        self.dist.barrier()

    def _early_stop(self, loop: _Loop) -> bool:
        """Whether the last ``train.early_stopping_patience`` evaluations brought no validation Dice gain."""
        patience = self.config.train.early_stopping_patience
        if patience is None or loop.best["stale"] < patience:
            return False
        if self.dist.is_main:
            print(f"early stopping: no validation Dice gain for {patience} evaluations")
        return True

    def _result(self, loop: _Loop, seconds: float) -> TrainResult:
        best = loop.best
        return TrainResult(
            self.run_dir, best["epoch"], best["metrics"], loop.epoch, seconds, loop.history, self.planned_seconds
        )

    def _finish(self, loop: _Loop, seconds: float) -> TrainResult:
        """Close the logs; rank 0 writes ``summary.json``; every rank returns the result once it is written."""
        if loop.writer is not None:
            loop.writer.close()
        result = self._result(loop, seconds)
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
            if loop.ema is not None:
                summary["ema_best"] = {"epoch": loop.best_ema["epoch"], "val_dice": loop.best_ema["dice"]}
            if self.planned_seconds is not None:
                summary["time_budget"] = {
                    "budget_minutes": self.config.train.time_budget_minutes,
                    "planned_minutes": round(self.planned_seconds / 60, 3),
                    "actual_minutes": round(seconds / 60, 3),
                }
            atomic_write_json(self.run_dir / "summary.json", summary)
        self.dist.barrier()  # no rank returns (or leaves the process group) before rank 0's files are written
        return result

    def _evaluations(
        self, model: nn.Module, ema: ModelEma | None, augmented: TransformedDataset, epoch: int
    ) -> tuple[dict[str, float], float, dict[str, float]]:
        """One validation point: ``(metrics, Dice before the BN statistics were recomputed, EMA metrics)``.

        With ``train.precise_bn_batches`` the model's BatchNorm statistics are recomputed on training crops
        (:func:`recompute_batchnorm_statistics`) before it is validated (the checkpoint saved after keeps those
        statistics); with ``train.validate_running_bn`` it is also validated before, with its running
        statistics. The EMA weights get their own statistics the same way."""
        running_bn_dice = math.nan
        if self.config.train.precise_bn_batches:
            if self.config.train.validate_running_bn:
                running_bn_dice = self.validate(model)["dice_fg_mean"]
            self._recompute_statistics(model, augmented, epoch)
        metrics = self.validate(model)
        ema_metrics: dict[str, float] = {}
        if ema is not None:
            if self.config.train.precise_bn_batches:
                self._recompute_statistics(ema.module, augmented, epoch)
            ema_metrics = self.validate(ema.module)
        return metrics, running_bn_dice, ema_metrics

    def _recompute_statistics(self, model: nn.Module, augmented: TransformedDataset, epoch: int) -> None:
        """Set ``model``'s BatchNorm statistics to those of ``train.precise_bn_batches`` batches of epoch
        ``epoch``'s training crops, drawn in an order fixed by the seed and the epoch (so a resumed run repeats
        it)."""
        cfg = self.config
        batch, count = cfg.optim.batch_size, cfg.train.precise_bn_batches * cfg.optim.batch_size
        generator = torch.Generator().manual_seed(cfg.train.seed * 1_000_003 + epoch)
        rounds = -(-count // len(augmented))
        order = torch.cat([torch.randperm(len(augmented), generator=generator) for _ in range(rounds)])[:count]
        batches = (
            pad_collate([augmented[int(i)] for i in order[start : start + batch]])["image"].to(self.device)
            for start in range(0, count, batch)
        )
        recompute_batchnorm_statistics(model, batches, self._forward)

    @torch.no_grad()
    def validate(self, model: nn.Module | None = None) -> dict[str, float]:
        """Metrics of ``model`` (default: the current model) on the validation split (sharded across ranks,
        reduced exactly); with ``train.fast_validation`` through :func:`optimize_for_inference` of its weights."""
        model = self.model if model is None else model
        self.dist.broadcast_buffers(model)  # every shard is evaluated with the model rank 0 checkpoints
        dataset = _Shard(self.val_set, self.dist.rank, self.dist.world_size)
        metrics = evaluate_model(
            optimize_for_inference(model) if self.fast_paths.fast_validation else model,
            dataset,
            EvalTransform(self.info.mean, self.info.std),
            self.info.num_classes,
            device=self.device,
            tile_size=self.config.data.eval_tile_size,
            progress=False,
            topology="off",  # skeletons cost CPU seconds every validation; the test report has them
        )
        if self.dist.enabled:
            metrics.gather_across_processes()
        return metrics.compute()

    def _log(self, row: dict[str, float], history: list[dict[str, float]], writer: Any) -> None:
        # the plot (a quarter of a second) only when the validation curve moves: once per epoch it cost a short
        # CPU run (4 steps per epoch) several minutes
        _write_logs(self.run_dir, history, plot=not math.isnan(row["val_dice"]))
        if writer is not None:
            for key, value in row.items():
                if key != "epoch" and not math.isnan(value):
                    writer.add_scalar(key, value, row["epoch"])

    def _tensorboard(self) -> Any:
        if not (self.config.train.tensorboard and self.dist.is_main):
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            print("train.tensorboard is on but tensorboard is not installed (pip install tensorboard); skipping it")
            return None
        return SummaryWriter(str(self.run_dir / "tensorboard"))


def _write_logs(directory: Path, history: list[dict[str, float]], plot: bool) -> None:
    """``metrics.csv`` of ``history`` in ``directory``, and with ``plot`` its ``progress.png``."""
    with atomic_path(directory / "metrics.csv") as tmp, open(tmp, "w", newline="") as handle:
        out = csv.DictWriter(handle, fieldnames=METRIC_COLUMNS)
        out.writeheader()
        for entry in history:
            out.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in entry.items()})
    if plot:
        plot_progress(history, directory / "progress.png")


class _Shard(Dataset):
    """Every ``world_size``-th item starting at ``rank`` (no padding, so each image is evaluated once)."""

    def __init__(self, dataset: Dataset, rank: int, world_size: int) -> None:
        self.dataset, self.indices = dataset, list(range(rank, len(dataset), world_size))  # type: ignore[arg-type]
        self.info = getattr(dataset, "info", None)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> Any:
        return self.dataset[self.indices[index]]


def _to_float(outputs: torch.Tensor | list[torch.Tensor]) -> torch.Tensor | list[torch.Tensor]:
    if isinstance(outputs, (list, tuple)):
        return [o.float() for o in outputs]
    return outputs.float()
