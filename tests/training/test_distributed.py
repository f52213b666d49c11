"""DistributedDataParallel on CPU (gloo, 2 processes): one set of files, the single-process loss, exact metrics.

One ``torch.multiprocessing`` launch (module fixture ``ddp``) runs every 2-process training of this file; the
single-process references run in the test process. The loss comparisons use the same *global* batch (2 processes
x batch 2 vs 1 process x batch 4) and seed, so both see the same 4 crops per step:

* a batch-independent model (ConvUNeXt with ``norm=ln``) must match to float rounding (``LN_RTOL``): the loss is a
  mean of per-image terms and DDP averages the ranks' gradients, so the only difference is summation order. This
  needs crops without ignore pixels (the synthetic "glands" task): cross-entropy is averaged over each process's
  own valid pixels, so with ignore pixels (outside a FOV) DDP's loss is the mean of per-process means, a
  different (equally valid) weighting from one process's mean over all valid pixels;
* the registry default (BatchNorm, vessels task with a FOV) normalises each process's 2 crops with their own
  statistics, which changes every activation, and weights the cross-entropy per process as above. PyTorch's
  SyncBatchNorm would remove the first effect but has no CPU/gloo implementation, so the bound ``BN_RTOL`` is
  empirical: on this tiny run the two epoch losses differ by 0.16% and 0.31%, bounded with 3x headroom (figures
  printed with ``pytest -s``). Per-process BatchNorm over tiny batches is the accuracy trap that
  ``--sync-batchnorm`` addresses on CUDA.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as torch_dist
import torch.multiprocessing as mp
from safetensors.torch import load_file

from convunext.checkpoint import load_checkpoint
from convunext.cli.main import build_parser, main
from convunext.cli.train import forwarded_arguments
from convunext.data import EvalTransform, open_dataset
from convunext.errors import ConvUNeXtError
from convunext.evaluation.evaluate import evaluate_model
from convunext.evaluation.metrics import SegmentationMetrics
from convunext.evaluation.threshold import ThresholdSearch
from convunext.inference.optimize import optimize_for_inference
from convunext.models import create_model
from convunext.training.config import ExperimentConfig
from convunext.training.distributed import DistributedContext, context_from_environment
from convunext.training.trainer import Trainer

TINY = [
    "model.kwargs.width=8",
    "data.options.num_images=10",
    "data.options.size=64",
    "data.crop_size=48",
    "train.progress_bar=false",
    "train.epochs=2",
]
# no FOV, and crops never need padding: no ignore pixels (see the module docstring)
LN = ["model.kwargs.norm=ln", "data.options.task=glands"]
LN_RTOL = 1e-6  # float32 summation order only; observed 2e-8
BN_RTOL = 1e-2  # per-process BatchNorm statistics and loss normalisation; observed 0.16% and 0.31%
WORLD = 2


def _config(out: Path, name: str, batch: int, *extra: str) -> ExperimentConfig:
    sets = [*TINY, f"optim.batch_size={batch}", f"train.output_dir={out}", f"train.run_name={name}", *extra]
    return ExperimentConfig.from_yaml("synthetic", sets)


def _losses(run: Path) -> list[float]:
    """The epoch-mean training losses at full precision (metrics.csv rounds to 6 digits)."""
    history = torch.load(run / "last_state.pt", weights_only=True)["history"]
    return [row["train_loss"] for row in history]


def _random_predictions(count: int = 5) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, str]]:
    """Fixed logits, labels (with ignore pixels) and FOV masks of varied sizes."""
    generator = torch.Generator().manual_seed(7)
    items = []
    for i in range(count):
        h, w = 20 + 3 * i, 17 + 5 * i
        logits = torch.randn(1, 2, h, w, generator=generator)
        target = (torch.rand(1, h, w, generator=generator) < 0.3).long()
        target[:, :2] = 255
        fov = torch.rand(1, h, w, generator=generator) < 0.8
        items.append((logits, target, fov, f"image_{i}"))
    return items


def _worker(rank: int, out: str) -> None:
    """One of the 2 DDP processes: every distributed run of this file, results under ``out``."""
    root = Path(out)
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD))
    torch.set_num_threads(1)
    torch_dist.init_process_group("gloo", init_method=f"file://{root / 'store'}", rank=rank, world_size=WORLD)
    dist = context_from_environment("cpu")
    try:
        Trainer(_config(root, "ln", 2, *LN), dist=dist).fit()
        trainer = Trainer(_config(root, "bn", 2), dist=dist)
        trainer.fit()
        buffers = torch.cat([b.double().flatten() for b in trainer.model.buffers()])
        every_rank: list[Any] = [None] * WORLD
        torch_dist.all_gather_object(every_rank, buffers)
        Trainer(_config(root, "cut", 2, "train.epochs=1"), dist=dist).fit()  # "killed" after epoch 1 ...
        Trainer(_config(root, "cut", 2), run_dir=root / "cut", resume=True, dist=dist).fit()  # ... and resumed
        metrics = SegmentationMetrics(num_classes=2)
        for logits, target, fov, name in _random_predictions()[rank::WORLD]:
            metrics.update(logits, target, fov, [name])
        metrics.gather_across_processes()
        if dist.is_main:
            torch.save(
                {"results": metrics.compute(), "names": metrics.names, "buffers": every_rank}, root / "gathered.pt"
            )
    finally:
        dist.close()


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is faster, the CPU is shared


@pytest.fixture(scope="module")
def ddp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ddp")
    mp.start_processes(_worker, args=(str(out),), nprocs=WORLD, join=True, start_method="spawn")
    return out


@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("single")
    Trainer(_config(out, "ln", 4, *LN)).fit()
    Trainer(_config(out, "bn", 4)).fit()
    return out


def test_two_processes_write_one_set_of_checkpoints(ddp: Path) -> None:
    expected = {
        "best.json",
        "best.safetensors",
        "config.yaml",
        "convunext-run.json",
        "last.json",
        "last.safetensors",
        "last_state.pt",
        "metrics.csv",
        "progress.png",
        "summary.json",
    }
    for run in ("ln", "bn", "cut"):
        assert {p.name for p in (ddp / run).iterdir()} == expected, run  # no per-rank copies, no temp files
        assert [row["epoch"] for row in csv.DictReader((ddp / run / "metrics.csv").open())] == ["1", "2"]
    assert sorted(p.name for p in ddp.iterdir() if p.is_dir()) == ["bn", "cut", "ln"]
    meta = json.loads((ddp / "bn" / "best.json").read_text())
    assert meta["world_size"] == 2 and meta["recipe"]["batch_size"] == 2
    assert json.loads((ddp / "bn" / "summary.json").read_text())["world_size"] == 2


def test_loss_matches_a_single_process_with_the_same_global_batch(ddp: Path, single: Path) -> None:
    ln_ddp, ln_one = _losses(ddp / "ln"), _losses(single / "ln")
    bn_ddp, bn_one = _losses(ddp / "bn"), _losses(single / "bn")
    for label, a, b in (("LayerNorm", ln_ddp, ln_one), ("BatchNorm", bn_ddp, bn_one)):
        worst = max(abs(x - y) / abs(y) for x, y in zip(a, b))
        print(f"\n{label} model, epoch losses: 2 procs x 2 {a} vs 1 proc x 4 {b}; max rel. difference {worst:.2e}")
    assert ln_ddp == pytest.approx(ln_one, rel=LN_RTOL)
    assert bn_ddp == pytest.approx(bn_one, rel=BN_RTOL)
    weights_ddp, weights_one = (
        load_file(str(ddp / "ln" / "last.safetensors")),
        load_file(str(single / "ln" / "last.safetensors")),
    )
    worst = max(float((weights_ddp[k] - weights_one[k]).abs().max()) for k in weights_one)
    print(f"LayerNorm model after 4 steps: max |weight difference| {worst:.2e}")
    assert worst < 1e-5


def test_resume_under_ddp_gives_the_uninterrupted_weights(ddp: Path) -> None:
    straight, resumed = (
        load_file(str(ddp / "bn" / "last.safetensors")),
        load_file(str(ddp / "cut" / "last.safetensors")),
    )
    assert straight.keys() == resumed.keys()
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key
    assert _losses(ddp / "cut") == _losses(ddp / "bn")


def test_gathered_metrics_equal_single_process_metrics(ddp: Path) -> None:
    metrics = SegmentationMetrics(num_classes=2)
    for logits, target, fov, name in _random_predictions():
        metrics.update(logits, target, fov, [name])
    gathered = torch.load(ddp / "gathered.pt", weights_only=False)
    assert sorted(gathered["names"]) == sorted(metrics.names) and len(gathered["names"]) == 5
    assert gathered["results"] == metrics.compute()  # exact, not approximately


def test_validation_under_ddp_equals_single_process_evaluation(ddp: Path) -> None:
    """The sharded, gathered validation of the 2-process run = one process evaluating its best checkpoint."""
    checkpoint = load_checkpoint(ddp / "bn" / "best.json")
    recorded = checkpoint.meta["val_metrics"]
    dataset = open_dataset("synthetic", None, "val", **checkpoint.meta["data"]["options"])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the workers: the fused kernels' row chunks, hence their roundings, match
    try:
        model = optimize_for_inference(checkpoint.model)  # the trainer validates through the fast path
        transform = EvalTransform(checkpoint.mean, checkpoint.std)
        # topology off, as the trainer validates (the skeletons would cost CPU seconds every epoch)
        search = ThresholdSearch()  # the threshold search of each validation, gathered across the ranks
        metrics = evaluate_model(
            model,
            dataset,
            transform,
            2,
            progress=False,
            topology="off",
            on_image=lambda sample, probs: search.update(probs[0, 1], sample["mask"], sample["fov"]),
        )
    finally:
        torch.set_num_threads(threads)
    metrics = metrics.compute()
    choice = search.best()
    metrics.update(threshold=choice.threshold, dice_at_threshold=choice.dice)
    assert recorded["num_images"] == metrics["num_images"] == 2
    assert recorded == metrics  # exact: same weights, same BatchNorm statistics on both shards
    buffers = torch.load(ddp / "gathered.pt", weights_only=False)["buffers"]
    assert torch.equal(buffers[0], buffers[1]), "every rank validates with rank 0's BatchNorm statistics"


def test_devices_option_launches_torchrun(tmp_path: Path) -> None:
    sets = [*TINY, "train.epochs=1", "optim.batch_size=2", f"train.output_dir={tmp_path}"]
    command = [sys.executable, "-m", "convunext", "train", "--devices", "2"]
    command += [a for s in sets for a in ("--set", s)]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    shown = f"stdout: ...{done.stdout[-2000:]}\nstderr: ...{done.stderr[-2000:]}"  # a failure says what happened
    assert done.returncode == 0, shown
    assert "torch.distributed.run" in done.stdout and "global batch 4" in done.stdout, shown
    assert done.stdout.count("convunext train: done") == 1, shown  # only rank 0 prints the summary
    runs = list(tmp_path.iterdir())
    assert len(runs) == 1, (runs, shown)  # both ranks agreed on the (timestamped) run folder
    assert (runs[0] / "last.safetensors").is_file() and (runs[0] / "best.json").is_file()


def test_devices_forwards_every_other_argument() -> None:
    argv = ["train", "drive", "--data-root", "d", "--epochs", "3", "--set", "optim.batch_size=2", "--set", "a.b=c"]
    argv += ["--seeds", "1", "2", "--resume", "runs/x", "--sync-batchnorm", "--devices", "4"]
    args = build_parser().parse_args(argv)
    again = build_parser().parse_args(["train", *forwarded_arguments(args)])
    assert again.devices is None
    assert {k: v for k, v in vars(again).items() if k != "devices"} == {
        k: v for k, v in vars(args).items() if k != "devices"
    }


def test_sync_batchnorm_on_cpu_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    context = DistributedContext(rank=0, world_size=2, device=torch.device("cpu"), sync_batchnorm=True)
    with pytest.raises(ConvUNeXtError, match="SyncBatchNorm needs CUDA"):
        context.wrap(create_model("unet", width=8))
    if not torch.cuda.is_available():
        assert main(["train", "--devices", "2", "--sync-batchnorm"]) == 2
        assert "--sync-batchnorm needs CUDA" in capsys.readouterr().err
