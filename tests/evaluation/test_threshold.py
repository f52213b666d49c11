"""The operating threshold: the Dice-optimal search (convunext.evaluation.threshold), its resolution and use
(convunext.inference.threshold, SegmentationMetrics, Predictor, ``--threshold``) and ``convunext calibrate``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from convunext.checkpoint import load_checkpoint, read_checkpoint_meta
from convunext.cli.main import main
from convunext.errors import ConvUNeXtError
from convunext.evaluation.metrics import SegmentationMetrics
from convunext.evaluation.operating_point import calibrate_checkpoint
from convunext.evaluation.threshold import ThresholdSearch
from convunext.inference.threshold import parse_threshold, predicted_labels, resolve_threshold

BINARY = {"classes": ["background", "vessel"]}


def test_the_search_finds_the_dice_optimal_threshold_of_a_hand_computed_case() -> None:
    # image 1: foreground pixels at 0.35 and 0.8, background at 0.3 and 0.1 -> any t in [0.30, 0.35) is perfect
    # image 2: foreground at 0.9, background at 0.32 -> perfect for t >= 0.32
    search = ThresholdSearch()
    search.update(torch.tensor([[0.35, 0.8, 0.3, 0.1]]), torch.tensor([[1, 1, 0, 0]]))
    search.update(torch.tensor([[0.9, 0.32]]), torch.tensor([[1, 0]]))
    choice = search.best()
    assert (choice.threshold, choice.dice, choice.images) == (0.34, 1.0, 2)  # 0.32..0.34 tie: nearest to 0.5
    # at 0.5: image 1 finds 1 of 2 vessels (Dice 2/3), image 2 is perfect
    assert choice.dice_at_half == pytest.approx((2 / 3 + 1) / 2)
    assert search.dice_curve()[50].item() == pytest.approx((2 / 3 + 1) / 2)


def test_the_search_skips_ignored_and_out_of_view_pixels_and_merges() -> None:
    search = ThresholdSearch()
    search.update(torch.tensor([[0.9, 0.9, 0.2]]), torch.tensor([[1, 255, 0]]), torch.tensor([[True, True, False]]))
    other = ThresholdSearch()
    other.merge(search.state())
    assert other.best() == search.best() and int(search.state().sum()) == 1  # one pixel counted


def test_resolution_of_the_setting() -> None:
    stored = {**BINARY, "threshold": {"value": 0.42}}
    assert resolve_threshold("auto", stored) == 0.42 and resolve_threshold("auto", BINARY) is None
    assert resolve_threshold("argmax", stored) is None and resolve_threshold(0.5, stored) is None  # 0.5 = argmax
    assert resolve_threshold(0.3, stored) == 0.3
    three = {"classes": ["background", "a", "b"]}
    assert resolve_threshold("auto", three) is None
    with pytest.raises(ConvUNeXtError, match="the model has 3 classes; a threshold applies to a binary model"):
        resolve_threshold(0.3, three)
    with pytest.raises(argparse.ArgumentTypeError, match="expected auto, argmax or a probability between 0 and 1"):
        parse_threshold("1.5")


def test_metrics_and_labels_follow_the_threshold() -> None:
    probabilities = torch.tensor([[[[0.6, 0.7]], [[0.4, 0.3]]]])  # N=1, K=2, H=1, W=2: foreground 0.4 and 0.3
    assert predicted_labels(probabilities).tolist() == [[[0, 0]]]
    assert predicted_labels(probabilities, 0.35).tolist() == [[[1, 0]]]
    target = torch.tensor([[[1, 0]]])
    at_argmax, at_035 = SegmentationMetrics(2), SegmentationMetrics(2, threshold=0.35)
    at_argmax.update(probabilities, target, logits=False)
    at_035.update(probabilities, target, logits=False)
    assert at_argmax.compute()["dice_fg_mean"] == 0.0 and at_035.compute()["dice_fg_mean"] == 1.0
    with pytest.raises(ValueError, match="threshold applies to two classes"):
        SegmentationMetrics(3, threshold=0.4)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run of the tiny synthetic recipe (records its threshold and scale as it trains)."""
    out = tmp_path_factory.mktemp("threshold")
    settings = ["model.kwargs.width=8", "data.options.num_images=8", "data.options.size=64", "data.crop_size=48"]
    settings += ["train.progress_bar=false", "train.run_name=run", "train.threads=1"]
    argv = ["train", "--epochs", "2", "--output-dir", str(out), *(arg for item in settings for arg in ("--set", item))]
    assert main(argv) == 0
    run = out / "run"
    return run


def test_a_run_records_its_validation_threshold_and_training_scale(trained: Path) -> None:
    meta, _ = read_checkpoint_meta(trained)
    assert 0 < meta["threshold"]["value"] < 1 and meta["threshold"]["split"] == "val"
    assert meta["threshold"]["dice"] >= meta["threshold"]["dice_at_0.5"] - 1e-9  # the search includes 0.5
    assert meta["threshold"]["dice_at_0.5"] == pytest.approx(meta["val_metrics"]["dice_fg_mean"], abs=1e-6)
    assert meta["scale"]["fov_diameter"] > 0


def test_calibrate_measures_the_same_operating_point_and_keeps_the_weights(trained: Path, tmp_path: Path) -> None:
    recorded, json_path = read_checkpoint_meta(trained)
    weights = (json_path.parent / recorded["weights"]["file"]).read_bytes()
    stripped = {key: value for key, value in recorded.items() if key not in ("threshold", "scale")}
    json_path.write_text(json.dumps(stripped, indent=2) + "\n")  # as made before runs recorded them
    try:
        entries = calibrate_checkpoint(load_checkpoint(trained), progress=False)
        again, _ = read_checkpoint_meta(trained)
    finally:
        json_path.write_text(json.dumps(recorded, indent=2) + "\n")
    assert entries["scale"] == recorded["scale"] and again["scale"] == recorded["scale"]
    assert entries["threshold"]["value"] == pytest.approx(recorded["threshold"]["value"], abs=0.02)
    assert list(again)[-1] == "weights" and (json_path.parent / recorded["weights"]["file"]).read_bytes() == weights


def test_predict_writes_the_mask_of_the_threshold(
    trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from PIL import Image

    monkeypatch.chdir(tmp_path)
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8)).save("eye.png")
    assert main(["predict", str(trained), "eye.png", "--out", "lo", "--threshold", "0.01", "--probabilities"]) == 0
    assert main(["predict", str(trained), "eye.png", "--out", "hi", "--threshold", "0.99"]) == 0
    low, high = (np.asarray(Image.open(f"{name}/eye_mask.png")) > 0 for name in ("lo", "hi"))
    probabilities = np.load("lo/eye_prob.npy").astype(np.float32)
    assert np.array_equal(low, probabilities[1] > 0.01) and low.sum() >= high.sum()


def test_calibrate_command_prints_what_it_recorded(trained: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = trained.joinpath("best.json").read_text()
    try:
        assert main(["calibrate", str(trained), "--quiet", "--threads", "1"]) == 0
    finally:
        trained.joinpath("best.json").write_text(before)
    line = capsys.readouterr().out
    assert (
        line.startswith(f"{trained.resolve() / 'best.json'}: threshold ") and "training scale: fields of view" in line
    )
