"""The training speed switches: what ``auto`` resolves to, refusals, and that every switch leaves results as they
were (weights after N steps; validation metrics)."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable

import pytest
import torch

from convunext.errors import ConvUNeXtError
from convunext.models import blocks, create_model, list_models
from convunext.models.layers import compiled_gate, compiled_mlp, depthwise
from convunext.models.layers.mlp import banded_mlp
from convunext.training.config import ExperimentConfig, TrainConfig
from convunext.training.fast_paths import compiled_kernels, resolve_fast_paths, supports_fused_training
from convunext.training.trainer import Trainer

SHORT = ("train.epochs=2", "optim.warmup_epochs=0")
ALL_OFF = ["train.channels_last=off", "train.fused_kernels=off", "train.tune_malloc=off", "train.fast_validation=off"]
ALL_ON = ["train.channels_last=on", "train.tune_malloc=on", "train.fast_validation=on"]


@pytest.mark.parametrize("name", list_models())
def test_auto_resolves_per_model_and_device(name: str) -> None:
    model = create_model(name, width=8)
    fused = supports_fused_training(model)
    assert fused == (name == "convunext")
    cpu = resolve_fast_paths(TrainConfig(), model, torch.device("cpu"))
    assert (cpu.channels_last, cpu.fused_kernels, cpu.tune_malloc, cpu.fast_validation) == (True, fused, True, True)
    cuda = resolve_fast_paths(TrainConfig(), model, torch.device("cuda"))
    assert (cuda.channels_last, cuda.fused_kernels, cuda.tune_malloc, cuda.fast_validation) == (False,) * 3 + (True,)
    off = resolve_fast_paths(TrainConfig(channels_last="off"), model, torch.device("cpu"))
    assert not off.channels_last and not off.fused_kernels  # the kernels need channels-last: auto leaves them off
    loaded = depthwise.compiled_in_use() and compiled_mlp.LIBRARY.available() and compiled_gate.LIBRARY.available()
    assert cpu.compiled_kernels == (("depthwise", "mlp", "gate") if fused and loaded else ())
    assert cuda.compiled_kernels == off.compiled_kernels == ()


def test_impossible_switches_are_refused() -> None:
    with pytest.raises(ConvUNeXtError, match="train.fused_kernels=on: UNet has no fused training kernels"):
        resolve_fast_paths(TrainConfig(fused_kernels="on"), create_model("unet", width=8), torch.device("cpu"))
    with pytest.raises(ConvUNeXtError, match="needs train.channels_last on or auto"):
        resolve_fast_paths(
            TrainConfig(fused_kernels="on", channels_last="off"),
            create_model("convunext", width=8),
            torch.device("cpu"),
        )


def test_yaml_booleans_mean_on_and_off() -> None:
    config = ExperimentConfig.from_dict({"train": {"channels_last": True, "fused_kernels": False}})
    assert (config.train.channels_last, config.train.fused_kernels) == ("on", "off")
    with pytest.raises(ConvUNeXtError, match="train.tune_malloc='fast' is not valid; choose one of auto, on, off"):
        ExperimentConfig.from_dict({"train": {"tune_malloc": "fast"}})


def _train_steps(trainer: Trainer, steps: int) -> dict[str, torch.Tensor]:
    """``steps`` optimiser steps of the trainer's own forward, loss, clipping, AdamW and schedule, in float64.

    float64 because AdamW's first steps move every weight by about ``lr * sign(gradient)``: in float32, entries
    whose gradient is within rounding of zero flip sign between two correct computations, and the runs drift
    apart; in float64 rounding is 1e-16 and what remains is any real difference between the paths."""
    trainer.model.double()
    loop = trainer._prepare(time.perf_counter())
    loop.augmented.set_epoch(1)
    batches = itertools.islice(itertools.cycle(loop.loader), steps)
    trainer.train_model.train()
    for batch in batches:
        loss = trainer.step.loss(trainer.train_model, batch["image"].double(), batch["mask"])
        trainer.step.update(trainer.model, loop.optimizer, loss, loop.scaler, loop.scheduler, loop.ema)
    return trainer.model.state_dict()


@pytest.mark.parametrize("name", list_models())
def test_every_switch_on_trains_the_same_weights(
    tiny_run: Callable[..., ExperimentConfig], name: str, one_thread: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """8 training steps with every switch on equal the plain path's weights (relative 1e-5), and the fused
    kernels really ran."""
    fused_runs = []
    monkeypatch.setattr(blocks, "banded_mlp", lambda *a, **k: fused_runs.append(1) or banded_mlp(*a, **k))
    fused = ["train.fused_kernels=on"] if name == "convunext" else []
    fast = Trainer(tiny_run(*SHORT, f"model.name={name}", *ALL_ON, *fused, "train.run_name=fast"))
    plain = Trainer(tiny_run(*SHORT, f"model.name={name}", *ALL_OFF, "train.run_name=plain"))
    assert fast.fast_paths.channels_last and not plain.fast_paths.channels_last
    actual = _train_steps(fast, 8)
    assert bool(fused_runs) == (name == "convunext")
    fused_runs.clear()
    expected = _train_steps(plain, 8)
    assert not fused_runs
    assert expected.keys() == actual.keys()
    for key, value in expected.items():
        if value.is_floating_point():
            scale = value.abs().max().clamp_min(1e-3)
            assert ((actual[key] - value).abs().max() / scale) <= 1e-5, key
        else:
            assert torch.equal(actual[key], value), key


@pytest.mark.parametrize("name", list_models())
def test_fast_validation_equals_eager_validation(
    tiny_run: Callable[..., ExperimentConfig], name: str, one_thread: None
) -> None:
    trainer = Trainer(tiny_run(*SHORT, f"model.name={name}", "data.options.num_images=12"))
    assert trainer.fast_paths.fast_validation
    fast = trainer.validate()
    trainer._validation.fast = False
    eager = trainer.validate()
    assert fast.keys() == eager.keys() and fast["num_images"] == eager["num_images"] == 2
    for key, value in eager.items():
        assert fast[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key


def test_compiled_kernels_need_the_fused_kernels_float32_and_a_model_that_has_them(set_kernels: Callable) -> None:
    if not (depthwise.compiled_in_use() and compiled_mlp.LIBRARY.available() and compiled_gate.LIBRARY.available()):
        pytest.skip("the compiled kernels do not load here: tests/models/test_compiled.py")
    cpu = torch.device("cpu")
    model = create_model("convunext", width=8)
    dense = create_model("convunext", width=8, depthwise=False)
    assert compiled_kernels(model) == ("depthwise", "mlp", "gate") and compiled_kernels(dense) == ("mlp", "gate")
    assert compiled_kernels(create_model("unet", width=8)) == ()
    assert resolve_fast_paths(TrainConfig(), model, cpu).compiled_kernels == ("depthwise", "mlp", "gate")
    assert resolve_fast_paths(TrainConfig(), dense, cpu).compiled_kernels == ("mlp", "gate")
    assert resolve_fast_paths(TrainConfig(fused_kernels="off"), model, cpu).compiled_kernels == ()
    assert resolve_fast_paths(TrainConfig(cpu_bf16=True), model, cpu).compiled_kernels == ()  # autocast: bf16
    assert resolve_fast_paths(TrainConfig(recompute_activations=True), model, cpu).compiled_kernels
    set_kernels("reference")
    assert resolve_fast_paths(TrainConfig(), model, cpu).compiled_kernels == ()


def test_compiled_kernels_forced_where_one_cannot_load_stops_the_run(
    set_kernels: Callable, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(compiled_mlp.LIBRARY, "_loaded", "OSError: no C++ compiler found ('c++'; set CXX)")
    set_kernels("compiled")
    model, cpu = create_model("convunext", width=8), torch.device("cpu")
    with pytest.raises(ConvUNeXtError, match=r"^CONVUNEXT_KERNELS=compiled: the compiled MLP kernel is unavailable"):
        resolve_fast_paths(TrainConfig(), model, cpu)
    assert resolve_fast_paths(TrainConfig(fused_kernels="off"), model, cpu).compiled_kernels == ()  # not needed


@pytest.mark.parametrize("setting", ["default", "reference", "fused_kernels=off"])
def test_the_trainers_steps_run_the_compiled_kernels_by_default(
    tiny_run: Callable[..., ExperimentConfig],
    setting: str,
    one_thread: None,
    set_kernels: Callable,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The default ``convunext train`` on a CPU runs them in every block; ``CONVUNEXT_KERNELS=reference`` and
    ``train.fused_kernels=off`` keep PyTorch's operators. The run records which (``summary.json``'s
    ``fast_paths``, :mod:`tests.training.test_trainer`)."""
    if not (depthwise.compiled_in_use() and compiled_mlp.LIBRARY.available() and compiled_gate.LIBRARY.available()):
        pytest.skip("the compiled kernels do not load here: tests/models/test_compiled.py")
    set_kernels("reference" if setting == "reference" else "auto")
    trainer = Trainer(tiny_run(*SHORT, *(["train.fused_kernels=off"] if setting == "fused_kernels=off" else [])))
    expected = setting == "default"
    assert trainer.fast_paths.compiled_kernels == (("depthwise", "mlp", "gate") if expected else ())
    assert not hasattr(trainer.config.train, "compiled_kernels")  # config.yaml holds the switches only
    runs: list[int] = []
    for function in (depthwise._CompiledDepthwise, compiled_mlp._CompiledMLP, compiled_gate._CompiledGate):
        apply = function.apply
        monkeypatch.setattr(function, "apply", lambda *args, apply=apply: runs.append(1) or apply(*args))
    loop = trainer._prepare(time.perf_counter())
    batch = next(iter(loop.loader))
    trainer.train_model.train()
    loss = trainer.step.loss(trainer.train_model, batch["image"], batch["mask"])
    trainer.step.update(trainer.model, loop.optimizer, loss, loop.scaler, loop.scheduler, loop.ema)
    assert len(runs) == (26 if expected else 0)  # two per block (depthwise, MLP), one per decoder stage (gate)
