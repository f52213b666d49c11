"""Issue 11, reading checkpoints: a crafted description is refused from the weights' header before any model is
built, descriptions of the wrong shape, garbled weights and corrupt training states are one-line errors naming the
file, and a training state that does not belong to its checkpoint is refused."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from convunext import checkpoint as checkpoint_module
from convunext import create_model
from convunext.checkpoint import (
    load_checkpoint,
    load_training_state,
    save_checkpoint,
    save_checkpoint_set,
    save_training_state,
)
from convunext.cli.main import main
from convunext.errors import ConvUNeXtError

META = {
    "model": {"name": "convunext", "kwargs": {"in_channels": 1, "num_classes": 2, "width": 8}},
    "classes": ["background", "vessel"],
    "normalization": {"mean": [0.5], "std": [0.25]},
    "epoch": 1,
}


@pytest.fixture()
def run_dir(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    save_checkpoint(tmp_path, "best", create_model("convunext", **META["model"]["kwargs"]), META)
    return tmp_path


def _edit_json(run_dir: Path, edit: Any) -> Path:
    path = run_dir / "best.json"
    record = json.loads(path.read_text())
    edit(record)
    path.write_text(json.dumps(record))
    return path


def _count_real_builds(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Patch the checkpoint module's ``create_model`` to record every build that allocates (not on ``meta``)."""
    real_builds: list[str] = []
    original = checkpoint_module.create_model

    def counting(name: str, **kwargs: object) -> torch.nn.Module:
        if torch.get_default_device().type != "meta":
            real_builds.append(name)
        return original(name, **kwargs)

    monkeypatch.setattr(checkpoint_module, "create_model", counting)
    return real_builds


