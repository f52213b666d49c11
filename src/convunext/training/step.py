"""One optimisation step as a run computes it: the forward pass in the run's memory format and under its autocast,
the loss, and the update (scaled backward, gradient clipping, optimiser, schedule, EMA). The trainer's epochs and the
time budget's measurements run this same step, the memory estimate its forward pass and loss."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .config import ExperimentConfig
from .ema import ModelEma
from .losses import SegmentationLoss

__all__ = ["TrainingStep"]

Outputs = Tensor | list[Tensor]
"""A model's training-mode logits, ``N x K x H x W`` (a list of them with deep supervision)."""


class TrainingStep:
    """The training step of ``config`` on ``device``; ``channels_last`` feeds images in that memory format
    (``train.channels_last``, resolved)."""

    def __init__(self, config: ExperimentConfig, device: torch.device, channels_last: bool) -> None:
        train = config.train
        self.config, self.device, self.channels_last = config, device, channels_last
        self.loss_fn = SegmentationLoss(ce_weight=train.loss_ce_weight, dice_weight=train.loss_dice_weight)
        self.amp_dtype = torch.bfloat16 if device.type == "cpu" or torch.cuda.is_bf16_supported() else torch.float16
        self.autocast_enabled = (train.amp and device.type == "cuda") or (device.type == "cpu" and train.cpu_bf16)

    def forward(self, model: nn.Module, images: Tensor) -> Outputs:
        """``model``'s training-mode outputs for ``N x C x H x W`` ``images``, in the run's memory format and
        under its autocast."""
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.autocast_enabled):
            return model(images)

    def loss(self, model: nn.Module, images: Tensor, targets: Tensor) -> Tensor:
        """The training loss of ``model`` on ``images`` and their ``N x H x W`` class ``targets`` (a scalar)."""
        return self.loss_fn(_to_float(self.forward(model, images)), targets)

    def optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        """The run's optimiser over ``model``'s parameters (AdamW with ``optim.lr`` and ``optim.weight_decay``)."""
        return torch.optim.AdamW(
            model.parameters(), lr=self.config.optim.lr, weight_decay=self.config.optim.weight_decay
        )

    def scaler(self) -> torch.amp.GradScaler:
        """The run's gradient scaler: on for float16 autocast only (a pass-through otherwise)."""
        return torch.amp.GradScaler("cuda", enabled=self.autocast_enabled and self.amp_dtype == torch.float16)

    def update(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        loss: Tensor,
        scaler: torch.amp.GradScaler | None = None,
        scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
        ema: ModelEma | None = None,
    ) -> None:
        """Backward pass of ``loss`` (scaled by ``scaler``, gradients clipped to ``train.grad_clip_norm``), then
        the ``optimizer`` step, a ``scheduler`` step and an ``ema`` update of ``model``, each when given."""
        optimizer.zero_grad(set_to_none=True)
        (loss if scaler is None else scaler.scale(loss)).backward()
        clip = self.config.train.grad_clip_norm
        if clip:
            if scaler is not None:
                scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), clip)
        if scaler is None:
            optimizer.step()
        else:
            scaler.step(optimizer)
            scaler.update()
        if scheduler is not None:
            scheduler.step()
        if ema is not None:
            ema.update(model)


def _to_float(outputs: Outputs) -> Outputs:
    if isinstance(outputs, (list, tuple)):
        return [o.float() for o in outputs]
    return outputs.float()
