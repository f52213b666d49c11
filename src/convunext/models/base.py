"""The base class of the registry models: the switches that change how their layers compute, as methods.

A switch is a plain attribute that the layers supporting it set in ``__init__`` and read in ``forward``:

* ``grad_checkpointing`` — every repeated unit (ConvUNeXt's stages — stem, encoder and decoder stages, each with
  its blocks —, DoubleConv, ResUNet's unit) recomputes its activations in backward
  (:func:`~convunext.models.layers.recompute.maybe_recompute`; a unit inside one that recomputes runs plainly);
* ``fused_training`` (with ``band_elements``) — ConvUNeXt's block MLP and gated fusion run the banded training
  kernels (:mod:`convunext.models.layers.mlp`, :mod:`~convunext.models.layers.gate`) on channels-last inputs, and
  in float32 CPU training its blocks' depthwise convolutions and MLPs and its decoder's gates the compiled kernels
  (:mod:`convunext.models.layers.compiled`);
* ``exportable`` — the shape-dependent branches take their general form for graph export (reflect padding
  without the replicate fallback, the zero padding after upsampling always applied), and the blocks run plain
  operators whatever ``fused_training`` says.

Nothing is patched: a ``copy.deepcopy`` of a switched model is switched the same way and runs on its own weights,
and switching one model never affects another (the switches are thread-safe in that sense; a model is switched
for every thread that runs it).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn

__all__ = ["SegmentationModel", "check_channels", "set_switch", "switched"]


def check_channels(name: str, value: int) -> None:
    """Reject a non-positive or non-integer channel count with a ``ValueError`` naming the argument."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name}={value!r} is not valid; use a positive integer")


def _supporting(model: nn.Module, switch: str) -> list[nn.Module]:
    """The modules of ``model`` that read ``switch``."""
    return [module for module in model.modules() if switch in vars(module)]


def set_switch(model: nn.Module, switch: str, enable: bool, **settings: object) -> int:
    """Set ``switch`` to ``enable`` (and the attributes ``settings``) on every module of ``model`` that reads it;
    returns how many modules changed state."""
    changed = 0
    for module in _supporting(model, switch):
        changed += getattr(module, switch) != enable
        setattr(module, switch, enable)
        for name, value in settings.items():
            setattr(module, name, value)
    return changed


@contextlib.contextmanager
def switched(model: nn.Module, switch: str, enable: bool = True) -> Iterator[nn.Module]:
    """``model`` with ``switch`` set to ``enable`` for the duration; every module's previous state is restored."""
    modules = _supporting(model, switch)
    previous = [getattr(module, switch) for module in modules]
    for module in modules:
        setattr(module, switch, enable)
    try:
        yield model
    finally:
        for module, value in zip(modules, previous):
            setattr(module, switch, value)


class SegmentationModel(nn.Module):
    """Base of every registry model: ``N x in_channels x H x W -> N x num_classes x H x W`` logits, plus the
    switches of the module docstring. Each ``set_*`` method returns how many layers changed state."""

    def set_grad_checkpointing(self, enable: bool = True) -> int:
        """Recompute each repeated unit's activations in backward instead of storing them (timm's name for
        activation checkpointing; training mode with gradients only). ConvUNeXt's 7x7 kernels and 4x MLP make its
        activations large: it recomputes whole stages (the stem, each encoder stage with its downsampling, each
        decoder stage with its upsampling and gate), so it stores little more than the stage outputs, for about
        one extra forward pass (batch 4 at 480x480: 1,467 MB in use at the peak of a step, against 3,831 MB without
        recomputation and UNet's 2,630). Outputs, gradients and BN running statistics are unchanged (the statistics
        are updated once)."""
        return set_switch(self, "grad_checkpointing", enable)

    def set_fused_training(self, enable: bool = True, band_elements: int | None = None) -> int:
        """Run ConvUNeXt's block MLPs and gated fusions through the banded training kernels on channels-last
        inputs (:mod:`convunext.models.layers.mlp`, :mod:`~convunext.models.layers.gate`; other models have none),
        and, on channels-last float32 CPU inputs whose gradient is recorded, its blocks' depthwise convolutions and
        MLPs and its decoder's gates through the compiled kernels (:mod:`convunext.models.layers.depthwise`, whose
        weight gradient ran 9-13x as fast as oneDNN's side by side, :mod:`~convunext.models.layers.compiled_mlp` and
        :mod:`~convunext.models.layers.compiled_gate`; ``CONVUNEXT_KERNELS=reference`` keeps PyTorch's operators).

        The MLP and the gated fusion dominate ConvUNeXt's activation memory. Their kernels are custom autograd
        functions on bands of pixels whose forward saves only the inputs and whose backward recomputes each
        band's intermediates in cache: per full-resolution block of a batch of 4 at 256x256, four 134 MB
        temporaries fewer. Same loss, gradients and BN statistics; weights and ``state_dict`` are untouched. The
        kernels take effect on channels-last tensors (``model.to(memory_format=torch.channels_last)``), NCHW
        inputs take the plain path, and they compose with :meth:`set_grad_checkpointing`.

        Args:
            enable: switch the kernels on (or off).
            band_elements: values in one band's widest temporary (default
                :data:`~convunext.models.layers.DEFAULT_BAND_ELEMENTS`).
        """
        settings = {} if band_elements is None else {"band_elements": band_elements}
        return set_switch(self, "fused_training", enable, **settings)

    def set_exportable(self, enable: bool = True) -> int:
        """Make the shape-dependent branches take their general form for graph export (the model then needs
        ``H, W >= convunext.inference.export.min_input_size(model)``)."""
        return set_switch(self, "exportable", enable)

    def export_mode(self) -> contextlib.AbstractContextManager[nn.Module]:
        """Context manager: :meth:`set_exportable` for the duration, the previous state restored after."""
        return switched(self, "exportable")
