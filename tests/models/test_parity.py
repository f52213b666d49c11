"""ConvUNeXt reproduces the authors' reference model bit for bit (up to float32 rounding)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from convunext import ConvUNeXt, convert_reference_state_dict, create_model, load_reference_state_dict

FIXTURE = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures" / "official_convunext_parity.pt"


@pytest.fixture(scope="module")
def reference() -> dict:
    if not FIXTURE.exists():
        pytest.fail(f"parity fixture missing: {FIXTURE}")
    return torch.load(FIXTURE, weights_only=True)


def test_fixture_describes_the_default_model(reference: dict) -> None:
    config = reference["config"]
    assert (config["in_channels"], config["num_classes"], config["base_c"]) == (3, 2, 32)
    assert sum(
        t.numel() for k, t in reference["state_dict"].items() if "running" not in k and "num_batches" not in k
    ) == (3_505_730)


@pytest.mark.parametrize("size", ["96x96", "101x87"])
def test_outputs_match_the_reference(reference: dict, size: str) -> None:
    model = load_reference_state_dict(create_model("convunext", in_channels=3, num_classes=2), reference["state_dict"])
    model.eval()
    with torch.no_grad():
        out = model(reference["inputs"][f"x_{size}"])
    expected = reference["outputs"][f"y_{size}"]
    assert out.shape == expected.shape
    assert (out - expected).abs().max().item() < 1e-4


def test_conversion_covers_every_key(reference: dict) -> None:
    converted = convert_reference_state_dict(reference["state_dict"])
    assert set(converted) == set(ConvUNeXt().state_dict())
    assert len(converted) == len(reference["state_dict"]) == 265


def test_unknown_reference_key_is_rejected() -> None:
    with pytest.raises(KeyError, match="bogus.weight"):
        convert_reference_state_dict({"bogus.weight": torch.zeros(1)})


def test_loading_into_a_different_architecture_fails(reference: dict) -> None:
    with pytest.raises(RuntimeError):
        load_reference_state_dict(ConvUNeXt(width=16), reference["state_dict"])
