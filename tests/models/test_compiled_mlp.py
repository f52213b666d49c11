"""The compiled MLP kernel equals PyTorch's MLP (output and every gradient; odd sizes, partial tiles, both
activations, one and two threads), runs where :func:`~convunext.models.layers.mlp.banded_mlp` records gradients on
float32 CPU rows, and nowhere else. Its loading and fallback are tested in tests/models/test_compiled.py."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from convunext.models.layers import compiled_mlp
from convunext.models.layers.compiled_mlp import TILE_ROWS
from convunext.models.layers.compiled_mlp import compiled_mlp as run_compiled
from convunext.models.layers.mlp import banded_mlp, mlp_reference

pytestmark = pytest.mark.skipif(
    not compiled_mlp.LIBRARY.available(), reason="no C++ compiler here: tests/models/test_compiled.py fails in CI"
)


@pytest.fixture(autouse=True)
def compiled_path(set_kernels: Callable[[str], object]) -> None:
    set_kernels("compiled")  # a silent fallback fails


def inputs(rows: int, dim: int, hidden: int, out: int | None = None, seed: int = 0) -> list[torch.Tensor]:
    """``x``, ``w1``, ``b1``, ``w2``, ``b2`` and the output gradient, scaled like a trained block's."""
    g = torch.Generator().manual_seed(seed)
    out = dim if out is None else out
    return [
        torch.randn(rows, dim, generator=g),
        torch.randn(dim, hidden, generator=g) / dim**0.5,
        torch.randn(hidden, generator=g),
        torch.randn(hidden, out, generator=g) / hidden**0.5,
        torch.randn(out, generator=g),
        torch.randn(rows, out, generator=g),
    ]


def output_and_gradients(fn: Callable[..., torch.Tensor], tensors: list[torch.Tensor], act: str) -> list[torch.Tensor]:
    *arguments, grad = tensors
    leaves = [t.clone().requires_grad_(True) for t in arguments]
    y = fn(*leaves, act)
    y.backward(grad)
    return [y.detach(), *(leaf.grad for leaf in leaves)]


def check_against_reference(tensors: list[torch.Tensor], act: str, rtol: float = 2e-5) -> None:
    got = output_and_gradients(run_compiled, tensors, act)
    expected = output_and_gradients(mlp_reference, [t.double() for t in tensors], act)
    for name, a, b in zip(("y", "x", "w1", "b1", "w2", "b2"), got, expected):
        assert a.dtype == torch.float32 and a.shape == b.shape, name
        error = (a.double() - b).abs().max().item()
        assert error <= rtol * b.abs().max().item(), (name, error)


def test_hand_computed_values() -> None:
    # x = [1, -1], w1 = identity (2 -> 2), b1 = 0, w2 = ones (2 -> 1), b2 = 0.5; relu: y = relu(1) + relu(-1) + 0.5
    leaves = [t.requires_grad_(True) for t in (torch.tensor([[1.0, -1.0]]), torch.eye(2), torch.zeros(2))]
    w2, b2 = torch.ones(2, 1, requires_grad=True), torch.tensor([0.5], requires_grad=True)
    y = run_compiled(*leaves, w2, b2, "relu")
    assert y.tolist() == [[1.5]]
    y.backward(torch.ones(1, 1))
    x, w1, b1 = leaves
    assert x.grad.tolist() == [[1.0, 0.0]]  # only the unit that fired passes the gradient back
    assert w1.grad.tolist() == [[1.0, 0.0], [-1.0, 0.0]]
    assert b1.grad.tolist() == [1.0, 0.0] and w2.grad.tolist() == [[1.0], [0.0]] and b2.grad.tolist() == [1.0]
    # GELU(1) = 1 * Phi(1) = 0.8413447; GELU'(1) = Phi(1) + phi(1) = 0.8413447 + 0.2419707
    x = torch.ones(1, 1, requires_grad=True)
    y = run_compiled(x, torch.ones(1, 1), torch.zeros(1), torch.ones(1, 1), torch.zeros(1), "gelu")
    y.backward(torch.ones(1, 1))
    assert y.item() == pytest.approx(0.8413447, abs=2e-7)
    assert x.grad.item() == pytest.approx(0.8413447 + 0.2419707, abs=3e-7)


