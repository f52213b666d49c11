"""The training loop: the paper's (or the reference code's) recipe with an honest protocol.

Model selection (the ``best`` checkpoint, early stopping) uses the validation split carved from the training images;
the test split is never touched here (``convunext evaluate`` does that). Runs are reproducible from their seed:
the sample order of epoch ``e`` and every augmentation draw are functions of ``(seed, epoch, index)`` only, so a run
resumed from its ``last`` checkpoint ends with the same weights as the same run uninterrupted.
"""

from __future__ import annotations

import csv
import math
import os
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm import tqdm

from ..data import DatasetInfo, EvalTransform, TrainTransform, TransformedDataset, open_dataset, pad_collate
from ..errors import ConvUNeXtError
from ..evaluation.evaluate import evaluate_model
from ..models import create_model, model_arguments
from ..utils.io import atomic_path, atomic_write_json
from .checkpoint import load_training_state, save_checkpoint, save_training_state
from .config import ExperimentConfig
from .distributed import DistributedContext, single_process
from .losses import SegmentationLoss
from .plots import plot_progress
from .schedule import build_scheduler

METRIC_COLUMNS = ("epoch", "step", "lr", "train_loss", "val_dice", "val_miou", "val_accuracy", "epoch_seconds")


@dataclass
class TrainResult:
    """What a finished run reports: its folder, the best validation epoch and metrics, and the time it took."""

    run_dir: Path
    best_epoch: int
    best_metrics: dict[str, float]
    epochs_run: int
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)


def resolve_device(name: str) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; anything else is passed to ``torch.device``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise ConvUNeXtError(f"train.device={name!r} is not a valid device") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConvUNeXtError(f"train.device={name!r} but CUDA is not available on this machine")
    return device


