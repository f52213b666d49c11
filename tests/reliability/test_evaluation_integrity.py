"""Issue 30, evaluation side: a report folder holds one evaluation (or comparison), whole, or the command is refused;
a checkpoint is scored only on data of its own classes; a pretrained card states metrics measured on the data it
names; and a shipped model's name is never shadowed by its own report folder.

Items: 4 and 6 (report folders written whole, by one job, under a lock), 9 (classes of checkpoint and data), 11
(the card's data), 13 (``--out`` an existing file, a negative ``--tile-size``: refused before any work) and 15 (where
shipped models' reports go, and which of a local folder and a shipped model a name means).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import convunext.evaluation.evaluate as evaluate_module
import convunext.pretrained.store as pretrained_store
from convunext import create_model
from convunext.checkpoint import load_checkpoint, save_checkpoint
from convunext.cli.main import main
from convunext.errors import ConvUNeXtError
from convunext.evaluation.evaluate import evaluate_to_report
from convunext.evaluation.html_report import ReportGallery
from convunext.inference import Inferer
from convunext.pretrained import from_pretrained, publish_pretrained
from convunext.utils.lock import RunLock

pytestmark = pytest.mark.usefixtures("one_thread")

VESSELS = ["background", "vessel"]
THREE = ["background", "gland", "tumour"]
SYNTHETIC = {"name": "synthetic", "options": {"num_images": 5, "size": 64}}  # 2 test images of 64 x 64
NAME = "tiny-vessels"


def _run(folder: Path, classes: list[str], seed: int = 0) -> Path:
    """A run folder with a tiny ConvUNeXt (random weights) trained 'on' the tiny synthetic data."""
    torch.manual_seed(seed)
    kwargs = {"in_channels": 3, "num_classes": len(classes), "width": 8}
    meta = {
        "model": {"name": "convunext", "kwargs": kwargs},
        "classes": classes,
        "normalization": {"mean": [0.5, 0.4, 0.3], "std": [0.25, 0.2, 0.15]},
        "data": SYNTHETIC,
    }
    save_checkpoint(folder, "best", create_model("convunext", **kwargs), meta)
    return folder


@pytest.fixture(scope="module")
def vessel_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _run(tmp_path_factory.mktemp("vessel-run"), VESSELS)


def _dataset(
    root: Path, mask_values: list[int], class_names: list[str] | None = None, stems: tuple[str, ...] = tuple("abcdef")
) -> Path:
    """A folder dataset of RGB images of 32 x 32 (without splits.json; of ``abcdef`` the test split is ``e``)."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for stem in stems:
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / "images" / f"{stem}.png")
        Image.fromarray(rng.choice(mask_values, (32, 32)).astype(np.uint8)).save(root / "masks" / f"{stem}.png")
    if class_names is not None:
        (root / "dataset.json").write_text(json.dumps({"class_names": class_names}))
    return root


def _cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run the CLI, expect exit code 2, return its one error line (after a progress bar, if images were scored)."""
    code, _, err = _cli(argv, capsys)
    lines = [line for line in err.splitlines() if line.startswith(f"convunext {argv[0]}: ")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _files(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (hidden ones included), by relative path."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def no_scoring(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if any image is scored (the command must refuse before any work)."""

    def scored(*args: object, **kwargs: object) -> None:
        raise AssertionError("an image was scored before the refusal")

    monkeypatch.setattr(evaluate_module, "evaluate_model", scored)


