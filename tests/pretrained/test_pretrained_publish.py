"""Publishing a model of several data sets (a ``mixed`` run): its card states one test per data set it was trained
on, each from a test report of its weights, and a missing, repeated or foreign data set is refused in one line."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from convunext.checkpoint import read_checkpoint_meta
from convunext.cli.main import main
from convunext.errors import ConvUNeXtError
from convunext.pretrained import DATASET_TERMS, from_pretrained, publish_pretrained
from convunext.pretrained.card import CardTest, PretrainedCard

MIXED = {"name": "mixed", "options": {"datasets": ["drive", "stare"]}}


def _report(run: Path, dataset: str, dice: float, split: str = "test", sha: str | None = None) -> Path:
    """A test report of ``run``'s weights on ``dataset`` (as ``convunext evaluate`` writes it, with its first
    image's row in ``per_image.csv``)."""
    folder = run / f"eval-{dataset}-{split}"
    folder.mkdir(parents=True)
    meta = read_checkpoint_meta(run)[0]
    report = {
        "dataset": dataset,
        "split": split,
        "images": 4,
        "tile_size": None,
        "threshold": 0.47,
        "scale_setting": "auto",
        "weights_sha256": sha or meta["weights"]["sha256"],
        "metrics": {"dice_fg_mean": dice, "fov_auc": 0.97, "cldice_mean": None},
    }
    (folder / "metrics.json").write_text(json.dumps(report))
    (folder / "per_image.csv").write_text(f"name,dice_fg\n{dataset}-first,{dice + 0.01:.2f}\n")
    return folder / "metrics.json"


@pytest.fixture
def mixed_run(make_run: Callable[..., Path]) -> Path:
    """A tiny ConvUNeXt "trained on" DRIVE and STARE together, tested on each and on HRF (another data set)."""
    run = make_run("retina", data=MIXED)
    _report(run, "stare", 0.80)
    _report(run, "drive", 0.81)
    _report(run, "hrf", 0.70)
    return run


def test_the_card_states_each_training_data_set_s_test_in_training_order(mixed_run: Path, tmp_path: Path) -> None:
    reports = [mixed_run / "eval-stare-test" / "metrics.json", mixed_run / "eval-drive-test" / "metrics.json"]
    json_path = publish_pretrained(mixed_run, "retina", reports, "vessels", "the only run", tmp_path / "retina")
    card = PretrainedCard.from_meta(json_path, json.loads(json_path.read_text()))
    assert [test.dataset for test in card.tests] == ["drive", "stare"]
    assert card.tests[0] == CardTest(
        "drive",
        {"dice_fg_mean": 0.81, "fov_auc": 0.97},
        {"dataset": "drive", "split": "test", "images": 4, "tile_size": None, "threshold": 0.47}
        | {"scale_setting": "auto"},
        {"name": "drive-first", "dice_fg": 0.82},
    )
    evaluated = "drive (4 test images evaluated), stare (4 test images evaluated)"
    assert card.data == f"drive + stare together; tested on {evaluated}"
    assert card.terms == f"{DATASET_TERMS['drive']} {DATASET_TERMS['stare']}"
    readme = (tmp_path / "retina" / "README.md").read_text()
    assert re.search(r"\| metric +\| +drive \(4 images\) \| +stare \(4 images\) \|", readme)
    assert re.search(r"\| dice_fg_mean +\| +0\.8100 \| +0\.8000 \|", readme)
    assert "The first drive test image, `drive-first`, scores Dice 0.8200." in readme
    assert "The first stare test image, `stare-first`, scores Dice 0.8100." in readme
    assert from_pretrained(tmp_path / "retina").meta["data"] == MIXED


def test_the_command_line_finds_the_reports_on_the_training_data_sets(
    mixed_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "published"
    assert main(["export", str(mixed_run), "--pretrained", "retina", "--out", str(out)]) == 0  # hrf's left out
    card = PretrainedCard.from_meta(out / "retina.json", json.loads((out / "retina.json").read_text()))
    assert [test.dataset for test in card.tests] == ["drive", "stare"]
    hrf = str(mixed_run / "eval-hrf-test" / "metrics.json")
    assert main(["export", str(mixed_run), "--pretrained", "retina", "--out", str(out), "--test-report", hrf]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"convunext export: error: {hrf}: an evaluation on 'hrf', but {mixed_run / 'best.json'} was trained on "
        "drive + stare; the card states test metrics on its training data: evaluate it on 'drive' and 'stare'"
    ]


def test_a_missing_or_repeated_data_set_is_refused(mixed_run: Path, tmp_path: Path) -> None:
    drive = mixed_run / "eval-drive-test" / "metrics.json"
    with pytest.raises(ConvUNeXtError, match=r"trained on drive \+ stare, but no test report on stare was given"):
        publish_pretrained(mixed_run, "retina", [drive], "vessels", "the only run", tmp_path / "a")
    with pytest.raises(ConvUNeXtError, match="two test reports on 'drive'; give one per data set"):
        publish_pretrained(mixed_run, "retina", [drive, drive], "vessels", "the only run", tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_a_validation_report_or_one_of_other_weights_is_refused(mixed_run: Path, tmp_path: Path) -> None:
    val = _report(mixed_run, "stare", 0.8, split="val")
    drive = mixed_run / "eval-drive-test" / "metrics.json"
    with pytest.raises(ConvUNeXtError, match="this report is of the 'val' split"):
        publish_pretrained(mixed_run, "retina", [drive, val], "vessels", "the only run", tmp_path / "a")
    other = _report(mixed_run, "chase_db1", 0.8, sha="0" * 64)
    with pytest.raises(ConvUNeXtError, match="other weights"):
        publish_pretrained(mixed_run, "retina", [drive, other], "vessels", "the only run", tmp_path / "b")
