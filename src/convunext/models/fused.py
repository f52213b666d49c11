"""Memory-lean fused training kernels for ConvUNeXt's per-pixel layers (opt-in, results unchanged).

Two per-pixel chains dominate ConvUNeXt's activation memory: the blocks' inverted-bottleneck MLP and the decoder's
gated skip fusion. With the ``fused_training`` switch on, the blocks compute them with the banded ops of
:mod:`convunext.models.layers.mlp` and :mod:`convunext.models.layers.gate`: custom autograd functions on bands of
pixels of channels-last tensors, whose forward saves only the inputs and whose backward recomputes each band's
intermediates in cache. Per full-resolution block of a batch of 4 at 256x256 that removes four 134 MB tensors,
each a fresh ``mmap`` + page faults under glibc's default allocator (3.3 GB of faults per training step for the
whole network). The kernels take effect on channels-last tensors (``train.channels_last``) and compose with
activation checkpointing.
"""

from __future__ import annotations

from torch import nn

from .base import set_fused_training_switch
from .layers.banding import DEFAULT_BAND_ELEMENTS

__all__ = ["DEFAULT_BAND_ELEMENTS", "enable_fused_training"]


def enable_fused_training(model: nn.Module, enabled: bool = True, band_elements: int | None = None) -> int:
    """Switch every ConvNeXt block (MLP) and decoder stage (gate and fusion) of ``model`` to the fused kernels
    (or back with ``enabled=False``); returns how many modules changed. Weights, state_dict and results are
    unchanged; the kernels take effect on channels-last tensors (``model.to(memory_format=torch.channels_last)``).
    ``band_elements``: values in one band's widest temporary (default :data:`DEFAULT_BAND_ELEMENTS`).

    The same as ``model.set_fused_training(enabled, band_elements)`` on a registry model.
    """
    return set_fused_training_switch(model, enabled, band_elements)
