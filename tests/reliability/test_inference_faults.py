"""Issue 11, inference and metrics: no traceback on small images, no silently wrong AUC, no overwritten outputs.

* ``convunext predict`` / ``convunext evaluate`` on images under 16 px per side (the registry models' minimum):
  padded for the forward pass, outputs of the input's size (eager and fast back-ends);
* the FOV AUC is exact by default; the streaming binned AUC resolves tiny probabilities and never errs by more
  than the bound it reports;
* unreadable inputs and inputs that would overwrite each other's outputs are one-line errors naming the files.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from convunext import create_model
from convunext.checkpoint import save_checkpoint
from convunext.cli.main import main
from convunext.evaluation.metrics import FovMetrics, SegmentationMetrics
from convunext.inference import Inferer
from convunext.inference.predictor import Predictor
from convunext.inference.sliding_window import MIN_INPUT_SIZE

SMALL_SIZES = [(8, 8), (1, 20), (15, 15)]
MEAN, STD = [0.5, 0.4, 0.3], [0.25, 0.2, 0.15]
MODEL = {"name": "convunext", "kwargs": {"in_channels": 3, "num_classes": 2, "width": 8}}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny ConvUNeXt checkpoint (random weights, non-trivial BatchNorm statistics) trained 'on' synthetic data."""
    torch.manual_seed(0)
    model = create_model(MODEL["name"], **MODEL["kwargs"])
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    meta = {
        "model": MODEL,
        "classes": ["background", "vessel"],
        "normalization": {"mean": MEAN, "std": STD},
        "data": {"name": "synthetic", "options": {"num_images": 5, "size": 64}},
    }
    return save_checkpoint(tmp_path_factory.mktemp("run"), "best", model, meta)


def _write_images(folder: Path, sizes: list[tuple[int, int]], seed: int = 0) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    stems = []
    for height, width in sizes:
        stem = f"img_{height}x{width}"
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(folder / f"{stem}.png")
        stems.append(stem)
    return stems


# ---------------------------------------------------------------------------------------------------------------
# images under 16 px


@pytest.mark.parametrize("backend", ["eager", "fast"])
def test_predict_segments_images_under_16_px(checkpoint: Path, tmp_path: Path, backend: str) -> None:
    stems = _write_images(tmp_path / "images", SMALL_SIZES)
    outputs = []
    for attempt in range(2):
        out = tmp_path / f"pred{attempt}"
        argv = ["predict", str(checkpoint), str(tmp_path / "images"), "--out", str(out), "--quiet"]
        assert main([*argv, "--probabilities", "--overlay", "--backend", backend]) == 0
        outputs.append(out)
    for stem, size in zip(stems, SMALL_SIZES, strict=True):
        mask = np.asarray(Image.open(outputs[0] / f"{stem}_mask.png"))
        probabilities = np.load(outputs[0] / f"{stem}_prob.npy")
        assert mask.shape == size and probabilities.shape == (2, *size)
        assert np.asarray(Image.open(outputs[0] / f"{stem}_overlay.png")).shape == (*size, 3)
        assert np.array_equal(probabilities, np.load(outputs[1] / f"{stem}_prob.npy"))  # deterministic


@pytest.mark.parametrize("tile_size", [None, 16])
def test_small_image_prediction_is_the_padded_forward_pass(checkpoint: Path, tile_size: int | None) -> None:
    """The documented contract: pad bottom/right with 0 (normalised) to 16 px, run the model, crop back."""
    predictor = Predictor.from_checkpoint(checkpoint, Inferer(tile_size=tile_size, device="cpu"))
    rng = np.random.default_rng(1)
    for height, width in [*SMALL_SIZES, (5, 40)]:  # (5, 40) with tile 16: several tiles, each padded
        image = rng.random((height, width, 3), dtype=np.float32)
        result = predictor.predict(image)
        assert result.probabilities.shape == (2, height, width) and result.mask.shape == (height, width)
        if tile_size is None:
            normalised = (torch.from_numpy(image).permute(2, 0, 1) - predictor.mean) / predictor.std
            padded = nn.functional.pad(normalised[None], (0, max(0, 16 - width), 0, max(0, 16 - height)))
            with torch.no_grad():
                expected = torch.softmax(predictor.model(padded), dim=1)[0, :, :height, :width]
            assert torch.allclose(torch.from_numpy(result.probabilities), expected, atol=1e-6)


