"""The GlaS object-level metrics (object F1, object Dice, object Hausdorff) on hand-made instance maps whose scores
are computed by hand in the comments."""

from __future__ import annotations

import math

import numpy as np
import pytest

from convunext.evaluation.objects import ObjectScores, label_objects, object_metrics
from convunext.evaluation.surface import hausdorff_distance


def rectangle(instances: np.ndarray, rows: tuple[int, int], cols: tuple[int, int], label: int) -> None:
    """Set ``instances[rows[0] .. rows[1], cols[0] .. cols[1]]`` (inclusive) to ``label``."""
    instances[rows[0] : rows[1] + 1, cols[0] : cols[1] + 1] = label


# Ground truth, 3 glands:        G1 rows 2-5 cols 2-5 (16 px), G2 rows 2-5 cols 10-17 (32 px), G3 rows 10-13 cols 2-5
#                                (16 px); sum |G| = 64.
# Segmentation, 5 objects:       S1 rows 2-5 cols 2-4 (12 px, inside G1), S2 rows 2-5 cols 10-13 and S3 rows 2-5
#                                cols 14-17 (16 px each: G2 split in halves), S4 rows 10-13 cols 2-6 (20 px, G3 and a
#                                column more), S5 rows 15-16 cols 30-31 (4 px, spurious); sum |S| = 68.
TRUTH = np.zeros((20, 40), dtype=np.int32)
rectangle(TRUTH, (2, 5), (2, 5), 1)
rectangle(TRUTH, (2, 5), (10, 17), 2)
rectangle(TRUTH, (10, 13), (2, 5), 3)
PRED = np.zeros((20, 40), dtype=np.int32)
rectangle(PRED, (2, 5), (2, 4), 1)
rectangle(PRED, (2, 5), (10, 13), 2)
rectangle(PRED, (2, 5), (14, 17), 3)
rectangle(PRED, (10, 13), (2, 6), 4)
rectangle(PRED, (15, 16), (30, 31), 5)


def test_detection_counts_a_split_gland_as_two_false_positives_and_a_false_negative() -> None:
    # S1 covers 12 of G1's 16 px and S4 all of G3: true positives. S2 and S3 cover exactly half of G2 each, not more
    # than half: false positives, and G2 is missed. S5 overlaps nothing: false positive.
    # TP = 2, FP = 3, FN = 3 - 2 = 1, F1 = 2*2 / (2*2 + 3 + 1) = 0.5.
    scores = object_metrics(PRED, TRUTH)
    assert (scores.true_positives, scores.false_positives, scores.false_negatives) == (2, 3, 1)
    assert scores.f1 == 0.5


def test_object_dice() -> None:
    # Ground-truth side, weights |G_i| / 64: G1-S1 2*12/(16+12) = 6/7; G2 overlaps S2 and S3 by 16 px each, the tie
    # goes to the smaller id S2: 2*16/(32+16) = 2/3; G3-S4 2*16/(16+20) = 8/9.
    truth_side = (16 * 6 / 7 + 32 * 2 / 3 + 16 * 8 / 9) / 64
    # Segmentation side, weights |S_j| / 68: S1 6/7, S2 and S3 (partner G2) 2/3 each, S4 8/9, S5 no partner: 0.
    seg_side = (12 * 6 / 7 + 16 * 2 / 3 + 16 * 2 / 3 + 20 * 8 / 9 + 4 * 0) / 68
    assert object_metrics(PRED, TRUTH).object_dice == pytest.approx(0.5 * (truth_side + seg_side))  # 0.74813...


def test_object_hausdorff() -> None:
    # H between pixel sets: G1-S1 1 (G1's column 5 to S1's column 4), G2-S2 4 (G2's column 17 to S2's column 13),
    # G2-S3 4, G3-S4 1 (S4's column 6). S5 overlaps no gland, so it is measured to the gland at the smallest H:
    # the farthest pixel of G1 (2, 2) from S5's (15, 30) is sqrt(13^2 + 28^2) = sqrt(953) away, G2's (2, 10)
    # sqrt(13^2 + 20^2) = sqrt(569), G3's (10, 2) sqrt(5^2 + 28^2) = sqrt(809); S5's farthest pixel from G2, (16, 31),
    # is sqrt(11^2 + 14^2) = sqrt(317) from (5, 17): so G2 at sqrt(569).
    truth_side = (16 * 1 + 32 * 4 + 16 * 1) / 64  # 2.5
    seg_side = (12 * 1 + 16 * 4 + 16 * 4 + 20 * 1 + 4 * math.sqrt(569)) / 68
    assert object_metrics(PRED, TRUTH).object_hausdorff == pytest.approx(0.5 * (truth_side + seg_side))  # 3.128...