class Trainer:
    """Train one model on one dataset with one recipe; see :meth:`fit`.

    Args:
        config: the experiment (model, data, optimiser, loop settings).
        run_dir: where checkpoints, logs and plots go (default ``train.output_dir/<run_name or timestamp>``).
        resume: continue the run in ``run_dir`` from its ``last`` checkpoint.
        dist: the distributed context (default: a single process); only rank 0 writes files.
    """

    def __init__(
        self,
        config: ExperimentConfig,
        run_dir: str | Path | None = None,
        resume: bool = False,
        dist: DistributedContext | None = None,
    ) -> None:
        self.config, self.resume = config, resume
        self.dist = dist or single_process()
        self.device = self.dist.device if dist is not None else resolve_device(config.train.device)
        name = config.train.run_name or datetime.now().strftime(f"{config.model.name}-{config.data.name}-%Y%m%d-%H%M%S")
        name = self.dist.broadcast_object(name)  # every rank must agree on the folder (timestamps may differ)
        self.run_dir = Path(run_dir) if run_dir is not None else Path(config.train.output_dir) / name
        if resume and not (self.run_dir / "last_state.pt").is_file():
            raise ConvUNeXtError(f"{self.run_dir}: nothing to resume (no last_state.pt in this folder)")

        data = config.data
        self.train_set = open_dataset(data.name, data.root, "train", **data.options)
        self.val_set = open_dataset(data.name, data.root, "val", **data.options)
        self.info: DatasetInfo = self.train_set.info
        self.model_kwargs = self._model_kwargs()
        torch.manual_seed(config.train.seed)
        self.model = create_model(config.model.name, **self.model_kwargs).to(self.device)
        if config.train.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        if config.train.activation_checkpointing:
            from ..models.checkpointing import enable_activation_checkpointing

            enable_activation_checkpointing(self.model)
        self.train_model: nn.Module = self.dist.wrap(self.model)

    def _model_kwargs(self) -> dict[str, Any]:
        kwargs = dict(self.config.model.kwargs)
        kwargs.setdefault("in_channels", self.info.in_channels)
        kwargs.setdefault("num_classes", len(self.info.class_names))
        if "deep_supervision" in model_arguments(self.config.model.name):
            kwargs.setdefault("deep_supervision", True)
        return kwargs

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

    def fit(self) -> TrainResult:
        """Run (or resume) training; return the best validation result. Writes into :attr:`run_dir` on rank 0."""
        cfg, info, device = self.config, self.info, self.device
        start_time = time.perf_counter()
        transform = TrainTransform(
            cfg.data.crop_size,
            info.mean,
            info.std,
            scale_range=cfg.data.scale_range,
            hflip=cfg.data.hflip,
            vflip=cfg.data.vflip,
        )
        augmented = TransformedDataset(self.train_set, transform, seed=cfg.train.seed)
        sampler = DistributedSampler(
            augmented, num_replicas=self.dist.world_size, rank=self.dist.rank, shuffle=True, seed=cfg.train.seed
        )
        loader = self._loader(augmented, sampler)
        steps_per_epoch = len(loader)
        if steps_per_epoch == 0:
            raise ConvUNeXtError(f"dataset {info.name!r}: the training split is empty")
        optimizer = torch.optim.AdamW(self.model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
        scheduler = build_scheduler(optimizer, steps_per_epoch, cfg.train.epochs, cfg.optim)
        use_amp = cfg.train.amp and device.type == "cuda"
        amp_dtype = torch.bfloat16 if (device.type == "cpu" or torch.cuda.is_bf16_supported()) else torch.float16
        scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)
        autocast_enabled = use_amp or (device.type == "cpu" and cfg.train.cpu_bf16)
        loss_fn = SegmentationLoss(ce_weight=cfg.train.loss_ce_weight, dice_weight=cfg.train.loss_dice_weight)

        start_epoch, best = 1, {"epoch": 0, "dice": -math.inf, "metrics": {}, "stale": 0}
        history: list[dict[str, float]] = []
        if self.resume:
            state = load_training_state(self.run_dir)
            self.model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            scaler.load_state_dict(state["scaler"])
            torch.set_rng_state(state["rng_cpu"])
            start_epoch, best, history = state["epoch"] + 1, state["best"], state["history"]
            saved_world = int(state.get("world_size", 1))
            if saved_world != self.dist.world_size and self.dist.is_main:
                print(
                    f"warning: resuming a run saved with {saved_world} process(es) on {self.dist.world_size}: "
                    "the global batch, sample order and steps per epoch change"
                )
        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            for stale in self.run_dir.glob(".*.tmp"):  # half-written files of a killed run
                stale.unlink()
            self.config.to_yaml(self.run_dir / "config.yaml")
        writer = self._tensorboard()
        if self.dist.enabled and self.dist.is_main:
            print(
                f"distributed: {self.dist.world_size} processes ({self.dist.device.type}) x batch "
                f"{cfg.optim.batch_size} = global batch {cfg.optim.batch_size * self.dist.world_size}, "
                f"SyncBatchNorm {'on' if self.dist.sync_batchnorm else 'off'}"
            )

        epoch = start_epoch - 1
        for epoch in range(start_epoch, cfg.train.epochs + 1):
            epoch_start = time.perf_counter()
            sampler.set_epoch(epoch)
            augmented.set_epoch(epoch)
            self.train_model.train()
            total_loss = torch.zeros((), device=device, dtype=torch.float64)
            seen = 0
            bar = tqdm(
                loader,
                desc=f"epoch {epoch}/{cfg.train.epochs}",
                leave=False,
                unit="batch",
                disable=not (cfg.train.progress_bar and self.dist.is_main),
            )
            for step_in_epoch, batch in enumerate(bar):
                images = batch["image"].to(device, non_blocking=True)
                targets = batch["mask"].to(device, non_blocking=True)
                if cfg.train.channels_last:
                    images = images.contiguous(memory_format=torch.channels_last)
                with torch.autocast(device.type, dtype=amp_dtype, enabled=autocast_enabled):
                    outputs = self.train_model(images)
                loss = loss_fn(_to_float(outputs), targets)
                if not torch.isfinite(loss):
                    raise ConvUNeXtError(
                        f"loss became {loss.item()} at epoch {epoch}, step {step_in_epoch + 1}/{steps_per_epoch} "
                        f"(lr {scheduler.get_last_lr()[0]:.3g}); lower optim.lr or check the data"
                    )
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if cfg.train.grad_clip_norm:
                    scaler.unscale_(optimizer)
                    nn.utils.clip_grad_norm_(self.model.parameters(), cfg.train.grad_clip_norm)
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                total_loss += loss.detach().double() * images.shape[0]
                seen += images.shape[0]
                bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
            bar.close()
            train_loss = self.dist.mean_of(total_loss, seen)

            row: dict[str, float] = {
                "epoch": epoch,
                "step": epoch * steps_per_epoch,
                "lr": scheduler.get_last_lr()[0],
                "train_loss": train_loss,
                "val_dice": math.nan,
                "val_miou": math.nan,
                "val_accuracy": math.nan,
            }
            metrics: dict[str, float] = {}
            if epoch % cfg.train.eval_every == 0 or epoch == cfg.train.epochs:
                metrics = self.validate()
                row.update(
                    val_dice=metrics["dice_fg_mean"],
                    val_miou=metrics["miou_cm"],
                    val_accuracy=metrics["pixel_accuracy"],
                )
                if metrics["dice_fg_mean"] > best["dice"]:
                    best = {"epoch": epoch, "dice": metrics["dice_fg_mean"], "metrics": metrics, "stale": 0}
                    if self.dist.is_main:
                        save_checkpoint(self.run_dir, "best", self.model, self.checkpoint_meta(epoch, metrics))
                else:
                    best["stale"] += 1
            row["epoch_seconds"] = time.perf_counter() - epoch_start
            history.append(row)
            if self.dist.is_main:
                save_checkpoint(self.run_dir, "last", self.model, self.checkpoint_meta(epoch, metrics))
                save_training_state(
                    self.run_dir,
                    {
                        "model": self.model.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                        "scaler": scaler.state_dict(),
                        "rng_cpu": torch.get_rng_state(),
                        "world_size": self.dist.world_size,
                        "epoch": epoch,
                        "best": best,
                        "history": history,
                    },
                )
                self._log(row, history, writer)  # after the state: a listed epoch is always resumable
            self.dist.barrier()
            patience = cfg.train.early_stopping_patience
            if patience is not None and best["stale"] >= patience:
                if self.dist.is_main:
                    print(f"early stopping: no validation Dice gain for {patience} evaluations")
                break
        if writer is not None:
            writer.close()
        result = TrainResult(
            self.run_dir, best["epoch"], best["metrics"], epoch, time.perf_counter() - start_time, history
        )
        if self.dist.is_main:
            atomic_write_json(
                self.run_dir / "summary.json",
                {
                    "best_epoch": result.best_epoch,
                    "best_val_metrics": result.best_metrics,
                    "epochs_run": result.epochs_run,
                    "seconds_this_session": round(result.seconds, 2),
                    "world_size": self.dist.world_size,
                },
            )
        self.dist.barrier()  # no rank returns (or leaves the process group) before rank 0's files are written
        return result

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Metrics of the current model on the validation split (sharded across ranks, reduced exactly)."""
        self.dist.broadcast_buffers(self.model)  # every shard is evaluated with the model rank 0 checkpoints
        dataset = _Shard(self.val_set, self.dist.rank, self.dist.world_size)
        metrics = evaluate_model(
            self.model,
            dataset,
            EvalTransform(self.info.mean, self.info.std),
            len(self.info.class_names),
            device=self.device,
            tile_size=self.config.data.eval_tile_size,
            progress=False,
        )
        if self.dist.enabled:
            metrics.gather_across_processes()
        return metrics.compute()

    def _log(self, row: dict[str, float], history: list[dict[str, float]], writer: Any) -> None:
        path = self.run_dir / "metrics.csv"
        with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
            out = csv.DictWriter(handle, fieldnames=METRIC_COLUMNS)
            out.writeheader()
            for entry in history:
                out.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in entry.items()})
        plot_progress(history, self.run_dir / "progress.png")
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
