"""Export a model to ONNX or TorchScript with dynamic batch size, height and width, and verify the export.

>>> from convunext.inference.export import export_model                          # doctest: +SKIP
>>> report = export_model(model, "onnx", "model.onnx")   # writes, reloads with onnxruntime, compares
>>> report.max_abs_diffs                                 # one per verification input size

Both formats take ``N x C x H x W`` float32 images (input ``image``) and return ``N x K x H x W`` logits (output
``logits``), any N, H, W — odd sizes included — down to :func:`min_input_size` pixels per side (64 for ConvUNeXt
with its 7x7 kernels, 16 for the other registry models).

Two things in the eager models depend on the map size through Python ``if`` statements, which an exported graph
cannot keep: the zero padding after each bilinear upsampling (only needed for odd sizes) and ConvUNeXt's
``ReflectConv2d`` falling back to replicate padding on maps of at most 3 pixels. During export the model's
``exportable`` switch makes both take their general forms (:func:`export_friendly`): the padding is always applied
(by an amount computed from the shapes, zero for even sizes) and reflect padding is always used, which is what the
eager model does for every input of at least :func:`min_input_size` pixels per side. The switch is per model and
restored afterwards; nothing global is patched.

ONNX export needs the optional extra ``convunext[onnx]`` (onnx, onnxscript; onnxruntime for verification and
:class:`~convunext.inference.optimize.OnnxRuntimeModule`). TorchScript export uses ``torch.jit.trace``
(deprecated by PyTorch in favour of ``torch.export``, still supported and dependency-free).
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ConvUNeXtError
from ..models.base import switched
from ..models.layers.padding import ReflectConv2d
from ..utils.io import atomic_write_files, prepare_output_file
from ..utils.modules import eval_mode, module_device
from .onnx_runtime import MIN_SIZE_KEY, OnnxRuntimeModule, require_onnxruntime

__all__ = [
    "EXPORT_FORMATS",
    "MIN_OPSET",
    "ExportReport",
    "export_friendly",
    "export_model",
    "export_onnx",
    "export_onnx_bytes",
    "export_torchscript",
    "export_torchscript_bytes",
    "min_input_size",
    "verify_export",
]

EXPORT_FORMATS = ("onnx", "torchscript")
NUM_DOWNSAMPLINGS = 4  # every registry model halves the resolution four times
DEFAULT_OPSET = 18
MIN_OPSET = 18
"""The lowest opset torch's exporter writes; it reaches lower ones only by a conversion that fails for this graph
(and then leaves opset 18 in the file)."""
MAX_SIDE = 65536
INPUT_NAME, OUTPUT_NAME = "image", "logits"


def min_input_size(model: nn.Module) -> int:
    """Smallest image side an exported ``model`` accepts: ``16 * (p + 1)`` with ``p`` the largest reflect padding
    (the bottom map, ``side // 16``, must be larger than ``p``), else 16. ConvUNeXt (7x7 kernels): 64."""
    pads = [m.same_padding for m in model.modules() if isinstance(m, ReflectConv2d)]
    return 2**NUM_DOWNSAMPLINGS * (max(pads) + 1 if pads else 1)


def export_friendly(model: nn.Module) -> contextlib.AbstractContextManager[nn.Module]:
    """Context manager: within it ``model``'s size-dependent branches take their general form (see the module
    docstring); the ``exportable`` switch of each layer is restored on exit. Other models are unaffected."""
    return switched(model, "exportable")


def _in_channels(model: nn.Module) -> int:
    channels = getattr(model, "in_channels", None)
    if isinstance(channels, int):
        return channels
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            return module.in_channels
    raise ConvUNeXtError("cannot tell the model's input channels; it has no in_channels attribute")


def _require_onnx_exporter() -> None:
    missing = []
    for name in ("onnx", "onnxscript"):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise ConvUNeXtError(
            f"ONNX export needs {' and '.join(missing)}, part of the optional extra: pip install 'convunext[onnx]'"
        )


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the exporter's warnings and log lines (e.g. about torchvision not being installed, or the traceback
    onnxscript logs when an opset conversion fails: :func:`_onnx_proto` reports that in one line)."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _check_opset(opset: int) -> None:
    """Refuse an opset below :data:`MIN_OPSET` before exporting."""
    if opset < MIN_OPSET:
        raise ConvUNeXtError(f"ONNX opset {opset}: the exporter writes opset {MIN_OPSET} or later")


