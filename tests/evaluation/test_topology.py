"""Topology-aware vessel metrics (clDice, connected components) on hand-made masks with known answers, their place
in ``SegmentationMetrics`` (merging included), and ``convunext evaluate --topology``.

A straight 1-px line is its own skeleton, so on such vessels every count is known by hand."""

from __future__ import annotations

import csv
import json
import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from skimage.morphology import skeletonize
from torch import nn

from convunext import create_model
from convunext.checkpoint import save_checkpoint
from convunext.cli.main import main
from convunext.data import open_dataset
from convunext.evaluation.evaluate import wants_topology
from convunext.evaluation.metrics import SegmentationMetrics, TopologyMetrics, foreground_dice
from convunext.evaluation.topology import topology_counts, topology_scores

TOPOLOGY_COLUMNS = ["cldice", "cldice_tprec", "cldice_tsens", "components_pred", "components_true"]
TOPOLOGY_KEYS = {
    "cldice_mean",
    "cldice_std",
    "cldice_tprec_mean",
    "cldice_tsens_mean",
    "components_pred_mean",
    "components_true_mean",
    "components_abs_error_mean",
}


def line(shape: tuple[int, int] = (7, 20), row: int = 3, start: int = 2, stop: int = 18, width: int = 1) -> np.ndarray:
    """A horizontal vessel: rows ``row .. row + width - 1``, columns ``start .. stop - 1``."""
    mask = np.zeros(shape, dtype=bool)
    mask[row : row + width, start:stop] = True
    return mask


def scores(pred: np.ndarray, truth: np.ndarray) -> dict[str, float | int]:
    return topology_scores(topology_counts(pred, truth))


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    as_labels = [torch.from_numpy(mask.astype(np.int64))[None] for mask in (pred, truth)]
    return float(foreground_dice(*as_labels, num_classes=2)[0])


def test_a_straight_one_pixel_line_is_its_own_skeleton() -> None:
    assert np.array_equal(skeletonize(line()), line())  # the premise of the hand computations below


@pytest.mark.parametrize("width", [1, 3])
def test_perfect_prediction_scores_one(width: int) -> None:
    vessel = line(width=width)
    assert scores(vessel, vessel) == {
        "cldice": 1.0,
        "cldice_tprec": 1.0,
        "cldice_tsens": 1.0,
        "components_pred": 1,
        "components_true": 1,
    }


def test_gap_in_a_vessel_by_hand() -> None:
    truth = line()  # 16 px
    pred = truth.copy()
    pred[3, 9:11] = False  # a 2-px gap: two pieces of 7 px
    assert np.array_equal(skeletonize(pred), pred)
    # S_P = V_P (14 px, all inside V_L), S_L = V_L (16 px, 14 of them predicted)
    assert topology_counts(pred, truth) == (14, 14, 16, 14, 2, 1)
    result = scores(pred, truth)
    assert result["cldice_tprec"] == 1.0 and result["cldice_tsens"] == 14 / 16
    assert result["cldice"] == pytest.approx(2 * (7 / 8) / (1 + 7 / 8), abs=1e-15)  # 14/15
    assert (result["components_pred"], result["components_true"]) == (2, 1)


def test_a_broken_vessel_lowers_cldice_more_than_dice() -> None:
    truth = line((16, 36), row=2, start=3, stop=33, width=7) | line((16, 36), row=12, start=3, stop=33)
    broken = truth.copy()
    broken[12, 13:23] = False  # the thin vessel (30 px) broken by a 10-px gap
    eroded = truth.copy()
    eroded[2, 13:23] = False  # the same 10 px taken from the thick vessel's edge instead: no break
    # both lose 10 of 240 px: Dice 2 * 230 / (230 + 240) = 46/47
    assert dice(broken, truth) == pytest.approx(46 / 47, abs=1e-15)
    assert dice(eroded, truth) == pytest.approx(46 / 47, abs=1e-15)
    # broken: V_P is inside V_L, so Tprec = 1; the 10 gap pixels are on S_L (the thin vessel is its own skeleton),
    # and |S_L| <= 30 + 30, so Tsens <= 5/6 and clDice <= 2 * (5/6) / (1 + 5/6) = 10/11
    result = scores(broken, truth)
    assert result["cldice_tprec"] == 1.0 and result["cldice_tsens"] <= 5 / 6
    assert result["cldice"] <= 10 / 11 < 46 / 47
    assert (result["components_pred"], result["components_true"]) == (3, 2)
    # eroded: the thick vessel's centreline (its middle row) is still covered; nothing topological changed
    assert scores(eroded, truth) == {
        "cldice": 1.0,
        "cldice_tprec": 1.0,
        "cldice_tsens": 1.0,
        "components_pred": 2,
        "components_true": 2,
    }