# ------------------------------------------------------------------------------- items 4 and 6: whole reports
def test_a_second_evaluation_replaces_the_first_whole_and_keeps_the_users_files(
    vessel_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "report"
    assert main(["evaluate", str(vessel_run), "synthetic", "--out", str(out), "--full-maps"]) == 0
    assert len(list((out / "maps").glob("*.png"))) == 4 and (out / "report.html").is_file()
    (out / "NOTES.txt").write_text("my notes")
    (out / "maps" / "my-figure.png").write_bytes(b"mine")
    code, printed, _ = _cli(["evaluate", str(vessel_run), "synthetic", "--out", str(out), "--no-html"], capsys)
    assert code == 0
    assert sorted(_files(out)) == ["NOTES.txt", "maps/my-figure.png", "metrics.json", "metrics.md", "per_image.csv"]
    assert (out / "NOTES.txt").read_text() == "my notes"
    assert f"replaced the earlier evaluation in {out} (its files only" in printed


def test_an_interrupted_evaluation_leaves_nothing_under_a_final_name(
    vessel_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    collect, calls = ReportGallery.__call__, []

    def interrupted_at_the_second_image(gallery: ReportGallery, *args: object) -> None:
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        collect(gallery, *args)

    monkeypatch.setattr(ReportGallery, "__call__", interrupted_at_the_second_image)
    out = tmp_path / "report"
    assert main(["evaluate", str(vessel_run), "synthetic", "--out", str(out), "--full-maps"]) == 130
    assert not out.exists(), _files(out)  # the first image's maps were written, under their final names


def test_a_failed_re_evaluation_leaves_the_earlier_report_as_it_was(
    vessel_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], fail_fsync_of: Callable[[str], None]
) -> None:
    out = tmp_path / "report"
    assert main(["evaluate", str(vessel_run), "synthetic", "--out", str(out), "--topology", "off"]) == 0
    before = _files(out)
    fail_fsync_of("report.html")  # the page is written after metrics.json used to be
    message = _refused(["evaluate", str(vessel_run), "synthetic", "--out", str(out)], capsys)
    assert "no space left on device" in message and "report.html" in message
    assert _files(out) == before  # not the new metrics.json beside the old page


@pytest.mark.parametrize(
    ("name", "content"),
    [("metrics.json", b'{"my": "own results"}'), ("per_image.csv", b"name,score\nx,1\n"), ("report.html", b"<p>")],
)
def test_a_folder_with_files_of_a_reports_names_that_are_no_report_is_refused(
    vessel_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, content: bytes, no_scoring: None
) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / name).write_bytes(content)
    message = _refused(["evaluate", str(vessel_run), "synthetic", "--out", str(out)], capsys)
    assert str(out) in message and name in message and "another folder" in message
    assert _files(out) == {name: content}


def test_an_evaluation_folder_in_use_is_refused(
    vessel_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], no_scoring: None
) -> None:
    out = tmp_path / "report"
    with RunLock(out):  # another evaluation writing into it
        message = _refused(["evaluate", str(vessel_run), "synthetic", "--out", str(out)], capsys)
    assert f"{out}: in use by another process" in message
    assert not any(out.iterdir())


