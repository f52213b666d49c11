"""Issue 11, writing: a full disk (or a file size limit) during training is one line naming the file, and the
checkpoint set (``best.*``, ``last.*``, ``last_state.pt``) stays the previous complete epoch, so ``--resume``
continues; ``convunext export`` names an output path it cannot write before exporting."""

from __future__ import annotations

import csv
import errno
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from convunext import create_model
from convunext.checkpoint import load_checkpoint, save_checkpoint, save_checkpoint_set
from convunext.cli.main import main
from convunext.errors import ConvUNeXtError
from convunext.utils.io import atomic_write, sha256_file

SET_FILES = ("best.safetensors", "best.json", "last.safetensors", "last.json", "last_state.pt")


def _fail_fsync(monkeypatch: pytest.MonkeyPatch, name: str, occurrence: int, code: int = errno.ENOSPC) -> None:
    """Make the ``occurrence``-th fsync of a temporary file for ``name`` fail with ``code`` (e.g. a full disk)."""
    real_fsync, seen = os.fsync, [0]

    def fsync(fd: int) -> None:
        if os.path.basename(os.readlink(f"/proc/self/fd/{fd}")).startswith(f".{name}."):
            seen[0] += 1
            if seen[0] == occurrence:
                raise OSError(code, os.strerror(code))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)


def _assert_consistent(run: Path, epoch: int) -> None:
    """Every member of the checkpoint set describes ``epoch``, the last epoch listed in ``metrics.csv``."""
    state = torch.load(run / "last_state.pt", weights_only=True)
    last = json.loads((run / "last.json").read_text())
    assert state["epoch"] == last["epoch"] == epoch
    assert last["state"] == {"file": "last_state.pt", "sha256": sha256_file(run / "last_state.pt")}
    weights = load_file(str(run / "last.safetensors"))
    assert weights.keys() == state["model"].keys()
    assert all(torch.equal(weights[k], state["model"][k]) for k in weights)
    load_checkpoint(run / "last.json")  # weights match their checksum
    assert load_checkpoint(run / "best.json").meta["epoch"] == state["best"]["epoch"] <= epoch
    assert len(list(csv.DictReader((run / "metrics.csv").open()))) == epoch
    assert not list(run.glob(".*.tmp"))


def test_disk_full_while_saving_epoch_2_keeps_epoch_1_and_resumes(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tiny_train_argv: Callable[..., list[str]],
) -> None:
    _fail_fsync(monkeypatch, "last_state.pt", occurrence=2)
    assert main(tiny_train_argv(tmp_path, "train.run_name=run", epochs=2)) == 2
    err = capsys.readouterr().err
    run = tmp_path / "run"
    assert err == f"convunext train: error: no space left on device while writing {run / 'last_state.pt'}\n"
    _assert_consistent(run, epoch=1)

    monkeypatch.undo()
    assert main(["train", "--resume", str(run)]) == 0
    _assert_consistent(run, epoch=2)


