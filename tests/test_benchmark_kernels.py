"""benchmarks/compiled_kernels.py: the compiled kernels' table against PyTorch's, at shrunken stage shapes."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from convunext import runtime

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "compiled_kernels.py"


@pytest.fixture
def script():
    spec = importlib.util.spec_from_file_location("compiled_kernels", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    threads, kernels = torch.get_num_threads(), runtime.settings().kernels
    yield module
    torch.set_num_threads(threads)
    runtime.configure(kernels=kernels)


def test_table_has_a_row_per_kernel_stage_and_thread_count(script, tmp_path: Path) -> None:
    out = tmp_path / "kernels.md"
    assert script.main(["--threads", "1,2", "--repeats", "1", "--scale", "256", "--out", str(out)]) == 0
    report = out.read_text()
    assert "`python benchmarks/compiled_kernels.py --threads 1,2 --repeats 1 --scale 256" in report
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in report.splitlines() if line[:1] == "|"]
    cells = [row for row in rows if row[0] in ("mlp", "gate")]
    stages = {
        "mlp": [("32 x 256x256", "1,024"), ("64 x 128x128", "256"), ("128 x 64x64", "64"), ("256 x 32x32", "16")],
        "gate": [("128 x 64x64", "64"), ("64 x 128x128", "256"), ("32 x 256x256", "1,024")],
    }
    expected = [(k, t, *stage) for k in ("mlp", "gate") for t in ("1", "2") for stage in stages[k]]
    assert [tuple(row[:4]) for row in cells] == expected
    for row in cells:  # speed-up = PyTorch ms / compiled ms, as printed (rounding aside)
        reference, compiled, ratio = float(row[4]), float(row[5]), float(row[6].rstrip("x"))
        if compiled >= 1.0:
            assert ratio == pytest.approx(reference / compiled, rel=0.1)


def test_refuses_where_a_kernel_cannot_load(script, monkeypatch: pytest.MonkeyPatch, capsys, tmp_path: Path) -> None:
    library = script.KERNELS["gate"][0]
    monkeypatch.setattr(library, "loaded", lambda: "OSError: no C++ compiler found ('c++'; set CXX)")
    out = tmp_path / "unused.md"
    assert script.main(["--repeats", "1", "--scale", "256", "--out", str(out)]) == 1
    assert capsys.readouterr().err == (
        "the compiled gate kernel cannot be loaded on this machine: OSError: no C++ compiler found ('c++'; set CXX)\n"
    )
    assert not out.exists()


def test_unknown_kernel(script, capsys) -> None:
    assert script.main(["--kernels", "mlp,conv"]) == 2
    assert capsys.readouterr().err == "unknown kernel 'conv'; choose from mlp, gate\n"


@pytest.mark.parametrize("threads", ["two", "1,0", "1,,2"])
def test_bad_thread_counts(script, capsys, threads: str) -> None:
    assert script.main(["--threads", threads]) == 2
    assert capsys.readouterr().err == f"--threads {threads!r}: expected positive whole numbers separated by commas\n"
