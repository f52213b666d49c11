"""``convunext compare`` on two tiny synthetic runs: the files it writes, reusing reports, and its user errors."""

from __future__ import annotations

import csv
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from convunext.cli.main import main
from convunext.evaluation import compare

TINY = ["model.kwargs.width=8", "data.options.num_images=10", "data.options.size=64", "data.crop_size=48"]
TEST_IMAGES = 3  # the synthetic test split of 10 images

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is faster, the CPU is shared


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    out = tmp_path_factory.mktemp("runs")
    for model in ("convunext", "unet"):
        sets = [
            arg for item in (*TINY, "train.progress_bar=false", f"train.run_name={model}") for arg in ("--set", item)
        ]
        assert main(["train", "--model", model, "--epochs", "1", "--output-dir", str(out), *sets]) == 0
    return out / "convunext", out / "unet"


@pytest.fixture
def evaluations(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The checkpoints that :func:`compare_runs` evaluates (instead of reusing a report)."""
    evaluated: list[str] = []
    evaluate = compare.evaluate_to_report

    def counting(checkpoint: Any, *args: Any, **kwargs: Any) -> Any:
        evaluated.append(checkpoint.path.parent.name)
        return evaluate(checkpoint, *args, **kwargs)

    monkeypatch.setattr(compare, "evaluate_to_report", counting)
    yield evaluated


def _compare(*argv: str) -> int:
    return main(["compare", *argv, "--threads", "1"])


def test_compare_writes_the_comparison_and_reuses_the_reports(
    runs: tuple[Path, Path], tmp_path: Path, evaluations: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    reference, other = runs
    for report in (reference / "eval-synthetic-test", other / "eval-synthetic-test"):
        shutil.rmtree(report, ignore_errors=True)
    out = tmp_path / "cmp"
    assert _compare(str(reference), str(other), "synthetic", "--out", str(out)) == 0
    assert evaluations == ["convunext", "unet"]  # no report yet: both evaluated, as `convunext evaluate` would
    assert (reference / "eval-synthetic-test" / "per_image.csv").is_file()
    printed = capsys.readouterr().out
    assert "difference vs reference" in printed and "95% CI" in printed and "Wilcoxon p" in printed

    text = (out / "comparison.md").read_text()
    assert text.startswith("# Paired comparison") and f"{TEST_IMAGES} images" in text
    assert "| reference " in text and "wins / ties / losses" in text
    summary = json.loads((out / "comparison.json").read_text())
    assert summary["reference"] == str(reference) and summary["metric"] == "dice_fg"
    assert [run["model"] for run in summary["runs"]] == ["convunext", "unet"]
    (result,) = summary["comparisons"]
    assert result["run"] == str(other) and result["images"] == TEST_IMAGES
    assert result["wins"] + result["ties"] + result["losses"] == TEST_IMAGES
    assert result["ci_low"] <= result["mean_difference"] <= result["ci_high"] and 0 < result["p_value"] <= 1
    rows = list(csv.DictReader((out / "paired_differences.csv").open()))
    assert len(rows) == TEST_IMAGES and {row["model"] for row in rows} == {"unet"}
    for row in rows:
        assert float(row["difference"]) == pytest.approx(float(row["score"]) - float(row["reference"]), abs=2e-6)
    mean = sum(float(row["difference"]) for row in rows) / TEST_IMAGES
    assert mean == pytest.approx(result["mean_difference"], abs=1e-5)
    assert (out / "paired-2-unet.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # again, another metric: both reports are current, nothing is evaluated
    assert _compare(str(reference), str(other), "synthetic", "--metric", "iou_fg", "--out", str(out)) == 0
    assert evaluations == ["convunext", "unet"]
    assert "reusing the report" in capsys.readouterr().out
    assert json.loads((out / "comparison.json").read_text())["metric"] == "iou_fg"


def test_a_reproduction_test_report_is_reused_and_a_stale_report_is_not(
    runs: tuple[Path, Path], tmp_path: Path, evaluations: list[str]
) -> None:
    reference, other = runs
    assert _compare(str(reference), str(other), "synthetic", "--out", str(tmp_path / "first")) == 0
    evaluations.clear()
    # the reference's report moved where `convunext reproduce` keeps it; the other's made from other weights
    shutil.rmtree(reference / "test", ignore_errors=True)
    (reference / "eval-synthetic-test").rename(reference / "test")
    report = other / "eval-synthetic-test" / "metrics.json"
    report.write_text(json.dumps({**json.loads(report.read_text()), "weights_sha256": "0" * 64}))
    assert _compare(str(reference), str(other), "synthetic", "--out", str(tmp_path / "second")) == 0
    assert evaluations == ["unet"]
    runs_used = json.loads((tmp_path / "second" / "comparison.json").read_text())["runs"]
    assert [(Path(run["report"]).name, run["reused"]) for run in runs_used] == [
        ("test", True),
        ("eval-synthetic-test", False),
    ]
    shutil.rmtree(reference / "test")


def test_a_report_made_with_other_inference_settings_is_not_reused(
    runs: tuple[Path, Path], tmp_path: Path, evaluations: list[str]
) -> None:
    compared = [*map(str, runs), "synthetic", "--out", str(tmp_path / "cmp")]
    tiled = ["--tile-size", "32", "--overlap", "0.5"]
    for settings, evaluated in (([], None), (["--tta"], True), (tiled, True), (tiled, False)):
        evaluations.clear()
        assert _compare(*compared, *settings) == 0
        if evaluated is not None:  # reports made with other settings are made again; the same settings reuse them
            assert evaluations == (["convunext", "unet"] if evaluated else [])
    recorded = json.loads((runs[0] / "eval-synthetic-test" / "metrics.json").read_text())
    assert (recorded["tile_size"], recorded["overlap"], recorded["tta"]) == (32, 0.5, False)


def test_user_errors_are_one_line(runs: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    reference, other = runs
    three_classes = tmp_path / "three-classes"
    shutil.copytree(other, three_classes)
    meta = json.loads((three_classes / "best.json").read_text())
    (three_classes / "best.json").write_text(json.dumps({**meta, "classes": ["background", "a", "b"]}))
    cases = [
        ([str(reference), "synthetic"], "compare needs at least two runs (got 1)"),
        ([str(reference), str(reference / "best.json"), "synthetic"], "the same checkpoint is named twice"),
        ([str(reference), str(three_classes), "synthetic"], "trained for different numbers of classes"),
        ([str(reference), str(other), "synthetic", "--metric", "pixels"], "'pixels' is not a per-image metric"),
        ([str(reference), str(tmp_path / "missing"), "synthetic"], "checkpoint not found"),
    ]
    for argv, message in cases:
        assert _compare(*argv, "--out", str(tmp_path / "cmp")) == 2
        err = capsys.readouterr().err  # after the progress bar of an evaluation, if one ran: one line
        assert message in err.strip().splitlines()[-1] and "Traceback" not in err, err
