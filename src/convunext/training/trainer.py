"""The training loop: the paper's (or the reference code's) recipe with an honest protocol.

Model selection (the ``best`` checkpoint, early stopping) uses the validation split carved from the training images;
the test split is never touched here (``convunext evaluate`` does that). Runs are reproducible from their seed:
the sample order of epoch ``e`` and every augmentation draw are functions of ``(seed, epoch, index)`` only, so a run
resumed from its ``last`` checkpoint ends with the same weights as the same run uninterrupted.

The run folder is safe from mistakes: before anything is written the crop is checked against the training images
and the memory of one training step against the machine's (:func:`check_crop_size`, :func:`available_memory`); a
new run never replaces a folder that already holds one unless asked to (``overwrite``), automatic names never
collide (:func:`claim_run_dir`), and rank 0 holds the folder's :class:`~convunext.utils.lock.RunLock` for the whole
run, so a second process training into the same folder is refused.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import fnmatch
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm import tqdm

from ..checkpoint import load_training_state, save_checkpoint_set
from ..data import (
    DatasetInfo,
    EvalTransform,
    FileDataset,
    SyntheticDataset,
    TrainTransform,
    TransformedDataset,
    open_dataset,
    pad_collate,
)
from ..data.io import image_size
from ..errors import ConvUNeXtError
from ..evaluation.evaluate import evaluate_model
from ..models import create_model, model_arguments
from ..utils.device import resolve_device
from ..utils.io import atomic_path, atomic_write_json
from ..utils.lock import LOCK_NAME, RunLock
from .config import DataConfig, ExperimentConfig
from .distributed import DistributedContext, single_process
from .losses import SegmentationLoss
from .plots import plot_progress
from .schedule import build_scheduler

METRIC_COLUMNS = ("epoch", "step", "lr", "train_loss", "val_dice", "val_miou", "val_accuracy", "epoch_seconds")
TEMP_FILES = ".*.tmp"  # the temporary files of convunext.utils.io.atomic_path
PROBE_SIDE = 64  # side of the probe crop whose activations estimate a training step's memory
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


def check_crop_size(dataset: Dataset, data: DataConfig) -> None:
    """Refuse a crop larger than any training image can become at the largest random resize: every crop would
    then be mostly padding (ignored pixels), at the memory cost of the whole crop (a 4096 crop of 64-pixel images
    takes gigabytes)."""
    sizes = _image_sizes(dataset)
    high = data.scale_range[1]
    reach = max(round(max(size) * high) for size in sizes)
    if data.crop_size <= reach:
        return
    smallest, largest = min(sizes, key=_area), max(sizes, key=_area)
    extent = _pixels(largest) if smallest == largest else f"{_pixels(smallest)} to {_pixels(largest)}"
    raise ConvUNeXtError(
        f"data.crop_size={data.crop_size} is larger than any training image, even after the random resize "
        f"(data.scale_range up to x{high:g}): the images are {extent} px, at most {reach} px on a side after "
        f"resizing, so every crop would be mostly padding; use data.crop_size <= {reach}"
    )


def _image_sizes(dataset: Any) -> list[tuple[int, int]]:
    """``(height, width)`` of every image of ``dataset``, from the file headers where there are files."""
    if isinstance(dataset, SyntheticDataset):
        return [(dataset.size, dataset.size)] * len(dataset)
    if isinstance(dataset, FileDataset):
        return [image_size(record.image) for record in dataset.records]
    return [tuple(item["image"].shape[-2:]) for item in dataset]


def _area(size: tuple[int, int]) -> int:
    return size[0] * size[1]


def _pixels(size: tuple[int, int]) -> str:
    return f"{size[1]}x{size[0]}"


def available_memory(device: torch.device) -> tuple[int, str] | None:
    """Bytes that a training step on ``device`` can still allocate, and where the figure comes from: CUDA's free
    memory (plus what PyTorch has cached unused), or on the CPU ``MemAvailable`` of ``/proc/meminfo`` and the
    headroom under a cgroup v2 memory limit (containers, batch schedulers), whichever is less. None where unknown."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return free + cached, f"free on {torch.cuda.get_device_name(device)}"
    if device.type != "cpu":
        return None
    found = []
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append((int(line.split()[1]) * 1024, "MemAvailable"))
    headroom = _cgroup_headroom()
    if headroom is not None:
        found.append((headroom, "cgroup memory limit"))
    return min(found) if found else None


