"""Small helpers on ``nn.Module`` shared by inference and export."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode for the duration of the block; its previous mode is restored on any exit."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def module_device(model: nn.Module, fallback: torch.device | str = "cpu") -> torch.device:
    """The device of ``model``'s first parameter (else first buffer), or ``fallback`` for a module without tensors."""
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device(fallback)