def test_spurious_fragment_by_hand() -> None:
    truth = line()  # 16 px
    pred = truth.copy()
    pred[0:2, 5] = True  # a 2-px vertical fragment above the vessel (row 2 between them)
    assert np.array_equal(skeletonize(pred), pred)
    # S_P = V_P: 18 px, 16 inside V_L; S_L = V_L fully predicted
    assert topology_counts(pred, truth) == (18, 16, 16, 16, 2, 1)
    result = scores(pred, truth)
    assert result["cldice_tprec"] == 16 / 18 and result["cldice_tsens"] == 1.0
    assert result["cldice"] == pytest.approx(2 * (8 / 9) / (1 + 8 / 9), abs=1e-15)  # 16/17


def test_empty_cases_never_give_nan() -> None:
    empty, vessel = np.zeros((7, 20), dtype=bool), line()
    both_empty = scores(empty, empty)
    assert both_empty == {
        "cldice": 1.0,
        "cldice_tprec": 1.0,
        "cldice_tsens": 1.0,
        "components_pred": 0,
        "components_true": 0,
    }
    missed = scores(empty, vessel)  # nothing predicted: vacuous precision, no sensitivity
    assert (missed["cldice"], missed["cldice_tprec"], missed["cldice_tsens"]) == (0.0, 1.0, 0.0)
    invented = scores(vessel, empty)  # vessel predicted where there is none
    assert (invented["cldice"], invented["cldice_tprec"], invented["cldice_tsens"]) == (0.0, 0.0, 1.0)
    disjoint = scores(vessel, line(row=5))  # both non-empty, no overlap: Tprec = Tsens = 0
    assert (disjoint["cldice"], disjoint["cldice_tprec"], disjoint["cldice_tsens"]) == (0.0, 0.0, 0.0)
    metrics = TopologyMetrics()
    assert all(math.isnan(value) for value in metrics.compute().values())  # no images: NaN, no crash
    metrics.update(torch.zeros(2, 7, 20, dtype=torch.bool), torch.zeros(2, 7, 20, dtype=torch.long))
    assert metrics.compute()["cldice_mean"] == 1.0


def test_components_are_eight_connected() -> None:
    diagonal = np.eye(5, dtype=bool)  # five pixels touching only at corners
    apart = np.zeros((5, 5), dtype=bool)
    apart[0, 0] = apart[0, 2] = True  # one empty pixel between them
    assert topology_counts(diagonal, apart)[4:] == (1, 2)


def test_fov_and_ignored_pixels_are_left_out_before_skeletonising() -> None:
    truth = torch.from_numpy(line()).long()[None]  # columns 2..17
    pred = torch.from_numpy(line(start=0, stop=20)).clone()[None]  # the vessel, running on out of the FOV
    pred[0, 0, 0] = True  # and a blob outside the FOV
    fov = torch.zeros(1, 7, 20, dtype=torch.bool)
    fov[:, :, 2:18] = True
    inside = TopologyMetrics()
    assert inside.update(pred, truth, fov).tolist() == [[16, 16, 16, 16, 1, 1]]
    assert inside.compute()["cldice_mean"] == 1.0
    whole = TopologyMetrics()  # no FOV: 4 spurious centreline pixels on the vessel's row + the blob
    assert whole.update(pred, truth).tolist() == [[21, 16, 16, 16, 2, 1]]
    ignored = truth.clone()
    ignored[~fov] = 255  # the same pixels marked ignore instead: same answer as the FOV
    assert TopologyMetrics().update(pred, ignored).tolist() == [[16, 16, 16, 16, 1, 1]]


def test_means_over_images() -> None:
    truth = line()
    gap = truth.copy()
    gap[3, 9:11] = False
    metrics = TopologyMetrics()
    metrics.update(torch.from_numpy(np.stack([truth, gap])), torch.from_numpy(np.stack([truth, truth])).long())
    result = metrics.compute()
    assert result["cldice_mean"] == pytest.approx((1 + 14 / 15) / 2, abs=1e-15)
    assert result["cldice_std"] == pytest.approx((1 - 14 / 15) / 2, abs=1e-15)
    assert result["cldice_tsens_mean"] == (1 + 7 / 8) / 2 and result["cldice_tprec_mean"] == 1.0
    assert result["components_pred_mean"] == 1.5 and result["components_true_mean"] == 1.0
    assert result["components_abs_error_mean"] == 0.5


