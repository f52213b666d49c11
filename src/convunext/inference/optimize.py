"""Fast inference: a derived, eval-only copy of a trained model that computes the same logits faster.

``optimize_for_inference(model)`` never touches the training model (it works on a deep copy) and returns an
:class:`InferenceModel`:

* ConvUNeXt with BatchNorm (``fuse=True``, the default): :class:`~convunext.inference.fused.FastConvUNeXt` — BN
  folded, channels-last, every per-pixel chain (the blocks' MLP, the decoder's gate and fusion) computed band by band
  in cache with in-place activations, and no large temporary after the first call (see
  :mod:`convunext.inference.fused` for why that matters under glibc's allocator);
* any other model (or ``fuse=False``): BatchNorms folded into the adjacent convolutions
  (:func:`~convunext.inference.folding.fold_batchnorm`) and channels-last memory format;
* ``compile=True``: the folded channels-last model through ``torch.compile`` (inductor fuses the elementwise work
  itself; the first call compiles, about a minute on a 2-core CPU).

Every path equals the eager model in eval mode within float32 rounding (1e-4 relative), odd sizes included.
:class:`OnnxRuntimeModule` runs an exported ONNX model (:mod:`convunext.inference.export`) behind the same
interface, and :func:`make_backend` picks a path by name (``convunext predict --backend``).
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ConvUNeXtError
from .folding import fold_batchnorm
from .fused import DEFAULT_BAND_ELEMENTS, FastConvUNeXt, fusable

__all__ = [
    "BACKENDS",
    "FastConvUNeXt",
    "InferenceModel",
    "OnnxRuntimeModule",
    "fold_batchnorm",
    "make_backend",
    "optimize_for_inference",
]

BACKENDS = ("eager", "fast", "compile", "onnx")
"""Inference back-ends of :func:`make_backend` (and ``convunext predict --backend``)."""

CHANNELS_LAST = torch.channels_last
MIN_SIZE_KEY = "convunext.min_input_size"
"""Metadata key of exported files holding the smallest image side the graph accepts."""


# ---------------------------------------------------------------------------------------------------------------
# The public entry points


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
        fuse: for ConvUNeXt with BatchNorm on the CPU, use :class:`FastConvUNeXt` (fused per-pixel kernels, BN
            folded and channels-last whatever the two flags above say; its bands are sized for CPU caches).
            Ignored for other models, on GPUs and with ``compile``.
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
    if fuse and not compile and on_cpu and fusable(source):
        fast = FastConvUNeXt(source, band_elements)  # type: ignore[arg-type]
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


# ---------------------------------------------------------------------------------------------------------------
# ONNX Runtime


def _require_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise ConvUNeXtError(
            "the ONNX backend needs onnxruntime, an optional extra: pip install 'convunext[onnx]'"
        ) from None
    return onnxruntime


class OnnxRuntimeModule(nn.Module):
    """Runs an ONNX model (file path or serialized bytes) with ONNX Runtime; takes and returns torch tensors.

    Args:
        model: path of a ``.onnx`` file or its bytes (input ``N x C x H x W`` float32, output the logits).
        num_threads: intra-op threads (default: ``torch.get_num_threads()``).
        providers: ONNX Runtime execution providers (default CPU, or CUDA first when available).

    Raises:
        ConvUNeXtError: onnxruntime is not installed, or the model cannot be loaded.
    """

    def __init__(
        self, model: str | Path | bytes, num_threads: int | None = None, providers: list[str] | None = None
    ) -> None:
        super().__init__()
        ort = _require_onnxruntime()
        options = ort.SessionOptions()
        options.intra_op_num_threads = num_threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if providers is None:
            available = ort.get_available_providers()
            providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        source = model if isinstance(model, bytes) else str(model)
        try:
            self.session = ort.InferenceSession(source, sess_options=options, providers=providers)
        except Exception as error:  # onnxruntime raises its own exception types
            name = "the ONNX model" if isinstance(model, bytes) else str(model)
            raise ConvUNeXtError(f"{name}: ONNX Runtime cannot load it ({str(error).splitlines()[0]})") from None
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[-1].name  # several outputs (deep supervision): the last
        metadata = self.session.get_modelmeta().custom_metadata_map
        self.min_size = int(metadata.get(MIN_SIZE_KEY, 1))

    def forward(self, x: Tensor) -> Tensor:
        """``N x C x H x W`` float tensor -> ``N x K x H x W`` logits (float32, on ``x``'s device).

        Raises:
            ConvUNeXtError: an image side below the exported graph's minimum (64 px for ConvUNeXt).
        """
        if min(x.shape[-2:]) < self.min_size:
            raise ConvUNeXtError(
                f"input {'x'.join(map(str, x.shape))} is too small for the ONNX model: every side must be at least "
                f"{self.min_size} px (use the eager or fast backend for smaller images)"
            )
        array = x.detach().to("cpu", torch.float32).contiguous().numpy()
        (out,) = self.session.run([self.output_name], {self.input_name: array})
        return torch.from_numpy(out).to(x.device)


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
        from .export import export_onnx_bytes

        _require_onnxruntime()
        return OnnxRuntimeModule(export_onnx_bytes(model))
    raise ConvUNeXtError(f"unknown inference backend {backend!r}; choose one of {', '.join(BACKENDS)}")


def timed_first_call(model: nn.Module, x: Tensor) -> float:
    """Seconds taken by the first call of ``model`` on ``x`` (for ``torch.compile``: the compile time)."""
    start = time.perf_counter()
    with torch.no_grad():
        model(x)
    return time.perf_counter() - start
