"""Checkpoints rebuild the model on their own, are written atomically and refuse tampered files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from convunext import create_model
from convunext.checkpoint import (
    load_checkpoint,
    load_training_state,
    save_checkpoint,
    save_training_state,
)
from convunext.errors import ConvUNeXtError

META = {
    "model": {"name": "convunext", "kwargs": {"in_channels": 1, "num_classes": 3, "width": 8, "kernel_size": 5}},
    "classes": ["background", "a", "b"],
    "normalization": {"mean": [0.5], "std": [0.25]},
    "epoch": 4,
}


@pytest.fixture()
def saved(tmp_path: Path) -> tuple[torch.nn.Module, Path]:
    torch.manual_seed(0)
    model = create_model("convunext", **META["model"]["kwargs"])
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-1, 1)
    save_checkpoint(tmp_path, "best", model, META)
    return model.eval(), tmp_path


def test_round_trip_rebuilds_the_model_from_the_checkpoint_alone(saved: tuple[torch.nn.Module, Path]) -> None:
    model, run_dir = saved
    for path in (run_dir, run_dir / "best.json", run_dir / "best.safetensors"):
        checkpoint = load_checkpoint(path)
        assert checkpoint.class_names == ["background", "a", "b"]
        assert checkpoint.mean == (0.5,) and checkpoint.std == (0.25,)
        x = torch.randn(1, 1, 33, 40)
        with torch.no_grad():
            assert torch.equal(checkpoint.model(x), model(x))
    assert not list(run_dir.glob("*.tmp"))


def test_truncated_weights_are_detected(saved: tuple[torch.nn.Module, Path]) -> None:
    _, run_dir = saved
    weights = run_dir / "best.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ConvUNeXtError, match="best.safetensors: weights do not match their checksum"):
        load_checkpoint(run_dir)


def test_modified_weights_are_detected(saved: tuple[torch.nn.Module, Path]) -> None:
    _, run_dir = saved
    weights = run_dir / "best.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ConvUNeXtError, match="checksum"):
        load_checkpoint(run_dir)


def test_corrupt_or_foreign_json(saved: tuple[torch.nn.Module, Path]) -> None:
    _, run_dir = saved
    (run_dir / "best.json").write_text("{not json")
    with pytest.raises(ConvUNeXtError, match="best.json: not a valid checkpoint description"):
        load_checkpoint(run_dir)
    (run_dir / "best.json").write_text(json.dumps({"hello": 1}))
    with pytest.raises(ConvUNeXtError, match="not a convunext checkpoint"):
        load_checkpoint(run_dir / "best.json")


def test_weights_that_do_not_fit_the_description(saved: tuple[torch.nn.Module, Path]) -> None:
    _, run_dir = saved
    meta = json.loads((run_dir / "best.json").read_text())
    meta["model"]["kwargs"]["width"] = 16
    (run_dir / "best.json").write_text(json.dumps(meta))
    with pytest.raises(ConvUNeXtError, match="weights do not fit model 'convunext'"):
        load_checkpoint(run_dir)


def test_missing_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(ConvUNeXtError, match="no checkpoint in this folder"):
        load_checkpoint(tmp_path)
    with pytest.raises(ConvUNeXtError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "nope.json")


def test_training_state_round_trip_and_errors(tmp_path: Path) -> None:
    state = {"epoch": 3, "rng_cpu": torch.get_rng_state(), "best": {"dice": 0.5}, "history": [{"epoch": 1.0}]}
    save_training_state(tmp_path, state)
    loaded = load_training_state(tmp_path)
    assert loaded["epoch"] == 3 and torch.equal(loaded["rng_cpu"], state["rng_cpu"])
    (tmp_path / "last_state.pt").write_bytes(b"garbage")
    with pytest.raises(ConvUNeXtError, match="last_state.pt: cannot read training state"):
        load_training_state(tmp_path)
    with pytest.raises(ConvUNeXtError, match="no training state"):
        load_training_state(tmp_path / "elsewhere")


def test_unsafe_pickle_is_refused(tmp_path: Path) -> None:
    class Payload:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (print, ("pwned",))

    torch.save({"epoch": Payload()}, tmp_path / "last_state.pt")
    with pytest.raises(ConvUNeXtError, match="cannot read training state"):
        load_training_state(tmp_path)


def test_a_pretrained_folder_loads_like_a_run_folder(tmp_path):
    """A folder holding one ``NAME.json`` (a pretrained folder) is read as that checkpoint; a folder of several
    JSON files and no run checkpoint is refused, naming what it expects."""
    save_checkpoint(tmp_path / "mine", "vessels", create_model("convunext", **META["model"]["kwargs"]), META)
    assert load_checkpoint(tmp_path / "mine").path == tmp_path / "mine" / "vessels.json"
    (tmp_path / "mine" / "other.json").write_text("{}")
    with pytest.raises(ConvUNeXtError, match=r"no checkpoint in this folder .*one NAME\.json of a pretrained folder"):
        load_checkpoint(tmp_path / "mine")
