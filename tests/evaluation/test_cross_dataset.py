"""Cross-dataset evaluation (:mod:`convunext.evaluation.cross_dataset`, ``convunext cross-evaluate``) on miniature
DRIVE, HRF, STARE and CHASE_DB1 copies (tests/miniatures.py) and a tiny random ConvUNeXt "trained on DRIVE": the
tables hold the numbers of the per-pair reports, a second invocation reuses every pair, the scale settings are
recorded, and bad input is refused in one line before anything is evaluated."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import miniatures
from convunext.checkpoint import save_checkpoint
from convunext.cli.main import main
from convunext.data.base import load_split_file
from convunext.errors import ConvUNeXtError
from convunext.evaluation import cross_dataset
from convunext.evaluation.cross_dataset import (
    CrossCheckpoint,
    CrossDatasetResult,
    CrossPair,
    checkpoint_labels,
    cross_evaluate,
)
from convunext.inference.sliding_window import Inferer
from convunext.models import create_model
from convunext.pretrained.store import PRETRAINED_DIR

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is faster, the CPU is shared

DATASETS = ["drive", "hrf", "stare", "chase_db1"]
TITLES = ["DRIVE", "HRF", "STARE", "CHASE_DB1"]
MODEL_FOV = 10.0
# the miniatures' FOV discs span min(height, width) pixels: DRIVE 12x10, HRF 8x12, STARE 16x18, CHASE_DB1 18x16;
# auto resizes by 10 / diameter, except within 10% of the model's scale (DRIVE's own)
AUTO_FACTORS = {"drive": 1.0, "hrf": 10 / 8, "stare": 10 / 16, "chase_db1": 10 / 16}
LABEL = "drive-run-convunext"
CPU = Inferer(device="cpu")


def _save_run(folder: Path, in_channels: int = 3, classes: tuple[str, ...] = ("background", "vessel")) -> Path:
    """A tiny ConvUNeXt with random weights (and BatchNorm statistics) described as trained on DRIVE, at scale 10 px.
    Its validation threshold is the median of its foreground probabilities on noise like the miniatures' images, so
    that it calls about half of their pixels vessel and its scores change with the scale it runs at."""
    torch.manual_seed(0)
    spec = {"name": "convunext", "kwargs": {"in_channels": in_channels, "num_classes": len(classes), "width": 8}}
    model = create_model(spec["name"], **spec["kwargs"]).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
        probabilities = model((torch.rand(1, in_channels, 32, 32) - 0.5) / 0.25).softmax(1)[0, -1]
    meta = {
        "model": spec,
        "classes": list(classes),
        "normalization": {"mean": [0.5] * in_channels, "std": [0.25] * in_channels},
        "data": {"name": "drive", "eval_tile_size": None},
        "scale": {"fov_diameter": MODEL_FOV},
        "threshold": {"value": round(float(probabilities.median()), 4), "split": "val"},
    }
    save_checkpoint(folder, "best", model, meta)
    return folder


def _threshold(run: Path) -> float:
    return json.loads((run / "best.json").read_text())["threshold"]["value"]


@pytest.fixture(scope="module")
def mini_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data")
    for make in (miniatures.make_drive, miniatures.make_hrf, miniatures.make_stare, miniatures.make_chase_db1):
        make(root)
    return root


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _save_run(tmp_path_factory.mktemp("runs") / "drive-run")


@pytest.fixture(scope="module")
def evaluated(mini_root: Path, run: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[CrossDatasetResult, list]:
    """Every miniature at both scales, with the lines logged."""
    lines: list[str] = []
    out = tmp_path_factory.mktemp("cross") / "out"
    result = cross_evaluate([run], mini_root, out_dir=out, inferer=CPU, progress=False, log=lines.append)
    return result, lines


def _report(out: Path, dataset: str, scale: str) -> dict[str, Any]:
    return json.loads((out / "runs" / LABEL / f"{dataset}-{scale}" / "metrics.json").read_text())


def _per_image_scales(out: Path, dataset: str, scale: str) -> list[float]:
    with open(out / "runs" / LABEL / f"{dataset}-{scale}" / "per_image.csv", newline="") as handle:
        return [float(row["scale"]) for row in csv.DictReader(handle)]


def _csv_rows(out: Path) -> list[dict[str, str]]:
    with open(out / "cross-dataset.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def _table_row(markdown: str, section: str) -> list[str]:
    """The cells of the one model row of ``## section``'s table."""
    block = markdown.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in block.splitlines() if line.startswith("| ")]
    assert len(rows) == 2, block  # the header and the one model
    return [cell.strip() for cell in rows[1].split("|")[1:-1]]


