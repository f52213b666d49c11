"""``--devices N``: the torchrun command that runs ``convunext train`` in N processes, and the launches refused
before it starts (the launch itself, on CPU, is ``test_distributed.py::test_devices_option_launches_torchrun``)."""

from __future__ import annotations

import re
import subprocess
import sys
from typing import Any

import pytest
import torch

from convunext.errors import ConvUNeXtError
from convunext.training import launch


@pytest.fixture
def launched(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The commands :func:`launch.launch_training` runs (none is started; each "exits" with 3)."""
    commands: list[list[str]] = []

    def run(command: list[str], **options: Any) -> subprocess.CompletedProcess[str]:
        commands.append(command)
        return subprocess.CompletedProcess(command, 3)

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(launch.subprocess, "run", run)
    return commands


def test_the_launch_runs_convunext_train_under_torchrun_and_returns_its_exit_code(
    launched: list[list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    arguments = ["drive", "--epochs", "3", "--set", "optim.batch_size=2"]
    expected = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    expected += ["-m", "convunext", "train", *arguments]
    assert launch.torchrun_command(2, arguments) == expected
    assert launch.launch_training(2, arguments, device="cpu") == 3
    assert launched == [expected]
    assert capsys.readouterr().out == "launching: " + " ".join(expected) + "\n"


@pytest.mark.parametrize(
    ("processes", "options", "expected"),
    [
        (0, {}, "--devices 0: expected a positive number of processes"),
        (2, {"sync_batchnorm": True, "device": "cpu"}, "--sync-batchnorm needs CUDA"),
        (3, {"device": "cuda"}, "--devices 3 but this machine has 2 CUDA device(s)"),
    ],
)
def test_a_launch_that_cannot_start_is_refused_before_torchrun(
    processes: int,
    options: dict[str, Any],
    expected: str,
    launched: list[list[str]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(ConvUNeXtError, match=re.escape(expected)):
        launch.launch_training(processes, [], **options)
    assert launched == []


def test_a_torchrun_worker_does_not_launch_again(launched: list[list[str]], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConvUNeXtError, match="under torchrun, leave --devices out"):
        launch.launch_training(2, [], device="cpu")
    assert launched == []
