"""Per-volume scores: Dice over the whole volume and surface distances in mm, against known answers."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from convunext.data import DatasetInfo
from convunext.data.volumes import VolumeSliceDataset, write_nifti
from convunext.evaluation.volumes import (
    SliceVolumeDice,
    VolumeClassScores,
    VolumeEvaluation,
    evaluate_volumes,
    volume_dice,
)
from convunext.inference.predictor import Predictor
from convunext.inference.sliding_window import Inferer
from convunext.inference.volume import VolumePredictor
from volume_oracles import IntensityOracle, fixed_settings, staircase_case


def test_volume_dice_by_hand() -> None:
    pred = np.zeros((4, 4, 4), bool)
    target = np.zeros((4, 4, 4), bool)
    pred[:2] = True  # 32 voxels
    target[1:3] = True  # 32 voxels, 16 shared
    assert volume_dice(pred, target) == pytest.approx(2 * 16 / 64)
    assert volume_dice(np.zeros(3, bool), np.zeros(3, bool)) == 1.0


def test_slice_volume_dice_pools_each_volumes_slices_by_hand() -> None:
    dice = SliceVolumeDice(["a", "b"], num_classes=3)
    # volume a, class 1: slice 0 predicts 2 of 4 true pixels and nothing else; slice 1 is empty and predicted empty
    # (a per-slice mean would score it 1.0); class 2 is absent from a (1.0). Volume a: mean(2*2/6, 1.0)
    truth = torch.tensor([[1, 1], [1, 1]])
    dice.update("a/000", torch.tensor([[1, 1], [0, 0]]), truth)
    dice.update("a/001", torch.zeros(2, 2, dtype=torch.long), torch.zeros(2, 2, dtype=torch.long))
    # volume b: class 2 right on one pixel, class 1 predicted on a pixel that is background (0); ignored pixels count
    # nowhere. Class 1: 2*0/1 = 0; class 2: 2*1/2 = 1. Volume b: 0.5
    dice.update("b/000", torch.tensor([[2, 1], [2, 0]]), torch.tensor([[2, 0], [255, 0]]))
    assert dice.counts[0, 1].tolist() == [2, 2, 4] and dice.counts[1, 2].tolist() == [1, 1, 1]
    assert dice.dice() == pytest.approx(((2 * 2 / 6 + 1.0) / 2 + 0.5) / 2)


def staircase_dataset(root: Path, cases: int = 5) -> Path:
    """A plain folder of staircase volumes with three classes (``dataset.json`` names them)."""
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for index in range(cases):
        image, labels = staircase_case(seed=index)
        write_nifti(root / "images" / f"case{index}.nii.gz", image.array, image)
        write_nifti(root / "labels" / f"case{index}.nii.gz", labels.array, labels)
    (root / "dataset.json").write_text(
        '{"labels": {"0": "background", "1": "one", "2": "two"}, "modality": {"0": "CT"}}'
    )
    return root


def oracle(settings_axis: int) -> VolumePredictor:
    model = IntensityOracle()
    predictor = Predictor(
        model, (0.0,), (1.0,), Inferer(tile_size=None, backend="eager", device="cpu"), ["b", "1", "2"]
    )
    return VolumePredictor(predictor, fixed_settings(settings_axis))


def open_split(root: Path, split: str) -> VolumeSliceDataset:
    settings = fixed_settings(1)
    info = DatasetInfo("stairs", ["background", "one", "two"], 1, (0.0,), (1.0,), volume=settings.to_dict())
    return VolumeSliceDataset(root, split, info=info)


def test_a_perfect_model_scores_dice_one_and_zero_distances(tmp_path: Path) -> None:
    dataset = open_split(staircase_dataset(tmp_path / "stairs"), "trainval")
    evaluation = evaluate_volumes(oracle(1), dataset, tolerance=1.0, progress=False)
    assert len(evaluation.rows) == 2 * len(dataset.cases)
    assert all(row.dice == 1.0 and row.hd95 == 0.0 and row.assd == 0.0 and row.nsd == 1.0 for row in evaluation.rows)
    assert evaluation.summary()["mean"] == {"dice": 1.0, "hd95": 0.0, "assd": 0.0, "nsd": 1.0}
    assert evaluation.spacing["case0"] == pytest.approx([1.0, 3.0, 1.0])
    flat = evaluation.flat_metrics()
    assert flat["dice_fg_mean"] == flat["miou_cm"] == flat["pixel_accuracy"] == 1.0 and flat["hd95_two"] == 0.0
    assert int(evaluation.confusion.sum()) == len(dataset.cases) * 20 * 14 * 9  # every voxel once
    rows = evaluation.per_volume_rows()
    assert [row["name"] for row in rows] == dataset.case_names and rows[0]["dice_two"] == 1.0


def test_the_flat_record_pools_voxels_into_one_confusion_matrix() -> None:
    evaluation = VolumeEvaluation(["background", "one"])
    truth = np.array([[[0, 0, 1, 1]]])
    evaluation.add_confusion(np.array([[[0, 1, 1, 0]]]), truth)  # TN, FP, TP, FN
    evaluation.rows = [VolumeClassScores("a", "one", 0.5, 1.0, 1.0, 0.5, 2, 2)]
    flat = evaluation.flat_metrics()
    assert flat["iou_fg_cm"] == pytest.approx(1 / 3) and flat["miou_cm"] == pytest.approx((1 / 3 + 1 / 3) / 2)
    assert flat["pixel_accuracy"] == 0.5 and flat["dice_fg_mean"] == 0.5 and flat["dice_one"] == 0.5


def test_the_summary_averages_finite_distances_and_counts_the_others() -> None:
    rows = [
        VolumeClassScores("a", "one", 0.5, 2.0, 1.0, 0.5, 10, 12),
        VolumeClassScores("b", "one", 0.0, math.inf, math.inf, 0.0, 10, 0),
        VolumeClassScores("a", "two", 1.0, 0.0, 0.0, 1.0, 5, 5),
        VolumeClassScores("b", "two", 0.8, 4.0, 3.0, 0.75, 5, 6),
    ]
    summary = VolumeEvaluation(["background", "one", "two"], rows).summary()
    assert summary["one"] == {
        "dice": 0.25,
        "hd95": 2.0,
        "assd": 1.0,
        "nsd": 0.25,
        "volumes": 2,
        "infinite_distances": 1,
    }
    assert summary["two"]["hd95"] == 2.0 and summary["two"]["infinite_distances"] == 0
    assert summary["mean"]["dice"] == pytest.approx((0.25 + 0.9) / 2)