def test_every_pair_is_evaluated_into_its_own_report_and_logged(
    evaluated: tuple[CrossDatasetResult, list], run: Path
) -> None:
    result, lines = evaluated
    assert result.datasets == DATASETS and result.scales == ("auto", "off")
    assert [entry.label for entry in result.checkpoints] == [LABEL]
    assert len(lines) == 8 and all(line.endswith(": evaluating") for line in lines)
    assert lines[0] == f"[1/8] {LABEL} on DRIVE (test, scale auto): evaluating"
    expected_images = {name: len(load_split_file(name)["test"]) for name in DATASETS}
    for dataset in DATASETS:
        for scale in ("auto", "off"):
            report = _report(result.out_dir, dataset, scale)
            assert (report["dataset"], report["split"], report["scale_setting"]) == (dataset, "test", scale)
            assert report["threshold"] == _threshold(run) and report["model_fov_diameter"] == MODEL_FOV
            assert report["images"] == expected_images[dataset] and report["topology"] == "auto"
            assert not (result.out_dir / "runs" / LABEL / f"{dataset}-{scale}" / "report.html").exists()


def test_the_tables_hold_the_reports_numbers_with_the_in_domain_cell_in_bold(
    evaluated: tuple[CrossDatasetResult, list], run: Path
) -> None:
    result, _ = evaluated
    out = result.out_dir
    markdown = (out / "cross-dataset.md").read_text()
    record = json.loads((out / "cross-dataset.json").read_text())
    rows = {(row["dataset"], row["scale_setting"]): row for row in _csv_rows(out)}
    pairs = {(pair["dataset"], pair["scale_setting"]): pair for pair in record["pairs"]}
    assert len(rows) == len(pairs) == 8
    for section, key, column in (
        ("Dice", "dice_fg_mean", "dice"),
        ("AUC", "fov_auc", "auc"),
        ("clDice", "cldice_mean", "cldice"),
    ):
        cells = _table_row(markdown, section)
        assert cells[0] == f"{LABEL} (trained on DRIVE)"
        for dataset, cell in zip(DATASETS, cells[1:]):
            auto, off = (_report(out, dataset, scale)["metrics"][key] for scale in ("auto", "off"))
            assert 0.0 <= auto <= 1.0 and 0.0 <= off <= 1.0
            text = f"{auto:.4f} / {off:.4f}"
            assert cell == (f"**{text}**" if dataset == "drive" else text)  # trained on DRIVE: in-domain
            for scale, value in (("auto", auto), ("off", off)):
                assert float(rows[dataset, scale][column]) == value == pairs[dataset, scale][column]
                assert result.pair(LABEL, dataset, scale).metric(key) == value
    assert all(row["in_domain"] == str(row["dataset"] == "drive") for row in rows.values())
    assert result.table == markdown.split("## Dice\n\n", 1)[1].split("\n\n", 1)[0]
    assert record["checkpoints"][0]["trained_on"] == "drive" and record["checkpoints"][0]["threshold"] == _threshold(
        run
    )
    assert record["threshold"].startswith("auto") and record["torch"] == torch.__version__
    assert "validation threshold" in markdown and f"{LABEL} {_threshold(run):g}" in markdown
    assert "own resolution" in markdown and "- machine: CPU" in markdown


