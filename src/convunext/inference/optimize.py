"""Fast inference: a derived, eval-only copy of a trained model that computes the same logits faster.

``optimize_for_inference(model)`` never touches the training model (it works on a deep copy) and returns an
:class:`InferenceModel`:

* ConvUNeXt with BatchNorm (``fuse=True``, the default): every stage replaced by its fast form
  (:func:`~convunext.models.fast.reparameterize_model`) — BN folded, channels-last, every per-pixel chain (the
  blocks' MLP, the decoder's gate and fusion) computed band by band in cache with in-place activations, and no
  large temporary after the first call (see :mod:`convunext.models.fast` for why that matters under glibc's
  allocator). The model's own ``forward`` wires the fast stages;
* any other model (or ``fuse=False``): BatchNorms folded into the adjacent convolutions
  (:func:`~convunext.inference.folding.fold_batchnorm`) and channels-last memory format;
* ``compile=True``: the folded channels-last model through ``torch.compile`` (inductor fuses the elementwise work
  itself; the first call compiles, about a minute on a 2-core CPU).

Every path equals the eager model in eval mode within float32 rounding (1e-4 relative), odd sizes included.
:class:`~convunext.inference.onnx_runtime.OnnxRuntimeModule` runs an exported ONNX model
(:mod:`convunext.inference.export`) behind the same interface, and :func:`make_backend` picks a path by name
(``convunext predict --backend``).
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from ..errors import ConvUNeXtError
from ..models.fast import fast_form_problems, reparameterize_model
from ..models.layers.banding import DEFAULT_BAND_ELEMENTS
from .export import export_onnx_bytes
from .folding import fold_batchnorm
from .onnx_runtime import OnnxRuntimeModule, require_onnxruntime

__all__ = [
    "BACKENDS",
    "InferenceModel",
    "OnnxRuntimeModule",
    "fold_batchnorm",
    "make_backend",
    "optimize_for_inference",
]

BACKENDS = ("eager", "fast", "compile", "onnx")
"""Inference back-ends of :func:`make_backend` (and ``convunext predict --backend``)."""

CHANNELS_LAST = torch.channels_last


class InferenceModel(nn.Module):
    """An eval-only inference module: converts the input's memory format, runs ``module`` without autograd and
    returns contiguous ``N x K x H x W`` logits.

    Attributes:
        module: the optimised network (fused, folded, or compiled).
        description: what was applied, e.g. ``"fused+bn-folded+channels-last"``.
    """

    def __init__(self, module: nn.Module, channels_last: bool, description: str) -> None:
        super().__init__()
        self.module = module
        self.channels_last = channels_last
        self.description = description
        self.eval()

    def train(self, mode: bool = True) -> InferenceModel:
        """Always stays in eval mode (the folded BatchNorms have no training behaviour)."""
        return super().train(False)

    def forward(self, x: Tensor) -> Tensor:
        """``N x C x H x W`` -> ``N x K x H x W`` logits."""
        if self.channels_last:
            x = x.contiguous(memory_format=CHANNELS_LAST)
        with torch.no_grad():
            out = self.module(x)
        return out.contiguous()


def optimize_for_inference(
    model: nn.Module,
    *,
    channels_last: bool = True,
    fold_bn: bool = True,
    fuse: bool = True,
    compile: bool = False,
    band_elements: int = DEFAULT_BAND_ELEMENTS,
) -> InferenceModel:
    """A new eval-only model computing ``model``'s eval-mode logits faster; ``model`` itself is not modified.

    Args:
        model: any registry model (trained or not), in any mode.
        channels_last: run in NHWC memory format (oneDNN's fast path on CPU).
        fold_bn: fold BatchNorms into adjacent convolutions (:func:`fold_batchnorm`).
        fuse: on the CPU, replace every stage that has a fast form (ConvUNeXt with BatchNorm) by it (fused
            per-pixel kernels, BN folded and channels-last whatever the two flags above say; its bands are sized
            for CPU caches). Models with a stage whose options have no fast form (e.g. LayerNorm) take the folded
            path; ignored on GPUs and with ``compile``.
        compile: ``torch.compile`` the (folded, channels-last) model; the first call compiles (slow).
        band_elements: size of the fused kernels' band buffers, in values.

    Returns:
        An :class:`InferenceModel`: ``N x C x H x W -> N x K x H x W`` logits equal to ``model.eval()(x)`` within
        float32 rounding (1e-4 relative), for any size the source model accepts, odd sizes included.
    """
    source = copy.deepcopy(model).eval()
    for p in source.parameters():
        p.requires_grad_(False)
    on_cpu = all(t.device.type == "cpu" for t in source.parameters())
    if fuse and not compile and on_cpu and not fast_form_problems(source):
        fast = reparameterize_model(source, band_elements, inplace=True)
        return InferenceModel(fast, True, "fused+bn-folded+channels-last")
    parts = []
    if fold_bn and fold_batchnorm(source):
        parts.append("bn-folded")
    if channels_last:
        source = source.to(memory_format=CHANNELS_LAST)  # type: ignore[call-overload]
        parts.append("channels-last")
    module: nn.Module = source
    if compile:
        module = torch.compile(source)  # type: ignore[assignment]
        parts.insert(0, "compiled")
    return InferenceModel(module, channels_last, "+".join(parts) or "eager")


def make_backend(model: nn.Module, backend: str = "eager") -> nn.Module:
    """``model`` prepared for inference by ``backend``: ``"eager"`` (the model itself), ``"fast"``
    (:func:`optimize_for_inference`), ``"compile"`` (the same plus ``torch.compile``) or ``"onnx"`` (exported
    in memory and run by :class:`OnnxRuntimeModule`). The source model is never modified.

    Raises:
        ConvUNeXtError: unknown backend, or onnx/onnxruntime missing for ``"onnx"``.
    """
    if backend == "eager":
        return model
    if backend == "fast":
        return optimize_for_inference(model)
    if backend == "compile":
        return optimize_for_inference(model, compile=True)
    if backend == "onnx":
        require_onnxruntime()
        return OnnxRuntimeModule(export_onnx_bytes(model))
    raise ConvUNeXtError(f"unknown inference backend {backend!r}; choose one of {', '.join(BACKENDS)}")