def test_crafted_width_is_refused_from_the_header_before_any_allocation(
    run_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _edit_json(run_dir, lambda record: record["model"]["kwargs"].update(width=1500))  # would allocate 5.4 GB
    real_builds = _count_real_builds(monkeypatch)
    start = time.perf_counter()
    with pytest.raises(ConvUNeXtError) as caught:
        load_checkpoint(run_dir)
    assert time.perf_counter() - start < 3
    assert real_builds == []
    message = str(caught.value)
    assert "best.safetensors: weights do not fit model 'convunext'" in message and "best.json" in message
    assert "stem" in message and "8x1x" in message and "1500x1x" in message  # first mismatching key and shapes
    assert "\n" not in message

    code = main(["export", str(run_dir), "--format", "torchscript", "--out", str(run_dir / "m.pt")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "weights do not fit" in err
    assert real_builds == [] and not (run_dir / "m.pt").exists()


def test_absurd_depth_is_refused_fast(run_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _edit_json(run_dir, lambda record: record["model"]["kwargs"].update(depths=[1, 1, 10**7, 1]))
    real_builds = _count_real_builds(monkeypatch)
    start = time.perf_counter()
    with pytest.raises(ConvUNeXtError, match="best.safetensors: weights do not fit model 'convunext'.*tensors"):
        load_checkpoint(run_dir)
    assert time.perf_counter() - start < 3 and real_builds == []


def test_a_matching_description_still_loads_after_the_header_check(run_dir: Path) -> None:
    checkpoint = load_checkpoint(run_dir)
    assert not any(p.is_meta for p in checkpoint.model.parameters())
    assert checkpoint.model(torch.randn(1, 1, 32, 32)).shape == (1, 2, 32, 32)


@pytest.mark.parametrize(
    "edit, problem",
    [
        (lambda r: r.update(model="convunext"), "'model'"),
        (lambda r: r["model"].update(kwargs=[8]), "'model.kwargs'"),
        (lambda r: r["model"].update(name=7), "'model.name'"),
        (lambda r: r.update(classes="background,vessel"), "'classes'"),
        (lambda r: r["normalization"].update(mean="0.5"), "'normalization.mean'"),
        (lambda r: r["normalization"].update(std=[0.25, 0.25]), "'normalization.std'"),
        (lambda r: r.update(weights="best.safetensors"), "'weights'"),
        (lambda r: r["weights"].update(sha256=None), "'weights.sha256'"),
        (lambda r: r["weights"].update(file="../elsewhere/best.safetensors"), "'weights.file'"),
    ],
)
def test_descriptions_of_the_wrong_shape_are_one_line_errors(run_dir: Path, edit: Any, problem: str) -> None:
    _edit_json(run_dir, edit)
    with pytest.raises(ConvUNeXtError) as caught:
        load_checkpoint(run_dir)
    message = str(caught.value)
    assert "best.json" in message and problem in message and "\n" not in message


def test_missing_weights_file(run_dir: Path) -> None:
    (run_dir / "best.safetensors").unlink()
    with pytest.raises(ConvUNeXtError, match="best.safetensors: weights file of checkpoint best.json not found"):
        load_checkpoint(run_dir)


@pytest.mark.parametrize("garble", [lambda data: data[:7], lambda data: b"\xff" * 8 + data[8:], lambda data: b""])
def test_garbled_weights_whose_checksum_was_updated_are_one_line_errors(run_dir: Path, garble: Any) -> None:
    """A garbled file that still matches its recorded checksum (the JSON was rewritten for it) is refused too."""
    weights = run_dir / "best.safetensors"
    weights.write_bytes(garble(weights.read_bytes()))
    _edit_json(run_dir, lambda r: r["weights"].update(sha256=hashlib.sha256(weights.read_bytes()).hexdigest()))
    with pytest.raises(ConvUNeXtError) as caught:
        load_checkpoint(run_dir)
    assert str(caught.value).startswith(f"{weights}: cannot read weights") and "\n" not in str(caught.value)


def _valid_state_bytes(tmp_path: Path) -> bytes:
    state = {"epoch": 3, "rng_cpu": torch.get_rng_state(), "model": create_model("unet", width=4).state_dict()}
    save_training_state(tmp_path, state)
    return (tmp_path / "last_state.pt").read_bytes()


@pytest.mark.parametrize(
    "corrupt",
    [
        lambda data: data[: len(data) // 2],  # truncated
        lambda data: os.urandom(len(data)),  # random bytes
        lambda data: b"",  # zero bytes
        lambda data: data[:-200],  # only the end of the archive is missing
    ],
    ids=["truncated", "random", "empty", "tail-missing"],
)
def test_a_corrupt_training_state_is_named_and_explained(tmp_path: Path, corrupt: Any) -> None:
    data = _valid_state_bytes(tmp_path)
    (tmp_path / "last_state.pt").write_bytes(corrupt(data))
    with pytest.raises(ConvUNeXtError) as caught:
        load_training_state(tmp_path)
    message = str(caught.value)
    assert message.startswith(f"{tmp_path / 'last_state.pt'}: cannot read training state")
    assert "corrupt or truncated" in message and "train --overwrite" in message and "\n" not in message


def test_an_unsafe_pickle_is_refused_with_its_reason(tmp_path: Path) -> None:
    class Payload:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (print, ("pwned",))

    torch.save({"epoch": Payload()}, tmp_path / "last_state.pt")
    with pytest.raises(ConvUNeXtError, match="last_state.pt: cannot read training state: .*weights_only=True"):
        load_training_state(tmp_path)


def test_a_training_state_that_is_not_a_state_dict_is_refused(tmp_path: Path) -> None:
    torch.save([1, 2, 3], tmp_path / "last_state.pt")
    with pytest.raises(ConvUNeXtError, match="last_state.pt: not a convunext training state"):
        load_training_state(tmp_path)


def _save_epoch(run_dir: Path, seed: int, epoch: int) -> None:
    torch.manual_seed(seed)
    model = create_model("unet", in_channels=1, width=4)
    meta = {**META, "model": {"name": "unet", "kwargs": {"in_channels": 1, "width": 4}}, "epoch": epoch}
    save_checkpoint_set(run_dir, model, meta, {"epoch": epoch, "model": model.state_dict()}, best=True)


def test_a_training_state_from_another_run_is_refused(tmp_path: Path) -> None:
    _save_epoch(tmp_path / "a", seed=0, epoch=1)
    _save_epoch(tmp_path / "b", seed=1, epoch=1)
    (tmp_path / "a" / "last_state.pt").write_bytes((tmp_path / "b" / "last_state.pt").read_bytes())
    with pytest.raises(ConvUNeXtError, match="a/last_state.pt: does not belong to last.json .*epoch 1"):
        load_training_state(tmp_path / "a")


def test_a_state_older_than_last_json_resumes_from_the_state(tmp_path: Path) -> None:
    """A crash between the renames of a save leaves the state one epoch behind: resuming repeats that epoch."""
    _save_epoch(tmp_path, seed=0, epoch=1)
    epoch_1_state = (tmp_path / "last_state.pt").read_bytes()
    _save_epoch(tmp_path, seed=0, epoch=2)
    (tmp_path / "last_state.pt").write_bytes(epoch_1_state)
    assert load_training_state(tmp_path)["epoch"] == 1


def test_atomic_writes_get_the_permissions_of_a_plain_write(tmp_path: Path) -> None:
    from convunext.utils.io import atomic_write_text

    (tmp_path / "plain.txt").write_text("x")
    atomic_write_text(tmp_path / "atomic.txt", "x")
    assert (tmp_path / "atomic.txt").stat().st_mode == (tmp_path / "plain.txt").stat().st_mode