def test_a_comparison_replaces_the_earlier_comparison_whole(
    vessel_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    runs = [str(_run(tmp_path / f"run{seed}", VESSELS, seed)) for seed in (1, 2, 3)]
    out = tmp_path / "cmp"
    assert main(["compare", *runs, "synthetic", "--out", str(out)]) == 0
    assert (out / "paired-3-convunext.png").is_file()
    code, printed, _ = _cli(["compare", *runs[:2], "synthetic", "--out", str(out)], capsys)
    assert code == 0
    written = ["comparison.json", "comparison.md", "paired-2-convunext.png", "paired_differences.csv"]
    assert sorted(_files(out)) == written  # not the paired-3-*.png of the earlier comparison
    assert f"replaced the earlier comparison in {out}" in printed


def test_images_that_would_write_the_same_maps_are_refused(
    vessel_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _dataset(tmp_path / "data", [0, 255], stems=("a b", "a_b", "c"))
    (data / "splits.json").write_text(json.dumps({"train": ["c"], "test": ["a b", "a_b"]}))
    out = tmp_path / "report"
    message = _refused(["evaluate", str(vessel_run), str(data), "--out", str(out), "--full-maps"], capsys)
    assert "images 'a b' and 'a_b' would write the same full-size maps (a_b_*.png)" in message
    assert not out.exists()


# ------------------------------------------------------------------------------ item 13: checked before any work
@pytest.mark.parametrize("command", ["evaluate", "compare"])
def test_out_naming_an_existing_file_is_refused_before_any_work(
    vessel_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str, no_scoring: None
) -> None:
    target = tmp_path / "results.txt"
    target.write_text("mine")
    runs = [str(vessel_run)] if command == "evaluate" else [str(vessel_run), str(_run(tmp_path / "other", VESSELS, 1))]
    message = _refused([command, *runs, "synthetic", "--out", str(target)], capsys)
    report = {"evaluate": "evaluation", "compare": "comparison"}[command]
    assert message.endswith(f"{target}: is a file, not a folder (the {report} report is a folder of files)")
    assert target.read_text() == "mine"


def test_a_negative_tile_size_is_refused_before_any_work(
    vessel_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], no_scoring: None
) -> None:
    out = tmp_path / "report"
    with pytest.raises(SystemExit) as refused:  # argparse's refusal, as for predict's --tile-size
        main(["evaluate", str(vessel_run), "synthetic", "--out", str(out), "--tile-size", "-5"])
    assert refused.value.code == 2 and "argument --tile-size: '-5'" in capsys.readouterr().err
    with pytest.raises(ConvUNeXtError, match=r"^tile_size=-5 is not valid"):  # and from the API
        evaluate_to_report(load_checkpoint(vessel_run), "synthetic", out_dir=out, inferer=Inferer(tile_size=-5))
    assert not out.exists()


# ------------------------------------------------------------------------------------------ item 9: classes
def test_a_three_class_model_on_binary_data_is_refused_naming_both(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_scoring: None
) -> None:
    run = _run(tmp_path / "three", THREE)
    data = _dataset(tmp_path / "binary", [0, 255])
    out = tmp_path / "report"
    message = _refused(["evaluate", str(run), str(data), "--dataset", "folder", "--out", str(out)], capsys)
    assert str(run / "best.json") in message and str(data) in message
    assert str(THREE) in message and "['background', 'foreground']" in message
    assert not out.exists()


def test_a_binary_model_on_three_class_data_is_refused_naming_both(
    vessel_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], no_scoring: None
) -> None:
    data = _dataset(tmp_path / "three", [0, 1, 2], THREE)
    message = _refused(["evaluate", str(vessel_run), str(data), "--out", str(tmp_path / "report")], capsys)
    assert str(vessel_run / "best.json") in message and str(data) in message
    assert str(VESSELS) in message and str(THREE) in message


def test_other_class_names_are_refused_and_unnamed_binary_classes_fit(
    vessel_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    glands = _dataset(tmp_path / "glands", [0, 255], ["background", "gland"])
    message = _refused(["evaluate", str(vessel_run), str(glands), "--out", str(tmp_path / "a")], capsys)
    assert "['background', 'vessel'] are not those of" in message and "['background', 'gland']" in message
    unnamed = _dataset(tmp_path / "unnamed", [0, 255])  # a user's own binary folder without class names
    assert main(["evaluate", str(vessel_run), str(unnamed), "--out", str(tmp_path / "b"), "--no-html"]) == 0


def test_compare_checks_every_run_against_the_data_before_evaluating(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_scoring: None
) -> None:
    runs = [str(_run(tmp_path / f"three{seed}", THREE, seed)) for seed in (0, 1)]
    data = _dataset(tmp_path / "binary", [0, 255])
    message = _refused(["compare", *runs, str(data), "--out", str(tmp_path / "cmp")], capsys)
    assert str(Path(runs[0]) / "best.json") in message and str(data) in message and str(THREE) in message
    assert not (tmp_path / "cmp").exists()


# ------------------------------------------------------------------------------------------ item 11: the card
@pytest.fixture
def test_report(vessel_run: Path, tmp_path: Path) -> Path:
    """A copy of the run with its test evaluation on the synthetic data it was trained on."""
    run = tmp_path / "run"
    shutil.copytree(vessel_run, run)
    assert main(["evaluate", str(run), "synthetic", "--no-html"]) == 0
    return run / "eval-synthetic-test" / "metrics.json"


@pytest.mark.parametrize(
    ("edit", "problem"),
    [
        ({"dataset": "drive"}, "an evaluation on 'drive', but"),
        ({"dataset": None}, "names no dataset"),
    ],
)
def test_a_card_from_an_evaluation_on_other_data_is_refused(
    test_report: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], edit: dict, problem: str
) -> None:
    report = json.loads(test_report.read_text())
    test_report.write_text(json.dumps({**report, **edit}))
    package = tmp_path / "package"
    argv = ["export", str(test_report.parent.parent), "--pretrained", "x", "--out", str(package)]
    message = _refused(argv, capsys)
    assert str(test_report) in message and problem in message
    assert not package.exists() or not any(package.iterdir())


