"""Scale matching (convunext.inference.scale): the resize factor chosen for an image, the resampling around the
model, and the promise on real data — DRIVE upscaled 1.7x scores within 0.02 Dice of DRIVE itself."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage
from torch import nn
from torch.utils.data import Dataset

from convunext.checkpoint import load_checkpoint
from convunext.data import open_dataset
from convunext.errors import ConvUNeXtError
from convunext.evaluation.evaluate import evaluate_checkpoint
from convunext.inference.predictor import Predictor
from convunext.inference.scale import (
    MAX_SCALE,
    ScalePolicy,
    ScaleSetting,
    check_scale_setting,
    match_scale,
    model_fov_diameter,
    parse_scale,
)
from convunext.inference.sliding_window import Inferer
from convunext.pretrained import resolve_checkpoint


def disc_image(height: int, width: int, diameter: int, red: int = 160) -> np.ndarray:
    """A dark frame with a bright centred disc of ``diameter`` px (uint8 H x W x 3)."""
    yy, xx = np.mgrid[0:height, 0:width]
    inside = (yy - (height - 1) / 2) ** 2 + (xx - (width - 1) / 2) ** 2 <= (diameter / 2) ** 2
    image = np.full((height, width, 3), 4, dtype=np.uint8)
    image[inside] = (red, 80, 40)
    return image


@pytest.mark.parametrize(
    "model_diameter, image_diameter, factor",
    [(200.0, 100, 2.0), (50.0, 100, 0.5), (105.0, 100, 1.0), (91.0, 100, 1.0), (89.0, 100, 0.89)],
)
def test_auto_resizes_the_field_of_view_to_the_models_beyond_ten_percent(
    model_diameter: float, image_diameter: int, factor: float
) -> None:
    match = match_scale("auto", model_diameter, disc_image(140, 160, image_diameter))
    assert match.input_diameter == image_diameter and match.factor == pytest.approx(factor)
    assert match.record()["scale"] == round(factor, 4)


def test_a_given_fov_mask_is_measured_instead_of_the_image() -> None:
    fov = np.zeros((100, 300), dtype=bool)
    fov[:, 20:260] = True  # a disc cut by the top and bottom of the frame is as wide as its diameter
    match = match_scale("auto", 480.0, fov=fov)
    assert (match.input_diameter, match.factor) == (240.0, 2.0) and "240 px -> 480 px" in match.reason


def test_auto_runs_images_as_they_are_when_it_cannot_match() -> None:
    assert match_scale("auto", None, disc_image(50, 50, 30)).factor == 1.0  # the model records no scale
    black = match_scale("auto", 540.0, np.zeros((60, 60, 3), dtype=np.uint8))
    assert black.factor == 1.0 and "no field of view" in black.reason
    speck = np.zeros((200, 200, 3), dtype=np.uint8)
    speck[90:110, 90:110] = 200  # 1% of the image: not a fundus photograph
    assert match_scale("auto", 540.0, speck).factor == 1.0


def test_off_and_given_factors() -> None:
    image = disc_image(50, 50, 20)
    assert match_scale("off", 540.0, image).factor == 1.0
    assert match_scale(0.5, None, image).factor == 0.5 and match_scale(0.5, None).reason == "given: x0.5"
    assert match_scale("auto", 10_000.0, image).factor == MAX_SCALE  # clamped


@pytest.mark.parametrize("bad", ["large", "0", "-1", "nan", "9", "0.1"])
def test_bad_scale_settings_are_refused_in_one_line(bad: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="expected auto, off or a resize factor from 0.125 to 8"):
        parse_scale(bad)
    with pytest.raises(ConvUNeXtError, match="is not valid"):
        check_scale_setting(True)  # type: ignore[arg-type]
    assert parse_scale("auto") == "auto" and parse_scale("0.25") == 0.25


def test_the_training_scale_is_read_from_the_checkpoint_description() -> None:
    assert model_fov_diameter({"scale": {"fov_diameter": 540}}) == 540.0
    assert model_fov_diameter({"data": {}}) is None and model_fov_diameter({"scale": {"fov_diameter": -1}}) is None
    policy = ScalePolicy.for_checkpoint("auto", {"scale": {"fov_diameter": 540}})
    assert policy.record() == {"scale_setting": "auto", "model_fov_diameter": 540.0}


class RedIsForeground(nn.Module):
    """Logits (background 0, foreground = 8 x (red - 0.5)): probabilities follow the image, any size."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.stack([torch.zeros_like(images[:, 0]), 8 * (images[:, 0] - 0.5)], dim=1)


