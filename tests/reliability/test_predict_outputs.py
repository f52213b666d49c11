"""Issue 30, what ``convunext predict`` and ``convunext export`` write: outputs never replace an input and are never
read back as inputs, every file is written whole (temporary name, renamed when complete), one predict at a time
writes into a folder and a folder holds the predictions of one checkpoint, every number and path is checked before
any work, and files that are not checkpoints (ONNX, TorchScript, images) are refused with what to give instead."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from convunext import create_model
from convunext.checkpoint import save_checkpoint
from convunext.cli.main import main
from convunext.inference import export as export_module

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
MODEL = {"name": "convunext", "kwargs": {"in_channels": 3, "num_classes": 2, "width": 8}}


def _save_tiny_checkpoint(folder: Path, seed: int) -> Path:
    """A width-8 ConvUNeXt checkpoint with random weights (``seed``) in ``folder``."""
    torch.manual_seed(seed)
    meta = {
        "model": MODEL,
        "classes": ["background", "vessel"],
        "normalization": {"mean": [0.5, 0.4, 0.3], "std": [0.25, 0.2, 0.15]},
    }
    return save_checkpoint(folder, "best", create_model(MODEL["name"], **MODEL["kwargs"]), meta)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny ConvUNeXt checkpoint (random weights)."""
    return _save_tiny_checkpoint(tmp_path_factory.mktemp("run"), seed=0)