def test_hausdorff_distances_follow_the_pixel_spacing() -> None:
    truth = np.zeros((4, 4), dtype=np.int32)
    truth[0:2] = 1
    pred = np.ones((4, 4), dtype=np.int32)
    # Rows are 2.0 mm apart, so pred's rows 2-3 lie up to 2 rows = 4.0 mm from the gland (rows 0-1): Dice 2*8/(8+16).
    scores = object_metrics(pred, truth, spacing=(2.0, 0.5))
    assert scores == ObjectScores(1.0, pytest.approx(2 / 3), 4.0, 1, 0, 0)


def test_the_hausdorff_distance_is_between_whole_objects_not_their_surfaces() -> None:
    gland = np.zeros((11, 11), dtype=np.int32)
    gland[1:10, 1:10] = 1  # a 9 x 9 square
    ring = gland.copy()
    ring[3:8, 3:8] = 0  # with a 5 x 5 hole
    # The hole's centre (5, 5) is 3 px from the ring's nearest pixel; every surface pixel is within 1 px of the other
    # mask's surface.
    assert object_metrics(ring, gland).object_hausdorff == 3.0
    assert hausdorff_distance(ring, gland, percentile=None) == 1.0


def test_a_tie_in_overlap_goes_to_the_smaller_id() -> None:
    truth = np.zeros((1, 8), dtype=np.int32)
    truth[0, 0:4] = 1
    pred = np.zeros((1, 8), dtype=np.int32)
    pred[0, 0:2] = 2  # 2 px, both in the gland
    pred[0, 2:6] = 5  # 4 px, 2 in the gland
    # The gland's partner is id 2: Dice 2*2/(4+2) = 2/3 (id 5 would give 2*2/(4+4) = 1/2).
    # Segmentation side: (2 * 2/3 + 4 * 1/2) / 6 = 5/9. Object Dice = (2/3 + 5/9) / 2 = 11/18.
    assert object_metrics(pred, truth).object_dice == pytest.approx(11 / 18)


def test_no_objects_in_either_map_is_perfect() -> None:
    empty = np.zeros((6, 6), dtype=np.int32)
    assert object_metrics(empty, empty) == ObjectScores(1.0, 1.0, 0.0, 0, 0, 0)


def test_objects_in_one_map_only() -> None:
    empty = np.zeros_like(TRUTH)
    assert object_metrics(PRED, empty) == ObjectScores(0.0, 0.0, math.inf, 0, 5, 0)
    assert object_metrics(empty, TRUTH) == ObjectScores(0.0, 0.0, math.inf, 0, 0, 3)


def test_scores_to_dict() -> None:
    assert ObjectScores(0.5, 0.75, 2.0, 2, 3, 1).to_dict() == {
        "f1": 0.5,
        "object_dice": 0.75,
        "object_hausdorff": 2.0,
        "true_positives": 2,
        "false_positives": 3,
        "false_negatives": 1,
    }


def test_ids_need_not_be_consecutive() -> None:
    assert object_metrics(PRED * 7, TRUTH * 3 + (TRUTH > 0) * 10) == object_metrics(PRED, TRUTH)


def test_label_objects_joins_diagonal_neighbours() -> None:
    binary = np.array(
        [
            [1, 0, 0, 0, 1],
            [0, 1, 0, 0, 1],
            [0, 0, 0, 0, 0],
            [1, 1, 0, 1, 0],
        ],
        dtype=bool,
    )
    expected = np.array(
        [
            [1, 0, 0, 0, 2],
            [0, 1, 0, 0, 2],
            [0, 0, 0, 0, 0],
            [3, 3, 0, 4, 0],
        ]
    )
    assert np.array_equal(label_objects(binary), expected)


def test_wrong_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="one shape"):
        object_metrics(PRED, TRUTH[:, :-1])
    with pytest.raises(ValueError, match="integer object ids"):
        object_metrics(PRED.astype(float), TRUTH)
    with pytest.raises(ValueError, match="negative"):
        object_metrics(PRED, -TRUTH)
    with pytest.raises(ValueError, match="spacing"):
        object_metrics(PRED, TRUTH, spacing=(1.0, 1.0, 1.0))
