"""benchmarks/volume_prediction.py: the script's table at a tiny volume, measured in this process."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "volume_prediction.py"


@pytest.fixture
def script(monkeypatch: pytest.MonkeyPatch):
    spec = importlib.util.spec_from_file_location("volume_prediction", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "volume_prediction", module)  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    threads = torch.get_num_threads()
    yield module
    torch.set_num_threads(threads)


def _cells(report: str, model: str) -> list[str]:
    line = next(line for line in report.splitlines() if line.startswith(f"| {model} "))
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_tiny_volume_table(script, tmp_path: Path) -> None:
    out = tmp_path / "vp.md"
    argv = ["--models", "unet", "convunext", "nope", "--shape", "20", "24", "3", "--repeats", "2", "--threads", "1"]
    code = script.main([*argv, "--in-process", "--out", str(out)])
    assert code == 1  # the unknown model fails in its own row; the others are measured
    report = out.read_text()
    assert "a 20x24x3 CT-like volume" in report and "3 slices" in report
    unet, convunext = _cells(report, "unet"), _cells(report, "convunext")
    assert unet[1] == "fast (bn-folded+channels-last)"
    assert convunext[1] == "fast (fused+bn-folded+channels-last)"
    assert unet[9:] == ["1.00x", "1.00x"]  # UNet against itself
    assert float(convunext[8]) >= float(convunext[7]) > 0  # peak RSS >= RSS before, in GB
    assert _cells(report, "nope")[3].startswith("error: ValueError")


def test_rows_hold_medians_rates_and_ratios_to_unet(script) -> None:
    def case(model: str) -> object:
        return script.Case(model, "fast", (512, 512, 6), 3, 2, 16, 4, 512)

    outcomes = [
        script.Outcome(
            params=1234, runs_as="fused", first_s=9.0, times=[2.0, 4.0, 3.0], rss_before_mb=512, peak_rss_mb=3072
        ),  # fmt: skip
        script.Outcome(params=99, runs_as="folded", first_s=2.0, times=[1.5], rss_before_mb=512, peak_rss_mb=1024),
    ]
    convunext, unet = script.table_rows([case("convunext"), case("unet")], outcomes)
    # median 3 s; 6 slices / 3 s; 0.5 and 3 GB; 3 / 1.5 s; 3072 / 1024 MB
    assert convunext == ["convunext", "fast (fused)", "1,234", "3.00", "2.00-4.00", "9.00", "2.00", "0.50", "3.00",
                         "2.00x", "3.00x"]  # fmt: skip
    assert unet[-2:] == ["1.00x", "1.00x"]


def test_ct_volume_is_float32_hounsfield_noise(script) -> None:
    volume = script.ct_volume((8, 9, 10))
    assert volume.array.shape == (8, 9, 10) and volume.array.dtype == np.float32
    assert volume.spacing == pytest.approx((0.8, 0.8, 2.5))
    np.testing.assert_array_equal(volume.array, script.ct_volume((8, 9, 10)).array)  # seeded
    assert abs(float(volume.array.mean()) + 300) < 60 and 300 < float(volume.array.std()) < 500
