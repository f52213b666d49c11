"""``convunext reproduce`` at the smoke budget on synthetic data: the report files, skipping and resuming runs."""

from __future__ import annotations

import csv
import json
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from convunext.cli.main import build_parser, main
from convunext.errors import ConvUNeXtError
from convunext.evaluation.compare import read_scores
from convunext.evaluation.observers import SECOND_OBSERVER_NOTE, second_observer_metrics
from convunext.inference import Inferer
from convunext.models import list_models
from convunext.reproduce import (
    BUDGETS,
    CPU_STEPS,
    Experiment,
    budgets,
    plan_runs,
    reproduce,
    resolve_experiment,
    step_budget,
)
from convunext.reproduce.report import config_model_kwargs, observer_scores, paired_with_reference, results_markdown
from convunext.reproduce.run import record_with_invocations
from convunext.training.config import ExperimentConfig
from convunext.training.trainer import Trainer

MODELS = ["convunext", "unet"]
QUIET = ["train.progress_bar=false"]
RUNS = [("convunext", "0"), ("convunext", "1"), ("unet", "0"), ("unet", "1")]
"""(model, seed) of every run the module's report holds, in the report's order."""
SUMMARY = [("convunext", "2"), ("unet", "2")]
"""(model, seeds) of its summary."""