@pytest.mark.parametrize("scale", [0.5, 1.0, 1.7])
@pytest.mark.parametrize("tile_size", [0, 32])
def test_the_inferer_resamples_around_the_model_and_returns_the_input_size(scale: float, tile_size: int) -> None:
    image = torch.from_numpy(disc_image(70, 90, 60)).permute(2, 0, 1).float()[None] / 255
    inferer = Inferer(tile_size=tile_size, device="cpu", backend="eager")
    probabilities = inferer(RedIsForeground(), image, scale=scale)
    assert probabilities.shape == (1, 2, 70, 90)
    assert torch.allclose(probabilities.sum(1), torch.ones(1, 70, 90), atol=1e-5)
    direct = inferer(RedIsForeground(), image)
    inside = torch.from_numpy(ndimage.binary_erosion(image[0, 0].numpy() > 0.5, iterations=6))
    assert torch.allclose(probabilities[0, 1][inside], direct[0, 1][inside], atol=1e-4)  # away from the disc's edge


def test_prediction_records_the_scale_and_returns_masks_of_the_input_size(tmp_path: Path) -> None:
    predictor = Predictor(RedIsForeground(), (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), Inferer(device="cpu", backend="eager"))
    predictor.scale = ScalePolicy("auto", 30.0)
    result = predictor.predict(disc_image(80, 100, 60))
    assert result.mask.shape == (80, 100) and result.scale is not None and result.scale.factor == 0.5


class Upscaled(Dataset):
    """The first ``count`` DRIVE test images, upscaled by ``factor`` (image bicubic, masks nearest)."""

    def __init__(self, dataset: Dataset, count: int, factor: float) -> None:
        self.dataset, self.count, self.factor, self.info = dataset, count, factor, dataset.info  # type: ignore[attr-defined]

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> dict:
        sample = self.dataset[index]
        if self.factor == 1.0:
            return sample
        height, width = sample["mask"].shape
        size = (round(width * self.factor), round(height * self.factor))
        pixels = (sample["image"].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        image = np.asarray(Image.fromarray(pixels).resize(size, Image.BICUBIC), dtype=np.float32) / 255
        mask, fov = (
            np.asarray(Image.fromarray(sample[key].numpy().astype(np.uint8)).resize(size, Image.NEAREST))
            for key in ("mask", "fov")
        )
        return {
            "image": torch.from_numpy(image).permute(2, 0, 1).contiguous(),
            "mask": torch.from_numpy(mask.astype(np.int64)),
            "fov": torch.from_numpy(fov.astype(bool)),
            "name": sample["name"],
        }


def test_drive_upscaled_1_7x_scores_within_0_02_dice_of_drive(drive_root: Path, one_thread: None) -> None:
    checkpoint = load_checkpoint(resolve_checkpoint("drive-vessels"))
    test = open_dataset("drive", drive_root, "test")
    options = {"progress": False, "topology": "off"}
    original = evaluate_checkpoint(checkpoint, Upscaled(test, 5, 1.0), **options)
    upscaled = evaluate_checkpoint(checkpoint, Upscaled(test, 5, 1.7), **options)
    assert [row["scale"] for row in original.per_image()] == [1.0] * 5
    assert all(0.58 < row["scale"] < 0.6 for row in upscaled.per_image())  # 540 px over ~920 px
    dice, dice_upscaled = original.compute()["dice_fg_mean"], upscaled.compute()["dice_fg_mean"]
    assert abs(dice_upscaled - dice) <= 0.02, (dice, dice_upscaled)


@pytest.mark.parametrize(
    ("setting", "model_diameter", "measures"),
    [("auto", 540.0, True), ("auto", None, False), ("off", 540.0, False), (1.5, 540.0, False)],
)
def test_only_auto_with_a_training_scale_looks_at_the_images(
    setting: ScaleSetting, model_diameter: float | None, measures: bool
) -> None:
    policy = ScalePolicy(setting, model_diameter)
    assert policy.measures_images is measures
    if not measures:  # it decides without the image
        assert policy.match() == policy.match(image=np.zeros((8, 8, 3), np.float32))
