"""``convunext models`` prints the registry with parameters, GFLOPs and the ratio to UNet."""

from __future__ import annotations

import subprocess
import sys

import pytest

from convunext.cli.main import main


def test_models_table_lists_every_model_with_counts(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "--size", "64"]) == 0
    out = capsys.readouterr().out
    assert "3,505,730" in out and "4,318,434" in out
    convunext_row = next(line for line in out.splitlines() if line.startswith("| convunext "))
    assert convunext_row.rstrip(" |").endswith("0.81")
    for name in ("unet", "attention_unet", "unet_plus_plus", "resunet"):
        assert f"| {name} " in out


def test_models_gflops_at_480() -> None:
    from convunext.cli.models import model_summary

    rows = {row["name"]: row for row in model_summary(size=480)}
    assert rows["convunext"]["gflops"] == pytest.approx(50.1, abs=0.05)
    assert rows["unet"]["gflops"] == pytest.approx(70.5, abs=0.1)
    assert rows["convunext"]["params_vs_unet"] == pytest.approx(0.81, abs=0.005)


def test_console_entry_point_runs() -> None:
    result = subprocess.run([sys.executable, "-m", "convunext", "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and "convunext" in result.stdout


def test_user_error_is_one_line_without_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "--in-channels", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and "in_channels=0" in err


def test_errors_from_dataloader_workers_are_reduced_to_their_message() -> None:
    from convunext.cli.main import one_line
    from convunext.errors import ConvUNeXtError

    wrapped = ConvUNeXtError(
        "Caught ConvUNeXtError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
        '  File "x.py", line 1, in f\nconvunext.errors.ConvUNeXtError: /data/a.png: cannot read image (truncated)\n'
    )
    assert one_line(wrapped) == "/data/a.png: cannot read image (truncated)"
    assert one_line(ValueError("plain")) == "plain"
