"""ConvUNeXt: Z. Han, M. Jian, G.-G. Wang, "ConvUNeXt: An efficient convolution neural network for medical
image segmentation", Knowledge-Based Systems 253 (2022) 109512.

A UNet modernised the way ConvNeXt modernised ResNet: 7x7 depthwise blocks with an inverted bottleneck, stride-2
convolutions instead of pooling, a 1:1:3:1 stage compute ratio, a bilinear decoder with an LSTM-inspired gate on
each skip. At the defaults (``in_channels=3, num_classes=2, width=32``) it has **3,505,730** parameters (3,502,594
with one input channel), about 81% of our UNet's 4,318,434, and is layer-for-layer the authors' reference model:
:func:`convert_reference_state_dict` maps the reference code's weights onto it (see ``tests/models/test_parity.py``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from .base import SegmentationModel, check_channels
from .blocks import BlockOptions, DownsampleName, DownStage, GatedUpStage, Stem
from .registry import register_model

__all__ = ["ConvUNeXt", "convert_reference_state_dict", "load_reference_state_dict", "rename_reference_key"]


@register_model("convunext")
class ConvUNeXt(SegmentationModel):
    """ConvUNeXt for 2D segmentation; returns logits of the same spatial size as the input.

    Args:
        in_channels: channels of the input image (3 for RGB, 1 for grey).
        num_classes: output channels, background included (binary segmentation uses 2 and softmax).
        width: base width ``C``; the stages have ``C, 2C, 4C, 8C, 8C`` channels.
        depths: blocks in each of the four down stages; the paper's stage compute ratio is ``(1, 1, 3, 1)``.
        kernel_size: kernel of every block's large convolution and of the stem (paper: 7).
        depthwise: depthwise large convolutions (paper) or dense ones.
        expansion: inverted-bottleneck MLP ratio (paper: 4; 1 = no inverted bottleneck).
        act: ``"gelu"`` (paper) or ``"relu"``.
        norm: ``"bn"`` (paper) or ``"ln"`` for every normalisation layer.
        residual: ``"resnet"`` (paper: activation after the sum) or ``"convnext"`` (plain sum).
        downsample: ``"conv"`` (paper: 2x2 stride-2 convolution) or ``"maxpool"`` (max-pool, then 1x1 conv).
        attention_gate: gate each skip (paper) or concatenate it as is.

    Shape:
        ``N x in_channels x H x W -> N x num_classes x H x W`` for any ``H, W >= 16`` (odd sizes included).
    """

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 2,
        width: int = 32,
        depths: Sequence[int] = (1, 1, 3, 1),
        kernel_size: int = 7,
        depthwise: bool = True,
        expansion: int = 4,
        act: str = "gelu",
        norm: str = "bn",
        residual: str = "resnet",
        downsample: DownsampleName = "conv",
        attention_gate: bool = True,
    ) -> None:
        super().__init__()
        for name, value in (("in_channels", in_channels), ("num_classes", num_classes), ("width", width)):
            check_channels(name, value)
        depths = tuple(depths)
        if len(depths) != 4 or any(not isinstance(d, int) or d < 0 for d in depths):
            raise ValueError(f"depths={depths!r} is not valid; give four non-negative block counts, e.g. (1, 1, 3, 1)")
        options = BlockOptions(kernel_size, depthwise, expansion, act, norm, residual)  # type: ignore[arg-type]
        c = width
        self.in_channels, self.num_classes = in_channels, num_classes
        self.stem = Stem(in_channels, c, options)
        self.down1 = DownStage(c, 2 * c, depths[0], options, downsample)
        self.down2 = DownStage(2 * c, 4 * c, depths[1], options, downsample)
        self.down3 = DownStage(4 * c, 8 * c, depths[2], options, downsample)
        self.down4 = DownStage(8 * c, 8 * c, depths[3], options, downsample)
        self.up1 = GatedUpStage(16 * c, 4 * c, options, attention_gate)
        self.up2 = GatedUpStage(8 * c, 2 * c, options, attention_gate)
        self.up3 = GatedUpStage(4 * c, c, options, attention_gate)
        self.up4 = GatedUpStage(2 * c, c, options, attention_gate)
        self.head = nn.Conv2d(c, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``N x in_channels x H x W`` image batch -> ``N x num_classes x H x W`` logits."""
        x1 = self.stem(x)
        x2 = self.down1(x1)
        x3 = self.down2(x2)
        x4 = self.down3(x3)
        x = self.down4(x4)
        x = self.up1(x, x4)
        x = self.up2(x, x3)
        x = self.up3(x, x2)
        x = self.up4(x, x1)
        return self.head(x)

    def reparameterize(self) -> None:
        """Called by :func:`~convunext.models.fast.reparameterize_model` once the stages are in their fast form:
        the 1x1 head moves into the last block's bands (computed while each band is in cache) and becomes
        ``nn.Identity``, so :meth:`forward` is unchanged."""
        if isinstance(self.head, nn.Conv2d) and callable(getattr(self.up4, "attach_head", None)):
            self.up4.attach_head(self.head)
            self.head = nn.Identity()


