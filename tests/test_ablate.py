"""``convunext ablate``: the studies' variants, their arguments and costs, and a smoke study on synthetic data (the
report files, skipping, sharing runs between studies, resuming)."""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import pytest

from convunext.cli.main import main
from convunext.errors import ConvUNeXtError
from convunext.evaluation.compare import paired_comparison, read_scores
from convunext.models import ConvUNeXt, create_model, list_models, list_variants, model_arguments
from convunext.models.cost import model_cost
from convunext.models.registry import variant_arguments
from convunext.models.variants import STUDIES, UNET_LIKE, study
from convunext.reproduce import BUDGETS, Experiment, ablate, plan_runs, resolve_experiment, study_models
from convunext.training.trainer import Trainer

QUIET = ["train.progress_bar=false"]
ONE_EPOCH = [*QUIET, "train.epochs=1"]
"""The module's study: one epoch per run (a plumbing test; 13 runs)."""


def _smoke(report: Path, models: list[str], overrides: list[str] = ONE_EPOCH) -> Experiment:
    """The smoke-budget experiment on synthetic data, seed 0, of ``models`` into ``report``."""
    return resolve_experiment(report, models, "smoke", ["synthetic"], [0], overrides=overrides)


ROADMAP = [
    ("0", "unet"),
    ("1", "roadmap1_macro"),
    ("2", "roadmap2_kernel7"),
    ("2a", "roadmap2_kernel5"),
    ("2b", "roadmap2_kernel9"),
    ("3", "roadmap3_depthwise"),
    ("4", "roadmap4_bottleneck"),
    ("5", "roadmap5_gelu"),
    ("6", "roadmap5_gelu"),  # BatchNorm kept: step 5's model
    ("6a", "roadmap6_layernorm"),
    ("7", "roadmap7_resnet_residual"),
    ("8", "roadmap8_strided_conv"),
    ("9", "roadmap9_gate"),
    ("10", "convunext"),
]
LEAVE_ONE_OUT = [
    ("0", "convunext"),
    ("1", "loo_kernel3"),
    ("2", "loo_dense"),
    ("3", "loo_no_bottleneck"),
    ("4", "loo_relu"),
    ("5", "loo_layernorm"),
    ("6", "loo_convnext_residual"),
    ("7", "loo_maxpool"),
    ("8", "loo_concat"),
    ("9", "roadmap9_gate"),  # 1:1:1:1 = roadmap step 9: one name per configuration
]

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is faster, the CPU is shared


def built_arguments(name: str) -> dict[str, object]:
    """The ablation knobs of the network ``create_model(name)`` builds, read back from its modules."""
    model = create_model(name, width=8)
    assert isinstance(model, ConvUNeXt)
    options = model.stem.options
    stages = (model.down1, model.down2, model.down3, model.down4)
    return {
        "kernel_size": options.kernel_size,
        "depthwise": options.depthwise,
        "expansion": options.expansion,
        "act": options.act,
        "norm": options.norm,
        "residual": options.residual,
        "downsample": model.down1.downsample,
        "attention_gate": model.up1.attention_gate,
        "depths": tuple(len(stage.blocks) for stage in stages),
    }


def test_the_studies_run_the_papers_sequence() -> None:
    assert [(row.label, row.name) for row in STUDIES["roadmap"].rows] == ROADMAP
    assert [(row.label, row.name) for row in STUDIES["leave-one-out"].rows] == LEAVE_ONE_OUT
    branches = [row.label for row in STUDIES["roadmap"].rows if row.branch]
    assert branches == ["2a", "2b", "6a"]  # kernel 5 and 9 beside 7 (3 is step 1), LayerNorm beside BatchNorm
    assert not any(row.branch for row in STUDIES["leave-one-out"].rows)


@pytest.mark.parametrize("name", sorted(STUDIES))
def test_each_row_differs_from_the_compared_model_by_exactly_its_named_change(name: str) -> None:
    for row in STUDIES[name].rows:
        if row.parent in (None, "unet"):
            continue
        mine, theirs = built_arguments(row.name), built_arguments(row.parent)
        changed = {key: value for key, value in mine.items() if theirs[key] != value}
        assert changed == dict(row.changes), f"{name} row {row.label}"


