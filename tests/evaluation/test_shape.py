"""Shape metrics of 2D evaluations: surface distances per image (pixels or mm, inside the FOV) and the GlaS
object-level metrics, as an ``on_image`` callback."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from convunext.evaluation.shape import ShapeMetrics


def sample_and_probabilities(shift: int) -> tuple[dict, torch.Tensor]:
    """A 20x20 image whose truth is a 6x6 square and whose prediction is the same square ``shift`` columns right."""
    mask = torch.zeros(20, 20, dtype=torch.int64)
    mask[5:11, 5:11] = 1
    predicted = torch.zeros(20, 20)
    predicted[5:11, 5 + shift : 11 + shift] = 1.0
    probabilities = torch.stack([1 - predicted, predicted])[None]
    return {"mask": mask, "fov": torch.ones(20, 20, dtype=torch.bool), "name": "square"}, probabilities


def test_a_shifted_square_is_as_far_as_its_shift_in_pixels_or_millimetres() -> None:
    sample, probabilities = sample_and_probabilities(shift=2)
    pixels = ShapeMetrics(2, tolerance=1.0)
    pixels(sample, probabilities)
    assert pixels.rows["square"]["hd95"] == pytest.approx(2.0)
    millimetres = ShapeMetrics(2, pixel_size=0.5, tolerance=1.0)  # 2 px = 1 mm: within the tolerance
    millimetres(sample, probabilities)
    assert millimetres.rows["square"]["hd95"] == pytest.approx(1.0) and millimetres.unit == "mm"
    assert millimetres.rows["square"]["nsd"] == 1.0 and pixels.rows["square"]["nsd"] < 1.0


def test_pixels_outside_the_field_of_view_belong_to_neither_mask() -> None:
    sample, probabilities = sample_and_probabilities(shift=0)
    probabilities[0, 1, 0, 0], probabilities[0, 0, 0, 0] = 1.0, 0.0  # a stray pixel far away...
    sample["fov"][0, 0] = False  # ...outside the field of view
    metrics = ShapeMetrics(2)
    metrics(sample, probabilities)
    assert metrics.rows["square"]["hd95"] == 0.0


def test_the_summary_averages_finite_distances_and_counts_the_others() -> None:
    metrics = ShapeMetrics(2)
    metrics.rows = {"a": {"hd95": 2.0, "assd": 1.0, "nsd": 0.5}, "b": {"hd95": math.inf, "assd": math.inf, "nsd": 0.0}}
    summary = metrics.summary()
    assert summary["hd95"] == 2.0 and summary["hd95_infinite"] == 1 and summary["nsd"] == 0.25


def test_instance_masks_get_the_glas_object_metrics() -> None:
    truth = np.zeros((12, 12), dtype=np.int64)
    truth[1:5, 1:5] = 1  # gland 1, found
    truth[7:11, 7:11] = 2  # gland 2, missed
    mask = torch.from_numpy((truth > 0).astype(np.int64))
    predicted = torch.zeros(12, 12)
    predicted[1:5, 1:5] = 1.0
    probabilities = torch.stack([1 - predicted, predicted])[None]
    metrics = ShapeMetrics(2, surface=False, instances=lambda name: truth)
    metrics({"mask": mask, "fov": torch.ones(12, 12, dtype=torch.bool), "name": "glands"}, probabilities)
    row = metrics.rows["glands"]
    assert set(row) == {"object_f1", "object_dice", "object_hausdorff"}
    assert row["object_f1"] == pytest.approx(2 * 1 / (2 * 1 + 0 + 1))  # TP 1, FP 0, FN 1
    assert row["object_dice"] == pytest.approx(0.5 * (0.5 * 1.0 + 0.5 * 0.0 + 1.0 * 1.0))