def _cgroup_headroom() -> int | None:
    """Bytes left under this process's cgroup v2 ``memory.max`` (its page cache counts as free), None if none."""
    try:
        line = next(line for line in Path("/proc/self/cgroup").read_text().splitlines() if line.startswith("0::"))
        folder = Path("/sys/fs/cgroup") / line[3:].strip().lstrip("/")
        limit = (folder / "memory.max").read_text().strip()
        if limit == "max":
            return None
        stat = dict(entry.split() for entry in (folder / "memory.stat").read_text().splitlines())
        used = int((folder / "memory.current").read_text()) - int(stat.get("file", 0))
        return int(limit) - used
    except (OSError, StopIteration, ValueError):
        return None


def _bytes_text(count: float) -> str:
    units = ("B", "KiB", "MiB", "GiB", "TiB")
    index = 0
    while count >= 1024 and index < len(units) - 1:
        count, index = count / 1024, index + 1
    return f"{count:.1f} {units[index]}"


class Trainer:
    """Train one model on one dataset with one recipe; see :meth:`fit`.

    Args:
        config: the experiment (model, data, optimiser, loop settings); validated here.
        run_dir: where checkpoints, logs and plots go (default ``train.output_dir/<run_name>``, or a new folder
            named by :func:`default_run_name`).
        resume: continue the run in ``run_dir`` from its ``last`` checkpoint.
        dist: the distributed context (default: a single process); only rank 0 writes files.
        overwrite: a new run (not ``resume``) in a folder that holds files deletes them first; without it such a
            folder is refused (:func:`check_new_run_dir`).
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
        self.config, self.resume, self.overwrite = config, resume, overwrite
        self.dist = dist or single_process()
        self.device = self.dist.device if dist is not None else resolve_device(config.train.device)
        self.auto_name = run_dir is None and not config.train.run_name
        name = config.train.run_name or default_run_name(config)
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

    def estimate_step_memory(self, crop_size: int | None = None, batch_size: int | None = None) -> int:
        """Bytes that one training step needs (default: at the configured crop and batch), estimated without
        running one: the parameters with their gradients and AdamW's two moments, plus the activations autograd
        keeps for the backward pass, measured on one probe crop of at most :data:`PROBE_SIDE` pixels and scaled by
        pixels x batch (activation memory grows linearly with both). A lower bound: the backward pass's own
        temporaries and the allocator's slack come on top."""
        crop = self.config.data.crop_size if crop_size is None else crop_size
        batch = self.config.optim.batch_size if batch_size is None else batch_size
        side = min(crop, PROBE_SIDE)
        parameters = sum(p.numel() * p.element_size() for p in self.model.parameters())
        return int(4 * parameters + self._saved_activation_bytes(side) * batch * (crop / side) ** 2)

    def _saved_activation_bytes(self, side: int) -> int:
        """Bytes of the tensors autograd saves in a forward pass and loss of one ``side x side`` crop, on a copy of
        the model (BatchNorm statistics untouched) with the random stream restored afterwards."""
        cfg = self.config
        model = copy.deepcopy(self.model).train()
        parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
        saved: dict[int, int] = {}

        def pack(tensor: torch.Tensor) -> torch.Tensor:
            storage = tensor.untyped_storage()
            if storage.data_ptr() not in parameters:
                saved[storage.data_ptr()] = storage.nbytes()
            return tensor

        images = torch.zeros(1, self.info.in_channels, side, side, device=self.device)
        if cfg.train.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        targets = torch.zeros(1, side, side, dtype=torch.long, device=self.device)
        autocast_enabled, amp_dtype = self._autocast()
        loss_fn = SegmentationLoss(ce_weight=cfg.train.loss_ce_weight, dice_weight=cfg.train.loss_dice_weight)
        cuda_devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda_devices), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            with torch.autocast(self.device.type, dtype=amp_dtype, enabled=autocast_enabled):
                outputs = model(images)
            loss_fn(_to_float(outputs), targets)
        return sum(saved.values())

    def _autocast(self) -> tuple[bool, torch.dtype]:
        """Whether the training step runs under autocast, and in which dtype."""
        cfg, device = self.config, self.device
        use_amp = cfg.train.amp and device.type == "cuda"
        amp_dtype = torch.bfloat16 if (device.type == "cpu" or torch.cuda.is_bf16_supported()) else torch.float16
        return use_amp or (device.type == "cpu" and cfg.train.cpu_bf16), amp_dtype

    def check_memory(self) -> None:
        """Refuse a training step estimated (:meth:`estimate_step_memory`) to need more memory than the device
        has available (:func:`available_memory`; on a CPU shared by ``LOCAL_WORLD_SIZE`` processes, their sum)."""
        available = available_memory(self.device)
        if available is None:
            return
        free, source = available
        cfg = self.config
        processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1")) if self.device.type == "cpu" else 1
        need = self.estimate_step_memory() * processes
        if need <= free:
            return
        crop = cfg.data.crop_size
        each = f", x {processes} processes" if processes > 1 else ""
        checkpointing = "" if cfg.train.activation_checkpointing else ", or set train.activation_checkpointing=true"
        raise ConvUNeXtError(
            f"one training step needs about {_bytes_text(need)} (estimated: {cfg.model.name}, batch "
            f"{cfg.optim.batch_size} of {crop}x{crop} crops{each}) but only {_bytes_text(free)} is available "
            f"({source}); lower optim.batch_size or data.crop_size{checkpointing}"
        )

    def _preflight(self) -> None:
        check_crop_size(self.train_set, self.config.data)
        self.check_memory()

    def _open_run_dir(self, held: contextlib.ExitStack) -> Path:
        """Rank 0: claim the run folder and lock it for the run (the lock joins ``held``); a new run refuses a
        folder that holds another run's files, or deletes them with ``overwrite``; stale temporary files go."""
        run_dir = self.run_dir
        if self.auto_name:
            try:
                run_dir = claim_run_dir(run_dir.parent, run_dir.name)
            except OSError as error:
                raise ConvUNeXtError(f"{run_dir}: cannot create the run folder ({error.strerror or error})") from error
        elif run_dir.exists() and not run_dir.is_dir():
            raise ConvUNeXtError(f"{run_dir}: exists and is not a folder; choose another train.run_name")
        held.enter_context(RunLock(run_dir, hint="wait for it to finish, or choose another train.run_name"))
        if not self.resume:
            if self.overwrite:
                clear_run_dir(run_dir)
            else:
                check_new_run_dir(run_dir)
        remove_temp_files(run_dir)
        return run_dir

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
            return self._train()

    def _train(self) -> TrainResult:
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
        autocast_enabled, amp_dtype = self._autocast()
        scaler = torch.amp.GradScaler("cuda", enabled=autocast_enabled and amp_dtype == torch.float16)
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
                else:
                    best["stale"] += 1
            row["epoch_seconds"] = time.perf_counter() - epoch_start
            history.append(row)
            if self.dist.is_main:
                save_checkpoint_set(  # best.*, last.* and last_state.pt together: all or none
                    self.run_dir,
                    self.model,
                    self.checkpoint_meta(epoch, metrics),
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
                    best=best["epoch"] == epoch,
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
