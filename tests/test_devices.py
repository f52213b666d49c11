"""The accelerator paths, written once and run on every device: on the CPU in CI, and on CUDA where a GPU is present
(``benchmarks/gpu_check.sh`` runs ``pytest -m cuda``). The CPU run proves the checks themselves; the CUDA run checks
mixed precision, channels-last, the inference fast path, the sliding window and a short training run on the GPU."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from convunext.cli.main import main
from convunext.inference import Inferer
from convunext.inference.optimize import optimize_for_inference
from convunext.models import create_model, list_models

DEVICES = [
    "cpu",
    pytest.param(
        "cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
    ),
]
AMP = {"cpu": torch.bfloat16, "cuda": torch.float16}


@pytest.fixture(autouse=True)
def exact_matmul():
    """No TF32 on CUDA while outputs are compared with the CPU's."""
    previous = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = previous


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", list_models())
def test_every_model_trains_a_step_in_mixed_precision_and_channels_last(name: str, device: str) -> None:
    torch.manual_seed(0)
    model = create_model(name, in_channels=3, num_classes=2, width=8).to(device, memory_format=torch.channels_last)
    images = torch.randn(2, 3, 64, 64, device=device).contiguous(memory_format=torch.channels_last)
    target = torch.randint(0, 2, (2, 64, 64), device=device)
    scaler = torch.amp.GradScaler(device, enabled=device == "cuda")
    with torch.autocast(device_type=device, dtype=AMP[device]):
        logits = model(images)
        loss = torch.nn.functional.cross_entropy(logits.float(), target)
    scaler.scale(loss).backward()
    assert logits.shape == (2, 2, 64, 64) and logits.dtype == AMP[device]
    assert torch.isfinite(loss) and all(
        p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad
    )


@pytest.mark.parametrize("device", DEVICES)
def test_the_fast_inference_path_matches_the_eager_model_on_the_cpu(device: str) -> None:
    torch.manual_seed(0)
    model = create_model("convunext", in_channels=3, num_classes=2).eval()
    image = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        reference = model(image)
        fast = optimize_for_inference(model).to(device)
        out = fast(image.to(device).contiguous(memory_format=torch.channels_last)).float().cpu()
    torch.testing.assert_close(out, reference, atol=2e-4, rtol=2e-4)


@pytest.mark.parametrize("device", DEVICES)
def test_the_sliding_window_gives_the_cpus_probabilities(device: str) -> None:
    torch.manual_seed(0)
    model = create_model("convunext", in_channels=3, num_classes=2, width=8).eval()
    image = torch.randn(1, 3, 200, 150)
    expected = Inferer(tile_size=64, device="cpu", backend="eager")(model, image)
    probs = Inferer(tile_size=64, device=device)(model, image)
    assert probs.device.type == "cpu" and probs.shape == (1, 2, 200, 150)
    torch.testing.assert_close(probs, expected, atol=2e-4, rtol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_a_short_training_run_learns_and_its_checkpoint_loads_on_the_cpu(device: str, tmp_path: Path) -> None:
    argv = ["train", "synthetic", "--device", device, "--epochs", "8", "--output-dir", str(tmp_path)]
    sets = [
        "train.run_name=run",
        "train.progress_bar=false",
        "model.kwargs.width=8",
        "data.options.num_images=10",
        "data.options.size=64",
        "data.crop_size=48",
        "train.eval_every=8",
    ]
    assert main([*argv, *(arg for item in sets for arg in ("--set", item))]) == 0
    with open(tmp_path / "run" / "metrics.csv") as handle:
        losses = [float(row["train_loss"]) for row in csv.DictReader(handle)]
    assert len(losses) == 8 and losses[-1] < 0.9 * losses[0]  # CE + Dice falls: 1.67 to 1.42 on the CPU
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["device"].startswith("GPU" if device == "cuda" else "CPU")
    assert main(["evaluate", str(tmp_path / "run"), "synthetic", "--device", "cpu", "--out", str(tmp_path / "e")]) == 0
