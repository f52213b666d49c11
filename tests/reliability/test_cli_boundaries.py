"""Issue 30, the edges every command shares: a device name is checked where it is given and named as the user gave
it, and a closed output pipe (``convunext models | head``) ends the command quietly, without a traceback."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from convunext.errors import ConvUNeXtError
from convunext.utils.device import resolve_device


@pytest.mark.parametrize(
    "name, message",
    [
        ("bogus", r"--device 'bogus' is not a valid device \(auto, cpu, cuda or cuda:N\)"),
        ("cuda:7", r"--device 'cuda:7' but (CUDA is not available|this machine has \d CUDA device)"),
        ("meta", r"--device 'meta': convunext runs on auto, cpu, cuda, cuda:N or mps"),
    ],
)
def test_a_bad_device_is_named_as_the_user_gave_it(name: str, message: str) -> None:
    with pytest.raises(ConvUNeXtError, match=message):
        resolve_device(name)
    with pytest.raises(ConvUNeXtError, match=r"^train\.device 'bogus'"):
        resolve_device("bogus", setting="train.device")


@pytest.mark.skipif(torch.backends.mps.is_available(), reason="this machine has MPS")
def test_mps_without_mps_is_one_line() -> None:
    with pytest.raises(ConvUNeXtError, match=r"--device 'mps' but Apple's MPS is not available"):
        resolve_device("mps")


def test_predict_and_evaluate_name_their_own_device_flag(tmp_path, capsys) -> None:
    from convunext.cli.main import main

    (tmp_path / "in").mkdir()
    Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(tmp_path / "in" / "a.png")
    for argv in (
        ["predict", "drive-vessels", str(tmp_path / "in"), "--out", str(tmp_path / "o"), "--device", "bogus"],
        ["evaluate", "drive-vessels", "synthetic", "--out", str(tmp_path / "e"), "--device", "bogus"],
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "--device 'bogus' is not a valid device" in err and "train.device" not in err


def test_a_closed_output_pipe_ends_quietly() -> None:
    reader = "import sys; sys.stdin.readline()"  # reads one line, then closes the pipe
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    writer = subprocess.Popen(
        [sys.executable, "-m", "convunext", "models", "--variants"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    head = subprocess.run([sys.executable, "-c", reader], stdin=writer.stdout, check=True)
    assert writer.stdout is not None
    writer.stdout.close()
    _, err = writer.communicate(timeout=120)
    assert head.returncode == 0
    assert b"Traceback" not in err and b"BrokenPipeError" not in err, err.decode()
    assert writer.returncode in (0, 141)
