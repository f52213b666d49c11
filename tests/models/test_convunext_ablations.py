"""Each ablation knob of the paper's Section 3 changes the network in the expected direction."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from convunext import ConvUNeXt
from convunext.models.blocks import BlockOptions, ConvNeXtBlock, LayerNorm2d, ReflectConv2d
from convunext.utils.flops import count_parameters

DEFAULT = count_parameters(ConvUNeXt())


def params(**kwargs: object) -> int:
    return count_parameters(ConvUNeXt(**kwargs))


@pytest.mark.parametrize(
    "smaller, larger",
    [
        ({"kernel_size": 3}, {"kernel_size": 7}),
        ({"kernel_size": 5}, {"kernel_size": 9}),
        ({}, {"depthwise": False}),
        ({"expansion": 1}, {}),
        ({"attention_gate": False}, {}),
        ({"depths": (1, 1, 1, 1)}, {}),
        ({"downsample": "maxpool"}, {}),
    ],
)
def test_knob_moves_parameter_count(smaller: dict, larger: dict) -> None:
    assert params(**smaller) < params(**larger)


def test_defaults_are_the_papers_model() -> None:
    assert DEFAULT == 3_505_730
    model = ConvUNeXt()
    assert [len(stage.blocks) for stage in (model.down1, model.down2, model.down3, model.down4)] == [1, 1, 3, 1]
    block = model.down1.blocks[0]
    assert isinstance(block.dwconv, ReflectConv2d) and isinstance(model.stem.conv, ReflectConv2d)
    assert block.dwconv.kernel_size == (7, 7) and block.dwconv.groups == 64 and block.dwconv.same_padding == 3
    assert block.pwconv1.out_channels == 4 * 64
    assert isinstance(block.act, nn.GELU) and isinstance(block.norm1, nn.BatchNorm2d)
    assert isinstance(model.down1.reduce, nn.Conv2d) and model.down1.reduce.stride == (2, 2)
    assert model.up1.gate is not None


def test_activation_and_norm_knobs_swap_layers() -> None:
    model = ConvUNeXt(act="relu", norm="ln", width=8)
    assert not any(isinstance(m, (nn.GELU, nn.BatchNorm2d)) for m in model.modules())
    assert any(isinstance(m, nn.ReLU) for m in model.modules())
    assert any(isinstance(m, LayerNorm2d) for m in model.modules())
    # LayerNorm and BatchNorm have the same affine parameter count, so the total is unchanged.
    assert count_parameters(model) == count_parameters(ConvUNeXt(width=8))


def test_residual_style_moves_the_activation() -> None:
    torch.manual_seed(0)
    x = torch.randn(1, 8, 12, 12)
    resnet_style = ConvNeXtBlock(8).eval()
    convnext_style = ConvNeXtBlock(8, BlockOptions(residual="convnext")).eval()
    convnext_style.load_state_dict(resnet_style.state_dict())
    with torch.no_grad():
        plain = convnext_style(x)
        activated = resnet_style(x)
    assert torch.allclose(nn.functional.gelu(plain), activated, atol=1e-6)
    assert (plain < 0).any()  # the plain sum is not activated


def test_maxpool_downsampling_uses_pooling() -> None:
    model = ConvUNeXt(downsample="maxpool", width=8)
    assert any(isinstance(m, nn.MaxPool2d) for m in model.modules())
    assert not any(isinstance(m, nn.MaxPool2d) for m in ConvUNeXt(width=8).modules())


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"kernel_size": 4}, "kernel_size=4"),
        ({"act": "swish"}, "act='swish'.*'gelu'"),
        ({"norm": "gn"}, "norm='gn'"),
        ({"residual": "none"}, "residual='none'"),
        ({"downsample": "avgpool"}, "downsample='avgpool'"),
        ({"depths": (1, 1, 3)}, "depths="),
        ({"expansion": 0}, "expansion=0"),
    ],
)
def test_bad_knob_values_are_named(bad: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ConvUNeXt(**bad)


def test_reflect_conv_matches_torch_reflect_padding_and_survives_tiny_maps() -> None:
    torch.manual_seed(0)
    ours = ReflectConv2d(4, 4, 7, groups=4)
    reference = nn.Conv2d(4, 4, 7, padding=3, padding_mode="reflect", groups=4)
    reference.load_state_dict(ours.state_dict())
    x = torch.randn(1, 4, 9, 11)
    assert torch.allclose(ours(x), reference(x), atol=1e-6)
    assert ours(torch.randn(1, 4, 2, 3)).shape == (1, 4, 2, 3)  # torch's reflect padding raises here
