"""Issue 11, memory: a crop larger than every training image is refused at start-up (it used to pad 64-pixel images
to 4096 and grow to 22.8 GB until the kernel killed the run), and a training step estimated not to fit in the
available memory is refused before anything is allocated or written."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from convunext.cli.main import main
from convunext.errors import ConvUNeXtError
from convunext.training import memory as memory_module
from convunext.training.config import ExperimentConfig
from convunext.training.memory import available_memory
from convunext.training.trainer import Trainer

GIB = 1024**3


def test_a_crop_larger_than_every_image_is_refused_at_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], tiny_train_argv: Callable[..., list[str]]
) -> None:
    start = time.perf_counter()
    assert main(tiny_train_argv(tmp_path, "data.crop_size=4096")) == 2
    assert time.perf_counter() - start < 10
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "data.crop_size=4096 is larger than any training image" in err
    assert "64x64" in err and "use data.crop_size <= 77" in err  # 64 px x 1.2, the synthetic preset's largest resize
    assert not list(tmp_path.iterdir()), "nothing is written"


def test_a_crop_the_random_resize_can_reach_is_accepted(tiny_config: Callable[..., ExperimentConfig]) -> None:
    config = tiny_config("data.crop_size=96", "data.scale_range=[1, 1.5]")
    memory_module.check_crop_size(Trainer(config).train_set, config.data)
    config = tiny_config("data.crop_size=65", "data.scale_range=[1, 1]")
    with pytest.raises(ConvUNeXtError, match="use data.crop_size <= 64"):
        memory_module.check_crop_size(Trainer(config).train_set, config.data)


def test_a_step_that_cannot_fit_is_refused_with_the_estimate(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tiny_train_argv: Callable[..., list[str]],
) -> None:
    monkeypatch.setattr(memory_module, "available_memory", lambda device: (1024**2, "MemAvailable"))
    assert main(tiny_train_argv(tmp_path, "train.run_name=big")) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "one training step needs about" in err
    assert "batch 4 of 48x48 crops" in err and "but only 1.0 MiB is available (MemAvailable)" in err
    assert not (tmp_path / "big").exists(), "refused before the run folder is made"


def test_a_tiny_run_passes_the_guard_and_the_estimate_scales_with_the_batch(
    tmp_path: Path, tiny_config: Callable[..., ExperimentConfig]
) -> None:
    # the eager path, whose saved activations are exactly proportional to the pixels (the fused kernels' are not
    # quite: each band saves its own edges)
    plain = ["train.channels_last=off", "train.fused_kernels=off"]
    trainer = Trainer(tiny_config("train.epochs=1", f"train.output_dir={tmp_path}", *plain))
    state = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    rng = torch.get_rng_state()
    estimates = [trainer.estimate_step_memory(batch_size=batch) for batch in (2, 4, 8)]
    assert estimates[2] - estimates[1] == pytest.approx(2 * (estimates[1] - estimates[0]), rel=1e-6)
    assert estimates[1] - estimates[0] > 0
    activations = estimates[1] - trainer.estimate_step_memory(batch_size=0)
    bigger = trainer.estimate_step_memory(crop_size=96)  # 4x the pixels, probed at 64 instead of 48 px
    assert bigger - estimates[1] == pytest.approx(3 * activations, rel=0.05)
    # the probe leaves the model (BatchNorm statistics included) and the random stream untouched
    assert all(torch.equal(v, trainer.model.state_dict()[k]) for k, v in state.items())
    assert torch.equal(rng, torch.get_rng_state())
    free = available_memory(torch.device("cpu"))
    assert free is not None and free[0] > estimates[1]
    assert trainer.fit().epochs_run == 1
    fused = Trainer(tiny_config(f"train.output_dir={tmp_path}"))
    assert fused.fast_paths.fused_kernels and fused.estimate_step_memory() < estimates[1]  # the default: less


def test_the_crop_of_the_report_would_have_been_refused() -> None:
    """The issue's run (synthetic preset, width 32, batch 4, crop 4096) reached 22.8 GB before it was killed."""
    trainer = Trainer(ExperimentConfig.from_yaml("synthetic", ["data.options.num_images=5", "data.options.size=64"]))
    assert trainer.estimate_step_memory(crop_size=4096) > 22.8e9


def test_available_memory_reads_meminfo() -> None:
    meminfo = Path("/proc/meminfo")
    if not meminfo.is_file():
        pytest.skip("no /proc/meminfo on this system")
    line = next(line for line in meminfo.read_text().splitlines() if line.startswith("MemAvailable:"))
    free, source = available_memory(torch.device("cpu"))  # type: ignore[misc]
    assert "MemAvailable" in source or "cgroup" in source
    assert 0 < free <= int(line.split()[1]) * 1024 * 1.1