# Reference-code key prefixes -> ours. Within blocks the names (dwconv, norm1, pwconv1, pwconv2, norm2) coincide.
_REFERENCE_RENAMES: tuple[tuple[str, str], ...] = (
    ("in_conv.0.", "stem.conv."),
    ("in_conv.1.", "stem.norm."),
    ("in_conv.3.", "stem.block."),
    ("out_conv.0.", "head."),
)
_REFERENCE_UP_RENAMES: tuple[tuple[str, str], ...] = (
    ("norm.", "norm."),
    ("gate.", "gate.gate."),
    ("linear1.", "gate.forget."),
    ("linear2.", "gate.out."),
    ("conv1x1.", "fuse."),
    ("conv.0.", "block."),
)


def rename_reference_key(key: str) -> str:
    """The key of this package's ConvUNeXt holding the authors' reference ``state_dict`` entry ``key``."""
    for old, new in _REFERENCE_RENAMES:
        if key.startswith(old):
            return new + key[len(old) :]
    stage, _, rest = key.partition(".")
    if stage.startswith("down"):
        head, _, tail = rest.partition(".")
        if head == "0":  # downN.0 = BatchNorm, downN.1 = the 2x2 stride-2 conv, downN.2.. = blocks
            return f"{stage}.norm.{tail}"
        if head == "1":
            return f"{stage}.reduce.{tail}"
        return f"{stage}.blocks.{int(head) - 2}.{tail}"
    if stage.startswith("up"):
        for old, new in _REFERENCE_UP_RENAMES:
            if rest.startswith(old):
                return f"{stage}.{new}{rest[len(old) :]}"
    raise KeyError(f"unexpected key {key!r} in a reference ConvUNeXt state_dict")


def convert_reference_state_dict(reference: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Translate a state_dict of the authors' reference ConvUNeXt into this package's key names and shapes.

    The reference code names its layers ``in_conv``, ``downN.{0,1,2..}``, ``upN.{norm,gate,linear1,linear2,
    conv1x1,conv.0}`` and ``out_conv.0``, and implements the 1x1 layers inside blocks and gates as ``nn.Linear``
    (weights ``out x in``); here they are 1x1 ``Conv2d`` (weights ``out x in x 1 x 1``), which hold the same numbers.

    Args:
        reference: the reference model's ``state_dict()`` (e.g. loaded with ``torch.load(path, weights_only=True)``).

    Returns:
        A state_dict that :meth:`ConvUNeXt.load_state_dict` accepts with ``strict=True``.

    Raises:
        KeyError: on a key the reference model does not have.
    """
    converted: dict[str, torch.Tensor] = {}
    for key, tensor in reference.items():
        new_key = rename_reference_key(key)
        if tensor.ndim == 2:  # nn.Linear weight -> 1x1 conv weight
            tensor = tensor[:, :, None, None]
        converted[new_key] = tensor
    return converted


def load_reference_state_dict(model: ConvUNeXt, reference: Mapping[str, torch.Tensor]) -> ConvUNeXt:
    """Load the authors' reference weights into ``model`` (strictly: every key must match) and return it.

    ``model`` must have the reference architecture, e.g. ``create_model("convunext", in_channels=3, num_classes=2)``.
    """
    model.load_state_dict(convert_reference_state_dict(reference), strict=True)
    return model