def test_scale_auto_and_off_record_their_setting_and_factors(evaluated: tuple[CrossDatasetResult, list]) -> None:
    result, _ = evaluated
    out = result.out_dir
    rows = {(row["dataset"], row["scale_setting"]): row for row in _csv_rows(out)}
    cells = _table_row((out / "cross-dataset.md").read_text(), "Scale factors")
    for dataset, cell in zip(DATASETS, cells[1:]):
        assert _per_image_scales(out, dataset, "off") == [1.0] * _report(out, dataset, "off")["images"]
        assert set(_per_image_scales(out, dataset, "auto")) == {AUTO_FACTORS[dataset]}
        assert float(rows[dataset, "auto"]["scale_median"]) == AUTO_FACTORS[dataset]
        assert float(rows[dataset, "off"]["scale_median"]) == 1.0
        text = f"{AUTO_FACTORS[dataset]:.3f} / 1.000"
        assert cell == (f"**{text}**" if dataset == "drive" else text)
    # scale matching changes the images the model sees where the factor is not 1
    stare = [_report(out, "stare", scale)["metrics"]["dice_fg_mean"] for scale in ("auto", "off")]
    assert stare[0] != stare[1]


def test_a_second_invocation_reuses_every_pair(
    evaluated: tuple[CrossDatasetResult, list], mini_root: Path, run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    result, _ = evaluated
    before = (result.out_dir / "cross-dataset.md").read_text()

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a finished pair was evaluated again")

    monkeypatch.setattr(cross_dataset, "evaluate_to_report", refuse)
    lines: list[str] = []
    again = cross_evaluate([run], mini_root, out_dir=result.out_dir, inferer=CPU, progress=False, log=lines.append)
    assert len(lines) == 8 and all(": reused " in line for line in lines)
    assert all(pair.reused for pair in again.pairs) and all(
        row["reused"] == "True" for row in _csv_rows(result.out_dir)
    )
    assert (result.out_dir / "cross-dataset.md").read_text() == before


def test_an_interrupted_run_continues_and_other_settings_are_evaluated_anew(
    mini_root: Path, run: Path, tmp_path: Path
) -> None:
    def pairs_logged(**options: Any) -> list[str]:
        lines: list[str] = []
        cross_evaluate([run], mini_root, ["stare"], out_dir=tmp_path, progress=False, log=lines.append, **options)
        return [line.split(": ")[1].split(" ")[0] for line in lines]

    assert pairs_logged(scales=["off"], inferer=CPU) == ["evaluating"]
    assert pairs_logged(inferer=CPU) == ["evaluating", "reused"]  # auto is new, off was done
    assert pairs_logged(inferer=Inferer(device="cpu", tile_size=16)) == ["evaluating", "evaluating"]
    assert _report(tmp_path, "stare", "off")["tile_size"] == 16


def test_the_reports_name_a_checkpoint_by_the_path_given_not_a_path_of_this_machine(
    mini_root: Path, run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(run.parent)
    result = cross_evaluate([run.name], mini_root, ["drive"], ["off"], tmp_path, CPU, progress=False, log=print)
    expected = str(Path(run.name) / "best.json")
    assert json.loads((tmp_path / "cross-dataset.json").read_text())["checkpoints"][0]["checkpoint"] == expected
    assert _report(result.out_dir, "drive", "off")["checkpoint"] == expected
    assert str(run.parent) not in (tmp_path / "runs" / LABEL / "drive-off" / "metrics.md").read_text()


def test_checkpoint_labels() -> None:
    meta = {"model": {"name": "convunext"}}
    paths = [
        Path("/r/hrf/convunext/seed0/best.json"),
        Path("/r/drive/convunext/seed0/best.json"),
        Path("/x/my-run/last.json"),
        Path("/x/unet/best.json"),
        PRETRAINED_DIR / "drive-vessels.json",
    ]
    labels = [
        "hrf-convunext-seed0",
        "drive-convunext-seed0",
        "my-run-last-convunext",
        "unet-convunext",
        "drive-vessels",
    ]
    assert checkpoint_labels(paths, [meta] * len(paths)) == labels
    assert checkpoint_labels(paths[:1], [meta]) == ["hrf-convunext-seed0"]  # a reproduce run, alone too
    assert checkpoint_labels([Path("/x/seed0/best.json")], [meta]) == ["seed0-convunext"]
    with pytest.raises(
        ConvUNeXtError, match="^/x/a/best.json and /x/a/a.json would share the label 'x-a-convunext'; rename a folder$"
    ):
        checkpoint_labels([Path("/x/a/best.json"), Path("/x/a/a.json")], [meta, meta])


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"datasets": ["glas"]}, "unknown vessel dataset 'glas'; choose from drive, hrf, stare, chase_db1"),
        ({"datasets": ["stare", "STARE"]}, "dataset stare is named twice"),
        ({"datasets": []}, "no dataset named; choose from drive, hrf, stare, chase_db1"),
        ({"scales": ["auto", "2"]}, "scales auto 2: give auto, off or both, each once"),
        ({"checkpoints": "twice"}, "the same checkpoint is named twice"),
        ({"checkpoints": "one channel"}, "images have 3 channels, .*best.json expects 1"),
        ({"checkpoints": "three classes"}, r"the model's classes \['background', 'a', 'b'\] are not those of"),
    ],
)
def test_refusals_are_one_line_and_come_before_any_evaluation(
    options: dict[str, Any], message: str, mini_root: Path, run: Path, tmp_path: Path
) -> None:
    checkpoints = {
        "twice": [run, run / "best.json"],
        "one channel": [run, _save_run(tmp_path / "gray", in_channels=1)],
        "three classes": [_save_run(tmp_path / "multi", classes=("background", "a", "b"))],
    }.get(options.pop("checkpoints", ""), [run])
    with pytest.raises(ConvUNeXtError, match=message) as error:
        cross_evaluate(checkpoints, mini_root, out_dir=tmp_path / "out", inferer=CPU, progress=False, **options)
    assert "\n" not in str(error.value)
    assert not (tmp_path / "out").exists()


