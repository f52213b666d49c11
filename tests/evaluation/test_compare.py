"""Paired comparison on synthetic per-image scores of known difference."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy.stats import wilcoxon

from convunext.errors import ConvUNeXtError
from convunext.evaluation.compare import average_scores, paired_comparison, plot_paired, read_scores


def _scores(values: list[float]) -> dict[str, float]:
    return {f"img{i:02d}": value for i, value in enumerate(values)}


def test_a_constant_shift_gives_the_shift_a_degenerate_interval_all_wins_and_the_exact_p_value() -> None:
    n = 9
    a = _scores([0.5 + i / 64 for i in range(n)])  # binary fractions: every difference is exactly 0.125
    b = {name: value + 0.125 for name, value in reversed(a.items())}  # paired by name, not by order
    comparison = paired_comparison(a, b)
    assert comparison.n == n and comparison.names == tuple(a)
    assert comparison.mean_difference == 0.125
    assert np.array_equal(comparison.differences, np.full(n, 0.125))
    assert (comparison.ci_low, comparison.ci_high) == (0.125, 0.125)
    assert (comparison.wins, comparison.ties, comparison.losses) == (n, 0, 0)
    # every signed rank positive: the exact two-sided p-value is 2 / 2**n (the one most extreme sign pattern)
    assert comparison.p_value == pytest.approx(2 / 2**n, rel=1e-12)
    assert paired_comparison(b, a).mean_difference == -0.125 and paired_comparison(b, a).losses == n


def test_a_mixed_case_checked_by_hand() -> None:
    a = _scores([0.75, 0.625, 0.5, 0.875, 0.6875, 0.5])
    b = _scores([0.8125, 0.5625, 0.5, 0.9375, 0.8125, 0.4375])
    # differences (exact binary fractions): +1/16, -1/16, 0, +1/16, +1/8, -1/16
    # -> 3 wins, 1 tie, 2 losses; mean (1/8) / 6 = 1/48
    comparison = paired_comparison(a, b)
    assert (comparison.wins, comparison.ties, comparison.losses) == (3, 1, 2)
    assert comparison.mean_difference == pytest.approx(1 / 48, abs=1e-15)
    assert comparison.ci_low < comparison.mean_difference < comparison.ci_high
    assert comparison.ci_low < 0 < comparison.ci_high  # 3 against 2: no clear winner
    assert -1 / 16 <= comparison.ci_low < comparison.ci_high <= 1 / 8  # within the range of the differences
    again = paired_comparison(a, b)
    assert (again.ci_low, again.ci_high) == (comparison.ci_low, comparison.ci_high)  # the seed fixes the interval
    narrower = paired_comparison(a, b, confidence=0.5)
    assert comparison.ci_low <= narrower.ci_low <= narrower.ci_high <= comparison.ci_high
    # the tie is left out of the signed-rank test: scipy's value on the five non-zero differences
    assert comparison.p_value == pytest.approx(wilcoxon([1 / 16, -1 / 16, 1 / 16, 1 / 8, -1 / 16]).pvalue)
    assert 0.3 < comparison.p_value < 1  # signed ranks +2.5 +2.5 +5 against -2.5 -2.5: far from significant


def test_the_tie_tolerance_turns_small_differences_into_ties() -> None:
    a = _scores([0.5, 0.6, 0.7, 0.8])
    b = _scores([0.501, 0.599, 0.75, 0.7])
    comparison = paired_comparison(a, b, tie_tolerance=0.002)
    assert (comparison.wins, comparison.ties, comparison.losses) == (1, 2, 1)


def test_identical_scores_are_all_ties_with_p_one() -> None:
    a = _scores([0.3, 0.6, 0.9])
    comparison = paired_comparison(a, dict(a))
    assert (comparison.wins, comparison.ties, comparison.losses) == (0, 3, 0)
    assert (comparison.mean_difference, comparison.ci_low, comparison.ci_high) == (0.0, 0.0, 0.0)
    assert comparison.p_value == 1.0


def test_mismatched_images_are_one_line_errors_naming_them() -> None:
    a = _scores([0.5, 0.6, 0.7])
    b = {"img00": 0.5, "img01": 0.6, "other": 0.7}
    with pytest.raises(ConvUNeXtError, match=r"1 only in run-a \(img02\); 1 only in run-b \(other\)") as error:
        paired_comparison(a, b, labels=("run-a", "run-b"))
    assert "\n" not in str(error.value)
    with pytest.raises(ConvUNeXtError, match="at least 2 images"):
        paired_comparison({"x": 0.5}, {"x": 0.7})
    with pytest.raises(ConvUNeXtError, match="img01 has no score"):
        paired_comparison(a, {**a, "img01": float("nan")})


def test_average_scores_over_seeds_and_reading_a_report(tmp_path: Path) -> None:
    seeds = [_scores([0.5, 0.7]), {"img01": 0.9, "img00": 0.7}]
    assert average_scores(seeds, ["seed 0", "seed 1"]) == pytest.approx({"img00": 0.6, "img01": 0.8})
    with pytest.raises(ConvUNeXtError, match="only in seed 1"):
        average_scores([seeds[0], {**seeds[1], "img02": 0.1}], ["seed 0", "seed 1"])
    csv = tmp_path / "per_image.csv"
    csv.write_text("name,dice_fg,iou_fg,pixels\nimg00,0.500000,0.333333,100\nimg01,0.800000,0.666667,100\n")
    assert read_scores(csv) == {"img00": 0.5, "img01": 0.8}
    assert read_scores(csv, "iou_fg") == pytest.approx({"img00": 0.333333, "img01": 0.666667})
    with pytest.raises(ConvUNeXtError, match=r"'pixels' is not a per-image metric .* \(choose from dice_fg, iou_fg\)"):
        read_scores(csv, "pixels")


def test_paired_plot_is_a_png(tmp_path: Path) -> None:
    a = _scores([0.5, 0.6, 0.7])
    comparison = paired_comparison(a, _scores([0.55, 0.6, 0.65]), resamples=100)
    plot_paired(comparison, tmp_path / "paired.png", ("UNet", "ConvUNeXt"), "dice_fg")
    assert (tmp_path / "paired.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