def _tabled(report: Path) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(model, seed) of ``results.csv``'s rows and (model, seeds) of ``summary.csv``'s."""
    rows = [(r["model"], r["seed"]) for r in csv.DictReader((report / "results.csv").open())]
    return rows, [(r["model"], r["seeds"]) for r in csv.DictReader((report / "summary.csv").open())]


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is faster, the CPU is shared


def _smoke(report: Path, models: list[str] = MODELS, **settings: Any) -> Experiment:
    """The smoke-budget experiment on synthetic data (quiet runs) of ``models`` into ``report``."""
    return resolve_experiment(report, models, "smoke", **{"datasets": ["synthetic"], "overrides": QUIET, **settings})


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("report")
    result = reproduce(_smoke(out), log=lambda _: None)
    assert (result.trained, result.skipped) == (4, 0)  # 2 models x the smoke budget's 2 seeds
    return out


def test_report_files(report: Path) -> None:
    assert _tabled(report) == (RUNS, SUMMARY)
    rows = list(csv.DictReader((report / "results.csv").open()))
    assert all(0.0 <= float(r["test_dice_fg_mean"]) <= 1.0 and int(r["params"]) > 0 for r in rows)
    markdown = (report / "results.md").read_text()
    assert "budget `smoke`" in markdown and "| ConvUNeXt" in markdown and "| UNet " in markdown
    assert "Synthetic Dice" in markdown and "GFLOPs (3x480x480)" in markdown
    table = [line for line in markdown.splitlines() if line.startswith("| ConvUNeXt")][0]
    assert table.count(" ± ") == 2  # Dice and mIoU as mean ± std over the two seeds
    runs = [line for line in markdown.splitlines() if line.startswith("| Synthetic | ConvUNeXt")][0]
    assert runs.count("CPU ") == 2  # the hardware of each seed beside its training minutes
    assert (report / "dice_vs_params.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((report / "reproduce.json").read_text())["budget"] == "smoke"
    for row in rows:  # each run was tested once, on the test split, with its best validation checkpoint
        assert not Path(row["run_dir"]).is_absolute()  # relative to the report: no machine path in the report
        tested = json.loads((report / row["run_dir"] / "test" / "metrics.json").read_text())
        assert tested["split"] == "test" and tested["checkpoint"].endswith("best.json")


def test_results_md_pairs_each_model_with_convunext_image_by_image(report: Path) -> None:
    heading = "### Synthetic: paired comparison with ConvUNeXt (test images)\n"
    section = (report / "results.md").read_text().split(heading, 1)[1].split("\n## ", 1)[0]
    assert "averaged over that model's seeds, then paired by image name" in section

    def seed_mean(model: str) -> dict[str, float]:
        seeds = [
            read_scores(report / "runs" / "synthetic" / model / f"seed{s}" / "test" / "per_image.csv") for s in (0, 1)
        ]
        return {name: (seeds[0][name] + seeds[1][name]) / 2 for name in seeds[0]}

    convunext, unet = seed_mean("convunext"), seed_mean("unet")
    differences = [unet[name] - convunext[name] for name in convunext]
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]] for line in section.splitlines()[4:]}
    assert rows["ConvUNeXt"][:3] == ["2", f"{sum(convunext.values()) / len(convunext):.4f}", "reference"]
    seeds, dice, difference, _, p_value, record = rows["UNet"]
    assert (seeds, dice) == ("2", f"{sum(unet.values()) / len(unet):.4f}")
    assert difference == f"{sum(differences) / len(differences):+.4f}" and 0 < float(p_value) <= 1
    assert record == f"{sum(d > 0 for d in differences)} / {differences.count(0.0)} / {sum(d < 0 for d in differences)}"
    # no ConvUNeXt run on a dataset: no section for it
    specs = plan_runs(report, ["unet"], ["synthetic"], [0, 1], BUDGETS["smoke"], report, QUIET)
    assert paired_with_reference("synthetic", ["unet"], specs) == []


def test_each_test_report_records_how_the_test_split_was_run(report: Path) -> None:
    for tested in report.glob("runs/*/*/*/test/metrics.json"):
        record = json.loads(tested.read_text())
        assert {key: record[key] for key in ("tile_size", "overlap", "tta", "backend")} == {
            "tile_size": None,  # synthetic images are evaluated whole
            "overlap": None,
            "tta": False,
            "backend": "fast",
        }


def test_the_protocol_fixes_how_the_test_split_is_run(tmp_path: Path) -> None:
    for inferer in (Inferer(tile_size=64), Inferer(tile_size=0), Inferer(overlap=0.5), Inferer(tta=True)):
        with pytest.raises(ConvUNeXtError, match=r"without TTA \(the protocol\); give an inferer without tile_size"):
            _smoke(tmp_path, inferer=inferer)
    experiment = _smoke(tmp_path, inferer=Inferer(device="cpu", backend="eager", batch_size=2))
    assert experiment.overrides[-1] == "train.device=cpu"  # the runs train where they are tested
    assert experiment.inferer.backend == "eager" and experiment.inferer.batch_size == 2
    parser = build_parser()
    args = parser.parse_args(["reproduce", "--device", "cpu", "--backend", "eager", "--threads", "1"])
    assert (args.device, args.backend, args.threads) == ("cpu", "eager", 1)
    for fixed in (["--tta"], ["--tile-size", "64"], ["--overlap", "0.5"], ["--batch-size", "2"]):
        with pytest.raises(SystemExit):
            parser.parse_args(["reproduce", *fixed])


def test_second_invocation_skips_finished_runs(report: Path) -> None:
    weights = sorted(report.glob("runs/*/*/*/last.safetensors"))
    stamps = [p.stat().st_mtime_ns for p in weights]
    invocations = json.loads((report / "reproduce.json").read_text())["invocations"]
    start = time.perf_counter()
    result = reproduce(_smoke(report), command="again", log=lambda _: None)
    assert (result.trained, result.skipped) == (0, 4)
    assert [p.stat().st_mtime_ns for p in weights] == stamps
    assert time.perf_counter() - start < 20
    assert len(list(csv.DictReader((report / "results.csv").open()))) == 4
    record = json.loads((report / "reproduce.json").read_text())  # the latest at the top, every invocation listed
    assert record["command"] == "again" and record["invocations"][:-1] == invocations
    assert {key: record["invocations"][-1][key] for key in ("command", "models", "seeds")} == {
        "command": "again",
        "models": MODELS,
        "seeds": [0, 1],
    }
    assert (
        "the runs may come from several invocations, each listed in `reproduce.json`"
        in (report / "results.md").read_text()
    )


def test_a_record_from_before_the_invocation_list_counts_as_one_invocation(tmp_path: Path) -> None:
    asked = {"command": "convunext reproduce --models unet", "models": ["unet"], "datasets": ["drive"], "seeds": [0]}
    (tmp_path / "reproduce.json").write_text(json.dumps({"budget": "cpu", **asked}))
    now = {**asked, "command": "convunext reproduce --models resunet", "models": ["resunet"]}
    record = record_with_invocations(tmp_path / "reproduce.json", now)
    assert record["command"] == now["command"] and record["invocations"][0] == asked
    assert {key: value for key, value in record["invocations"][1].items() if key != "started"} == now
    (tmp_path / "reproduce.json").write_text("{not json")  # unreadable: the list starts afresh
    assert len(record_with_invocations(tmp_path / "reproduce.json", now)["invocations"]) == 1


def test_the_report_covers_every_finished_run_of_the_folder(report: Path) -> None:
    # one seed of one model asked: the runs finished by the first invocation stay in the table, in order
    result = reproduce(_smoke(report, ["unet"], seeds=[1]), log=lambda _: None)
    assert (result.trained, result.skipped) == (0, 1)
    assert _tabled(report) == (RUNS, SUMMARY)


def test_a_committed_report_without_checkpoints_is_reported_as_it_is(report: Path, tmp_path: Path) -> None:
    # what a fresh clone has of a committed report: configs, logs, summaries, test reports; no checkpoints
    clone = tmp_path / "clone"
    shutil.copytree(report, clone)
    for pattern in ("*.safetensors", "best.json", "last.json", "last_state.pt"):
        for path in clone.glob(f"runs/*/*/*/{pattern}"):
            path.unlink()
    result = reproduce(_smoke(clone), log=lambda _: None)
    assert (result.trained, result.skipped) == (0, 4)
    assert _tabled(clone) == (RUNS, SUMMARY)
    tabled = [
        [(r["params"], r["test_dice_fg_mean"]) for r in csv.DictReader((d / "results.csv").open())]
        for d in (report, clone)
    ]
    assert tabled[0] == tabled[1]


@pytest.mark.parametrize("model", list_models())
def test_a_run_without_checkpoint_is_costed_with_the_arguments_the_trainer_builds(tmp_path: Path, model: str) -> None:
    # a committed report has no best.json: its params come from the config, which must give the trained model's
    # arguments (deep supervision included: UNet++'s extra heads count)
    (spec,) = plan_runs(tmp_path, [model], ["synthetic"], [0], BUDGETS["smoke"], tmp_path, QUIET)
    assert config_model_kwargs(spec) == Trainer(spec.config, run_dir=spec.run_dir).model_kwargs


def test_interrupted_run_resumes(tmp_path: Path) -> None:
    (spec,) = plan_runs(tmp_path, ["unet"], ["synthetic"], [0], BUDGETS["smoke"], tmp_path, QUIET)
    first_epoch = spec.config.from_dict(spec.config.to_dict(), overrides=["train.epochs=1"])
    Trainer(first_epoch, run_dir=spec.run_dir).fit()  # as if killed after epoch 1 of 2:
    (spec.run_dir / "summary.json").unlink()
    spec.config.to_yaml(spec.run_dir / "config.yaml")
    assert spec.status() == "resume"
    result = reproduce(_smoke(tmp_path, ["unet"], seeds=[0]))
    assert result.trained == 1 and spec.status() == "done"
    epochs = [row["epoch"] for row in csv.DictReader((spec.run_dir / "metrics.csv").open())]
    assert epochs == ["1", "2"]


def test_another_recipe_in_the_same_folder_is_refused(report: Path) -> None:
    with pytest.raises(ConvUNeXtError, match="another recipe"):
        reproduce(_smoke(report, overrides=[*QUIET, "optim.lr=0.1"]))


def test_missing_dataset_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConvUNeXtError, match="DRIVE not found"):
        reproduce(resolve_experiment(tmp_path / "out", MODELS, "cpu", datasets=["drive"], data_root=tmp_path))


@pytest.mark.parametrize(
    "dataset, images, budget_steps",
    [
        ("drive", 16, CPU_STEPS),
        ("glas", 75, CPU_STEPS),
        ("hrf", 20, 600),
        ("stare", 8, CPU_STEPS),
        ("chase_db1", 16, CPU_STEPS),
    ],
)
def test_cpu_budget_gives_every_dataset_the_same_steps_of_the_chosen_recipe(
    dataset: str, images: int, budget_steps: int
) -> None:
    training_images = budgets.training_images(dataset)  # from the shipped split lists
    assert training_images == images
    config = ExperimentConfig.from_yaml(dataset, BUDGETS["cpu"].overrides_for(dataset))
    steps = config.train.epochs * (training_images // 4)
    assert config.train.steps == budget_steps and budget_steps <= steps < budget_steps + training_images // 4
    # HRF's fewer steps of larger crops see about as many pixels as the others' 1,200 of 256x256
    assert steps * config.data.crop_size**2 == pytest.approx(CPU_STEPS * 256**2, rel=0.15)
    assert (config.optim.lr, config.optim.decay, config.optim.weight_decay) == (1.5e-3, "poly", 1e-4)
    assert config.optim.batch_size == 4 and config.train.precise_bn_batches == 4
    assert config.optim.warmup_epochs * 300 == pytest.approx(config.train.epochs, abs=0.01)  # 1/300 of the run


def test_step_budget_rounds_up_to_whole_epochs() -> None:
    assert step_budget(1200, 16) == ("train.steps=1200", "train.epochs=300", "optim.warmup_epochs=1.000000")
    assert step_budget(10, 9, batch_size=2) == ("train.steps=10", "train.epochs=3", "optim.warmup_epochs=0.010000")


def test_cli_dry_run_and_estimate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    common = ["reproduce", "--budget", "smoke", "--datasets", "synthetic", "--models", "unet", "--out", str(tmp_path)]
    assert main([*common, "--dry-run"]) == 0
    assert "synthetic / unet / seed 0" in capsys.readouterr().out
    assert main([*common, "--seeds", "0", "--estimate"]) == 0
    out = capsys.readouterr().out
    assert "step" in out and "projected:" in out
    assert not list(tmp_path.iterdir())  # neither writes anything
    assert main(["reproduce", "--models", "nonet", "--datasets", "synthetic", "--out", str(tmp_path)]) == 2


def _tested_stare_runs(report: Path, data_root: Path, names: list[str]) -> tuple[list[dict[str, Any]], list[Any]]:
    """``results.csv`` rows and run specs of ConvUNeXt and UNet on STARE (seed 0) whose test reports cover
    ``names``: what the report is built from, without training."""
    specs = plan_runs(report, MODELS, ["stare"], [0], BUDGETS["cpu"], data_root)
    rows = []
    for index, spec in enumerate(specs):
        spec.test_dir.mkdir(parents=True)
        lines = ["name,dice_fg,pixels", *(f"{name},{0.7 + 0.01 * index},423500" for name in names)]
        (spec.test_dir / "per_image.csv").write_text("\n".join(lines) + "\n")
        metrics = {"dice_fg_mean": 0.7, "miou_cm": 0.8, "pixel_accuracy": 0.95, "iou_fg_cm": 0.6}
        metrics |= {"fov_sensitivity": 0.8, "fov_specificity": 0.97, "fov_accuracy": 0.95, "fov_auc": 0.97}
        rows.append(
            {
                "dataset": "stare",
                "model": spec.model,
                "seed": 0,
                "params": 1000,
                "gflops_480": 1.0,
                **{f"test_{key}": value for key, value in metrics.items()},
                "best_val_epoch": 1,
                "best_val_dice": 0.7,
                "epochs_run": 1,
                "train_seconds": 60.0,
                "device": "CPU",
                "run_dir": str(spec.run_dir),
            }
        )
    return rows, specs


def _row(markdown: str, section: str, label: str) -> list[str]:
    """The cells of row ``label`` in the first table after the line ``section``."""
    table = markdown.split(f"{section}\n", 1)[1].lstrip("\n").split("\n\n", 1)[0]
    rows = [[cell.strip() for cell in line.split("|")[1:-1]] for line in table.splitlines()]
    return next(row for row in rows if row[0] == label)


def test_results_md_shows_the_second_observer_under_the_models(tmp_path: Path, stare_root: Path) -> None:
    names = ["im0162", "im0240", "im0319"]  # the test images the runs cover
    rows, specs = _tested_stare_runs(tmp_path / "report", stare_root.parent, names)
    scores = second_observer_metrics("stare", stare_root, "test", names)
    assert observer_scores("stare", specs) == scores and scores != second_observer_metrics("stare", stare_root)
    context = {"command": "convunext reproduce", "record_file": "reproduce.json", "finished": "now", "device": "CPU"}
    markdown = results_markdown(rows, BUDGETS["cpu"], context, specs)
    dice, miou = f"{scores['dice_fg_mean']:.4f}", f"{scores['miou_cm']:.4f}"
    assert _row(markdown, "## Test results", "Second observer") == ["Second observer", "—", "—", dice, miou]
    assert _row(markdown, "## Test results", "UNet")[3:] == ["0.7000", "0.8000"]  # the models' rows as they were
    vessel = _row(markdown, "### STARE: vessel metrics inside the field of view", "Second observer")
    rates = [f"{scores[key]:.4f}" for key in ("fov_sensitivity", "fov_specificity", "fov_accuracy")]
    assert vessel == ["Second observer", *rates, "—"]  # a binary mask has no AUC
    assert f"\n{SECOND_OBSERVER_NOTE}\n" in markdown


def test_results_md_says_why_a_second_observer_is_not_scored(tmp_path: Path, stare_root: Path) -> None:
    copy = tmp_path / "data" / "STARE"  # a copy without the second observer's labels-vk/
    copy.mkdir(parents=True)
    for folder in ("images", "labels-ah"):
        (copy / folder).symlink_to(stare_root / folder)
    rows, specs = _tested_stare_runs(tmp_path / "report", tmp_path / "data", ["im0162", "im0163"])
    context = {"command": "convunext reproduce", "record_file": "reproduce.json", "finished": "now", "device": "CPU"}
    markdown = results_markdown(rows, BUDGETS["cpu"], context, specs)
    assert _row(markdown, "## Test results", "Second observer")[3:] == ["—", "—"]
    missing = copy / "labels-vk" / "im0162.vk.ppm"
    reason = f"{copy / 'images' / 'im0162.ppm'}: no vessel mask ({missing} not found)"
    assert f"{SECOND_OBSERVER_NOTE} Not scored on STARE: {reason}.\n" in markdown
    # no tested run, or no second observer: no row
    assert (
        observer_scores("stare", plan_runs(tmp_path / "other", MODELS, ["stare"], [0], BUDGETS["cpu"], stare_root))
        is None
    )
    assert observer_scores("synthetic", specs) is None


def test_a_leave_one_out_fold_of_one_test_image_says_why_it_has_no_paired_comparison(
    tmp_path: Path, stare_root: Path
) -> None:
    _, specs = _tested_stare_runs(tmp_path / "report", stare_root.parent, ["im0162"])
    lines = paired_with_reference("stare", MODELS, specs)
    assert lines[0] == "### STARE: paired comparison with ConvUNeXt (test images)"
    assert lines[2].startswith("None: the test split holds 1 image, and a paired comparison needs at least 2")


@pytest.mark.parametrize("folder", ["CHASE_DB1", "CHASEDB1", "chase-db1"])
def test_datasets_are_found_under_the_names_their_archives_unpack_to(tmp_path: Path, folder: str) -> None:
    from convunext.reproduce.plan import available_datasets, locate_dataset
    from miniatures import make_chase_db1

    chase = make_chase_db1(tmp_path, folder=folder)
    assert locate_dataset("chase_db1", tmp_path) == chase
    assert available_datasets(tmp_path) == ["chase_db1"]


def test_a_volume_dataset_is_reproduced_per_volume_with_per_class_tables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONVUNEXT_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "report"
    experiment = resolve_experiment(out, MODELS, "smoke", datasets=["synthetic_ct"], seeds=[0], overrides=QUIET)
    result = reproduce(experiment, log=lambda _: None)
    assert result.trained == 2
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert {"test_dice_organ", "test_hd95_lesion", "test_nsd_mean", "test_miou_cm"} <= set(rows[0])
    for model in MODELS:
        test_dir = out / "runs" / "synthetic_ct" / model / "seed0" / "test"
        assert (test_dir / "per_volume.csv").is_file() and (test_dir / "report.html").is_file()
    markdown = (out / "results.md").read_text()
    assert "### Synthetic CT: per class, over whole test volumes" in markdown
    assert "organ HD95 (mm)" in markdown and "lesion Dice" in markdown
    assert "### Synthetic CT: paired comparison with ConvUNeXt" in markdown  # pairs the 2 test volumes
