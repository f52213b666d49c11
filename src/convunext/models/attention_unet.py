"""Attention UNet: O. Oktay et al., "Attention U-Net: Learning where to look for the pancreas", MIDL 2018.

The bilinear UNet of :mod:`.unet` (same encoder, widths and decoder; ``C = width``) with an additive attention gate
(:class:`AdditiveAttentionGate`) on every skip. As in the common PyTorch implementations the gate acts after
upsampling, so the gating signal ``g`` (the upsampled deep features) and the skip ``x`` share one resolution::

    alpha = sigmoid(BN(psi(relu(BN(W_g g) + BN(W_x x)))))     skip <- alpha * skip

with ``W_g``, ``W_x`` 1x1 convolutions to ``skip_channels // 2`` channels and ``psi`` a 1x1 convolution to one.

Layer plan: encoder DoubleConv ``in -> C``, then max-pool + DoubleConv ``C -> 2C -> 4C -> 8C -> 8C``; decoder
stages (gate on the ``8C, 4C, 2C, C`` skip with ``4C, 2C, C, C/2`` intermediate channels, then concat and
``DoubleConv(in, out, mid=in // 2)``) ``16C -> 4C``, ``8C -> 2C``, ``4C -> C``, ``2C -> C``; head 1x1 ``C -> classes``.

At the defaults (``in_channels=3, num_classes=2, width=32``) it has **4,407,166** parameters (UNet's 4,318,434
plus 88,732 in the four gates).
"""

from __future__ import annotations

from .registry import register_model
from .unet import UNetBase
from .unet_blocks import AdditiveAttentionGate

__all__ = ["AttentionUNet", "attention_gate"]


def attention_gate(gate_channels: int, skip_channels: int) -> AdditiveAttentionGate:
    """The gate of one decoder stage: intermediate width ``skip_channels // 2`` (at least 1)."""
    return AdditiveAttentionGate(gate_channels, skip_channels, max(1, skip_channels // 2))


@register_model("attention_unet")
class AttentionUNet(UNetBase):
    """Attention UNet (Oktay et al. 2018): the bilinear UNet with additive attention gates on the skips.

    Args:
        in_channels: channels of the input image (3 for RGB, 1 for grey).
        num_classes: output channels, background included (binary segmentation uses 2 and softmax).
        width: base width ``C``; the encoder has ``C, 2C, 4C, 8C, 8C`` channels.

    Each decoder stage's gate is ``self.ups[i].gate``; its ``coefficients(g, x)`` gives the ``N x 1 x H x W``
    attention map in ``[0, 1]``.

    Shape:
        ``N x in_channels x H x W -> N x num_classes x H x W`` for any ``H, W >= 16`` (odd sizes included).
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 2, width: int = 32) -> None:
        super().__init__(in_channels, num_classes, width, gate=attention_gate)
