"""The training speed switches and what ``auto`` means for each (``train.channels_last``, ``train.fused_kernels``,
``train.tune_malloc``, ``train.fast_validation``).

None changes a result: channels-last is a memory layout, the fused kernels compute the same loss, gradients and
BatchNorm statistics (``SegmentationModel.set_fused_training``), the malloc tuning only keeps freed memory mapped,
and the fast validation path is :func:`~convunext.inference.optimize_for_inference` of the current weights, equal
to the eager model within float32 rounding. ``auto`` turns a switch on where it was measured to be faster
(``benchmarks/results/``, 2-core CPU, batch 4 at 256x256, one training step):

============================  =====================================  =============================
switch                        ConvUNeXt                              UNet
============================  =====================================  =============================
channels-last                 3.86 s -> 2.51 s                       1.58 s -> 1.33 s
+ fused kernels               2.51 s -> 2.01 s                       (no fused form)
+ glibc malloc tuning         1.97 s -> 1.89 s                       1.33 s -> 1.09 s
============================  =====================================  =============================

On CUDA ``auto`` leaves all three off (the fused kernels are sized for CPU caches; channels-last was not measured
there); the fast validation path is on everywhere. ``auto`` also leaves the malloc tuning off in a run that
recomputes its activations (``train.recompute_activations``, the switch for less memory): the tuning keeps every
freed block mapped, and the recomputation's short-lived temporaries fragment the heap it keeps, so such a run
would hold far more than it uses (ConvUNeXt, batch 4 at 480x480: 1,467 MB in use at the peak, a peak RSS of
4,302 MB tuned and 2,421 MB untuned; ``benchmarks/results/``). The malloc tuning is the process's, not the
model's: it is resolved here and applied by the trainer's :func:`convunext.runtime.configure` call.

The fused kernels include ConvUNeXt's compiled CPU kernels (:mod:`convunext.models.layers.compiled`: the depthwise
convolution, the block MLP and the decoder's gate), which the ``kernels`` setting of :mod:`convunext.runtime`
(``CONVUNEXT_KERNELS``) can turn back to PyTorch's operators; :attr:`FastPaths.compiled_kernels` records which of
them the run's float32 CPU steps use (each is built, or found, while the switches are resolved).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from ..errors import ConvUNeXtError
from ..models.blocks import ConvNeXtBlock, GatedUpStage
from ..models.layers import compiled_gate, compiled_mlp, depthwise
from ..models.layers.activations import activation_kind
from ..runtime import runs_on_glibc
from .config import TrainConfig

__all__ = ["FastPaths", "compiled_kernels", "enable_fast_paths", "resolve_fast_paths", "supports_fused_training"]

_LIBRARIES = {"depthwise": depthwise.LIBRARY, "mlp": compiled_mlp.LIBRARY, "gate": compiled_gate.LIBRARY}


@dataclass(frozen=True)
class FastPaths:
    """The resolved switches of one run (each ``True`` = on), and the compiled kernels its training steps run
    (``depthwise``, ``mlp``, ``gate``: part of the fused kernels; recorded in the run's ``summary.json`` with the
    switches)."""

    channels_last: bool
    fused_kernels: bool
    tune_malloc: bool
    fast_validation: bool
    compiled_kernels: tuple[str, ...]

    def apply_to(self, train: TrainConfig) -> None:
        """Record the resolved switches in ``train`` (``"on"`` / ``"off"``), as the run's ``config.yaml`` shows
        them."""
        for name, value in asdict(self).items():
            if name != "compiled_kernels":  # not a switch of its own: the fused kernels and CONVUNEXT_KERNELS
                setattr(train, name, "on" if value else "off")


def supports_fused_training(model: nn.Module) -> bool:
    """Whether any layer of ``model`` has a fused training kernel (ConvUNeXt's blocks and gated decoder)."""
    return any("fused_training" in vars(module) for module in model.modules())


def resolve_fast_paths(train: TrainConfig, model: nn.Module, device: torch.device) -> FastPaths:
    """What each switch of ``train`` means for ``model`` on ``device`` (``auto`` resolved, see the module docstring).

    Raises:
        ConvUNeXtError: ``fused_kernels: on`` for a model without fused kernels, or with ``channels_last: off``
            (the kernels only take effect on channels-last tensors); ``CONVUNEXT_KERNELS`` invalid, or
            ``compiled`` where a compiled kernel cannot be loaded, for a run that would use it.
    """
    cpu = device.type == "cpu"
    fused_capable = supports_fused_training(model)
    channels_last = train.channels_last == "on" or (train.channels_last == "auto" and cpu)
    if train.fused_kernels == "on":
        if not fused_capable:
            raise ConvUNeXtError(
                f"train.fused_kernels=on: {type(model).__name__} has no fused training kernels (ConvUNeXt has); "
                "use auto or off"
            )
        if train.channels_last == "off":
            raise ConvUNeXtError("train.fused_kernels=on needs train.channels_last on or auto (NHWC tensors)")
        channels_last = True
    fused = train.fused_kernels == "on" or (train.fused_kernels == "auto" and cpu and fused_capable and channels_last)
    lean = train.recompute_activations  # asked for memory: the tuning would keep what recomputation frees
    tune = train.tune_malloc == "on" or (train.tune_malloc == "auto" and cpu and runs_on_glibc() and not lean)
    kernels: tuple[str, ...] = ()
    if fused and cpu and not train.cpu_bf16:  # float32 CPU steps: each kernel built or found now
        kernels = tuple(name for name in compiled_kernels(model) if _LIBRARIES[name].for_call() is not None)
    return FastPaths(channels_last, fused, tune, train.fast_validation != "off", kernels)


def compiled_kernels(model: nn.Module) -> tuple[str, ...]:
    """The compiled kernels ``model``'s fused float32 CPU training can run: ``depthwise`` (the depthwise ``k x k``
    convolutions of ConvUNeXt's blocks), ``mlp`` (their MLPs, with GELU or ReLU) and ``gate`` (the skip gate and
    fusion conv of its decoder stages), in that order."""
    blocks = [module for module in model.modules() if isinstance(module, ConvNeXtBlock)]
    uses = {
        "depthwise": any(block.dwconv.compiled_depthwise for block in blocks),
        "mlp": any(activation_kind(block.act) is not None for block in blocks),
        "gate": any(isinstance(module, GatedUpStage) for module in model.modules()),
    }
    return tuple(name for name, used in uses.items() if used)


def enable_fast_paths(model: nn.Module, paths: FastPaths) -> nn.Module:
    """Put ``model`` in the memory format and kernel mode of ``paths``; returns it (``tune_malloc`` is the
    process's: :func:`convunext.runtime.configure`)."""
    if paths.channels_last:
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    if paths.fused_kernels:
        model.set_fused_training(True)  # type: ignore[operator]
    return model
