"""The compiled depthwise convolution equals PyTorch's (outputs and every gradient, odd sizes, one and two threads).
Its loading and fallback (shared with the other compiled kernels) are tested in tests/models/test_compiled.py.

Where a C++ compiler is found (always in CI) the compiled kernel must load, so these tests exercise it; on a machine
without one they test the fallback."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F

from convunext.models.layers import depthwise
from convunext.models.layers.depthwise import depthwise_conv7, depthwise_reference

CHANNELS_LAST = torch.channels_last


@pytest.fixture(scope="module")
def compiled() -> bool:
    """Whether the compiled kernel runs here (it must wherever a compiler is found: tests/models/test_compiled.py)."""
    return depthwise.compiled_available()


@pytest.fixture
def path(compiled: bool, set_kernels: Callable[[str], object]) -> str:
    """The path the tests take: ``compiled`` where it loads (so that a silent fallback fails), else ``auto``."""
    mode = "compiled" if compiled else "auto"
    set_kernels(mode)
    return mode


def channels_last(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).contiguous(memory_format=CHANNELS_LAST)


def run(fn, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, grad: torch.Tensor, **kwargs):
    """``fn``'s output and the gradients of ``(output * grad).sum()`` for x, weight and bias (None where no bias)."""
    leaves = [t.detach().clone().requires_grad_(True) if t is not None else None for t in (x, weight, bias)]
    y = fn(*leaves, **kwargs)
    y.backward(grad)
    return y, *(t.grad if t is not None else None for t in leaves)


def assert_close(got: torch.Tensor, expected: torch.Tensor, rtol: float = 1e-5) -> None:
    """Equal within ``rtol`` of the largest magnitude of ``expected`` (float32 rounding of sums of products)."""
    assert got.shape == expected.shape
    scale = max(expected.abs().max().item(), 1e-3)
    error = (got.double() - expected.double()).abs().max().item()
    assert error <= rtol * scale, (error, scale)


def check_against_reference(x, weight, bias, padding=None, compiled_path=True) -> None:
    """Forward and all gradients of :func:`depthwise_conv7` against the reference."""
    k = weight.shape[-1]
    p = k // 2 if padding is None else padding
    shape = (x.shape[0], x.shape[1], x.shape[2] + 2 * p - k + 1, x.shape[3] + 2 * p - k + 1)
    grad = channels_last(*shape, seed=1)
    got = run(depthwise_conv7, x, weight, bias, grad, padding=padding)
    expected = run(depthwise_reference, x, weight, bias, grad, padding=padding)
    if compiled_path:
        assert type(got[0].grad_fn).__name__ == "_CompiledDepthwiseBackward"
        assert got[0].is_contiguous(memory_format=CHANNELS_LAST)
    for a, b in zip(got, expected):
        assert (a is None) == (b is None)
        if a is not None:
            assert_close(a, b)