@pytest.mark.parametrize("act", ["gelu", "relu"])
@pytest.mark.parametrize(
    ("rows", "dim", "hidden"),
    [
        (1, 1, 4),  # a single row, scalar columns only
        (TILE_ROWS - 1, 3, 12),  # under one tile
        (2 * TILE_ROWS + 7, 19, 76),  # partial tile; 19: vector and scalar columns at any SIMD width
        (1000, 32, 128),  # ConvUNeXt's full-resolution blocks (width 32)
        (301, 64, 256),
        (67, 256, 1024),  # its deepest blocks
    ],
    ids=lambda v: str(v),
)
def test_matches_reference(threads: int, act: str, rows: int, dim: int, hidden: int) -> None:
    check_against_reference(inputs(rows, dim, hidden), act)


def test_other_output_widths() -> None:
    check_against_reference(inputs(130, 24, 96, out=5), "gelu")


def test_gelu_over_its_whole_range() -> None:
    """Pre-activations from -30 to 30 (the exp of the kernel's erf clamps below -87; GELU is 0 and x far out)."""
    x = torch.linspace(-30, 30, 6001).unsqueeze(1)
    tensors = [x, torch.ones(1, 1), torch.zeros(1), torch.ones(1, 1), torch.zeros(1), torch.ones(6001, 1)]
    got = output_and_gradients(run_compiled, tensors, "gelu")
    expected = output_and_gradients(mlp_reference, [t.double() for t in tensors], "gelu")
    assert (got[0].double() - expected[0]).abs().max().item() <= 3e-6  # |x| * 1.5e-7 at |x| = 30 at most
    assert (got[1].double() - expected[1]).abs().max().item() <= 1e-6


def test_weight_views_as_the_block_passes_them() -> None:
    """ConvUNeXt's blocks pass transposed views of their 1x1 convolutions' weights (not contiguous)."""
    x, w1, b1, w2, b2, grad = inputs(200, 16, 64)
    conv1, conv2 = w1.t().contiguous(), w2.t().contiguous()  # the convolutions' (out, in) layout
    leaves = [t.clone().requires_grad_(True) for t in (x, conv1, b1, conv2, b2)]
    y = run_compiled(leaves[0], leaves[1].t(), leaves[2], leaves[3].t(), leaves[4], "gelu")
    y.backward(grad)
    expected = output_and_gradients(mlp_reference, [x, w1, b1, w2, b2, grad], "gelu")
    assert torch.allclose(y, expected[0], rtol=1e-5, atol=1e-5)
    assert torch.allclose(leaves[1].grad, expected[2].t(), rtol=1e-4, atol=1e-5)
    assert torch.allclose(leaves[3].grad, expected[4].t(), rtol=1e-4, atol=1e-5)


def test_input_gradient_only_when_needed() -> None:
    x, w1, b1, w2, b2, grad = inputs(100, 8, 32)
    w1.requires_grad_(True)
    run_compiled(x, w1, b1, w2, b2, "gelu").backward(grad)
    assert x.grad is None and w1.grad is not None


def test_the_thread_count_changes_only_rounding() -> None:
    tensors = inputs(997, 32, 128)
    before = torch.get_num_threads()
    results = []
    for n in (1, 2):
        torch.set_num_threads(n)
        results.append(output_and_gradients(run_compiled, tensors, "gelu"))
    torch.set_num_threads(before)
    assert torch.equal(results[0][0], results[1][0])  # each row's output is computed the same way
    assert torch.equal(results[0][1], results[1][1])  # and its input gradient
    for a, b in zip(results[0][2:], results[1][2:]):  # the weight gradients: per-thread sums, added in order
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-5 * b.abs().max().item())


