"""The fused training kernels (banded MLP and gated fusion) give the plain model's loss, gradients and statistics."""

from __future__ import annotations

import copy

import pytest
import torch

from convunext import create_model, runtime

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is faster, the CPU is shared


def _step(model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor) -> float:
    loss = torch.nn.functional.cross_entropy(model(x), target)
    loss.backward()
    return loss.item()


@pytest.mark.parametrize(
    ("kwargs", "recompute", "band_elements"),
    [
        ({}, False, None),
        ({}, False, 5000),  # many bands per map
        ({"act": "relu", "residual": "convnext"}, False, 5000),
        ({}, True, None),
        ({"attention_gate": False}, False, None),
    ],
)
def test_fused_training_matches_plain(kwargs: dict, recompute: bool, band_elements: int | None) -> None:
    torch.manual_seed(0)
    plain = create_model("convunext", width=8, **kwargs).train().to(memory_format=torch.channels_last)
    fused = copy.deepcopy(plain)
    assert fused.set_fused_training(band_elements=band_elements) == 11 + 4
    if recompute:
        fused.set_grad_checkpointing()
    x = torch.randn(2, 3, 67, 64).contiguous(memory_format=torch.channels_last)  # odd height: padded decoder
    target = torch.randint(0, 2, (2, 67, 64))
    assert _step(plain, x, target) == pytest.approx(_step(fused, x, target), rel=1e-5)
    for (key, a), (_, b) in zip(plain.named_parameters(), fused.named_parameters()):
        scale = a.grad.abs().max().item()
        # biases right before a BatchNorm have a zero gradient (float noise ~1e-7): compare on an absolute floor
        assert (a.grad - b.grad).abs().max().item() <= 1e-4 * max(scale, 1e-2), key
    for (key, a), (_, b) in zip(plain.named_buffers(), fused.named_buffers()):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6), key
    assert plain.state_dict().keys() == fused.state_dict().keys()


def test_fused_kernels_fall_back_on_nchw_inputs_and_switch_off() -> None:
    torch.manual_seed(0)
    model = create_model("convunext", width=8).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
        model.set_fused_training()
        assert torch.allclose(model(x), expected, atol=1e-6)  # NCHW: plain path
        fused_cl = model.to(memory_format=torch.channels_last)(x.contiguous(memory_format=torch.channels_last))
        assert torch.allclose(fused_cl, expected, atol=1e-5)
    assert model.set_fused_training(False) == 15
    assert not any(getattr(m, "fused_training", False) for m in model.modules())


@pytest.mark.parametrize("mode", ["pool", "openmp"])
def test_fused_training_with_two_threads(mode: runtime.FusedParallelism) -> None:
    torch.manual_seed(0)
    plain = create_model("convunext", width=8).train().to(memory_format=torch.channels_last)
    fused = copy.deepcopy(plain)
    fused.set_fused_training(band_elements=5000)
    x = torch.randn(2, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    target = torch.randint(0, 2, (2, 64, 64))
    expected = _step(plain, x, target)
    previous = runtime.settings().fused_parallelism
    runtime.configure(fused_parallelism=mode, threads=2)
    try:
        got = _step(fused, x, target)
    finally:
        runtime.configure(fused_parallelism=previous, threads=1)
    assert got == pytest.approx(expected, rel=1e-5)
    for (key, a), (_, b) in zip(plain.named_parameters(), fused.named_parameters()):
        assert (a.grad - b.grad).abs().max().item() <= 1e-4 * max(a.grad.abs().max().item(), 1e-2), key