def _onnx_proto(model: nn.Module, opset: int) -> Any:
    """The ``onnx.ModelProto`` of ``model`` with dynamic N, H, W and the minimum side in its metadata."""
    _check_opset(opset)
    _require_onnx_exporter()
    from torch.export import Dim

    low = min_input_size(model)
    example = torch.randn(2, _in_channels(model), max(96, low), max(96, low), device=module_device(model))
    dims = {
        0: Dim("batch", min=1, max=4096),
        2: Dim("height", min=low, max=MAX_SIDE),
        3: Dim("width", min=low, max=MAX_SIDE),
    }
    with eval_mode(model), export_friendly(model), _quiet_exporter(), torch.no_grad():
        try:
            program = torch.onnx.export(
                model,
                (example,),
                dynamo=True,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_shapes=(dims,),
                opset_version=opset,
                verbose=False,
            )
        except Exception as error:  # the exporter raises many error types
            raise ConvUNeXtError(f"ONNX export failed: {str(error).strip().splitlines()[0]}") from error
    proto = program.model_proto
    written = next((entry.version for entry in proto.opset_import if entry.domain in ("", "ai.onnx")), None)
    if written != opset:  # the exporter falls back to its own opset when it cannot convert the graph
        raise ConvUNeXtError(
            f"ONNX export to opset {opset} failed: the exporter cannot convert this model to it (it wrote opset "
            f"{written}); choose another opset, e.g. the default {DEFAULT_OPSET}"
        )
    proto.metadata_props.add(key=MIN_SIZE_KEY, value=str(low))
    return proto


def export_onnx_bytes(model: nn.Module, opset: int = DEFAULT_OPSET) -> bytes:
    """``model`` (in eval mode) as a serialized ONNX model with dynamic N, H, W (see the module docstring)."""
    return _onnx_proto(model, opset).SerializeToString()


def export_onnx(model: nn.Module, path: str | Path, opset: int = DEFAULT_OPSET) -> Path:
    """Write ``model`` (in eval mode) to ``path`` as ONNX (opset ``opset``, dynamic N, H, W); returns the path.

    ``path`` is checked before exporting and written atomically; missing parent folders are created.
    """
    path = prepare_output_file(path)
    atomic_write_files([(path, export_onnx_bytes(model, opset))])
    return path


def export_torchscript(model: nn.Module, path: str | Path) -> Path:
    """Write ``model`` (in eval mode) to ``path`` as a traced TorchScript module (dynamic N, H, W); returns the path.

    Load it with ``torch.jit.load(path)``; it needs PyTorch only, not convunext. ``path`` is checked before
    exporting and written atomically; missing parent folders are created.
    """
    path = prepare_output_file(path)
    atomic_write_files([(path, export_torchscript_bytes(model))])
    return path


def export_torchscript_bytes(model: nn.Module) -> bytes:
    """``model`` (in eval mode) as a serialized traced TorchScript module with dynamic N, H, W."""
    low = min_input_size(model)
    example = torch.randn(2, _in_channels(model), max(96, low), max(96, low), device=module_device(model))
    buffer = io.BytesIO()
    with eval_mode(model), export_friendly(model), warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # jit.trace's and jit.save's deprecation and tracer warnings
        traced = torch.jit.trace(model, example, check_trace=False)
        torch.jit.save(traced, buffer, _extra_files={MIN_SIZE_KEY: str(low)})
    return buffer.getvalue()


@dataclass
class ExportReport:
    """What :func:`export_model` did: the file, its format, the smallest accepted side, and per verification
    input shape the largest absolute difference to the eager model (empty when not verified)."""

    path: Path
    format: str
    min_size: int
    shapes: list[tuple[int, ...]] = field(default_factory=list)
    max_abs_diffs: list[float] = field(default_factory=list)
    max_abs_logits: list[float] = field(default_factory=list)


