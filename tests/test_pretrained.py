"""Pretrained models: publishing a run (``convunext export --pretrained``) into a folder of one's own (never the
package), the card and the model card, float16 weights verified on load, names and folders accepted wherever a
checkpoint is, and one-line errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

import convunext.pretrained.store as store
from convunext.checkpoint import load_checkpoint
from convunext.cli.main import main
from convunext.data import open_dataset
from convunext.errors import ConvUNeXtError
from convunext.evaluation.evaluate import evaluate_checkpoint
from convunext.inference.predictor import Predictor
from convunext.pretrained import (
    PretrainedCard,
    checkpoint_reference,
    from_pretrained,
    list_pretrained,
    publish_pretrained,
)
from convunext.pretrained.card import CardTest
from convunext.pretrained.store import PRETRAINED_DIR

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ["model.kwargs.width=8", "data.options.num_images=10", "data.options.size=64", "data.crop_size=48"]


@pytest.fixture(scope="module")
def tested_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny trained run with its test evaluation in ``RUN/eval-synthetic-test/``."""
    out = tmp_path_factory.mktemp("runs")
    sets = [f for item in [*TINY, "train.progress_bar=false", "train.run_name=tiny"] for f in ("--set", item)]
    assert main(["train", "--epochs", "1", "--output-dir", str(out), *sets]) == 0
    assert main(["evaluate", str(out / "tiny"), "synthetic", "--no-html"]) == 0
    return out / "tiny"


