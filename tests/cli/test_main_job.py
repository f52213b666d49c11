"""``convunext train / evaluate / predict`` end to end on tiny synthetic data, and their user errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from convunext.cli.main import main
from convunext.data import open_dataset

TINY = [
    "model.kwargs.width=8",
    "data.options.num_images=10",
    "data.options.size=64",
    "data.crop_size=48",
    "train.progress_bar=false",
]


def _sets(*items: str) -> list[str]:
    return [arg for item in items for arg in ("--set", item)]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs")
    assert main(["train", "--epochs", "2", "--output-dir", str(out), *_sets(*TINY, "train.run_name=tiny")]) == 0
    return out / "tiny"


def test_train_prints_a_summary_with_next_commands(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = run_dir.parent
    assert main(["train", "--epochs", "1", "--output-dir", str(out), *_sets(*TINY, "train.run_name=again")]) == 0
    text = capsys.readouterr().out
    assert "best validation Dice" in text and "mIoU" in text
    assert "(Dice = mean per-image foreground Dice;" in text  # 2D images; volumes say "the Dice of whole volumes"
    assert f"run folder: {out / 'again'}" in text
    assert "convunext evaluate" in text and "convunext predict" in text


def test_train_with_several_seeds_reports_mean_and_std(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["train", "--epochs", "1", "--output-dir", str(tmp_path), "--seeds", "1", "2"]
    assert main([*args, *_sets(*TINY, "train.run_name=multi")]) == 0
    assert "over 2 seeds: Dice" in capsys.readouterr().out
    assert (tmp_path / "multi" / "seed1" / "best.json").is_file()
    assert (tmp_path / "multi" / "seed2" / "best.json").is_file()


def test_evaluate_prints_and_writes_the_report(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["evaluate", str(run_dir), "synthetic", "--out", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "Dice (per-image foreground, mean)" in text and "mIoU" in text and "AUC-ROC inside FOV" in text
    report = json.loads((tmp_path / "metrics.json").read_text())
    assert report["split"] == "test" and report["dataset"] == "synthetic"
    test_images = len(open_dataset("synthetic", None, "test", num_images=10, size=64))
    assert report["metrics"]["num_images"] == test_images
    rows = (tmp_path / "per_image.csv").read_text().splitlines()
    assert rows[0].startswith("name,dice_fg") and len(rows) == 1 + test_images
    assert (tmp_path / "metrics.md").read_text().startswith("# Evaluation")


def test_evaluate_adds_surface_distances_in_pixels_or_millimetres(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "mm"
    argv = ["evaluate", str(run_dir), "synthetic", "--surface", "--pixel-size", "0.02", "--nsd-tolerance", "0.05"]
    assert main([*argv, "--out", str(out)]) == 0
    assert "HD95 (per image, mean of finite) (mm)" in capsys.readouterr().out
    report = json.loads((out / "metrics.json").read_text())
    assert report["metrics"]["distance_unit"] == "mm" and report["surface"]["pixel_size_mm"] == 0.02
    assert {"hd95", "assd", "nsd", "hd95_infinite"} <= set(report["metrics"])
    header = (out / "per_image.csv").read_text().splitlines()[0].split(",")
    assert {"hd95", "assd", "nsd"} <= set(header)


def test_evaluate_scores_glas_style_instance_masks_object_by_object(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from miniatures import make_glas

    glands = ["train", "--epochs", "1", "--output-dir", str(tmp_path), *_sets(*TINY, "data.options.task=glands")]
    assert main([*glands, "--set", "train.run_name=glands"]) == 0
    glas = make_glas(tmp_path / "data")
    assert main(["evaluate", str(tmp_path / "glands"), str(glas), "--out", str(tmp_path / "glas"), "--no-html"]) == 0
    assert "object F1 (GlaS, per image, mean)" in capsys.readouterr().out
    metrics = json.loads((tmp_path / "glas" / "metrics.json").read_text())["metrics"]
    assert 0.0 <= metrics["object_f1"] <= 1.0 and 0.0 <= metrics["object_dice"] <= 1.0


def test_predict_writes_masks_probabilities_and_overlays(run_dir: Path, tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (70, 90, 3), dtype=np.uint8)).save(images / "a.png")
    Image.fromarray(rng.integers(0, 255, (33, 41), dtype=np.uint8)).save(images / "b.jpg")  # grey -> 3 channels
    out = tmp_path / "pred"
    assert (
        main(
            [
                "predict",
                str(run_dir / "best.json"),
                str(images),
                "--out",
                str(out),
                "--tile-size",
                "32",
                "--probabilities",
                "--overlay",
                "--tta",
                "--quiet",
            ]
        )
        == 0
    )
    mask = np.asarray(Image.open(out / "a_mask.png"))
    assert mask.shape == (70, 90) and set(np.unique(mask)) <= {0, 255}
    probabilities = np.load(out / "a_prob.npy")
    assert probabilities.shape == (2, 70, 90) and np.allclose(probabilities.sum(0), 1, atol=1e-2)
    assert np.array_equal(probabilities.argmax(0) * 255, mask)
    assert np.asarray(Image.open(out / "b_overlay.png")).shape == (33, 41, 3)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["predict", "missing-run", "x.png", "--out", "o"], "missing-run: checkpoint not found"),
        (["evaluate", "nowhere/best.json", "synthetic"], "checkpoint not found"),
        (["train", "--model", "unet3d", "--epochs", "1"], "unknown model 'unet3d'"),
        (["train", "--set", "train.epochs"], "expected SECTION.FIELD=VALUE"),
        (["train", "--set", "optim.lr=fast"], "optim.lr='fast' is not valid"),
        (["train", "does-not-exist.yaml"], "does-not-exist.yaml: no such config file or preset"),
    ],
)
def test_cli_user_errors_are_one_line(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and "Traceback" not in err


def test_predict_rejects_a_missing_input(run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["predict", str(run_dir), str(tmp_path / "nope.png"), "--out", str(tmp_path / "o")]) == 2
    assert "nope.png: no such file or folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["predict", str(run_dir), str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 2
    assert "folder holds no images" in capsys.readouterr().err
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    assert main(["predict", str(run_dir), str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "bad.png: cannot read image" in capsys.readouterr().err
