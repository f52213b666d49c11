"""The paper's four baselines: exact sizes, the ResUNet ratio, UNet++ deep supervision, attention gates, arguments.

Shape, gradient and determinism checks for every model are in ``test_registry_models.py``.
"""

from __future__ import annotations

import pytest
import torch

from convunext import create_model, list_models
from convunext.models import AttentionUNet, ResUNet, UNet, UNetPlusPlus
from convunext.models.unet_blocks import AdditiveAttentionGate, UNetEncoder
from convunext.utils.flops import count_parameters

CONVUNEXT_PARAMS = 3_505_730


@pytest.mark.parametrize(
    "name, kwargs, expected",
    [
        ("unet", {}, 4_318_434),
        ("attention_unet", {}, 4_407_166),
        ("unet_plus_plus", {}, 6_209_570),
        ("unet_plus_plus", {"deep_supervision": True}, 6_209_768),
        ("resunet", {}, 7_502_338),
    ],
)
def test_baseline_parameter_counts_at_the_defaults(name: str, kwargs: dict[str, object], expected: int) -> None:
    assert count_parameters(create_model(name, in_channels=3, num_classes=2, width=32, **kwargs)) == expected


def test_resunet_ratio_matches_the_paper_and_it_is_the_largest_model() -> None:
    params = {name: count_parameters(create_model(name)) for name in list_models()}
    assert params["convunext"] == CONVUNEXT_PARAMS
    assert 0.44 <= CONVUNEXT_PARAMS / params["resunet"] <= 0.48  # the paper: ~46%
    assert max(params, key=params.__getitem__) == "resunet"
    assert 0.78 <= CONVUNEXT_PARAMS / params["unet"] <= 0.84  # the paper: ~80%


def test_resunet_depths_change_the_encoder() -> None:
    assert count_parameters(ResUNet(depths=(1, 1, 1, 1))) < count_parameters(ResUNet())
    assert [len(stage) - 1 for stage in ResUNet(width=8, depths=(2, 1, 3, 1)).encoder.downs] == [2, 1, 3, 1]


def test_unet_family_shares_one_encoder() -> None:
    def encoder_shapes(model: torch.nn.Module) -> dict[str, torch.Size]:
        return {k: v.shape for k, v in model.state_dict().items() if k.startswith("encoder.")}

    reference = encoder_shapes(UNet(width=8))
    assert reference
    assert encoder_shapes(AttentionUNet(width=8)) == reference
    assert encoder_shapes(UNetPlusPlus(width=8)) == reference


def test_encoder_floors_odd_sizes() -> None:
    features = UNetEncoder(3, (4, 8, 16, 32, 32))(torch.randn(1, 3, 101, 87))
    assert [tuple(f.shape[1:]) for f in features] == [(4, 101, 87), (8, 50, 43), (16, 25, 21), (32, 12, 10), (32, 6, 5)]


@pytest.mark.parametrize("size", [(48, 48), (33, 47)])
def test_unet_plus_plus_deep_supervision_returns_four_heads_in_training(size: tuple[int, int]) -> None:
    torch.manual_seed(0)
    model = UNetPlusPlus(width=8, num_classes=3, deep_supervision=True).train()
    x = torch.randn(2, 3, *size)
    outputs = model(x)
    assert isinstance(outputs, list) and len(outputs) == 4
    assert all(isinstance(o, torch.Tensor) and o.shape == (2, 3, *size) for o in outputs)
    # The last entry is the main output: the same as a model without deep supervision sharing the weights.
    plain = UNetPlusPlus(width=8, num_classes=3).train()
    missing, unexpected = plain.load_state_dict(model.state_dict(), strict=False)
    assert not missing and all(k.startswith("aux_heads.") for k in unexpected)
    assert torch.allclose(plain(x), outputs[-1], atol=1e-6)


def test_unet_plus_plus_eval_mode_returns_only_the_main_output() -> None:
    model = UNetPlusPlus(width=8, deep_supervision=True).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 32, 40))
    assert isinstance(out, torch.Tensor) and out.shape == (1, 2, 32, 40)


def test_unet_plus_plus_without_deep_supervision_returns_a_tensor_in_training() -> None:
    out = UNetPlusPlus(width=8).train()(torch.randn(2, 3, 32, 32))
    assert isinstance(out, torch.Tensor) and out.shape == (2, 2, 32, 32)


def test_attention_unet_gates_every_skip_and_unet_none() -> None:
    assert all(isinstance(up.gate, AdditiveAttentionGate) for up in AttentionUNet(width=8).ups)
    assert len(AttentionUNet(width=8).ups) == 4
    assert all(up.gate is None for up in UNet(width=8).ups)


def test_attention_coefficients_lie_in_unit_interval_and_scale_the_skip() -> None:
    torch.manual_seed(0)
    gate = AdditiveAttentionGate(gate_channels=6, skip_channels=4, inter_channels=2).eval()
    g, x = 5 * torch.randn(2, 6, 9, 11), 5 * torch.randn(2, 4, 9, 11)
    with torch.no_grad():
        alpha = gate.coefficients(g, x)
        out = gate(g, x)
    assert alpha.shape == (2, 1, 9, 11)
    assert alpha.min() >= 0 and alpha.max() <= 1
    assert torch.allclose(out, alpha * x)


@pytest.mark.parametrize("cls", [UNet, AttentionUNet, UNetPlusPlus, ResUNet])
@pytest.mark.parametrize(
    "bad", [{"in_channels": 0}, {"num_classes": 1.5}, {"width": -8}, {"width": True}, {"in_channels": None}]
)
def test_bad_channel_arguments_raise_value_error(cls: type[torch.nn.Module], bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        cls(**bad)


@pytest.mark.parametrize(
    "cls, bad",
    [
        (UNetPlusPlus, {"deep_supervision": "yes"}),
        (ResUNet, {"depths": (1, 1, 3)}),
        (ResUNet, {"depths": (1, 0, 3, 1)}),
        (ResUNet, {"depths": (1, 1, 2.5, 1)}),
    ],
)
def test_bad_model_specific_arguments_raise_value_error(cls: type[torch.nn.Module], bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        cls(**bad)
