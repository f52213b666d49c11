"""The benchmark suite: --quick runs and writes its table; the authors'-style model is the reference network."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from convunext import create_model
from convunext.benchmarking import AuthorsConvUNeXt, authors_from_convunext
from convunext.benchmarking.configs import Config, build_configs
from convunext.benchmarking.measure import measure_in_subprocess, peak_heap_mb
from convunext.benchmarking.suite import finalize_args
from convunext.cli.main import build_parser, main


@pytest.fixture(autouse=True)
def keep_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_quick_benchmark_writes_its_table(tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # --threads sets it; restored after the test
    out = tmp_path / "results" / "quick.md"
    code = main(["benchmark", "--quick", "--threads", "1", "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    report = out.read_text()
    assert report in printed + "\n" or report.strip() in printed
    for text in ("## Inference", "## Training step", "## Activation recomputation", "**CPU**", "**allocator**",
                 "**torch**", "matmul peak", "convunext authors' style", "convunext fast", "unet eager",
                 "speed-up vs authors", "speed-up vs UNet", "peak RSS MB", "GFLOP/s"):  # fmt: skip
        assert text in report, text
    rows = [line for line in report.splitlines() if line.startswith("| ") and "error" in line]
    assert not rows, rows
    raw = json.loads(out.with_suffix(".json").read_text())
    assert {r["config"]["model"] for r in raw["results"]} == {
        "convunext",
        "unet",
        "attention_unet",
        "unet_plus_plus",
        "resunet",
    }
    fast = next(r for r in raw["results"] if r["config"]["path"] == "fast")
    assert len(fast["times"]) == 2 and fast["max_abs_diff"] < 1e-4


def test_full_run_plan_covers_the_issue() -> None:
    configs = build_configs(finalize_args(build_parser().parse_args(["benchmark", "--hrf", "--allocators"])))
    inference = {(c.model, c.path) for c in configs if c.section == "inference" and c.size == (480, 480)}
    assert {("convunext", p) for p in ("authors", "eager", "channels_last", "fast", "compile", "onnx")} <= inference
    assert {(m, "eager") for m in ("unet", "attention_unet", "unet_plus_plus", "resunet")} <= inference
    assert any(c.size == (512, 512) for c in configs)
    train = [c for c in configs if c.section == "training" and not c.env]
    assert {(c.batch, c.size) for c in train} == {(4, (256, 256))}
    # the memory target: both models' trainer defaults at batch 4, 480x480, with and without recomputation
    # ... each as the trainer runs it (malloc tuned without recomputation, untuned with it) and the other way
    recompute = [(c.model, c.path, c.recompute, c.batch, c.tune_malloc) for c in configs if c.section == "recompute"]
    assert recompute == [
        (m, "trainer", r, 4, t) for m in ("convunext", "unet") for r, other in ((False, False), (True, True))
        for t in (None, other)
    ]  # fmt: skip
    assert all(c.size == (480, 480) for c in configs if c.section == "recompute")
    assert any(c.mode == "window" and c.size == (2336, 3504) for c in configs)
    assert any("GLIBC_TUNABLES" in c.env for c in configs)
    assert all(c.repeats >= 10 for c in configs if c.section in ("inference", "training"))


def test_sections_select_the_rows(capsys: pytest.CaptureFixture) -> None:
    args = finalize_args(build_parser().parse_args(["benchmark", "--sections", "recompute,window", "--hrf"]))
    assert {c.section for c in build_configs(args)} == {"recompute", "sliding window"}
    with pytest.raises(SystemExit):
        build_parser().parse_args(["benchmark", "--sections", "training,speed"])
    assert "unknown section 'speed'; choose from inference, training, recompute, window" in capsys.readouterr().err
    assert main(["benchmark", "--sections", "window"]) == 2  # no --hrf: nothing to measure
    assert "--sections window: nothing to measure" in capsys.readouterr().err


def test_one_configuration_in_a_fresh_process() -> None:
    config = Config("inference", "convunext", "fast", "infer", 1, (64, 64), repeats=2, warmup=1)
    result = measure_in_subprocess(config, timeout=300)
    assert not result.error, result.error
    assert len(result.times) == 2 and result.peak_rss_mb > 50 and result.max_abs_diff < 1e-4


def test_peak_heap_counts_what_a_call_holds_at_once_not_what_it_allocates_in_all() -> None:
    def hold_256_mb_then_64_mb_four_times() -> None:
        block = torch.ones(64, 2**20)  # 256 MiB, held while the smaller ones come and go
        for _ in range(4):
            passing = torch.ones(16, 2**20)  # 64 MiB, held for a few of the sampler's milliseconds
            time.sleep(0.005)
            del passing
        del block

    before = peak_heap_mb(lambda: None)
    peak = peak_heap_mb(hold_256_mb_then_64_mb_four_times)
    assert 256 + 64 <= peak - before + 8 < 256 + 2 * 64


def test_the_untuned_trainer_row_is_named_and_runs() -> None:
    config = Config("recompute", "unet", "trainer", "train", 2, (64, 64), repeats=1, warmup=1, tune_malloc=False)
    assert config.label == "unet trainer default [malloc untuned]"
    tuned = Config("recompute", "unet", "trainer", "train", 2, (64, 64), recompute=True, tune_malloc=True)
    assert tuned.label == "unet trainer default + recompute [malloc tuned]"
    result = measure_in_subprocess(config, timeout=300)
    assert not result.error, result.error
    assert 0 < result.peak_heap_mb < result.peak_rss_mb


def test_benchmark_is_a_cli_command() -> None:
    args = build_parser().parse_args(["benchmark", "--quick", "--no-train"])
    assert args.quick and args.no_train and callable(args.func)


def test_the_benchmark_speaks_the_flag_vocabulary_of_the_other_commands() -> None:
    parser = build_parser()
    args = finalize_args(
        parser.parse_args(["benchmark", "--hrf", "--batch-size", "2", "--tile-size", "256", "--train-batch-size", "3"])
    )
    configs = build_configs(args)
    assert {c.batch for c in configs if c.section == "inference"} == {2}
    assert {c.batch for c in configs if c.section == "training"} == {3}
    assert {c.tile for c in configs if c.mode == "window"} == {256}
    assert (args.threads, args.device) == (None, "cpu")  # PyTorch's thread count; the CPU unless told otherwise
    with pytest.raises(SystemExit):
        parser.parse_args(["benchmark", "--threads", "0"])  # as for every command: a positive count, or nothing


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--repeats", "0"], "argument --repeats: '0': expected a number of timed calls, an integer of at least 1"),
        (["--sizes", "480,abc"], "argument --sizes: 'abc': expected an image side in pixels, an integer of at least"),
        (["--sizes", "8"], "argument --sizes: '8': expected an image side in pixels"),
        (["--train-batch-size", "-1"], "argument --train-batch-size: '-1': expected a number of images"),
        (["--recompute-size", "-5"], "argument --recompute-size: '-5': expected an image side in pixels (0 = skip)"),
    ],
)
def test_bad_numbers_are_refused_by_the_parser(argv: list[str], message: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["benchmark", *argv])
    assert message in capsys.readouterr().err


def test_sizes_are_parsed_into_sides() -> None:
    args = finalize_args(build_parser().parse_args(["benchmark", "--sizes", "96,128"]))
    assert args.sizes == [96, 128]


def test_benchmarks_script_runs_the_command(tmp_path: Path) -> None:
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "benchmark.py"
    done = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "usage: convunext benchmark" in done.stdout and "--tile-size" in done.stdout


def test_authors_model_reproduces_the_reference_fixture(reference: dict) -> None:
    model = AuthorsConvUNeXt(base_c=reference["config"]["base_c"])
    model.load_state_dict(reference["state_dict"], strict=True)  # the reference code's own key names
    model.eval()
    with torch.no_grad():
        for size in ("96x96", "101x87"):
            out = model(reference["inputs"][f"x_{size}"])
            assert (out - reference["outputs"][f"y_{size}"]).abs().max().item() < 1e-4


def test_authors_model_holds_the_package_models_weights() -> None:
    torch.manual_seed(0)
    model = create_model("convunext", width=8).eval()
    authors = authors_from_convunext(model).eval()
    assert sum(p.numel() for p in authors.parameters()) == sum(p.numel() for p in model.parameters())
    assert any(isinstance(m, torch.nn.Linear) for m in authors.modules())
    x = torch.randn(1, 3, 67, 64)
    with torch.no_grad():
        assert (authors(x) - model(x)).abs().max().item() < 1e-5


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_the_gpu_check_refuses_without_a_gpu_in_one_line_and_writes_nothing() -> None:
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.sh"
    before = sorted((script.parent / "results").iterdir())
    result = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith("gpu_check: no CUDA GPU here") and result.stderr.count("\n") == 1
    assert sorted((script.parent / "results").iterdir()) == before
