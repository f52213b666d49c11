"""Background outside the field of view: a model trained within fields of view learned nothing about the dark frame
around them, and ``predict`` (``--fov auto``, the default) makes every pixel outside the field of view it finds in
the image background — probabilities included — and says so in ``predictions.csv``."""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage
from torch import nn

from convunext.checkpoint import Checkpoint
from convunext.cli.main import main
from convunext.errors import ConvUNeXtError
from convunext.inference.predictor import Predictor
from convunext.inference.scale import find_fov
from convunext.inference.sliding_window import Inferer


class ForegroundEverywhere(nn.Module):
    """Logits that say foreground (probability 0.99) at every pixel, frame included."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        background = torch.zeros_like(images[:, 0])
        return torch.stack([background, background + 4.6], dim=1)


def fundus_like(height: int = 90, width: int = 110, diameter: int = 70) -> tuple[np.ndarray, np.ndarray]:
    """A dark frame around a bright centred disc (uint8 ``H x W x 3``) and the disc (bool ``H x W``)."""
    yy, xx = np.mgrid[0:height, 0:width]
    disc = (yy - (height - 1) / 2) ** 2 + (xx - (width - 1) / 2) ** 2 <= (diameter / 2) ** 2
    image = np.full((height, width, 3), 5, dtype=np.uint8)
    image[disc] = (170, 90, 40)
    return image, disc


def _predictor(background_outside_fov: bool) -> Predictor:
    inferer = Inferer(device="cpu", backend="eager", tile_size=None)
    return Predictor(
        ForegroundEverywhere(), (0.0,) * 3, (1.0,) * 3, inferer, background_outside_fov=background_outside_fov
    )


def test_outside_the_field_of_view_is_background_probabilities_included() -> None:
    image, disc = fundus_like()
    result = _predictor(True).predict(image)
    assert result.outside_fov == "background"
    near_rim = ndimage.binary_dilation(disc, iterations=2) & ~ndimage.binary_erosion(disc, iterations=2)
    assert not result.mask[~disc & ~near_rim].any() and result.mask[disc & ~near_rim].all()
    outside = ~disc & ~near_rim
    assert (result.probabilities[0][outside] == 1.0).all() and (result.probabilities[1][outside] == 0.0).all()
    assert np.allclose(result.probabilities.sum(axis=0), 1.0, atol=1e-6)


def test_without_the_option_or_a_field_of_view_to_trust_the_output_is_kept() -> None:
    image, _ = fundus_like()
    kept = _predictor(False).predict(image)
    assert kept.outside_fov is None and kept.mask.all()
    black = np.zeros_like(image)
    assert find_fov(black) is None
    unmasked = _predictor(True).predict(black)
    assert unmasked.outside_fov == "kept: no field of view found" and unmasked.mask.all()


@pytest.mark.parametrize(
    ("has_fov", "setting", "applied"),
    [(True, "auto", True), (True, "off", False), (False, "auto", False), (None, "auto", False)],
)
def test_auto_applies_to_checkpoints_trained_within_fields_of_view(
    tiny_checkpoint: Callable[..., Checkpoint], has_fov: bool | None, setting: str, applied: bool
) -> None:
    meta = {} if has_fov is None else {"data": {"has_fov": has_fov}}
    predictor = Predictor.from_checkpoint(tiny_checkpoint(**meta), fov=setting)  # type: ignore[arg-type]
    assert predictor.background_outside_fov is applied


def test_a_bad_fov_setting_is_refused_naming_the_valid_ones(tiny_checkpoint: Callable[..., Checkpoint]) -> None:
    with pytest.raises(ConvUNeXtError, match=r"fov='inside' is not valid; choose one of auto, off"):
        Predictor.from_checkpoint(tiny_checkpoint(), fov="inside")  # type: ignore[arg-type]


def _table(folder: Path) -> dict[str, str]:
    (row,) = csv.DictReader((folder / "predictions.csv").open())
    return row


def test_retina_vessels_on_a_stare_photograph_predicts_nothing_outside_its_field_of_view(
    stare_root: Path, tmp_path: Path, one_thread: None
) -> None:
    """STARE ships no FOV masks: the shipped model's frame pixels are background with --fov auto, and the
    predictions inside the field of view are those of --fov off."""
    photo = stare_root / "images" / "im0001.ppm"
    image = np.asarray(Image.open(photo).convert("RGB"))
    fov = find_fov(image)
    assert fov is not None and 0.5 < fov.mean() < 0.9
    masks = {}
    for setting in ("auto", "off"):
        out = tmp_path / setting
        argv = ["predict", "retina-vessels", str(photo), "--out", str(out), "--fov", setting, "--device", "cpu"]
        assert main([*argv, "--quiet"]) == 0
        masks[setting] = np.asarray(Image.open(out / "im0001_mask.png")) > 0
        assert _table(out)["outside_fov"] == ("background" if setting == "auto" else "")
    assert not masks["auto"][~fov].any()
    assert np.array_equal(masks["auto"][fov], masks["off"][fov])
