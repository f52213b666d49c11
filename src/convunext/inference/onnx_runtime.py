"""Running exported ONNX models with ONNX Runtime behind a torch ``nn.Module`` interface.

onnxruntime is an optional extra (``pip install 'convunext[onnx]'``); :func:`require_onnxruntime` is the one
place that imports it and says so in one line when it is missing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ConvUNeXtError

__all__ = ["MIN_SIZE_KEY", "OnnxRuntimeModule", "require_onnxruntime"]

MIN_SIZE_KEY = "convunext.min_input_size"
"""Metadata key of exported files holding the smallest image side the graph accepts."""


def require_onnxruntime() -> Any:
    """The ``onnxruntime`` module.

    Raises:
        ConvUNeXtError: (one line) it is not installed.
    """
    try:
        import onnxruntime
    except ImportError:
        raise ConvUNeXtError(
            "ONNX inference and verification need onnxruntime, an optional extra: pip install 'convunext[onnx]'"
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
        ort = require_onnxruntime()
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