class _NeedsAtLeast(nn.Module):
    """A pointwise model that, like an exported ONNX graph, refuses inputs under ``min_size`` px per side."""

    def __init__(self, min_size: int) -> None:
        super().__init__()
        self.min_size = min_size
        self.head = nn.Conv2d(3, 2, 1)
        self.shapes: list[tuple[int, ...]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if min(x.shape[-2:]) < self.min_size:
            raise RuntimeError(f"input {tuple(x.shape)} is too small")
        self.shapes.append(tuple(x.shape))
        return self.head(x)


def test_every_forward_pass_gets_at_least_the_model_minimum() -> None:
    image = torch.randn(1, 3, 10, 100)
    for min_size, tile in [(MIN_INPUT_SIZE, 8), (64, 32), (64, None)]:
        model = _NeedsAtLeast(min_size)
        result = Inferer(tile_size=tile, tta=True)(model, image)
        assert result.shape == (1, 2, 10, 100) and model.shapes
        assert all(min(shape[-2:]) >= min_size for shape in model.shapes)
        with torch.no_grad():
            assert torch.allclose(result, torch.softmax(model.head(image), dim=1), atol=1e-6)  # pointwise


def test_evaluate_scores_images_under_16_px(checkpoint: Path, tmp_path: Path) -> None:
    root = tmp_path / "small"
    stems = _write_images(root / "images", SMALL_SIZES + [(32, 32)])
    (root / "masks").mkdir()
    rng = np.random.default_rng(2)
    for stem in stems:
        height, width = Image.open(root / "images" / f"{stem}.png").size[::-1]
        mask = (rng.random((height, width)) < 0.3).astype(np.uint8) * 255
        Image.fromarray(mask).save(root / "masks" / f"{stem}.png")
    (root / "splits.json").write_text(json.dumps({"train": stems[3:], "test": stems[:3]}))
    out = tmp_path / "report"
    assert main(["evaluate", str(checkpoint), str(root), "--dataset", "folder", "--out", str(out)]) == 0
    report = json.loads((out / "metrics.json").read_text())
    assert report["metrics"]["num_images"] == 3
    assert report["metrics"]["pixels"] == sum(h * w for h, w in SMALL_SIZES)


# ---------------------------------------------------------------------------------------------------------------
# AUC


def _adversarial_scores() -> tuple[np.ndarray, np.ndarray]:
    """10^6 float32 foreground probabilities (10% foreground) on which the old binned AUC erred by 8.8e-3.

    12k foreground pixels score in [1e-13, 4e-13] and sit above 110k background pixels in [1e-30, 3e-14] (the
    old bins lumped everything below 4.5e-13); 6k foreground pixels sit just above 45k background pixels, all
    within 2**-12 relative of 0.25 (one bin at 12 mantissa bits); the rest is a confident model's output.
    """
    rng = np.random.default_rng(0)
    ulp = np.float32(2.0**-25)  # float32 spacing in [0.25, 0.5)
    foreground = [
        10.0 ** rng.uniform(-13, -12.4, 12_000),
        np.float32(0.25) + ulp * rng.integers(1024, 2048, 6_000),
        1 / (1 + np.exp(-(rng.standard_normal(82_000) * 2 + 2))),
    ]
    background = [
        10.0 ** rng.uniform(-30, -13.5, 110_000),
        np.float32(0.25) + ulp * rng.integers(0, 1024, 45_000),
        1 / (1 + np.exp(-(rng.standard_normal(745_000) * 2 - 3))),
    ]
    scores = np.concatenate(foreground + background).astype(np.float32)
    labels = np.arange(scores.size) < 100_000
    order = rng.permutation(scores.size)
    return scores[order], labels[order]


def _rank_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Mann-Whitney U from mid-ranks (ties share their mean rank), independent of the library's algorithm."""
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    mid_ranks = np.cumsum(counts) - (counts - 1) / 2.0
    positives = int(labels.sum())
    negatives = labels.size - positives
    u = mid_ranks[inverse][labels].sum() - positives * (positives + 1) / 2
    return float(u / (positives * negatives))


@pytest.fixture(scope="module")
def adversarial() -> tuple[torch.Tensor, torch.Tensor, float]:
    scores, labels = _adversarial_scores()
    return (
        torch.from_numpy(scores).view(1, 1000, 1000),
        torch.from_numpy(labels).long().view(1, 1000, 1000),
        (_rank_auc(scores, labels)),
    )


def test_default_auc_is_exact_on_tiny_and_close_probabilities(adversarial) -> None:
    scores, target, reference = adversarial
    fov = FovMetrics()
    fov.update(scores, target)
    assert fov.auc() == pytest.approx(reference, abs=1e-12)
    assert fov.compute()["auc_error_bound"] == 0.0
    # the evaluator's accumulator, fed class probabilities
    metrics = SegmentationMetrics(2)
    probabilities = torch.stack([1 - scores, scores], dim=1)
    metrics.update(probabilities, target, torch.ones_like(target, dtype=torch.bool), logits=False)
    assert metrics.compute()["fov_auc"] == pytest.approx(reference, abs=1e-12)


def test_binned_auc_stays_within_the_bound_it_reports(adversarial) -> None:
    scores, target, reference = adversarial
    binned = FovMetrics(auc="binned")
    binned.update(scores, target)
    result = binned.compute()
    # only the 6k x 45k pairs within 2**-12 of each other share a bin: error 1.5e-3, inside the bound
    assert abs(result["auc"] - reference) <= result["auc_error_bound"] < 2e-3
    finer = FovMetrics(auc="binned", mantissa_bits=16)
    finer.update(scores, target)
    assert abs(finer.auc() - reference) <= finer.auc_error_bound() < 1e-6


def test_binned_auc_resolves_tiny_probabilities() -> None:
    """Probabilities down to float32's smallest normal value (1.2e-38) and 0 are ordered, not lumped in one bin."""
    exponents = torch.arange(-126, -2, dtype=torch.float64)
    negatives = torch.cat([torch.zeros(1, dtype=torch.float64), 2.0**exponents])
    positives = 2.0 ** (exponents + 0.5)  # each between two negatives
    scores = torch.cat([positives, negatives]).float()
    labels = torch.cat([torch.ones(len(positives)), torch.zeros(len(negatives))]).long()
    reference = _rank_auc(scores.numpy(), labels.numpy().astype(bool))
    binned = FovMetrics(auc="binned")
    binned.update(scores[None, None], labels[None, None])
    assert binned.auc() == pytest.approx(reference, abs=1e-12) and binned.auc_error_bound() == 0.0


def test_evaluate_reports_the_auc_mode_and_its_error_bound(checkpoint: Path, tmp_path: Path) -> None:
    reports = {}
    for mode, flags in [("exact", []), ("binned", ["--auc", "binned"])]:  # exact is the default
        assert main(["evaluate", str(checkpoint), "synthetic", "--out", str(tmp_path / mode), *flags]) == 0
        reports[mode] = json.loads((tmp_path / mode / "metrics.json").read_text())
        assert reports[mode]["auc"] == mode
    exact, binned = (reports[mode]["metrics"] for mode in ("exact", "binned"))
    assert exact["fov_auc_error_bound"] == 0.0
    assert abs(binned["fov_auc"] - exact["fov_auc"]) <= binned["fov_auc_error_bound"]


# ---------------------------------------------------------------------------------------------------------------
# inputs of convunext predict


def test_predict_zero_byte_file_is_one_line(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "empty.png"  # other non-images: tests/cli/test_main_job.py
    empty.write_bytes(b"")
    assert main(["predict", str(checkpoint), str(empty), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert f"{empty}: cannot read image" in err and "\n" not in err and "Traceback" not in err


def test_predict_reads_rgba_and_16_bit_grey(checkpoint: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
    alpha = rng.integers(0, 256, (20, 24, 1), dtype=np.uint8)
    grey16 = rng.integers(0, 65536, (20, 24), dtype=np.uint16)
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(np.concatenate([rgb, alpha], axis=2), "RGBA").save(images / "rgba.png")
    Image.fromarray(grey16).save(images / "grey16.png")
    out = tmp_path / "out"
    assert main(["predict", str(checkpoint), str(images), "--out", str(out), "--probabilities", "--quiet"]) == 0
    predictor = Predictor.from_checkpoint(checkpoint, Inferer(device="cpu"))
    expected = {
        "rgba": predictor.predict(rgb),  # alpha dropped
        "grey16": predictor.predict(np.repeat((grey16 / 65535.0).astype(np.float32)[..., None], 3, axis=2)),
    }
    for stem, prediction in expected.items():
        stored = np.load(out / f"{stem}_prob.npy")
        assert np.array_equal(stored, prediction.probabilities.astype(np.float16))


def test_predict_refuses_inputs_that_would_overwrite_each_other(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first, second = tmp_path / "a" / "eye.png", tmp_path / "b" / "eye.jpg"  # both would write eye_mask.png
    for path in (first, second):
        path.parent.mkdir()
        Image.fromarray(np.zeros((20, 20, 3), dtype=np.uint8)).save(path)
    out = tmp_path / "out"
    assert main(["predict", str(checkpoint), str(first), str(second), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert str(first) in err and str(second) in err and "\n" not in err
    assert not out.exists()  # refused before writing anything
