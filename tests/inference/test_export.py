"""ONNX and TorchScript exports: dynamic sizes (odd included), verified round trips, clear errors."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from convunext import create_model
from convunext.checkpoint import save_checkpoint
from convunext.cli.main import main
from convunext.errors import ConvUNeXtError
from convunext.inference.export import export_model, export_onnx_bytes, min_input_size, verify_export
from convunext.inference.optimize import OnnxRuntimeModule, make_backend

pytest.importorskip("onnx")
pytest.importorskip("onnxscript")
pytest.importorskip("onnxruntime")


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is faster, the CPU is shared


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    model = create_model("convunext", width=8)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 1.5)
    return model.eval()


@pytest.fixture(scope="module")
def onnx_file(model: torch.nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("onnx") / "convunext.onnx"
    report = export_model(model, "onnx", path)  # verifies at two sizes, one odd
    assert len(report.max_abs_diffs) == 2 and max(report.max_abs_diffs) < 1e-4
    assert any(s[2] % 2 or s[3] % 2 for s in report.shapes)
    return path


def test_min_input_size() -> None:
    assert min_input_size(create_model("convunext", width=8)) == 64
    assert min_input_size(create_model("convunext", width=8, kernel_size=3)) == 32
    assert min_input_size(create_model("unet", width=8)) == 16


def test_onnx_round_trip_at_other_sizes(model: torch.nn.Module, onnx_file: Path) -> None:
    results = verify_export(model, onnx_file, "onnx", shapes=[(3, 3, 64, 64), (1, 3, 99, 130)])
    assert [r[0] for r in results] == [(3, 3, 64, 64), (1, 3, 99, 130)]
    assert all(diff < 1e-4 * max(1.0, scale) for _, diff, scale in results)


def test_onnx_runtime_module_returns_torch_tensors_and_checks_the_size(model: torch.nn.Module, onnx_file: Path) -> None:
    runner = OnnxRuntimeModule(onnx_file)
    x = torch.randn(1, 3, 70, 66)
    out = runner(x)
    assert isinstance(out, torch.Tensor) and out.shape == (1, 2, 70, 66)
    with torch.no_grad():
        assert (out - model(x)).abs().max().item() < 1e-4
    with pytest.raises(ConvUNeXtError, match="at least 64 px"):
        runner(torch.randn(1, 3, 48, 80))


def test_missing_onnxruntime_gives_a_one_line_error(model: torch.nn.Module, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime -> ImportError
    with pytest.raises(ConvUNeXtError, match=r"pip install 'convunext\[onnx\]'") as info:
        make_backend(model, "onnx")
    assert "\n" not in str(info.value)
    with pytest.raises(ConvUNeXtError, match="onnxruntime"):
        export_model(model, "onnx", "unused.onnx")


def test_missing_onnx_exporter_gives_a_one_line_error(model: torch.nn.Module, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxscript", None)
    with pytest.raises(ConvUNeXtError, match=r"needs onnxscript.*convunext\[onnx\]"):
        export_onnx_bytes(model)


def test_torchscript_round_trip(model: torch.nn.Module, tmp_path: Path) -> None:
    report = export_model(model, "torchscript", tmp_path / "m.pt")
    assert max(report.max_abs_diffs) < 1e-5
    loaded = torch.jit.load(str(tmp_path / "m.pt"))
    x = torch.randn(2, 3, 81, 64)
    with torch.no_grad():
        assert (loaded(x) - model(x)).abs().max().item() < 1e-5


def test_export_leaves_the_model_as_it_was(model: torch.nn.Module, tmp_path: Path) -> None:
    model.train()
    try:
        export_model(model, "torchscript", tmp_path / "m.pt", verify=False)
        assert model.training
        x = torch.randn(1, 3, 17, 16)  # eager model still handles tiny maps (replicate fallback restored)
        model.eval()
        with torch.no_grad():
            assert model(x).shape == (1, 2, 17, 16)
    finally:
        model.eval()


def _checkpoint(tmp_path: Path, model: torch.nn.Module) -> Path:
    meta = {
        "model": {"name": "convunext", "kwargs": {"width": 8}},
        "classes": ["background", "vessel"],
        "normalization": {"mean": [0.5, 0.5, 0.5], "std": [0.2, 0.2, 0.2]},
    }
    return save_checkpoint(tmp_path, "best", model, meta)


def test_export_command_writes_and_verifies(model: torch.nn.Module, tmp_path: Path, capsys) -> None:
    _checkpoint(tmp_path, model)
    out = tmp_path / "model.pt"
    assert main(["export", str(tmp_path), "--format", "torchscript", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert out.is_file()
    assert "H, W >= 64 px" in printed
    assert printed.count("max abs diff") == 2


def test_export_command_without_onnxruntime_fails_in_one_line(
    model: torch.nn.Module, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    _checkpoint(tmp_path, model)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    code = main(["export", str(tmp_path), "--format", "onnx", "--out", str(tmp_path / "m.onnx")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "convunext[onnx]" in err