def test_a_root_without_vessel_data_and_a_missing_dataset_are_refused(tmp_path: Path, run: Path) -> None:
    with pytest.raises(
        ConvUNeXtError, match="no vessel dataset found \\(looked for DRIVE/, HRF/, STARE/, CHASE_DB1/\\)"
    ):
        cross_evaluate([run], tmp_path, out_dir=tmp_path / "out")
    miniatures.make_stare(tmp_path)
    with pytest.raises(ConvUNeXtError, match="no CHASE_DB1 copy found"):
        cross_evaluate([run], tmp_path, ["stare", "chase_db1"], out_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_the_command_passes_skip_unannotated_to_hrf(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    hrf = miniatures.make_hrf(tmp_path / "data")
    missing = load_split_file("hrf")["test"][0]
    (hrf / "manual1" / f"{missing}.tif").unlink()
    out = tmp_path / "out"
    command = ["cross-evaluate", str(run), "--data-root", str(tmp_path / "data"), "--scales", "off", "--out", str(out)]
    assert main([*command, "--device", "cpu"]) == 2
    refusal = capsys.readouterr().err
    assert refusal.startswith("convunext cross-evaluate: error: ") and refusal.count("\n") == 1 and missing in refusal
    assert main([*command, "--device", "cpu", "--skip-unannotated"]) == 0
    printed = capsys.readouterr().out
    report = _report(out, "hrf", "off")
    assert report["data_options"] == {"skip_unannotated": True}
    assert report["images"] == len(load_split_file("hrf")["test"]) - 1
    assert f"{report['metrics']['dice_fg_mean']:.4f}" in printed and "cross-dataset.md" in printed
    assert main([*command, "--datasets", "nope"]) == 2
    assert "unknown vessel dataset 'nope'" in capsys.readouterr().err


def test_a_model_trained_on_several_datasets_is_in_domain_on_each() -> None:
    meta = {"data": {"name": "mixed", "options": {"datasets": ["drive", "stare", "hrf"]}}}
    entry = CrossCheckpoint("retina", Path("retina.json"), meta)
    assert entry.row_title() == "retina (trained on DRIVE + STARE + HRF)" and entry.trained_on == "drive+stare+hrf"
    in_domain = {name: CrossPair(entry, name, "auto", None, False, None).in_domain for name in ("stare", "chase_db1")}
    assert in_domain == {"stare": True, "chase_db1": False}
    assert CrossCheckpoint("x", Path("x.json"), {}).row_title() == "x (training data unknown)"
