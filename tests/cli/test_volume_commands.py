"""The CT/MR workflow end to end on the built-in phantoms: train on slices, evaluate per volume, predict NIfTI and
DICOM inputs into label volumes on their own geometry; and the user errors of the path."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel
import numpy as np
import pytest

from convunext.checkpoint import load_checkpoint
from convunext.cli.main import main
from convunext.data.volumes import VolumeSettings, read_volume, synthetic_ct_root, write_dicom_series
from convunext.training import trainer as trainer_module

TINY = ["model.kwargs.width=8", "data.options.cases=5", "train.progress_bar=false"]


def _sets(*items: str) -> list[str]:
    return [arg for item in items for arg in ("--set", item)]


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CONVUNEXT_CACHE", str(folder))
        yield folder


@pytest.fixture(scope="module")
def run_dir(cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs")
    argv = ["train", "synthetic_ct", "--epochs", "1", "--context", "3", "--output-dir", str(out)]
    assert main([*argv, *_sets(*TINY, "train.run_name=ct")]) == 0
    return out / "ct"


def test_the_checkpoint_records_how_it_slices_and_normalises(run_dir: Path) -> None:
    checkpoint = load_checkpoint(run_dir)
    settings = VolumeSettings.from_dict(checkpoint.volume)
    assert settings.slice_axis == 2 and settings.context == 3 and settings.modalities == ("CT",)
    assert settings.normalizations[0].scheme == "ct"
    assert checkpoint.class_names == ["background", "organ", "lesion"]
    assert checkpoint.meta["model"]["kwargs"]["in_channels"] == 3
    # the best checkpoint is chosen on the Dice of whole validation volumes, which the history plots
    val = checkpoint.meta["val_metrics"]
    assert 0.0 <= val["volume_dice_fg_mean"] <= 1.0 and val["volume_dice_fg_mean"] != val["dice_fg_mean"]
    with open(run_dir / "metrics.csv") as handle:
        last = list(csv.DictReader(handle))[-1]
    assert float(last["val_dice"]) == pytest.approx(val["volume_dice_fg_mean"], abs=1e-6)  # csv: 6 digits


def test_evaluate_scores_every_test_volume_per_class_in_millimetres(
    run_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["evaluate", str(run_dir), "synthetic_ct", "--nsd-tolerance", "2"]) == 0
    text = capsys.readouterr().out
    assert "| class | Dice | HD95 (mm) | ASSD (mm) | NSD |" in text and "| lesion |" in text
    report = next(run_dir.glob("eval-*-test"))
    record = json.loads((report / "metrics.json").read_text())
    assert record["nsd_tolerance_mm"] == 2.0 and record["volumes"] == 1
    assert set(record["per_class"]) == {"organ", "lesion", "mean"}
    assert {"dice_fg_mean", "miou_cm", "hd95_lesion", "nsd_organ"} <= set(record["metrics"])
    rows = (report / "per_volume.csv").read_text().splitlines()
    assert rows[0].startswith("name,dice_fg,dice_organ,hd95_organ,assd_organ,nsd_organ") and len(rows) == 2
    page = (report / "report.html").read_text()
    assert "data:image/png;base64," in page and "lesion" in page


def test_predict_writes_label_volumes_on_each_inputs_geometry(run_dir: Path, cache: Path, tmp_path: Path) -> None:
    root = synthetic_ct_root(cases=5)
    scan = next((root / "imagesTs").iterdir())
    source = read_volume(scan)
    series = tmp_path / "series"
    write_dicom_series(series, np.round(source.array), spacing=source.spacing)
    out = tmp_path / "masks"
    assert (
        main(["predict", str(run_dir), str(scan), str(series), "--out", str(out), "--overlay", "--probabilities"]) == 0
    )
    mask = read_volume(out / scan.name.replace(".nii.gz", "_mask.nii.gz"), label=True)
    assert mask.shape == source.shape
    np.testing.assert_allclose(mask.affine, source.affine, atol=1e-5)
    assert set(np.unique(mask.array)) <= {0, 1, 2}
    from_dicom = read_volume(out / "series_mask.nii.gz", label=True)
    np.testing.assert_allclose(from_dicom.affine, read_volume(series).affine, atol=1e-4)
    stacked = nibabel.load(out / "series_prob.nii.gz")  # I x J x K x classes, summing to 1
    assert stacked.shape == (*source.shape, 3)
    np.testing.assert_allclose(np.asarray(stacked.dataobj).sum(axis=-1), 1.0, atol=1e-4)
    assert (out / "series_overlay.png").is_file()


def test_a_two_dimensional_checkpoint_refuses_a_volume(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runs = tmp_path / "runs"
    tiny = ["model.kwargs.width=8", "data.options.num_images=6", "data.options.size=64", "data.crop_size=48"]
    assert main(["train", "--epochs", "1", "--output-dir", str(runs), *_sets(*tiny, "train.run_name=flat")]) == 0
    scan = tmp_path / "scan.nii.gz"
    scan.write_bytes(b"")
    assert main(["predict", str(runs / "flat"), str(scan), "--out", str(tmp_path / "out")]) == 2
    assert "a volume, and" in capsys.readouterr().err


def test_bad_volumes_are_one_line_errors_and_nothing_is_written(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    two = tmp_path / "two-series"
    write_dicom_series(two, np.zeros((6, 6, 3)), spacing=(1, 1, 1), prefix="A")
    write_dicom_series(two, np.zeros((6, 6, 3)), spacing=(1, 1, 1), prefix="B")
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"\x1f\x8b not a volume")
    for bad, message in ((two, "two-series"), (broken, "broken.nii.gz")):
        out = tmp_path / f"out-{bad.stem}"
        assert main(["predict", str(run_dir), str(bad), "--out", str(out), "--quiet"]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err and "Traceback" not in err
        assert not list(out.glob("*_mask.nii.gz"))


def test_a_dataset_with_a_bad_volume_is_refused_in_one_line_before_training(
    cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    root = tmp_path / "Task99"
    shutil.copytree(synthetic_ct_root(cases=5), root)
    image = root / "imagesTr" / "case_001.nii.gz"
    nibabel.save(nibabel.Nifti1Image(np.zeros((8, 8, 4, 2), np.float32), np.eye(4)), image)
    runs = tmp_path / "runs"
    for argv in (
        ["data", "info", "volumes", str(root), "--validate"],
        ["train", "volumes", "--data-root", str(root), "--epochs", "1", "--output-dir", str(runs)],
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert "case_001.nii.gz: 4D volume (shape 8x8x4x2) where a 3D volume is expected" in err
    assert not runs.exists() or not any(runs.iterdir())


def test_a_run_saved_when_volumes_were_chosen_per_slice_chooses_anew_on_resume(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["train", "synthetic_ct", "--epochs", "1", "--output-dir", str(tmp_path)]
    assert main([*argv, *_sets(*TINY, "train.run_name=old")]) == 0
    load = trainer_module.load_training_state

    def per_slice_era(run_dir: Path) -> dict:
        state = load(run_dir)
        state["best"]["metrics"].pop("volume_dice_fg_mean")  # as a version before whole-volume selection saved it
        return state

    monkeypatch.setattr(trainer_module, "load_training_state", per_slice_era)
    capsys.readouterr()
    assert main(["train", "--resume", str(tmp_path / "old"), "--epochs", "2"]) == 0
    out = capsys.readouterr().out
    assert "chosen on the per-slice Dice; choosing anew on whole volumes" in out
    assert "(Dice = the Dice of whole volumes;" in out
    assert json.loads((tmp_path / "old" / "best.json").read_text())["epoch"] == 2  # the only whole-volume choice