def test_the_roadmap_starts_unet_like_and_ends_at_the_papers_model() -> None:
    first = STUDIES["roadmap"].rows[1]
    assert first.parent == "unet" and built_arguments(first.name) == UNET_LIKE == dict(first.changes)
    paper = {key: model_arguments("convunext")[key] for key in UNET_LIKE}
    assert built_arguments("convunext") == paper
    reverted = {row.name: dict(row.changes) for row in STUDIES["leave-one-out"].rows[1:]}
    # every choice is reverted once, to UNet's value (or to LayerNorm, where UNet's is the paper's BatchNorm)
    assert sorted(key for changes in reverted.values() for key in changes) == sorted(UNET_LIKE)
    assert reverted["loo_layernorm"] == {"norm": "ln"} and reverted["loo_kernel3"] == {"kernel_size": 3}


def test_variants_are_registered_apart_from_the_models() -> None:
    assert list_models() == ["convunext", "unet", "attention_unet", "unet_plus_plus", "resunet"]
    names = {row.name for s in STUDIES.values() for row in s.rows} - {"unet", "convunext"}
    assert set(list_variants()) == names and len(names) == 19
    configurations = [tuple(sorted(built_arguments(name).items())) for name in [*names, "convunext"]]
    assert len(set(configurations)) == len(configurations)  # one name per configuration


def test_a_variant_fixes_its_choices_and_leaves_the_rest_free() -> None:
    assert variant_arguments("roadmap2_kernel7")[0] == "convunext"
    assert "kernel_size" not in model_arguments("roadmap2_kernel7") and "width" in model_arguments("roadmap2_kernel7")
    with pytest.raises(ValueError, match="kernel_size=7 fixed; to choose kernel_size, use model 'convunext'"):
        create_model("roadmap2_kernel7", kernel_size=3)
    with pytest.raises(ValueError, match="unknown model 'roadmap99'"):
        create_model("roadmap99")


def test_parameter_counts_by_hand() -> None:
    # width 8, 3 -> 2 channels. Step 1, a block of d channels (3x3 dense conv + bias, BN, 1x1 d->d, 1x1 d->d, BN):
    # 9d^2 + d + 2d + (d^2 + d) + (d^2 + d) + 2d = 11d^2 + 7d -> d=8: 760, 16: 2928, 32: 11488, 64: 45504.
    stem = 3 * 8 * 9 + 8 + 2 * 8 + 760  # conv 3x3 + bias, BN, block
    downs = [  # BN(in), max-pool, 1x1 in->out + bias, block(out)
        2 * 8 + 8 * 16 + 16 + 2928,
        2 * 16 + 16 * 32 + 32 + 11488,
        2 * 32 + 32 * 64 + 64 + 45504,
        2 * 64 + 64 * 64 + 64 + 45504,
    ]
    ups = [  # BN(deep), concatenation, 1x1 in->out + bias, block(out)
        2 * 64 + 128 * 32 + 32 + 11488,
        2 * 32 + 64 * 16 + 16 + 2928,
        2 * 16 + 32 * 8 + 8 + 760,
        2 * 8 + 16 * 8 + 8 + 760,
    ]
    head = 8 * 2 + 2
    assert stem + sum(downs) + sum(ups) + head == 135_386
    assert model_cost("roadmap1_macro", 64, width=8)[0] == 135_386
    # Step 3: 7x7 depthwise: 49d + d + 2d + (d^2 + d) + (d^2 + d) + 2d = 2d^2 + 56d -> 576, 1408, 3840, 11776.
    stem = 3 * 8 * 49 + 8 + 2 * 8 + 576
    downs = [
        2 * 8 + 8 * 16 + 16 + 1408,
        2 * 16 + 16 * 32 + 32 + 3840,
        2 * 32 + 32 * 64 + 64 + 11776,
        2 * 64 + 64 * 64 + 64 + 11776,
    ]
    ups = [
        2 * 64 + 128 * 32 + 32 + 3840,
        2 * 32 + 64 * 16 + 16 + 1408,
        2 * 16 + 32 * 8 + 8 + 576,
        2 * 8 + 16 * 8 + 8 + 576,
    ]
    assert stem + sum(downs) + sum(ups) + head == 50_002
    assert model_cost("roadmap3_depthwise", 64, width=8)[0] == 50_002


def _csv(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(path.open()))


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ablate")
    result = ablate(_smoke(out, STUDIES["roadmap"].models), "roadmap", log=lambda _: None)
    assert (result.trained, result.skipped) == (13, 0)  # 14 rows, step 6 = step 5's model
    return out


