"""Issue 30, item 7: weights that hold NaN or Inf pass every checksum (they were written as they were), so loading a
checkpoint for inference, evaluation or export checks the values themselves and names the file and the first bad
tensor; and a model whose output is not finite for an image (finite weights that overflow) is refused naming the
image, rather than writing an all-background mask and a NaN probability map."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from convunext import create_model
from convunext.checkpoint import load_checkpoint, save_checkpoint
from convunext.cli.main import main
from convunext.errors import ConvUNeXtError
from convunext.inference import Inferer
from convunext.inference.predictor import Predictor

MODEL = {"name": "convunext", "kwargs": {"in_channels": 3, "num_classes": 2, "width": 8}}
META = {
    "model": MODEL,
    "classes": ["background", "vessel"],
    "normalization": {"mean": [0.5, 0.4, 0.3], "std": [0.25, 0.2, 0.15]},
    "data": {"name": "synthetic", "options": {"num_images": 5, "size": 64}},
}


def _checkpoint(folder: Path, edit: str | None = None, value: float = float("nan")) -> Path:
    """A tiny checkpoint written through the normal save path (so its SHA-256 matches), with ``value`` put into
    the first element of tensor ``edit``."""
    torch.manual_seed(0)
    model = create_model(MODEL["name"], **MODEL["kwargs"])
    if edit is not None:
        with torch.no_grad():
            model.state_dict()[edit].view(-1)[0] = value
    return save_checkpoint(folder, "best", model, META)


def _a_float_tensor_in_the_middle() -> str:
    names = [k for k, v in create_model(MODEL["name"], **MODEL["kwargs"]).state_dict().items() if v.is_floating_point()]
    return names[len(names) // 2]


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_weights_are_refused_on_load_naming_the_tensor(tmp_path: Path, value: float) -> None:
    tensor = _a_float_tensor_in_the_middle()
    path = _checkpoint(tmp_path, tensor, value)
    with pytest.raises(ConvUNeXtError) as error:
        load_checkpoint(path)
    message = str(error.value)
    assert message.startswith(f"{tmp_path / 'best.safetensors'}: ") and f"tensor {tensor!r}" in message
    assert "\n" not in message and "non-finite" in message


def test_predict_evaluate_and_export_refuse_non_finite_weights(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _checkpoint(tmp_path / "run", _a_float_tensor_in_the_middle())
    image = tmp_path / "a.png"
    Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(image)
    weights = tmp_path / "run" / "best.safetensors"
    commands = {
        "predict": ["predict", str(path), str(image), "--out", str(tmp_path / "pred"), "--quiet"],
        "evaluate": ["evaluate", str(path), "synthetic", "--out", str(tmp_path / "eval")],
        "export": ["export", str(path), "--format", "torchscript", "--out", str(tmp_path / "model.pt")],
    }
    for command, argv in commands.items():
        assert main(argv) == 2, command
        err = capsys.readouterr().err
        assert err.startswith(f"convunext {command}: error: {weights}: ") and "non-finite" in err, err
        assert err.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "run"]  # nothing written


def _overflowing_checkpoint(folder: Path) -> Path:
    """Finite weights whose activations overflow float32 on any image: the checksum and the value check pass."""
    torch.manual_seed(0)
    model = create_model(MODEL["name"], **MODEL["kwargs"])
    first_conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    with torch.no_grad():
        first_conv.weight.mul_(1e38)
    return save_checkpoint(folder, "best", model, META)


def test_non_finite_outputs_are_refused_naming_the_image(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _overflowing_checkpoint(tmp_path / "run")
    image = tmp_path / "in" / "a.png"
    image.parent.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(image)
    out = tmp_path / "pred"
    argv = ["predict", str(path), str(image), "--out", str(out), "--probabilities", "--quiet", "--backend", "eager"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"convunext predict: error: {image}: ") and "NaN or Inf" in err and err.count("\n") == 1
    assert not list(out.glob("a_*"))
    with pytest.raises(ConvUNeXtError, match="NaN or Inf"):
        Predictor.from_checkpoint(path, Inferer(device="cpu", backend="eager")).predict(np.zeros((32, 32, 3), np.uint8))
