"""Surface-distance metrics (HD, HD95, ASSD, NSD) on hand-made masks whose distances are known by hand, their empty
cases, the per-class label-map entry point, and agreement with MONAI on seeded random masks."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from convunext.evaluation.surface import (
    SurfaceScores,
    average_surface_distance,
    hausdorff_distance,
    normalized_surface_dice,
    surface_distances,
    surface_metrics,
    surface_voxels,
)


def square(shape: tuple[int, int], top: int, left: int, size: int) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[top : top + size, left : left + size] = True
    return mask


def points(shape: tuple[int, ...], *where: tuple[int, ...]) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    for index in where:
        mask[index] = True
    return mask


# Two 4 x 4 squares, the second 3 columns to the right of the first. A square's surface is its 12 border pixels. From
# A's: the top and bottom rows (columns 2..5) lie 3, 2, 1, 0 from B's left column (column 5), the two left-column
# pixels between them 3, the two right-column ones 0 (they are B's left column): D_AB = {0 x4, 1 x2, 2 x2, 3 x4},
# and D_BA is its mirror image.
A = square((12, 14), 2, 2, 4)
B = square((12, 14), 2, 5, 4)


def test_the_surface_is_the_mask_minus_its_erosion_by_the_cross() -> None:
    assert np.array_equal(surface_voxels(A), A & ~square((12, 14), 3, 3, 2))  # a 4 x 4 square keeps its 2 x 2 core
    notched = square((6, 6), 1, 1, 4)
    notched[1, 1] = False
    assert not surface_voxels(notched)[2, 2]  # its four face neighbours are inside; only a diagonal one is not
    assert surface_voxels(np.ones((3, 4), dtype=bool)).sum() == 10  # off the array counts as outside: 12 - 2 inner


def test_the_distances_of_two_offset_squares() -> None:
    forward, backward = surface_distances(A, B)
    assert sorted(forward) == [0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 3, 3]
    assert sorted(backward) == sorted(forward)


def test_two_squares_offset_by_k_pixels_are_k_apart() -> None:
    assert hausdorff_distance(A, B, percentile=None) == 3.0
    assert hausdorff_distance(A, B) == 3.0  # 95th of 12 sorted values: between the 11th and 12th, both 3
    assert hausdorff_distance(A, B, spacing=(1.0, 0.5), percentile=None) == 1.5  # the shift is along the columns


def test_the_assd_of_two_offset_squares() -> None:
    assert average_surface_distance(A, B) == pytest.approx((4 * 0 + 2 * 1 + 2 * 2 + 4 * 3) / 12)  # 1.5


@pytest.mark.parametrize(
    ("tolerance", "expected"),
    [(0.0, 8 / 24), (0.99, 8 / 24), (1.0, 12 / 24), (2.0, 16 / 24), (2.9, 16 / 24), (3.0, 1.0), (10.0, 1.0)],
)
def test_the_nsd_of_two_offset_squares_counts_the_distances_within_the_tolerance(
    tolerance: float, expected: float
) -> None:
    assert normalized_surface_dice(A, B, tolerance) == pytest.approx(expected)


def test_a_one_voxel_shift_along_an_axis_of_spacing_three_is_three_mm() -> None:
    cube = np.zeros((6, 6, 6), dtype=bool)
    cube[1:4, 1:4, 1:4] = True
    shifted = np.roll(cube, 1, axis=0)
    assert hausdorff_distance(cube, shifted, spacing=(3.0, 1.0, 1.0), percentile=None) == 3.0
    assert hausdorff_distance(cube, shifted, spacing=(3.0, 1.0, 1.0)) == 3.0
    assert hausdorff_distance(cube, shifted, percentile=None) == 1.0
    # The shift is along axis 0 only: the spacing of the other two axes does not change the largest distance.
    assert hausdorff_distance(cube, shifted, spacing=(3.0, 0.5, 0.5), percentile=None) == 3.0


# Spacing (2.0, 1.0, 0.5) mm. A: one voxel at the origin. B: two isolated voxels, (1, 0, 0) 2.0 mm away and (0, 0, 3)
# 3 x 0.5 = 1.5 mm away, so the nearest is the farther in voxels. D_AB = {1.5}, D_BA = {2.0, 1.5}.
SPACING_3D = (2.0, 1.0, 0.5)
A_3D = points((3, 3, 5), (0, 0, 0))
B_3D = points((3, 3, 5), (1, 0, 0), (0, 0, 3))


def test_anisotropic_spacing_is_exact_in_3d() -> None:
    forward, backward = surface_distances(A_3D, B_3D, SPACING_3D)
    assert forward.tolist() == [1.5]
    assert sorted(backward) == [1.5, 2.0]
    assert hausdorff_distance(A_3D, B_3D, SPACING_3D, percentile=None) == 2.0
    assert hausdorff_distance(A_3D, B_3D, SPACING_3D) == pytest.approx(1.5 + 0.95 * 0.5)  # linear interpolation
    # The mean of all three distances, which is not the mean of the two directed means ((1.5 + 1.75) / 2 = 1.625).
    assert average_surface_distance(A_3D, B_3D, SPACING_3D) == pytest.approx(5 / 3)
    assert normalized_surface_dice(A_3D, B_3D, 1.5, SPACING_3D) == pytest.approx(2 / 3)  # a distance equal counts
    assert normalized_surface_dice(A_3D, B_3D, 1.4, SPACING_3D) == 0.0


def test_the_axis_order_does_not_matter_when_the_spacing_follows_it() -> None:
    order = (2, 0, 1)
    moved = [np.transpose(mask, order) for mask in (A_3D, B_3D)]
    spacing = tuple(SPACING_3D[axis] for axis in order)
    assert average_surface_distance(*moved, spacing) == pytest.approx(5 / 3)
    assert hausdorff_distance(*moved, spacing, percentile=None) == 2.0


def test_a_single_far_outlier_moves_the_hausdorff_distance_but_not_its_95th_percentile() -> None:
    # A 10 x 10 square (36 surface pixels) against the same square plus one pixel 9 columns right of its edge.
    truth = square((14, 24), 2, 2, 10)
    pred = truth.copy()
    pred[2, 20] = True
    assert hausdorff_distance(pred, truth, percentile=None) == 9.0
    assert hausdorff_distance(pred, truth, percentile=100) == 9.0
    assert hausdorff_distance(pred, truth) == 0.0  # 36 zeros and one 9: the 95th percentile lies among the zeros
    assert average_surface_distance(pred, truth) == pytest.approx(9 / 73)
    assert normalized_surface_dice(pred, truth, 1.0) == pytest.approx(72 / 73)


def test_empty_masks() -> None:
    empty = np.zeros((12, 14), dtype=bool)
    assert (hausdorff_distance(empty, empty), average_surface_distance(empty, empty)) == (0.0, 0.0)
    assert normalized_surface_dice(empty, empty, 1.0) == 1.0
    for pred, truth in ((A, empty), (empty, A)):
        assert hausdorff_distance(pred, truth) == math.inf
        assert hausdorff_distance(pred, truth, percentile=None) == math.inf
        assert average_surface_distance(pred, truth) == math.inf
        assert normalized_surface_dice(pred, truth, 5.0) == 0.0


def test_surface_metrics_scores_each_foreground_class() -> None:
    pred = A.astype(np.int64) * 2  # class 2: A against B (the offset squares), class 1: one identical square
    truth = B.astype(np.int64) * 2
    pred[8:11, 8:11] = truth[8:11, 8:11] = 1
    scores = surface_metrics(pred, truth, num_classes=4)
    assert set(scores) == {1, 2, 3}
    assert scores[1] == SurfaceScores(hd95=0.0, assd=0.0, nsd=1.0)
    assert scores[2].to_dict() == pytest.approx({"hd95": 3.0, "assd": 1.5, "nsd": 0.5})  # tolerance 1.0: 12 of 24
    assert scores[3] == SurfaceScores(hd95=0.0, assd=0.0, nsd=1.0)  # absent from both
    two_mm = surface_metrics(pred, truth, 4, spacing=(2.0, 2.0), percentile=None, tolerance=2.0)
    assert two_mm[2].to_dict() == pytest.approx({"hd95": 6.0, "assd": 3.0, "nsd": 0.5})


def test_surface_metrics_leaves_the_ignored_voxels_out_of_both_masks() -> None:
    truth = B.astype(np.int64)
    pred = truth.copy()
    pred[9, 1:4] = 1  # a spurious blob ...
    truth[8:11, 0:5] = 255  # ... where the truth is unknown
    assert surface_metrics(pred, truth, 2)[1] == SurfaceScores(hd95=0.0, assd=0.0, nsd=1.0)
    truth[8:11, 0:5] = 0  # known background: the blob counts
    assert surface_metrics(pred, truth, 2)[1].assd > 0


def test_wrong_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="one shape"):
        hausdorff_distance(A, A[:-1])
    with pytest.raises(ValueError, match="3 values for a 2-D array"):
        average_surface_distance(A, B, spacing=(1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="positive"):
        average_surface_distance(A, B, spacing=(1.0, 0.0))
    with pytest.raises(ValueError, match="percentile"):
        hausdorff_distance(A, B, percentile=101)
    with pytest.raises(ValueError, match="tolerance"):
        normalized_surface_dice(A, B, -1.0)
    labels = A.astype(np.int64)
    with pytest.raises(ValueError, match="one shape"):
        surface_metrics(labels, labels[:, :-1], 2)
    with pytest.raises(ValueError, match="spacing"):
        surface_metrics(labels, labels, 2, spacing=(1.0,))
    with pytest.raises(ValueError, match=r"labels \[3\] outside \[0, 2\)"):
        surface_metrics(labels * 3, labels, 2)
    with pytest.raises(ValueError, match="num_classes"):
        surface_metrics(labels, labels, 1)


def blobs(seed: int, shape: tuple[int, ...], threshold: int) -> np.ndarray:
    """Seeded random blobs: voxels with at least ``threshold`` ones among the 3^N around them in a random 0/1 array
    (integer arithmetic only, so the masks are the same everywhere)."""
    noise = np.random.default_rng(seed).integers(0, 2, size=shape)
    return ndimage.correlate(noise, np.ones((3,) * len(shape), dtype=np.int64), mode="constant") >= threshold


# MONAI 1.6.1 (torch 2.13.0, numpy 2.4.6, scipy 1.17.1) on pred = blobs(seed, ...), target = blobs(seed + 100, ...),
# as [1, 1, *shape] float tensors with include_background=True:
#   hd95  = compute_hausdorff_distance(pred, target, include_background=True, percentile=95, spacing=spacing)
#   hd    = compute_hausdorff_distance(pred, target, include_background=True, spacing=spacing)
#   assd  = compute_average_surface_distance(pred, target, include_background=True, symmetric=True, spacing=spacing)
#   nsd_T = compute_surface_dice(pred, target, [T], include_background=True, spacing=spacing)
# MONAI returns float32, hence the relative tolerance of 1e-6 (float32 keeps about 7 significant digits).
MONAI = [
    (
        (1, (24, 24), 6, None),
        {"hd95": 3.7830519676208496, "hd": 4.242640495300293, "assd": 1.561264991760254}
        | {"nsd_1": 0.47236180305480957, "nsd_2": 0.7035176157951355},
    ),
    (
        (2, (20, 28), 6, (0.7, 1.3)),
        {"hd95": 3.9155807495117188, "hd": 5.246903896331787, "assd": 1.5561299324035645}
        | {"nsd_1": 0.30666667222976685, "nsd_2": 0.7155555486679077},
    ),
    (
        (3, (8, 12, 10), 16, (2.5, 0.8, 1.1)),
        {"hd95": 2.8460497856140137, "hd": 3.2557640075683594, "assd": 1.2948951721191406}
        | {"nsd_1": 0.4033149182796478, "nsd_2": 0.7569060921669006},
    ),
]


@pytest.mark.parametrize(("case", "expected"), MONAI, ids=["2d", "2d-anisotropic", "3d-anisotropic"])
def test_the_numbers_are_monais(case: tuple, expected: dict[str, float]) -> None:
    seed, shape, threshold, spacing = case
    pred, target = blobs(seed, shape, threshold), blobs(seed + 100, shape, threshold)
    assert 0 < pred.sum() < pred.size and 0 < target.sum() < target.size
    ours = {
        "hd95": hausdorff_distance(pred, target, spacing),
        "hd": hausdorff_distance(pred, target, spacing, percentile=None),
        "assd": average_surface_distance(pred, target, spacing),
        "nsd_1": normalized_surface_dice(pred, target, 1.0, spacing),
        "nsd_2": normalized_surface_dice(pred, target, 2.0, spacing),
    }
    assert ours == pytest.approx(expected, rel=1e-6)
