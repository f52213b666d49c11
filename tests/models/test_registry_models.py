"""Behaviour every registered model must have; parametrized over the registry so a new model is tested at once."""

from __future__ import annotations

import pytest
import torch

from convunext import create_model, list_models
from convunext.models import model_arguments
from convunext.utils.flops import count_parameters

MODELS = list_models()


def test_registry_has_the_paper_models() -> None:
    assert {"convunext", "unet", "attention_unet", "unet_plus_plus", "resunet"} <= set(MODELS)
    assert MODELS[0] == "convunext"


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("in_channels, num_classes", [(1, 2), (3, 4)])
@pytest.mark.parametrize("height, width", [(64, 64), (101, 87)])
def test_forward_shape(name: str, in_channels: int, num_classes: int, height: int, width: int) -> None:
    torch.manual_seed(0)
    model = create_model(name, in_channels=in_channels, num_classes=num_classes, width=8).eval()
    with torch.no_grad():
        out = model(torch.randn(2, in_channels, height, width))
    assert isinstance(out, torch.Tensor)
    assert out.shape == (2, num_classes, height, width)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", MODELS)
def test_smallest_supported_size(name: str) -> None:
    model = create_model(name, width=8).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 16, 17)).shape == (1, 2, 16, 17)


@pytest.mark.parametrize("name", MODELS)
def test_backward_gives_finite_gradients_for_every_parameter(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name, width=8).train()
    out = model(torch.randn(2, 3, 48, 40))
    outputs = out if isinstance(out, (list, tuple)) else [out]
    sum(o.square().mean() for o in outputs).backward()
    for param_name, param in model.named_parameters():
        assert param.grad is not None, f"{name}: no gradient for {param_name}"
        assert torch.isfinite(param.grad).all(), f"{name}: non-finite gradient for {param_name}"


@pytest.mark.parametrize("name", MODELS)
def test_eval_output_is_deterministic(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name, width=8).eval()
    x = torch.randn(1, 3, 45, 52)
    with torch.no_grad():
        assert torch.equal(model(x), model(x))


@pytest.mark.parametrize("name", MODELS)
def test_every_model_takes_the_common_arguments(name: str) -> None:
    arguments = model_arguments(name)
    assert {"in_channels", "num_classes", "width"} <= set(arguments)
    assert (arguments["in_channels"], arguments["num_classes"], arguments["width"]) == (3, 2, 32)


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("bad", [{"in_channels": 0}, {"num_classes": -1}, {"width": "wide"}])
def test_bad_argument_values_raise_value_error(name: str, bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        create_model(name, **bad)


def test_unknown_model_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="unknown model 'unet3d'.*convunext.*unet"):
        create_model("unet3d")


def test_unknown_argument_lists_valid_arguments() -> None:
    with pytest.raises(ValueError, match="takes no argument 'kernel'.*kernel_size"):
        create_model("convunext", kernel=7)


@pytest.mark.parametrize(
    "name, in_channels, expected",
    [("convunext", 3, 3_505_730), ("convunext", 1, 3_502_594), ("unet", 3, 4_318_434)],
)
def test_exact_parameter_counts(name: str, in_channels: int, expected: int) -> None:
    assert count_parameters(create_model(name, in_channels=in_channels, num_classes=2)) == expected
