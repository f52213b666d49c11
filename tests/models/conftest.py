"""Fixtures of the model tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import torch


@pytest.fixture(params=[1, 2], ids=lambda n: f"{n}-threads")
def threads(request: pytest.FixtureRequest) -> Iterator[int]:
    """``torch.set_num_threads(n)`` for the test, restored afterwards: 1 and 2, or the values of an indirect
    parametrization."""
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


@pytest.fixture
def fast_path_runs(monkeypatch: pytest.MonkeyPatch, set_kernels: Callable[[str], object]) -> Callable[[type], None]:
    """``check(kernel_class)``: ``optimize_for_inference`` of a small ConvUNeXt calls ``kernel_class.forward`` and
    gives the eager model's logits; with ``CONVUNEXT_KERNELS=reference`` it gives them without the kernel."""

    def check(kernel_class: type) -> None:
        from convunext import create_model, optimize_for_inference

        calls: list[int] = []
        forward = kernel_class.forward
        monkeypatch.setattr(kernel_class, "forward", lambda *a, **k: calls.append(1) or forward(*a, **k))
        torch.manual_seed(0)
        model = create_model("convunext", width=8).eval()
        x = torch.randn(1, 3, 45, 37)
        with torch.no_grad():
            expected = model(x)
        fast = optimize_for_inference(model)
        assert torch.allclose(fast(x), expected, rtol=1e-4, atol=1e-4)
        assert calls
        calls.clear()
        set_kernels("reference")
        assert torch.allclose(fast(x), expected, rtol=1e-4, atol=1e-4)
        assert not calls

    return check