@pytest.fixture
def published(tested_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The tiny run published as ``tiny-vessels`` with the CLI's defaults, from an empty working directory."""
    monkeypatch.chdir(tmp_path)
    assert main(["export", str(tested_run), "--pretrained", "tiny-vessels"]) == 0
    return tmp_path / "pretrained" / "tiny-vessels"


@pytest.fixture
def shipped(published: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``tiny-vessels`` shipped: the package's folder of pretrained models is its folder."""
    monkeypatch.setattr(store, "PRETRAINED_DIR", published)
    return published


def test_publishing_writes_a_folder_of_ones_own_never_the_package(
    tested_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    package_files = sorted(path.name for path in store.PRETRAINED_DIR.iterdir())
    monkeypatch.chdir(tmp_path)
    assert main(["export", str(tested_run), "--pretrained", "tiny-vessels"]) == 0
    folder = Path("pretrained/tiny-vessels")
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "tiny-vessels.json", "tiny-vessels.safetensors"]
    assert "convunext predict pretrained/tiny-vessels IMAGE" in capsys.readouterr().out
    assert sorted(path.name for path in store.PRETRAINED_DIR.iterdir()) == package_files
    before = (folder / "tiny-vessels.json").read_bytes()
    assert main(["export", str(tested_run), "--pretrained", "tiny-vessels"]) == 0  # an earlier version: replaced
    assert (folder / "tiny-vessels.json").read_bytes() == before
    assert main(["export", str(tested_run), "--pretrained", "other", "--out", str(folder)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"convunext export: error: {folder}: holds another checkpoint (tiny-vessels.json); give other a folder of "
        "its own"
    )


def test_publishing_into_the_package_is_refused(
    tested_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    package = tmp_path / "package"
    package.mkdir()
    monkeypatch.setattr(store, "PRETRAINED_DIR", package)
    for out in (package, package / "tiny-vessels"):
        assert main(["export", str(tested_run), "--pretrained", "tiny-vessels", "--out", str(out)]) == 2
        error = capsys.readouterr().err.strip().splitlines()
        assert len(error) == 1 and f"{out}: the installed package's pretrained models; save to a folder" in error[0]
    assert list(package.iterdir()) == []


def test_publish_writes_float16_weights_and_a_card_with_the_test_metrics(tested_run: Path, shipped: Path) -> None:
    with safe_open(str(shipped / "tiny-vessels.safetensors"), framework="pt") as handle:
        dtypes = {handle.get_tensor(key).dtype for key in handle.keys()}  # noqa: SIM118
    assert torch.float16 in dtypes and torch.float32 not in dtypes
    (card,) = list_pretrained()
    json_path = shipped / "tiny-vessels.json"
    assert card == PretrainedCard.from_meta(json_path, json.loads(json_path.read_text()))
    report = json.loads((tested_run / "eval-synthetic-test" / "metrics.json").read_text())
    assert card.name == "tiny-vessels" and card.model == "convunext"
    assert card.test_metrics["dice_fg_mean"] == report["metrics"]["dice_fg_mean"]
    first_row = (tested_run / "eval-synthetic-test" / "per_image.csv").read_text().splitlines()[1].split(",")
    assert card.tests[0].reference_image == {"name": first_row[0], "dice_fg": float(first_row[1])}
    assert card.tests[0].dataset == "synthetic" and card.tests[0].evaluation["split"] == "test"
    assert card.terms.startswith("see the terms of use")  # synthetic data: no data set's terms to state
    original = load_checkpoint(tested_run).model
    loaded = from_pretrained("tiny-vessels")
    assert all(p.dtype == torch.float32 for p in loaded.model.parameters())
    for (key, value), expected in zip(loaded.model.state_dict().items(), original.state_dict().values()):
        rounded = expected.half().to(expected.dtype) if expected.is_floating_point() else expected
        assert torch.equal(value, rounded), key  # the float16 rounding of the run's weights, nothing else
    assert loaded.class_names == ["background", "vessel"] and len(loaded.mean) == 3


def test_names_work_wherever_a_checkpoint_does(shipped: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    image = tmp_path / "eye.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (70, 90, 3), dtype=np.uint8)).save(image)
    assert main(["predict", "tiny-vessels", str(image), "--out", str(tmp_path / "out")]) == 0
    assert Image.open(tmp_path / "out" / "eye_mask.png").size == (90, 70)
    # the library's predictors take the name as the command line does
    by_name = Predictor.from_checkpoint("tiny-vessels").predict_file(image)[1]
    loaded = Predictor.from_checkpoint(from_pretrained("tiny-vessels")).predict_file(image)[1]
    assert np.array_equal(by_name.probabilities, loaded.probabilities) and by_name.probabilities.shape[-2:] == (70, 90)
    assert main(["models", "--pretrained"]) == 0
    listing = capsys.readouterr().out
    assert "| tiny-vessels" in listing and "dice_fg_mean" in listing and "terms of use" in listing


def test_the_folder_works_wherever_a_checkpoint_does_and_holds_its_model_card(published: Path) -> None:
    checkpoint = from_pretrained("pretrained/tiny-vessels")
    card = PretrainedCard.from_meta(checkpoint.path, checkpoint.meta)
    readme = (published / "README.md").read_text()
    assert readme.startswith("---\nlibrary_name: convunext\n") and "\n# tiny-vessels\n" in readme
    assert 'checkpoint = from_pretrained("pretrained/tiny-vessels")' in readme
    assert "convunext predict pretrained/tiny-vessels image.png --out predictions" in readme
    normalization = checkpoint.meta["normalization"]
    assert f"normalised per channel with mean {normalization['mean']} and std {normalization['std']}." in readme
    assert "- Output: `N x 2 x H x W` logits over the classes background, vessel;" in readme
    for key, value in card.test_metrics.items():
        assert re.search(rf"\| {key} +\| +{value:.4f} \|", readme), key
    assert card.data in readme and card.terms in readme
    # the run records the scale of its training images and the threshold chosen on its validation split
    assert f"- Training scale: fields of view {checkpoint.meta['scale']['fov_diameter']:g} px across." in readme
    assert f"vessel where its probability is above **{checkpoint.meta['threshold']['value']:g}**" in readme
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (70, 90, 3), dtype=np.uint8)).save("eye.png")
    assert main(["predict", "pretrained/tiny-vessels", "eye.png", "--out", "predicted"]) == 0
    assert Image.open("predicted/eye_mask.png").size == (90, 70)


def test_tampered_weights_are_refused(shipped: Path) -> None:
    weights = shipped / "tiny-vessels.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ConvUNeXtError, match="do not match their checksum"):
        from_pretrained("tiny-vessels")


def test_unknown_name_lists_the_available_ones(shipped: Path) -> None:
    with pytest.raises(ConvUNeXtError, match=r"^retina: no such folder, shipped pretrained model \(available: tiny-ve"):
        from_pretrained("retina")


def test_an_unknown_bare_name_on_the_command_line_lists_the_shipped_models(
    shipped: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    image = tmp_path / "eye.png"
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(image)
    assert main(["predict", "retina", str(image), "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.strip() == (
        "convunext predict: error: retina: checkpoint not found (shipped pretrained models: tiny-vessels)"
    )
    assert main(["predict", str(tmp_path / "run" / "best.json"), str(image), "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.strip().endswith("best.json: checkpoint not found")  # a path: no names listed


def test_export_without_a_readable_test_report_is_one_line(
    tested_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    args = ["export", str(tested_run), "--pretrained", "x", "--out", str(tmp_path / "pkg")]
    assert main([*args, "--test-report", str(tmp_path / "missing.json")]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "missing.json: cannot read the test report" in error[0]
    assert not (tmp_path / "pkg").exists() or not any((tmp_path / "pkg").iterdir())


def test_a_test_report_of_other_weights_is_refused(tested_run: Path, tmp_path: Path) -> None:
    report = json.loads((tested_run / "eval-synthetic-test" / "metrics.json").read_text())
    report["weights_sha256"] = "0" * 64
    (tmp_path / "other.json").write_text(json.dumps(report))
    with pytest.raises(ConvUNeXtError, match="not of .*other weights"):
        publish_pretrained(tested_run, "x", tmp_path / "other.json", "task", "selection", folder=tmp_path / "pkg")
    report["weights_sha256"] = load_checkpoint(tested_run).meta["weights"]["sha256"]
    report["split"] = "val"
    (tmp_path / "val.json").write_text(json.dumps(report))
    with pytest.raises(ConvUNeXtError, match="the 'val' split"):
        publish_pretrained(tested_run, "x", tmp_path / "val.json", "task", "selection", folder=tmp_path / "pkg")
    with pytest.raises(ConvUNeXtError, match="letters, digits and '-' only"):
        publish_pretrained(tested_run, "../x", tmp_path / "val.json", "task", "selection", folder=tmp_path / "pkg")


class _OneImage(torch.utils.data.Dataset):
    """One item of a dataset, keeping its ``info`` (the field of view)."""

    def __init__(self, dataset: torch.utils.data.Dataset, index: int) -> None:
        self.dataset, self.index, self.info = dataset, index, dataset.info  # type: ignore[attr-defined]

    def __len__(self) -> int:
        return 1

    def __getitem__(self, index: int) -> dict:
        return self.dataset[self.index]


SHIPPED_TESTS = [(card.name, test.dataset) for card in list_pretrained() for test in card.tests]
"""(model, data set) of every test a shipped model's card states."""
SHARED_COPY_OPTIONS = {"hrf": {"skip_unannotated": True}}
"""Reader options of the shared copies: ../shared/data's HRF lacks the annotations of 11_h, 12_h and 13_h."""


def test_the_package_ships_its_vessel_model() -> None:
    assert ("drive-vessels", "drive") in SHIPPED_TESTS
    card = next(card for card in list_pretrained() if card.name == "drive-vessels")
    assert card.model == "convunext" and card.terms.startswith("DRIVE")


@pytest.mark.parametrize("name, dataset", SHIPPED_TESTS)
def test_each_shipped_model_scores_its_stated_dice_on_the_first_test_image_of_each_data_set(
    name: str, dataset: str, request: pytest.FixtureRequest
) -> None:
    root = request.getfixturevalue(f"{dataset}_root")  # the real copy: a failure in CI when missing
    card = next(card for card in list_pretrained() if card.name == name)
    (test,) = [test for test in card.tests if test.dataset == dataset]
    assert test.reference_image is not None and test.evaluation is not None
    checkpoint = from_pretrained(name)
    data = open_dataset(dataset, root, "test", **SHARED_COPY_OPTIONS.get(dataset, {}))
    index = [record.name for record in data.records].index(test.reference_image["name"])
    # as the card's evaluation ran: its tiles, threshold and scale setting
    metrics = evaluate_checkpoint(
        checkpoint,
        _OneImage(data, index),
        progress=False,
        topology="off",
        threshold=test.evaluation["threshold"] if test.evaluation.get("threshold") is not None else "argmax",
        scale=test.evaluation.get("scale_setting", "auto"),
    )
    assert metrics.per_image()[0]["dice_fg"] == pytest.approx(test.reference_image["dice_fg"], abs=1e-3)


def test_export_refuses_a_bad_name_before_looking_for_a_test_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["export", "drive-vessels", "--pretrained", "bad/name", "--out", str(tmp_path / "p")]) == 2
    assert "pretrained name 'bad/name': use letters, digits and '-' only" in capsys.readouterr().err
    assert not (tmp_path / "p").exists()


def test_a_card_of_convunext_0_1_with_one_test_is_read_as_that_test(tmp_path: Path) -> None:
    meta = {"model": {"name": "convunext"}, "data": {"name": "drive"}}
    meta["pretrained"] = {
        "task": "vessels",
        "data": "drive (20 test images evaluated)",
        "selection": "the only run",
        "test_metrics": {"dice_fg_mean": 0.81},
        "test_evaluation": {"dataset": "drive", "split": "test", "images": 20},
        "terms": "research use only",
        "reference_image": {"name": "01_test", "dice_fg": 0.82},
    }
    card = PretrainedCard.from_meta(tmp_path / "old-vessels.json", meta)
    assert card.name == "old-vessels" and card.test_metrics == {"dice_fg_mean": 0.81}
    reference = {"name": "01_test", "dice_fg": 0.82}
    assert card.tests == (CardTest("drive", {"dice_fg_mean": 0.81}, meta["pretrained"]["test_evaluation"], reference),)
    assert PretrainedCard.from_meta(tmp_path / "old-vessels.json", {**meta, "pretrained": card.to_meta()}) == card


def test_reports_name_a_shipped_model_by_its_name_not_a_path_of_this_machine(tmp_path: Path) -> None:
    assert checkpoint_reference(PRETRAINED_DIR / "drive-vessels.json") == "drive-vessels"
    assert checkpoint_reference("runs/mine/best.json") == "runs/mine/best.json"
    assert checkpoint_reference(tmp_path / "drive-vessels.json") == str(tmp_path / "drive-vessels.json")