def test_report_files(report: Path) -> None:
    summary = _csv(report / "roadmap.csv")
    assert [(row["step"], row["model"]) for row in summary] == ROADMAP
    assert [row["model"] for row in _csv(report / "roadmap-runs.csv")] == STUDIES["roadmap"].models
    by_step = {row["step"]: row for row in summary}
    for row in summary:  # costs computed for the runs' models (width 8 under the smoke budget), not typed
        params, gflops = model_cost(row["model"], 480, width=8, in_channels=3, num_classes=2)
        assert int(row["params"]) == params and float(row["gflops_480"]) == pytest.approx(gflops, rel=1e-5)
        dice = float(row["dice_mean"])
        assert 0.0 <= dice <= 1.0
        if row["compared_with"]:
            compared = float(next(r["dice_mean"] for r in summary if r["model"] == row["compared_with"]))
            assert float(row["dice_vs_previous"]) == pytest.approx(dice - compared, abs=2e-6)
        assert float(row["dice_vs_final"]) == pytest.approx(dice - float(by_step["10"]["dice_mean"]), abs=2e-6)
    assert by_step["6"]["dice_mean"] == by_step["5"]["dice_mean"] and float(by_step["6"]["dice_vs_previous"]) == 0
    assert math.isnan(float(by_step["0"]["dice_vs_previous"]))
    markdown = (report / "roadmap.md").read_text()
    assert "budget `smoke`" in markdown and "## Synthetic" in markdown and "| ↳ 6a " in markdown
    assert "Δ Dice vs previous" in markdown and "`roadmap9_gate`" in markdown and "depths=(1, 1, 1, 1)" in markdown
    assert "Side branches (`↳`)" in markdown
    assert (report / "roadmap.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    record = json.loads((report / "roadmap.json").read_text())
    assert record["study"] == "roadmap" and record["models"] == STUDIES["roadmap"].models
    for row in _csv(report / "roadmap-runs.csv"):  # each run tested once, with its best validation checkpoint
        tested = json.loads((report / row["run_dir"] / "test" / "metrics.json").read_text())
        assert tested["split"] == "test" and tested["checkpoint"].endswith("best.json")


def test_each_difference_has_its_paired_test_over_the_test_images(report: Path) -> None:
    summary = _csv(report / "roadmap.csv")
    runs = _csv(report / "roadmap-runs.csv")
    scores = {row["model"]: read_scores(report / row["run_dir"] / "test" / "per_image.csv") for row in runs}
    section = (report / "roadmap.md").read_text().split("### Synthetic: paired comparisons (test images)\n", 1)[1]
    table = [line for line in section.split("\n## ", 1)[0].splitlines() if line.startswith("|")][2:]
    cells = {}
    for line in table:
        step, _, *tests = (cell.strip() for cell in line.strip("|").split("|"))
        cells[step.removeprefix("↳ ")] = tests
    assert "An interval that straddles 0 means these runs do not separate the two models" in section
    assert f"Per test image ({len(scores['convunext'])} images)" in section
    for row in summary:
        assert int(row["test_images"]) == len(scores[row["model"]])
        for compared, model in (("previous", row["compared_with"]), ("final", "convunext")):
            column = f"dice_vs_{compared}"
            cell = cells[row["step"]][compared == "final"]
            if model in ("", row["model"]):  # step 0 has no previous; step 6 is step 5's model; step 10 is ConvUNeXt
                assert row[f"{column}_wtl"] == "" and math.isnan(float(row[f"{column}_p"]))
                assert cell == ("—" if model == "" else "the same model")
                continue
            expected = paired_comparison(scores[model], scores[row["model"]])
            assert float(row[column]) == pytest.approx(expected.mean_difference, abs=2e-6)
            assert float(row[f"{column}_ci_low"]) == pytest.approx(expected.ci_low)
            assert float(row[f"{column}_ci_high"]) == pytest.approx(expected.ci_high)
            assert float(row[f"{column}_p"]) == pytest.approx(expected.p_value)
            assert row[f"{column}_wtl"] == f"{expected.wins}/{expected.ties}/{expected.losses}"
            # the table prints the report's full-precision scores to 4 decimals, the test recomputes them from
            # per_image.csv's 6: equal within half the last printed digit (plus that rounding)
            printed = re.match(r"([+-]?[0-9.]+) \[([+-]?[0-9.]+), ", cell)
            assert printed is not None, cell
            assert float(printed.group(1)) == pytest.approx(expected.mean_difference, abs=5e-5 + 2e-6)
            assert float(printed.group(2)) == pytest.approx(expected.ci_low, abs=5e-5 + 2e-6)
            assert cell.endswith(f", p {expected.p_value:.3g}, {row[f'{column}_wtl']}")


def test_second_invocation_skips_finished_runs(report: Path) -> None:
    result = ablate(_smoke(report, STUDIES["roadmap"].models), "roadmap", log=lambda _: None)
    assert (result.trained, result.skipped) == (0, 13)


def test_studies_share_their_common_runs(report: Path) -> None:
    models = ["convunext", "roadmap9_gate", "loo_relu"]  # the first two were trained by the roadmap
    result = ablate(_smoke(report, models), "leave-one-out", log=lambda _: None)
    assert (result.trained, result.skipped) == (1, 2)
    summary = _csv(report / "leave-one-out.csv")
    assert [(row["step"], row["model"]) for row in summary] == LEAVE_ONE_OUT
    assert [row["seeds"] for row in summary] == ["1", "0", "0", "0", "1", "0", "0", "0", "0", "1"]
    for row in summary:  # rows still to run show their cost too, computed with the dataset's arguments
        params, gflops = model_cost(row["model"], 480, width=8, in_channels=3, num_classes=2)
        assert int(row["params"]) == params and float(row["gflops_480"]) == pytest.approx(gflops, rel=1e-5)
    markdown = (report / "leave-one-out.md").read_text()
    assert "Δ Dice vs previous" not in markdown and "Δ Dice vs ConvUNeXt" in markdown
    assert "reverts one of ConvUNeXt's choices" in markdown and "Side branches" not in markdown
    assert (report / "roadmap.md").is_file()  # the roadmap's report is left alone


def test_an_interrupted_run_resumes(tmp_path: Path) -> None:
    (spec,) = plan_runs(tmp_path, ["roadmap3_depthwise"], ["synthetic"], [0], BUDGETS["smoke"], tmp_path, QUIET)
    first_epoch = spec.config.from_dict(spec.config.to_dict(), overrides=["train.epochs=1"])
    Trainer(first_epoch, run_dir=spec.run_dir).fit()  # as if killed after epoch 1 of 2:
    (spec.run_dir / "summary.json").unlink()
    spec.config.to_yaml(spec.run_dir / "config.yaml")
    assert spec.status() == "resume"
    result = ablate(_smoke(tmp_path, ["roadmap3_depthwise"], QUIET), "roadmap", log=lambda _: None)
    assert result.trained == 1 and spec.status() == "done"
    assert [row["epoch"] for row in _csv(spec.run_dir / "metrics.csv")] == ["1", "2"]
    summary = _csv(tmp_path / "roadmap.csv")  # the other rows wait for their runs
    assert [row["seeds"] for row in summary].count("1") == 1


def test_study_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ConvUNeXtError, match="unknown study 'nope'; choose from roadmap, leave-one-out"):
        study("nope")
    with pytest.raises(ConvUNeXtError, match="'unet' is not a model of the leave-one-out study"):
        study_models("leave-one-out", ["unet"])
    common = ["ablate", "--study", "leave-one-out", "--out", str(tmp_path)]
    assert main([*common, "--datasets", "synthetic", "--models", "unet", "--dry-run"]) == 2
    assert main([*common, "--datasets", "drive", "--data-root", str(tmp_path), "--dry-run"]) == 2
    errors = capsys.readouterr().err.splitlines()
    assert errors[0].startswith("convunext ablate: error: 'unet' is not a model") and "DRIVE not found" in errors[1]


def test_cli_dry_run_estimate_and_train_by_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    common = ["ablate", "--budget", "smoke", "--datasets", "synthetic", "--seeds", "0", "--out", str(tmp_path)]
    assert main([*common, "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[2] for line in lines] == STUDIES["roadmap"].models and all(" new " in line for line in lines)
    assert main([*common, "--models", "roadmap5_gelu", "--time-budget", "0.2", "--estimate"]) == 0
    assert "synthetic / roadmap5_gelu: step" in capsys.readouterr().out
    assert not list(tmp_path.iterdir())  # neither writes anything
    sets = ["model.kwargs.width=8", "data.options.num_images=10", "data.options.size=64", "data.crop_size=48", *QUIET]
    args = ["train", "--model", "loo_concat", "--epochs", "1", "--output-dir", str(tmp_path / "runs")]
    assert main([*args, *(part for s in sets for part in ("--set", s))]) == 0
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert json.loads((run_dir / "best.json").read_text())["model"]["name"] == "loo_concat"
