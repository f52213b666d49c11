"""Second-observer scores (:mod:`convunext.evaluation.observers`): hand-computed on a drawn STARE layout, and the
published values on the real DRIVE and STARE copies."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from convunext.data import open_dataset
from convunext.data.base import load_split_file
from convunext.errors import ConvUNeXtError
from convunext.evaluation.observers import OBSERVER_METRICS, second_observer_metrics

HEIGHT, WIDTH = 20, 24
ROWS, COLS = np.mgrid[0:HEIGHT, 0:WIDTH]
DISC = (ROWS - 10) ** 2 + (COLS - 12) ** 2 <= 9**2  # 253 pixels; derive_fov finds it exactly
FOV_PIXELS = 253


def _line(row: int, first: int, last: int) -> np.ndarray:
    mask = np.zeros((HEIGHT, WIDTH), dtype=bool)
    mask[row, first : last + 1] = True
    return mask


@pytest.fixture
def drawn_stare(tmp_path: Path) -> Path:
    """A STARE test split of ten identical drawn images: a disc, a 10-pixel vessel of observer ah (row 10, columns
    5-14), and observer vk's shifted by three (columns 8-17) plus two pixels outside the disc (row 0, columns 0-1)."""
    stare = tmp_path / "STARE"
    for folder in ("images", "labels-ah", "labels-vk"):
        (stare / folder).mkdir(parents=True)
    image = np.zeros((HEIGHT, WIDTH, 3), dtype=np.uint8)
    image[DISC] = (200, 90, 40)
    ah, vk = _line(10, 5, 14), _line(10, 8, 17) | _line(0, 0, 1)
    lists = load_split_file("stare")
    for stem in lists["trainval"] + lists["test"]:
        Image.fromarray(image, mode="RGB").save(stare / "images" / f"{stem}.ppm")
        for observer, mask in (("ah", ah), ("vk", vk)):
            Image.fromarray(mask.astype(np.uint8) * 255, mode="L").save(
                stare / f"labels-{observer}" / f"{stem}.{observer}.ppm"
            )
    return stare


def test_second_observer_scored_by_hand(drawn_stare):
    assert open_dataset("stare", drawn_stare, "test")[0]["fov"].sum() == FOV_PIXELS == DISC.sum()
    # inside the disc: TP 7 (columns 8-14), FN 3 (5-7), FP 3 (15-17), TN 253 - 13 = 240; the two vk pixels outside
    # the disc are ignored
    expected = {
        "dice_fg_mean": 2 * 7 / (10 + 10),
        "miou_cm": (7 / 13 + 240 / 246) / 2,
        "iou_fg_cm": 7 / 13,
        "pixel_accuracy": (7 + 240) / 253,
        "fov_sensitivity": 7 / 10,
        "fov_specificity": 240 / 243,
        "fov_accuracy": (7 + 240) / 253,
        "cldice_mean": 0.7,  # one-pixel lines are their own skeletons: precision 7/10, sensitivity 7/10
    }
    for names in (None, ["im0162"], ["im0324", "im0235"]):
        scores = second_observer_metrics("stare", drawn_stare, "test", names)
        assert list(scores) == list(OBSERVER_METRICS) and scores == pytest.approx(expected, abs=1e-12)
    # the reader's options reach both observers: leave-one-out fold 10 tests im0162 alone
    assert second_observer_metrics("stare", drawn_stare, "test", fold=10) == pytest.approx(expected, abs=1e-12)


def test_names_outside_the_split_and_datasets_without_a_second_observer(drawn_stare, tmp_path):
    with pytest.raises(ConvUNeXtError, match="^STARE test split: no image named 'im0001'$"):
        second_observer_metrics("stare", drawn_stare, "test", ["im0162", "im0001"])
    assert second_observer_metrics("hrf", tmp_path) is None
    assert second_observer_metrics("synthetic", None) is None
    # the first observer stays the ground truth whatever observer the options name
    swapped = second_observer_metrics("stare", drawn_stare, "test", observer="vk")
    assert swapped == second_observer_metrics("stare", drawn_stare, "test")


def test_drive_second_observer_matches_staal_et_al(drive_root):
    scores = second_observer_metrics("drive", drive_root)
    # pooled over the FOV pixels of the 20 test images, as convunext scores the models
    assert round(scores["fov_accuracy"], 3) == 0.947
    assert round(scores["fov_sensitivity"], 3) == 0.775
    assert round(scores["fov_specificity"], 3) == 0.972
    assert round(scores["dice_fg_mean"], 3) == 0.788
    # Staal et al. (2004) give accuracy 0.9473, sensitivity 0.7760, specificity 0.9725: the means over images of
    # each image's rates (a pooled sensitivity weighs vessel-rich images more, 0.7746)
    first = open_dataset("drive", drive_root, "test")
    second = open_dataset("drive", drive_root, "test", observer=2)
    rates = []
    for index in range(len(first)):
        fov = first[index]["fov"].numpy()
        truth, other = first[index]["mask"].numpy()[fov] == 1, second[index]["mask"].numpy()[fov] == 1
        rates.append(
            [(truth & other).sum() / truth.sum(), (~truth & ~other).sum() / (~truth).sum(), (truth == other).mean()]
        )
    assert np.mean(rates, axis=0).round(4).tolist() == [0.7760, 0.9725, 0.9473]


def test_stare_second_observer(stare_root):
    # Hoover's vk against ah on the 10 test images, inside the derived fields of view
    scores = second_observer_metrics("stare", stare_root)
    assert {key: round(value, 3) for key, value in scores.items()} == {
        "dice_fg_mean": 0.759,
        "miou_cm": 0.772,
        "iou_fg_cm": 0.614,
        "pixel_accuracy": 0.938,
        "fov_sensitivity": 0.945,
        "fov_specificity": 0.937,
        "fov_accuracy": 0.938,
        "cldice_mean": 0.742,
    }