def _verification_shapes(channels: int, low: int) -> list[tuple[int, int, int, int]]:
    """An even square and an odd non-square size (both >= ``low``), batch 1 and 2."""
    side = max(96, low)
    return [(1, channels, side, side), (2, channels, side + 5, side - 9 if side - 9 >= low else side + 3)]


def verify_export(
    model: nn.Module,
    exported: str | Path | bytes,
    fmt: str,
    shapes: Sequence[tuple[int, ...]] | None = None,
    seed: int = 0,
) -> list[tuple[tuple[int, ...], float, float]]:
    """Run the exported model (a file, or its bytes; onnxruntime for ONNX, ``torch.jit.load`` for TorchScript) and
    the eager ``model`` on random inputs; returns ``(shape, max |exported - eager|, max |eager|)`` per shape
    (default: two sizes, one odd).
    """
    shapes = list(shapes) if shapes else _verification_shapes(_in_channels(model), min_input_size(model))
    generator = torch.Generator().manual_seed(seed)
    if fmt == "onnx":
        require_onnxruntime()
        runner: nn.Module = OnnxRuntimeModule(exported if isinstance(exported, bytes) else Path(exported))
    elif fmt == "torchscript":
        source = io.BytesIO(exported) if isinstance(exported, bytes) else str(exported)
        runner = torch.jit.load(source, map_location=module_device(model))
    else:
        raise ConvUNeXtError(f"unknown export format {fmt!r}; choose one of {', '.join(EXPORT_FORMATS)}")
    results = []
    with eval_mode(model), torch.no_grad():
        for shape in shapes:
            x = torch.randn(*shape, generator=generator).to(module_device(model))
            expected = model(x)
            got = runner(x)
            results.append((tuple(shape), (got - expected).abs().max().item(), expected.abs().max().item()))
    return results


def export_model(
    model: nn.Module,
    fmt: str,
    out: str | Path,
    verify: bool = True,
    opset: int = DEFAULT_OPSET,
    tolerance: float = 1e-4,
) -> ExportReport:
    """Export ``model`` (in eval mode; its mode is restored) to ``out`` as ``fmt`` (``"onnx"`` or
    ``"torchscript"``) and, with ``verify``, check the file against the eager model at two input sizes.

    The exported bytes are verified before anything is written, then written atomically: a failed export or
    verification (or a full disk) leaves ``out`` as it was.

    Raises:
        ConvUNeXtError: unknown format, an ONNX opset under :data:`MIN_OPSET` or one the exporter cannot convert
            to, missing optional dependency, an output path that cannot be written (a folder, under a file, no
            permission, disk full), failed export, or a verification difference above ``tolerance`` times the
            largest logit (at least 1).
    """
    if fmt not in EXPORT_FORMATS:
        raise ConvUNeXtError(f"unknown export format {fmt!r}; choose one of {', '.join(EXPORT_FORMATS)}")
    if fmt == "onnx":
        _check_opset(opset)
        _require_onnx_exporter()
        if verify:
            require_onnxruntime()
    path = prepare_output_file(out)
    data = export_onnx_bytes(model, opset) if fmt == "onnx" else export_torchscript_bytes(model)
    report = ExportReport(path=path, format=fmt, min_size=min_input_size(model))
    if verify:  # the bytes, before they are written: a model that fails is never written
        try:
            results = verify_export(model, data, fmt)
        except ConvUNeXtError as error:
            raise ConvUNeXtError(f"{path}: not written, the exported model does not run ({error})") from error
        for shape, diff, scale in results:
            report.shapes.append(shape)
            report.max_abs_diffs.append(diff)
            report.max_abs_logits.append(scale)
            if not diff <= tolerance * max(1.0, scale):
                raise ConvUNeXtError(
                    f"{path}: not written, verification failed at input {'x'.join(map(str, shape))}: max abs "
                    f"difference {diff:.3g} to the eager model (tolerance {tolerance:g} x max(1, {scale:.3g}))"
                )
    atomic_write_files([(path, data)])
    return report