def test_banded_mlp_runs_it_when_gradients_are_recorded(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    apply = compiled_mlp._CompiledMLP.apply
    monkeypatch.setattr(compiled_mlp._CompiledMLP, "apply", lambda *a: calls.append(1) or apply(*a))
    x, w1, b1, w2, b2, grad = inputs(300, 8, 32)
    w1.requires_grad_(True)
    residual = torch.randn(300, 8)
    y = banded_mlp(x, w1, b1, w2, b2, "gelu", residual=residual, out_act=True)
    assert calls == [1]
    assert torch.allclose(y, mlp_reference(x, w1, b1, w2, b2, "gelu", residual, True), rtol=1e-5, atol=1e-5)
    with torch.no_grad():  # inference: the banded PyTorch kernel
        banded_mlp(x, w1, b1, w2, b2, "gelu")
    banded_mlp(x.double(), w1.double(), b1.double(), w2.double(), b2.double(), "gelu")  # not float32
    assert calls == [1]


def test_inputs_it_does_not_take() -> None:
    x, w1, b1, w2, b2, _ = inputs(10, 4, 16)
    assert run_compiled(x.double(), w1.double(), b1.double(), w2.double(), b2.double(), "gelu") is None
    assert run_compiled(x.half(), w1, b1, w2, b2, "gelu") is None


def test_shapes_that_do_not_chain_are_refused() -> None:
    """The kernel reads and writes by raw pointers: a wrong shape would read or write out of bounds."""
    x, w1, b1, w2, b2, _ = inputs(10, 4, 16)
    with pytest.raises(ValueError, match=r"^compiled_mlp: shapes x \(10, 4\), w1 \(4, 16\), b1 \(16,\), w2 \(15, 4\)"):
        run_compiled(x, w1, b1, w2[1:], b2, "gelu")
    with pytest.raises(ValueError, match=r"do not fit x P x C, w1 C x H, b1 H, w2 H x D, b2 D$"):
        run_compiled(x, w1, b1[1:], w2, b2, "gelu")


@pytest.mark.parametrize("act", ["gelu", "relu"])
@pytest.mark.parametrize(("residual", "out_act"), [(False, False), (True, False), (True, True)], ids=str)
def test_inference_rows_match_reference(threads: int, act: str, residual: bool, out_act: bool) -> None:
    """The fast path's blocks (:func:`~convunext.models.layers.mlp.mlp_rows_`): residual and output activation
    inside the kernel, the output written over the input."""
    x, w1, b1, w2, b2, r = inputs(2 * TILE_ROWS + 7, 19, 76)
    skip = r if residual else None
    expected = mlp_reference(x.double(), w1.double(), b1.double(), w2.double(), b2.double(), act,
                             None if skip is None else skip.double(), out_act)  # fmt: skip
    out = x.clone()
    with torch.inference_mode():
        assert compiled_mlp.compiled_mlp_rows_(out, w1, b1, w2, b2, act, skip, out_act, out)  # in place
    assert (out.double() - expected).abs().max().item() <= 2e-5 * expected.abs().max().item()


def test_inference_rows_need_contiguous_float32(monkeypatch: pytest.MonkeyPatch) -> None:
    x, w1, b1, w2, b2, _ = inputs(30, 4, 16)
    out = torch.empty(30, 4)
    assert not compiled_mlp.compiled_mlp_rows_(x, w1.t().contiguous().t(), b1, w2, b2, "gelu", None, False, out)
    assert not compiled_mlp.compiled_mlp_rows_(x.double(), w1, b1, w2, b2, "gelu", None, False, out.double())
    with pytest.raises(ValueError, match=r"^compiled_mlp_rows_: shapes x \(30, 4\), .*, out \(29, 4\) do not fit"):
        compiled_mlp.compiled_mlp_rows_(x, w1, b1, w2, b2, "gelu", None, False, out[:29])


def test_the_fast_path_runs_it(fast_path_runs: Callable[[type], None]) -> None:
    """``optimize_for_inference``'s blocks go through the compiled kernel, with the eager model's logits."""
    fast_path_runs(compiled_mlp._Kernel)
