"""``convunext reproduce --estimate``: time a few training steps and evaluations, and project each run's length."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from .plan import RunSpec


def estimate(specs: Sequence[RunSpec], steps: int = 2, log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Time ``steps`` training steps (after one warm-up step) and one validation image per dataset and model,
    and project each run's length: ``epochs x steps/epoch x step + evaluations x val images x image time +
    test images x image time``. Writes nothing; one row per dataset and model."""
    from torch import nn
    from torch.utils.data import DataLoader

    from ..data import EvalTransform, TrainTransform, TransformedDataset, open_dataset, pad_collate
    from ..inference.sliding_window import predict_probabilities
    from ..training.losses import SegmentationLoss
    from ..training.trainer import Trainer

    rows = []
    seen: set[tuple[str, str]] = set()
    for spec in specs:
        if (spec.dataset, spec.model) in seen:
            continue
        seen.add((spec.dataset, spec.model))
        cfg = spec.config
        trainer = Trainer(cfg, run_dir=spec.run_dir)  # builds data and model; writes nothing until fit()
        info, model, device = trainer.info, trainer.model, trainer.device
        transform = TrainTransform(cfg.data.crop_size, info.mean, info.std, scale_range=cfg.data.scale_range)
        augmented = TransformedDataset(trainer.train_set, transform, seed=cfg.train.seed)
        batch = cfg.optim.batch_size
        loader = DataLoader(augmented, batch_size=batch, shuffle=True, collate_fn=pad_collate, drop_last=True)
        steps_per_epoch = max(1, len(augmented) // batch)
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr)
        loss_fn = SegmentationLoss()
        model.train()
        times = []
        iterator = iter(loader)
        for _ in range(steps + 1):
            try:
                sample = next(iterator)
            except StopIteration:
                iterator = iter(loader)
                sample = next(iterator)
            tick = time.perf_counter()
            loss = loss_fn(model(sample["image"].to(device)), sample["mask"].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - tick)
        step = statistics.median(times[1:])
        image = EvalTransform(info.mean, info.std)(trainer.val_set[0])["image"][None]
        model.eval()
        predict_probabilities(model, image, tile_size=cfg.data.eval_tile_size, device=device)  # warm-up
        tick = time.perf_counter()
        predict_probabilities(model, image, tile_size=cfg.data.eval_tile_size, device=device)
        per_image = time.perf_counter() - tick
        epochs, every = cfg.train.epochs, cfg.train.eval_every
        evaluations = sum(1 for e in range(1, epochs + 1) if e % every == 0 or e == epochs)
        test_images = len(open_dataset(cfg.data.name, cfg.data.root, "test", **cfg.data.options))  # type: ignore[arg-type]
        seconds = (
            epochs * steps_per_epoch * step
            + evaluations * len(trainer.val_set) * per_image  # type: ignore[arg-type]
            + test_images * per_image
        )
        rows.append(
            {
                "dataset": spec.dataset,
                "model": spec.model,
                "step_seconds": step,
                "steps": epochs * steps_per_epoch,
                "eval_image_seconds": per_image,
                "run_minutes": seconds / 60,
            }
        )
        log(
            f"{spec.dataset} / {spec.model}: step {step:.2f} s (batch {batch}, crop {cfg.data.crop_size}), "
            f"{epochs * steps_per_epoch} steps, {per_image:.2f} s per evaluation image "
            f"-> {seconds / 60:.1f} min per seed"
        )
    return rows