def _batch(seed: int, n: int = 3, k: int = 3) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, k, 12, 14, generator=gen)
    target = torch.randint(0, k, (n, 12, 14), generator=gen)
    target[torch.rand(n, 12, 14, generator=gen) < 0.1] = 255
    fov = torch.rand(n, 12, 14, generator=gen) < 0.8
    return logits, target, fov


def test_segmentation_metrics_reports_topology_only_when_on() -> None:
    logits, target, fov = _batch(0)
    on, off = SegmentationMetrics(3, topology=True), SegmentationMetrics(3)
    for metrics in (on, off):
        metrics.update(logits, target, fov, names=["a", "b", "c"])
    direct = TopologyMetrics()
    direct.update(logits.argmax(1) != 0, target, fov)  # foreground = any class but 0, the Dice's argmax
    assert {key: on.compute()[key] for key in TOPOLOGY_KEYS} == direct.compute()
    assert [{key: row[key] for key in TOPOLOGY_COLUMNS} for row in on.per_image()] == direct.per_image()
    assert not TOPOLOGY_KEYS & set(off.compute()) and not set(TOPOLOGY_COLUMNS) & set(off.per_image()[0])


def test_merge_keeps_the_topology_rows() -> None:
    batches = [_batch(seed) for seed in range(3)]
    single = SegmentationMetrics(3, topology=True)
    workers = [SegmentationMetrics(3, topology=True) for _ in range(2)]
    for i, (logits, target, fov) in enumerate(batches):
        names = [f"{i}_{j}" for j in range(3)]
        single.update(logits, target, fov, names)
        workers[i % 2].update(logits, target, fov, names)
    merged = SegmentationMetrics.from_state(pickle.loads(pickle.dumps(workers[1].state())))
    merged.merge(workers[0])
    expected = single.compute()
    assert {key: merged.compute()[key] for key in TOPOLOGY_KEYS} == pytest.approx(
        {key: expected[key] for key in TOPOLOGY_KEYS}, abs=1e-15
    )
    assert sorted(merged.per_image(), key=lambda row: row["name"]) == single.per_image()
    with pytest.raises(ValueError, match="topology"):
        merged.merge(SegmentationMetrics(3))


def test_wants_topology() -> None:
    vessels, glands = (
        open_dataset("synthetic", None, "test", task=task, num_images=2) for task in ("vessels", "glands")
    )
    assert wants_topology("auto", vessels) and not wants_topology("auto", glands)
    assert wants_topology("on", glands) and not wants_topology("off", vessels)
    with pytest.raises(ValueError, match="topology"):
        wants_topology("yes", vessels)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny ConvUNeXt checkpoint with random weights, 'trained' on the synthetic vessels (which have a FOV)."""
    torch.manual_seed(0)
    model_spec = {"name": "convunext", "kwargs": {"in_channels": 3, "num_classes": 2, "width": 8}}
    model = create_model(model_spec["name"], **model_spec["kwargs"])
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
    meta = {
        "model": model_spec,
        "classes": ["background", "vessel"],
        "normalization": {"mean": [0.5, 0.4, 0.3], "std": [0.25, 0.2, 0.15]},
        "data": {"name": "synthetic", "options": {"num_images": 4, "size": 48}},
    }
    return save_checkpoint(tmp_path_factory.mktemp("run"), "best", model, meta)


def test_evaluate_writes_topology_for_a_fov_dataset_and_not_with_off(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for mode, flags in [("auto", []), ("off", ["--topology", "off"])]:
        assert main(["evaluate", str(checkpoint), "synthetic", "--out", str(tmp_path / mode), *flags]) == 0
        text = capsys.readouterr().out
        report = json.loads((tmp_path / mode / "metrics.json").read_text())
        with open(tmp_path / mode / "per_image.csv", newline="") as handle:
            rows = list(csv.DictReader(handle))
        assert report["topology"] == mode and rows
        if mode == "auto":
            assert set(report["metrics"]) >= TOPOLOGY_KEYS and set(rows[0]) >= set(TOPOLOGY_COLUMNS)
            assert all(0.0 <= float(row["cldice"]) <= 1.0 and row["components_pred"].isdigit() for row in rows)
            assert "clDice" in text and "connected components per image, truth" in text
        else:
            assert not TOPOLOGY_KEYS & set(report["metrics"]) and not set(TOPOLOGY_COLUMNS) & set(rows[0])
            assert "clDice" not in text