def _image(path: Path, size: int = 40, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def _predict(checkpoint: Path, *argv: str | Path) -> int:
    return main(["predict", str(checkpoint), *map(str, argv), "--quiet"])


# ---------------------------------------------------------------------------------------------------------------
# item 3: outputs never replace an input, an output folder is never read as input


def test_an_output_that_would_replace_an_input_is_refused(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    images = tmp_path / "in"
    _image(images / "a.png")
    _image(images / "a_mask.png", seed=1)  # a.png's mask would be written over it
    before = _files(images)
    assert _predict(checkpoint, images, "--out", images) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{images / 'a_mask.png'}: is an input image" in err and "a.png" in err
    assert _files(images) == before  # nothing replaced, nothing added


def test_an_out_folder_holding_input_images_is_refused(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = _image(tmp_path / "in" / "a.png")
    assert _predict(checkpoint, image, "--out", image.parent) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--out {image.parent}: holds the input image {image}" in err
    assert _files(image.parent).keys() == {"a.png"}


def test_a_folder_of_predictions_is_never_read_as_input(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "pred"
    assert _predict(checkpoint, _image(tmp_path / "in" / "a.png"), "--out", out, "--overlay") == 0
    for given in (out, out / "a_mask.png"):
        assert _predict(checkpoint, given, "--out", tmp_path / "again") == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"{given}: " in err and "convunext predict outputs" in err
    assert not (tmp_path / "again").exists()


# ---------------------------------------------------------------------------------------------------------------
# item 4: every file is written whole; item 14: a full disk is one line naming the file


def test_disk_full_leaves_no_partial_output_and_is_one_line(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], fail_fsync_of: Callable[[str], None]
) -> None:
    images = tmp_path / "in"
    _image(images / "a.png")
    _image(images / "b.png", seed=1)
    out = tmp_path / "out"
    fail_fsync_of("b_prob.npy")
    assert _predict(checkpoint, images, "--out", out, "--probabilities", "--overlay") == 2
    assert (
        capsys.readouterr().err == f"convunext predict: error: no space left on device while writing {out}/b_prob.npy\n"
    )
    written = {p.name for p in out.iterdir()}
    assert {"a_mask.png", "a_prob.npy", "a_overlay.png"} <= written  # the first image's outputs, whole
    assert not {name for name in written if name.startswith("b_") or name.endswith(".tmp")}  # none of b's


def test_a_write_cut_short_by_the_kernel_leaves_no_file_under_its_final_name(checkpoint: Path, tmp_path: Path) -> None:
    """A real partial write: RLIMIT_FSIZE lets the kernel write the first 4 KiB of the probabilities, then EFBIG."""
    driver = textwrap.dedent(
        """
        import resource, signal, sys
        from convunext.cli.main import main

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
        sys.exit(main(sys.argv[1:]))
        """
    )
    out = tmp_path / "out"
    argv = ["predict", str(checkpoint), str(_image(tmp_path / "a.png", size=64)), "--out", str(out)]
    done = subprocess.run(
        [sys.executable, "-c", driver, *argv, "--probabilities", "--quiet"],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == [
        f"convunext predict: error: file size limit exceeded while writing {out / 'a_prob.npy'}"
    ]
    assert not [p.name for p in out.iterdir() if p.name.startswith("a_") or p.name.endswith(".tmp")]


def test_temporary_files_of_a_killed_predict_are_removed_by_the_next(checkpoint: Path, tmp_path: Path) -> None:
    image, out = _image(tmp_path / "a.png"), tmp_path / "out"
    assert _predict(checkpoint, image, "--out", out) == 0
    killed = out / ".a_overlay.png.k1lled_.tmp"  # what a kill during the overlay's write leaves
    killed.write_bytes(b"half an overlay")
    (out / ".notes.txt.swap.tmp").write_text("not predict's")
    assert _predict(checkpoint, image, "--out", out, "--overlay") == 0
    assert {p.name for p in out.iterdir()} == {
        ".convunext-predictions.json",
        ".notes.txt.swap.tmp",
        "a_mask.png",
        "a_overlay.png",
        "predictions.csv",
    }


# ---------------------------------------------------------------------------------------------------------------
# item 5: one predict at a time into a folder, and a folder holds the predictions of one checkpoint


def test_a_second_predict_into_a_folder_in_use_is_refused(
    checkpoint: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    hold_lock: Callable[[Path], subprocess.Popen[str]],
) -> None:
    out = tmp_path / "out"
    holder = hold_lock(out)
    assert _predict(checkpoint, _image(tmp_path / "a.png"), "--out", out) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{out}: in use by another process (pid {holder.pid} on " in err
    assert not [p for p in out.iterdir() if p.name != ".lock"]


def test_predictions_of_two_checkpoints_never_mix_in_one_folder(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = _save_tiny_checkpoint(tmp_path / "other", seed=1)
    image, out = _image(tmp_path / "a.png"), tmp_path / "out"
    assert _predict(checkpoint, image, "--out", out, "--overlay") == 0
    before = _files(out)
    assert _predict(other, image, "--out", out) == 2  # its mask would sit beside the first model's overlay
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{out}: holds the predictions of another checkpoint ({checkpoint})" in err
    assert _files(out) == before
    assert _predict(checkpoint, image, "--out", out) == 0  # the same checkpoint again: fine


def test_files_that_predict_did_not_write_are_never_replaced(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "masks"
    own = _image(out / "a_mask.png", seed=5)  # e.g. the user's reference masks
    before = own.read_bytes()
    assert _predict(checkpoint, _image(tmp_path / "in" / "a.png"), "--out", out) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{own}: exists and was not written by convunext predict" in err
    assert own.read_bytes() == before and {p.name for p in out.iterdir()} == {"a_mask.png"}


# ---------------------------------------------------------------------------------------------------------------
# items 13 and 14: every number and path checked before any work


def test_out_that_is_a_file_is_one_line(checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image = _image(tmp_path / "a.png")
    existing = tmp_path / "notes.txt"
    existing.write_text("mine")
    for out in (existing, existing / "sub"):
        assert _predict(checkpoint, image, "--out", out) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"error: {out}: " in err and f"{existing} is a file, not a folder" in err
    assert existing.read_text() == "mine"


@pytest.mark.parametrize(
    "option, value",
    [
        ("--overlap", "5"),
        ("--overlap", "-0.1"),
        ("--overlap", "nan"),
        ("--tile-size", "-1"),
        ("--tile-size", "big"),
        ("--batch-size", "0"),
    ],
)
def test_bad_numbers_are_refused_before_any_output(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], option: str, value: str
) -> None:
    """The small image fits one tile, the large one is tiled: --overlap used to fail only there, after a's mask."""
    images = tmp_path / "in"
    _image(images / "a.png", size=32)
    _image(images / "b.png", size=200)
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        _predict(checkpoint, images, "--out", out, "--tile-size", "64", option, value)
    assert exit_info.value.code == 2
    assert f"argument {option}: {value!r}: expected " in capsys.readouterr().err
    assert not out.exists()


# ---------------------------------------------------------------------------------------------------------------
# item 17: files that are not checkpoints


@pytest.mark.parametrize(
    "name, content, problem",
    [
        ("model.onnx", b"\x08\x09onnx", "an ONNX model, not a convunext checkpoint"),
        ("model.pt", b"PK\x03\x04torchscript", "a PyTorch file (TorchScript or pickle), not a convunext checkpoint"),
        ("run/last_state.pt", b"PK\x03\x04state", "the training state of --resume, not a checkpoint"),
        ("photo.png", b"\x89PNG\r\n\x1a\n", "not a checkpoint"),
    ],
)
def test_files_that_are_not_checkpoints_are_refused_with_what_to_give(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, content: bytes, problem: str
) -> None:
    given = tmp_path / name
    given.parent.mkdir(exist_ok=True)
    given.write_bytes(content)
    image = _image(tmp_path / "in" / "a.png")
    assert main(["predict", str(given), str(image), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"convunext predict: error: {given}: {problem}") and err.count("\n") == 1
    assert "run folder" in err and "corrupt JSON" not in err
    assert not (tmp_path / "out").exists()


def test_weights_without_their_description_are_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"{}")
    assert main(["predict", str(weights), str(_image(tmp_path / "a.png")), "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err == (
        f"convunext predict: error: {weights}: its description model.json is missing beside it (a checkpoint is "
        "the pair TAG.json and TAG.safetensors)\n"
    )


# ---------------------------------------------------------------------------------------------------------------
# export: checked before any work, never over its own checkpoint, a file only once verified


def test_export_never_writes_over_its_own_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    checkpoint = _save_tiny_checkpoint(tmp_path, seed=0)
    before = _files(checkpoint.parent)
    for own in (checkpoint, checkpoint.with_suffix(".safetensors")):
        assert main(["export", str(checkpoint), "--format", "torchscript", "--out", str(own)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"{own}: is a file of the exported checkpoint" in err
    assert _files(checkpoint.parent) == before


def test_an_export_that_fails_verification_leaves_no_file(
    checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "model.pt"
    out.write_bytes(b"previous export")
    monkeypatch.setattr(export_module, "verify_export", lambda *args, **kwargs: [((1, 3, 96, 96), 1.0, 1.0)])
    assert main(["export", str(checkpoint), "--format", "torchscript", "--out", str(out)]) == 2
    assert "verification failed" in capsys.readouterr().err
    assert out.read_bytes() == b"previous export" and [p.name for p in tmp_path.iterdir()] == ["model.pt"]


@pytest.mark.parametrize(
    "argv, problem",
    [
        (["--format", "onnx", "--opset", "17"], "argument --opset: '17': expected an ONNX opset"),
        (["--format", "torchscript", "--opset", "18"], "--opset applies to --format onnx only"),
        (["--format", "torchscript", "--pretrained", "my-model"], "give either --pretrained NAME or --format"),
    ],
)
def test_export_options_are_checked_before_any_work(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], problem: str
) -> None:
    out = tmp_path / "model.file"
    try:
        code = main(["export", str(checkpoint), "--out", str(out), *argv])
    except SystemExit as exit_info:
        code = exit_info.code  # type: ignore[assignment]
    assert code == 2 and problem in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == []


def test_an_onnx_opset_the_exporter_cannot_reach_is_refused_not_relabelled(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Asked for opset 26, onnxscript 0.7 cannot convert the graph and falls back to opset 18 (logging a traceback);
    the file used to be reported as opset 26. Either the file holds the opset asked for, or nothing is written."""
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    pytest.importorskip("onnxruntime")
    out = tmp_path / "model.onnx"
    code = main(["export", str(checkpoint), "--format", "onnx", "--opset", "26", "--out", str(out)])
    captured = capsys.readouterr()
    if code == 0:  # a later onnxscript that converts it
        assert [entry.version for entry in onnx.load(str(out)).opset_import if entry.domain == ""] == [26]
        return
    assert code == 2 and captured.err == (
        "convunext export: error: ONNX export to opset 26 failed: the exporter cannot convert this model to it "
        "(it wrote opset 18); choose another opset, e.g. the default 18\n"
    )
    assert not out.exists()
