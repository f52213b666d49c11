"""benchmarks/mlp_kernel.py: the compiled MLP kernel's table against PyTorch's, at shrunken stage shapes."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from convunext import runtime

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "mlp_kernel.py"


@pytest.fixture
def script():
    spec = importlib.util.spec_from_file_location("mlp_kernel", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    threads, kernels = torch.get_num_threads(), runtime.settings().kernels
    yield module
    torch.set_num_threads(threads)
    runtime.configure(kernels=kernels)


def test_table_has_a_row_per_stage_and_thread_count(script, tmp_path: Path) -> None:
    out = tmp_path / "mlp.md"
    assert script.main(["--threads", "1,2", "--repeats", "1", "--scale", "256", "--out", str(out)]) == 0
    report = out.read_text()
    assert "`python benchmarks/mlp_kernel.py --threads 1,2 --repeats 1 --scale 256" in report
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in report.splitlines() if line[:1] == "|"]
    cells = [row for row in rows if row[0].isdigit()]
    assert [(row[0], row[1], row[2]) for row in cells] == [
        (threads, stage, rows)
        for threads in ("1", "2")
        for stage, rows in (
            ("32 x 256x256", "1,024"),
            ("64 x 128x128", "256"),
            ("128 x 64x64", "64"),
            ("256 x 32x32", "16"),
        )  # fmt: skip
    ]
    for row in cells:  # speed-up = PyTorch ms / compiled ms, as printed (rounding aside)
        reference, compiled, ratio = float(row[3]), float(row[4]), float(row[5].rstrip("x"))
        if compiled >= 1.0:
            assert ratio == pytest.approx(reference / compiled, rel=0.1)


def test_refuses_where_the_kernel_cannot_load(script, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setattr(script.LIBRARY, "loaded", lambda: "OSError: no C++ compiler found ('c++'; set CXX)")
    assert script.main(["--repeats", "1", "--scale", "256", "--out", "unused.md"]) == 1
    assert capsys.readouterr().err == (
        "the compiled MLP kernel cannot be loaded on this machine: OSError: no C++ compiler found ('c++'; set CXX)\n"
    )
    assert not Path("unused.md").exists()
