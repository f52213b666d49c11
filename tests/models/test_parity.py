"""ConvUNeXt reproduces the authors' reference model bit for bit (up to float32 rounding)."""

from __future__ import annotations

import pytest
import torch

from convunext import ConvUNeXt, convert_reference_state_dict, create_model, load_reference_state_dict

PARAMETERS = {8: 237_650, 32: 3_505_730}  # the reference code's count at its base widths


def test_fixture_describes_the_model(reference: dict) -> None:
    config = reference["config"]
    assert (config["in_channels"], config["num_classes"]) == (3, 2)
    expected = PARAMETERS[config["base_c"]]
    assert (
        sum(t.numel() for k, t in reference["state_dict"].items() if "running" not in k and "num_batches" not in k)
        == expected
    )
    assert sum(p.numel() for p in create_model("convunext", width=config["base_c"]).parameters()) == expected


@pytest.mark.parametrize("size", ["96x96", "101x87"])
def test_outputs_match_the_reference(reference: dict, size: str) -> None:
    model = create_model("convunext", in_channels=3, num_classes=2, width=reference["config"]["base_c"])
    model = load_reference_state_dict(model, reference["state_dict"])
    model.eval()
    with torch.no_grad():
        out = model(reference["inputs"][f"x_{size}"])
    expected = reference["outputs"][f"y_{size}"]
    assert out.shape == expected.shape
    assert (out - expected).abs().max().item() < 1e-4


def test_conversion_covers_every_key(reference: dict) -> None:
    converted = convert_reference_state_dict(reference["state_dict"])
    assert set(converted) == set(ConvUNeXt(width=reference["config"]["base_c"]).state_dict())
    assert len(converted) == len(reference["state_dict"]) == 265


def test_unknown_reference_key_is_rejected() -> None:
    with pytest.raises(KeyError, match="bogus.weight"):
        convert_reference_state_dict({"bogus.weight": torch.zeros(1)})


def test_loading_into_a_different_architecture_fails(reference: dict) -> None:
    with pytest.raises(RuntimeError):
        load_reference_state_dict(ConvUNeXt(width=16), reference["state_dict"])  # neither 8 nor 32