def test_file_size_limit_in_a_real_process_keeps_the_set_and_resumes(
    tmp_path: Path, tiny_train_argv: Callable[..., list[str]]
) -> None:
    """The kernel refuses the write (RLIMIT_FSIZE, SIGXFSZ ignored: EFBIG) from the second epoch's saves on."""
    driver = textwrap.dedent(
        """
        import os, resource, signal, sys
        from convunext.cli.main import main
        from convunext.training.validation import Validation

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        validate, calls = Validation.metrics, []

        def limited_after_epoch_1(self, model):
            saved = os.path.join(os.environ["RUN_DIR"], "last.safetensors")
            if os.path.exists(saved) and not calls:  # epoch 2's first validation: epoch 1's set is whole
                calls.append(1)  # the weights (same size every epoch) still fit, the training state does not
                limit = 2 * os.path.getsize(saved)
                resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
            return validate(self, model)

        Validation.metrics = limited_after_epoch_1
        sys.exit(main(sys.argv[1:]))
        """
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RUN_DIR": str(tmp_path / "run")}
    result = subprocess.run(
        [sys.executable, "-c", driver, *tiny_train_argv(tmp_path, "train.run_name=run", epochs=2)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    run = tmp_path / "run"
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [
        f"convunext train: error: file size limit exceeded while writing {run / 'last_state.pt'}"
    ]
    _assert_consistent(run, epoch=1)
    assert main(["train", "--resume", str(run)]) == 0
    _assert_consistent(run, epoch=2)


@pytest.fixture()
def saved_set(tmp_path: Path) -> tuple[torch.nn.Module, Path, dict[str, bytes]]:
    """A run folder holding the checkpoint set of epoch 1, and the bytes of each of its files."""
    torch.manual_seed(0)
    model = create_model("unet", in_channels=1, width=4)
    meta = {"model": {"name": "unet", "kwargs": {"in_channels": 1, "width": 4}}, "classes": ["bg", "fg"]}
    meta |= {"normalization": {"mean": [0.5], "std": [0.2]}, "epoch": 1}
    save_checkpoint_set(tmp_path, model, meta, {"epoch": 1, "model": model.state_dict()}, best=True)
    return model, tmp_path, {name: (tmp_path / name).read_bytes() for name in SET_FILES}


@pytest.mark.parametrize("name", SET_FILES)
@pytest.mark.parametrize(
    "code, problem",
    [
        (errno.ENOSPC, "no space left on device"),
        (errno.EDQUOT, "disk quota exceeded"),
        (errno.EFBIG, "file size limit exceeded"),
    ],
)
def test_a_failed_write_of_any_member_changes_no_file_of_the_set(
    saved_set: tuple[torch.nn.Module, Path, dict[str, bytes]],
    monkeypatch: pytest.MonkeyPatch,
    name: str,
    code: int,
    problem: str,
) -> None:
    model, run, before = saved_set
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(1)
    meta = json.loads(before["last.json"]) | {"epoch": 2}
    _fail_fsync(monkeypatch, name, occurrence=1, code=code)
    with pytest.raises(ConvUNeXtError) as caught:
        save_checkpoint_set(run, model, meta, {"epoch": 2, "model": model.state_dict()}, best=True)
    assert str(caught.value) == f"{problem} while writing {run / name}"
    assert {name: (run / name).read_bytes() for name in SET_FILES} == before
    assert not list(run.glob(".*.tmp"))


@pytest.mark.parametrize(
    "error",
    [
        RuntimeError(
            "[enforce fail at inline_container.cc:778] . PytorchStreamWriter failed writing file data/3: "
            "file write failed"
        ),
        RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 4608 vs 4502"),
    ],
)
def test_torch_write_failures_become_one_line(tmp_path: Path, error: RuntimeError) -> None:
    def write(tmp: Path) -> None:
        tmp.write_bytes(b"partial")
        raise error

    (tmp_path / "state.pt").write_bytes(b"previous")
    with pytest.raises(ConvUNeXtError, match=f"^no space left on device .*while writing {tmp_path / 'state.pt'}$"):
        atomic_write(tmp_path / "state.pt", write)
    assert (tmp_path / "state.pt").read_bytes() == b"previous" and not list(tmp_path.glob(".*.tmp"))


def test_other_runtime_errors_are_not_disguised_as_a_full_disk(tmp_path: Path) -> None:
    def write(tmp: Path) -> None:
        raise RuntimeError("a bug")

    with pytest.raises(RuntimeError, match="a bug"):
        atomic_write(tmp_path / "x", write)


@pytest.fixture()
def checkpoint_dir(tmp_path: Path) -> Path:
    meta = {"model": {"name": "unet", "kwargs": {"width": 4}}, "classes": ["bg", "fg"]}
    meta["normalization"] = {"mean": [0.5] * 3, "std": [0.2] * 3}
    save_checkpoint(tmp_path / "ckpt", "best", create_model("unet", width=4), meta)
    return tmp_path / "ckpt"


def _export(checkpoint_dir: Path, out: Path, *extra: str) -> int:
    return main(["export", str(checkpoint_dir), "--format", "torchscript", "--out", str(out), *extra])


@pytest.mark.parametrize(
    "make_out, problem",
    [
        (lambda tmp: _touch(tmp / "file") / "model.pt", "is a file, not a folder"),
        (lambda tmp: _touch(tmp / "file") / "sub" / "model.pt", "is a file, not a folder"),
        (lambda tmp: tmp, "is a folder; give a file name"),
    ],
    ids=["under-a-file", "deep-under-a-file", "a-folder"],
)
def test_export_to_a_path_that_cannot_be_a_file_is_one_line(
    checkpoint_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    make_out: Callable[[Path], Path],
    problem: str,
) -> None:
    out = make_out(tmp_path)
    assert _export(checkpoint_dir, out) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"convunext export: error: {out}: ") and problem in err and err.count("\n") == 1


def _touch(path: Path) -> Path:
    path.write_text("a regular file")
    return path


def test_export_into_an_unwritable_folder_is_one_line(checkpoint_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = Path("/sys")  # read-only even for root
    try:
        (folder / "probe").open("w").close()
        pytest.skip("/sys is writable here")
    except OSError:
        pass
    out = folder / "model.pt"
    assert _export(checkpoint_dir, out) == 2
    assert capsys.readouterr().err == f"convunext export: error: permission denied while writing {out}\n"


def test_export_creates_missing_parent_folders(checkpoint_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "new" / "folder" / "model.pt"
    assert _export(checkpoint_dir, out, "--no-verify") == 0
    assert torch.jit.load(str(out))(torch.randn(1, 3, 32, 32)).shape == (1, 2, 32, 32)


def test_disk_full_during_export_keeps_the_previous_file(
    checkpoint_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "model.pt"
    out.write_bytes(b"previous export")
    _fail_fsync(monkeypatch, "model.pt", occurrence=1)
    assert _export(checkpoint_dir, out, "--no-verify") == 2
    assert capsys.readouterr().err == f"convunext export: error: no space left on device while writing {out}\n"
    assert out.read_bytes() == b"previous export" and not list(tmp_path.glob(".*.tmp"))


def test_other_machine_side_os_errors_are_one_line_in_any_command(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from convunext.cli import export

    def full_disk(args: object) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "out/a_mask.png")

    monkeypatch.setattr(export, "run", full_disk)
    assert main(["export", "ckpt", "--format", "onnx", "--out", "x"]) == 2
    assert capsys.readouterr().err == "convunext export: error: out/a_mask.png: no space left on device\n"

    def bug(args: object) -> int:
        raise OSError(errno.EBADF, os.strerror(errno.EBADF))

    monkeypatch.setattr(export, "run", bug)
    with pytest.raises(OSError, match="Bad file descriptor"):  # a bug keeps its traceback
        main(["export", "ckpt", "--format", "onnx", "--out", "x"])