def test_a_failed_publish_leaves_the_earlier_model_whole(
    test_report: Path, vessel_run: Path, tmp_path: Path, fail_fsync_of: Callable[[str], None]
) -> None:
    package = tmp_path / "package"
    publish_pretrained(vessel_run, "tiny", test_report, "task", "selection", folder=package)
    before = _files(package)
    other = _run(tmp_path / "other", VESSELS, seed=7)
    assert main(["evaluate", str(other), "synthetic", "--no-html"]) == 0
    fail_fsync_of("tiny.json")
    with pytest.raises(Exception, match="no space left on device"):
        publish_pretrained(other, "tiny", other / "eval-synthetic-test" / "metrics.json", "t", "s", folder=package)
    assert _files(package) == before
    from_pretrained(package)  # weights and card still belong together


# ---------------------------------------------------------------------------- item 15: names and report folders
@pytest.fixture
def shipped(vessel_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``tiny-vessels`` shipped in a package folder of its own; the working directory an empty folder."""
    report = tmp_path / "report"
    assert main(["evaluate", str(vessel_run), "synthetic", "--out", str(report), "--no-html"]) == 0
    package = tmp_path / "package"
    publish_pretrained(vessel_run, "tiny-vessels", report / "metrics.json", "task", "selection", folder=package)
    monkeypatch.setattr(pretrained_store, "PRETRAINED_DIR", package)
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    return package


def _image(path: Path) -> Path:
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(path)
    return path


def test_evaluating_a_shipped_model_does_not_shadow_its_name(shipped: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, printed, _ = _cli(["evaluate", "tiny-vessels", "synthetic", "--no-html"], capsys)
    assert code == 0 and "convunext-reports/tiny-vessels/eval-synthetic-test/metrics.json" in printed
    assert Path("convunext-reports/tiny-vessels/eval-synthetic-test/metrics.json").is_file()
    assert not Path("tiny-vessels").exists()
    code, _, err = _cli(["predict", "tiny-vessels", str(_image(Path("eye.png"))), "--out", "predicted"], capsys)
    assert code == 0, err
    assert main(["evaluate", "tiny-vessels", "synthetic", "--no-html"]) == 0  # the same again


def test_a_folder_without_a_checkpoint_does_not_hide_the_shipped_model(
    shipped: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    Path("tiny-vessels/eval-synthetic-test").mkdir(parents=True)  # where reports of shipped models used to go
    code, _, err = _cli(["predict", "tiny-vessels", str(_image(Path("eye.png"))), "--out", "predicted"], capsys)
    assert code == 0, err
    notes = [line for line in err.splitlines() if line.startswith("convunext: ")]
    assert notes == [f"convunext: {NAME}: using the shipped pretrained model ({NAME} here holds no checkpoint)"]


def test_a_run_folder_of_a_shipped_models_name_wins_and_says_so(
    shipped: Path, vessel_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shutil.copytree(vessel_run, "tiny-vessels")
    code, printed, err = _cli(["evaluate", "tiny-vessels", "synthetic", "--no-html"], capsys)
    assert code == 0 and "tiny-vessels: using the run folder here, not the shipped pretrained model" in err
    assert "tiny-vessels/eval-synthetic-test/metrics.json" in printed and not Path("convunext-reports").exists()
