"""The trainer on tiny synthetic data: it learns, logs, checkpoints, resumes exactly and stops on bad losses."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from convunext.checkpoint import load_checkpoint
from convunext.errors import ConvUNeXtError
from convunext.models.layers import compiled_gate, compiled_mlp, depthwise
from convunext.training import run_log
from convunext.training.config import ExperimentConfig
from convunext.training.trainer import Trainer

TINY = [
    "model.kwargs.width=8",
    "data.options.num_images=10",
    "data.options.size=64",
    "data.crop_size=48",
    "optim.batch_size=4",
    "train.progress_bar=false",
]


def tiny_config(tmp_path: Path, *extra: str) -> ExperimentConfig:
    return ExperimentConfig.from_yaml("synthetic", [*TINY, f"train.output_dir={tmp_path}", *extra])


def test_training_writes_a_complete_run_folder(tmp_path: Path) -> None:
    config = tiny_config(tmp_path, "train.epochs=2", "train.run_name=run")
    trainer = Trainer(config)
    result = trainer.fit()
    run = tmp_path / "run"
    assert result.run_dir == run and result.epochs_run == 2
    for name in (
        "config.yaml",
        "metrics.csv",
        "progress.png",
        "best.safetensors",
        "best.json",
        "last.json",
        "last.safetensors",
        "last_state.pt",
        "summary.json",
    ):
        assert (run / name).is_file(), name
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert all(0.0 <= float(r["val_dice"]) <= 1.0 for r in rows)
    saved = ExperimentConfig.from_yaml(run / "config.yaml")
    assert saved == trainer.config and saved.model == config.model and saved.optim == config.optim
    # the speed switches are recorded resolved (this CPU run: all on), the rest as given
    assert (saved.train.channels_last, saved.train.fused_kernels, saved.train.fast_validation) == ("on", "on", "on")
    assert config.train.channels_last == "auto"  # the caller's config is left as it was
    meta = json.loads((run / "best.json").read_text())
    assert meta["model"] == {"name": "convunext", "kwargs": {"width": 8, "in_channels": 3, "num_classes": 2}}
    assert meta["classes"] == ["background", "vessel"] and len(meta["normalization"]["mean"]) == 3
    assert meta["epoch"] == result.best_epoch
    checkpoint = load_checkpoint(run)
    assert checkpoint.path.name == "best.json"
    assert (run / "progress.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the hardware is named, with the CPU's vector instructions: training times compare only on the same one
    summary = json.loads((run / "summary.json").read_text())
    device = summary["device"]
    assert device.startswith("CPU ") and f"({torch.backends.cpu.get_cpu_capability()}, " in device
    # and the compiled kernels its steps ran: each wherever it loads
    libraries = {"depthwise": depthwise.LIBRARY, "mlp": compiled_mlp.LIBRARY, "gate": compiled_gate.LIBRARY}
    loaded = {name: library.available() for name, library in libraries.items()}
    assert summary["fast_paths"]["compiled_kernels"] == [name for name, ok in loaded.items() if ok]


def test_the_progress_plot_is_drawn_after_each_validation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    drawn: list[int] = []
    monkeypatch.setattr(run_log, "plot_progress", lambda history, path: drawn.append(len(history)))
    Trainer(tiny_config(tmp_path, "train.epochs=5", "train.eval_every=2", "train.run_name=run")).fit()
    assert drawn == [2, 4, 5]  # the validated epochs (and the last); metrics.csv is written every epoch
    assert len(list(csv.DictReader((tmp_path / "run" / "metrics.csv").open()))) == 5


def test_a_few_steps_lower_the_loss(tmp_path: Path) -> None:
    config = tiny_config(
        tmp_path,
        "train.epochs=4",
        "optim.lr=3e-3",
        "optim.warmup_epochs=0",
        "data.options.num_images=5",
        "data.scale_range=[1, 1]",
        "data.hflip=false",
        "data.vflip=false",
    )
    history = Trainer(config).fit().history
    assert history[-1]["train_loss"] < history[0]["train_loss"]


def test_non_finite_loss_stops_with_the_step(tmp_path: Path) -> None:
    config = tiny_config(
        tmp_path, "train.epochs=1", "optim.lr=1e30", "optim.warmup_epochs=0", "train.grad_clip_norm=null"
    )
    with pytest.raises(ConvUNeXtError, match=r"loss became (nan|inf) at epoch 1, step \d+/\d+"):
        Trainer(config).fit()


def test_resume_needs_a_saved_state(tmp_path: Path) -> None:
    with pytest.raises(ConvUNeXtError, match="nothing to resume"):
        Trainer(tiny_config(tmp_path), run_dir=tmp_path / "empty", resume=True)


def test_deep_supervision_model_trains(tmp_path: Path) -> None:
    config = tiny_config(tmp_path, "model.name=unet_plus_plus", "train.epochs=1")
    trainer = Trainer(config)
    assert trainer.model_kwargs["deep_supervision"] is True
    assert trainer.fit().best_metrics["num_images"] == 2


def _train_command(out: Path, *extra: str) -> list[str]:
    sets = [
        *TINY,
        "data.options.num_images=20",
        "data.options.size=96",
        "data.crop_size=96",
        "model.kwargs.width=16",
        "train.epochs=3",
        f"train.output_dir={out}",
        "train.run_name=run",
    ]
    return [sys.executable, "-m", "convunext", "train", *[a for s in sets for a in ("--set", s)], *extra]


def _completed_epochs(run: Path) -> int:
    try:
        return len(list(csv.DictReader((run / "metrics.csv").open())))
    except FileNotFoundError:
        return 0


def test_killed_run_resumes_to_identical_weights(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    straight = tmp_path / "straight"
    subprocess.run(_train_command(straight), check=True, env=env, capture_output=True)

    killed = tmp_path / "killed"
    process = subprocess.Popen(_train_command(killed), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    state_file = killed / "run" / "last_state.pt"
    while not state_file.exists() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    state = torch.load(killed / "run" / "last_state.pt", weights_only=True)
    assert state["epoch"] == 1, "the kill should land inside epoch 2"
    load_checkpoint(killed / "run" / "last.json")  # the checkpoint of epoch 1 is intact

    resume = [sys.executable, "-m", "convunext", "train", "--resume", str(killed / "run")]  # its config.yaml
    subprocess.run(resume, check=True, env=env, capture_output=True)
    expected = load_file(str(straight / "run" / "last.safetensors"))
    resumed = load_file(str(killed / "run" / "last.safetensors"))
    assert expected.keys() == resumed.keys()
    for key in expected:
        assert torch.equal(expected[key], resumed[key]), key
    assert _completed_epochs(killed / "run") == 3
    assert not list((killed / "run").glob(".*.tmp")), "resume removes temp files left by the killed run"