def test_hand_computed_values(path: str) -> None:
    # a 7x7 kernel of ones on a 3x3 map, padding 3: every output sees the whole map (1 + ... + 9 = 45) plus the bias
    x = torch.arange(1.0, 10.0).view(1, 1, 3, 3).contiguous(memory_format=CHANNELS_LAST)
    weight, bias = torch.ones(1, 1, 7, 7), torch.tensor([0.5])
    y, grad_x, grad_w, grad_b = run(depthwise_conv7, x, weight, bias, torch.ones(1, 1, 3, 3))
    assert torch.equal(y, torch.full((1, 1, 3, 3), 45.5))
    assert torch.equal(grad_x, torch.full((1, 1, 3, 3), 9.0))  # each input reaches each of the 9 outputs once
    assert grad_b.tolist() == [9.0]
    # tap (i, j) sums x[h + i - 3, w + j - 3] over the 9 outputs
    assert grad_w[0, 0, 3, 3] == 45.0  # centre: every pixel
    assert grad_w[0, 0, 1, 1] == 1.0  # offset (-2, -2): only output (2, 2), which reads x[0, 0]
    assert grad_w[0, 0, 5, 5] == 9.0  # offset (2, 2): x[2, 2]
    assert grad_w[0, 0, 3, 2] == 1 + 2 + 4 + 5 + 7 + 8  # offset (0, -1): columns 0 and 1
    assert grad_w[0, 0, 0].abs().sum() == 0 and grad_w[0, 0, :, 6].abs().sum() == 0  # offsets of 3: outside


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("channels", [1, 3, 19, 48])  # 19 and 48: the SIMD path, 19 also its scalar remainder
@pytest.mark.parametrize("size", [(1, 1), (3, 7), (7, 3), (13, 29), (29, 13)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_matches_reference(path: str, threads: int, batch: int, channels: int, size: tuple[int, int]) -> None:
    weight, bias = channels_last(channels, 1, 7, 7, seed=2), torch.randn(channels)
    check_against_reference(channels_last(batch, channels, *size), weight, bias, compiled_path=path == "compiled")


@pytest.mark.parametrize("k", [3, 5, 7, 9])
@pytest.mark.parametrize("padding", [None, 0, "k-1"])
def test_kernel_sizes_and_paddings(path: str, k: int, padding: int | str | None) -> None:
    p = k - 1 if padding == "k-1" else padding
    x, weight = channels_last(2, 5, 11, 23), channels_last(5, 1, k, k, seed=2)
    check_against_reference(x, weight, None, p, compiled_path=path == "compiled")


def test_other_kernel_sizes_use_the_reference(path: str) -> None:
    x, weight = channels_last(1, 4, 13, 13), channels_last(4, 1, 11, 11, seed=2)
    check_against_reference(x, weight, torch.randn(4), compiled_path=False)


def test_weight_gradient_does_not_depend_on_threads(path: str) -> None:
    if path != "compiled":
        pytest.skip("no C++ compiler here: the reference path makes no such promise")
    x, weight, grad = channels_last(3, 16, 40, 37), channels_last(16, 1, 7, 7, seed=2), channels_last(3, 16, 40, 37)
    before = torch.get_num_threads()
    results = []
    for n in (1, 2):
        torch.set_num_threads(n)
        results.append(run(depthwise_conv7, x, weight, torch.zeros(16), grad))
    torch.set_num_threads(before)
    for a, b in zip(*results):
        assert torch.equal(a, b)


@pytest.mark.parametrize("layout", ["nchw", "sliced", "expanded-gradient"])
def test_any_layout(path: str, layout: str) -> None:
    x, weight, bias = channels_last(2, 6, 9, 17), channels_last(6, 1, 7, 7, seed=2), torch.randn(6)
    if layout == "nchw":
        x = x.contiguous()
    elif layout == "sliced":
        x = channels_last(2, 12, 9, 20)[:, ::2, :, 3:]
    if layout != "expanded-gradient":
        check_against_reference(x, weight, bias, compiled_path=path == "compiled")
        return
    leaves = [t.clone().requires_grad_(True) for t in (x, weight, bias)]
    depthwise_conv7(*leaves).sum().backward()  # its output gradient is an expanded (zero-stride) tensor
    expected = [t.clone().requires_grad_(True) for t in (x, weight, bias)]
    depthwise_reference(*expected).sum().backward()
    for a, b in zip(leaves, expected):
        assert_close(a.grad, b.grad)


def test_inputs_it_does_not_take_use_the_reference(path: str) -> None:
    x, weight = channels_last(1, 3, 8, 8).double(), channels_last(3, 1, 7, 7, seed=2).double()
    assert torch.equal(depthwise_conv7(x, weight), F.conv2d(x, weight, padding=3, groups=3))


@pytest.mark.parametrize(
    ("shapes", "message"),
    [
        (((2, 4, 8), (4, 1, 7, 7), None, None), "x has shape"),
        (((1, 4, 8, 8), (4, 2, 7, 7), None, None), "weight has shape"),
        (((1, 4, 8, 8), (4, 1, 6, 6), None, None), "k odd"),
        (((1, 4, 8, 8), (4, 1, 7, 7), (3,), None), "bias has shape"),
        (((1, 4, 8, 8), (4, 1, 7, 7), None, 7), "padding=7"),
        (((1, 4, 5, 8), (4, 1, 7, 7), None, 0), "on a 5x8 map"),
    ],
)
def test_invalid_arguments(shapes: tuple, message: str) -> None:
    x_shape, w_shape, b_shape, padding = shapes
    bias = torch.zeros(b_shape) if b_shape else None
    with pytest.raises(ValueError, match=message):
        depthwise_conv7(torch.zeros(x_shape), torch.zeros(w_shape), bias, padding)


def test_reference_forced_by_the_setting(monkeypatch: pytest.MonkeyPatch, set_kernels: Callable[[str], object]) -> None:
    set_kernels("reference")  # CONVUNEXT_KERNELS=reference: tests/test_runtime.py

    def unexpected(*args: object) -> None:
        raise AssertionError("the compiled path ran")

    monkeypatch.setattr(depthwise._CompiledDepthwise, "apply", unexpected)
    check_against_reference(channels_last(2, 5, 9, 9), channels_last(5, 1, 7, 7, seed=2), None, compiled_path=False)
