"""The compiled gate kernel equals PyTorch's gate and fusion conv (output and every gradient; with and without a gate,
odd sizes, partial tiles, one and two threads), runs where :func:`~convunext.models.layers.gate.banded_gate` records
gradients on float32 CPU rows, and nowhere else. Its loading and fallback are tested in
tests/models/test_compiled.py."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from convunext.models.layers import compiled_gate
from convunext.models.layers.compiled_gate import TILE_ROWS
from convunext.models.layers.compiled_gate import compiled_gate as run_compiled
from convunext.models.layers.gate import GateWeights, banded_gate, fold_gate, gate_reference

pytestmark = pytest.mark.skipif(
    not compiled_gate.LIBRARY.available(), reason="no C++ compiler here: tests/models/test_compiled.py fails in CI"
)


@pytest.fixture(autouse=True)
def compiled_path(set_kernels: Callable[[str], object]) -> None:
    set_kernels("compiled")  # a silent fallback fails


def inputs(rows: int, c: int, out: int, gated: bool = True, seed: int = 0) -> list[torch.Tensor]:
    """``u``, ``s``, the folded weights (``w_u``, ``b_u``, ``w_s`` [, ``w_f``, ``b_f``]) and the output gradient,
    scaled like a trained stage's."""
    g = torch.Generator().manual_seed(seed)
    width = 3 * c + out if gated else out
    shapes = [(rows, c), (rows, c), (c, width), (width,), (c, out)] + ([(c, c), (c,)] if gated else [])
    tensors = [torch.randn(shape, generator=g) / (shape[0] ** 0.5 if i in (2, 4, 5) else 1) for i, shape in
               enumerate(shapes)]  # fmt: skip
    return [*tensors, torch.randn(rows, out, generator=g)]


def output_and_gradients(fn: Callable[..., torch.Tensor], tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    *arguments, grad = tensors
    u, s, *weights = leaves = [t.clone().requires_grad_(True) for t in arguments]
    z = fn(u, s, GateWeights(*weights))
    z.backward(grad)
    return [z.detach(), *(leaf.grad for leaf in leaves)]


def check_against_reference(tensors: list[torch.Tensor], rtol: float = 2e-5) -> None:
    got = output_and_gradients(run_compiled, tensors)
    expected = output_and_gradients(gate_reference, [t.double() for t in tensors])
    names = ("z", "u", "s", "w_u", "b_u", "w_s", "w_f", "b_f")
    assert len(got) == len(expected) == len(tensors)
    for name, a, b in zip(names, got, expected):
        assert a.dtype == torch.float32 and a.shape == b.shape, name
        error = (a.double() - b).abs().max().item()
        assert error <= rtol * b.abs().max().item(), (name, error)


def test_hand_computed_values() -> None:
    # c = D = 1, u = 0, s = 2, w_u = 0, b_u = [0, 0, 0, 1] (g1 = g2 = g3 = 0, fusion 1), w_f = 0, b_f = 0, w_s = 3:
    # f = sigmoid(0) = 1/2, gated = f s + sigmoid(0) tanh(0) = 1, z = 1 + 3 * 1 = 4
    u, s = torch.zeros(1, 1, requires_grad=True), torch.full((1, 1), 2.0, requires_grad=True)
    weights = [torch.zeros(1, 4), torch.tensor([0.0, 0.0, 0.0, 1.0]), torch.full((1, 1), 3.0)]
    weights += [torch.zeros(1, 1), torch.zeros(1)]
    leaves = [w.requires_grad_(True) for w in weights]
    z = run_compiled(u, s, GateWeights(*leaves))
    assert z.tolist() == [[4.0]]
    z.backward(torch.ones(1, 1))
    # dgated = 3; ds = dgated f = 1.5 plus the path through t = g1 + s: dpre = dgated s f (1 - f) = 1.5, times w_f = 0
    assert s.grad.tolist() == [[1.5]]
    # d g1 = 0 (w_f = 0), d g2 = dgated tanh(0) ... = 0, d g3 = dgated sigmoid(0) (1 - 0) = 1.5, d fusion = 1
    assert leaves[1].grad.tolist() == [0.0, 0.0, 1.5, 1.0]
    assert leaves[2].grad.tolist() == [[1.0]]  # gated = 1
    assert leaves[3].grad.tolist() == [[3.0]] and leaves[4].grad.tolist() == [1.5]  # t = g1 + s = 2; dpre = 1.5
    assert u.grad.tolist() == [[0.0]]  # w_u = 0


@pytest.mark.parametrize("gated", [True, False], ids=["gate", "no-gate"])
@pytest.mark.parametrize(
    ("rows", "c", "out"),
    [
        (1, 1, 1),  # a single row, scalar columns only
        (TILE_ROWS - 1, 3, 5),  # under one tile
        (2 * TILE_ROWS + 7, 19, 17),  # partial tile; vector and scalar columns at any SIMD width
        (1000, 32, 32),  # ConvUNeXt's last decoder stage (width 32)
        (301, 64, 64),
        (67, 128, 128),  # its first
    ],
    ids=lambda v: str(v),
)
def test_matches_reference(threads: int, gated: bool, rows: int, c: int, out: int) -> None:
    check_against_reference(inputs(rows, c, out, gated))


def test_folded_weights_as_the_stage_passes_them() -> None:
    """:class:`~convunext.models.blocks.GatedUpStage` passes :func:`fold_gate`'s weights: transposed views and
    concatenations of its convolutions', differentiable back to them."""
    g = torch.Generator().manual_seed(1)
    c, out, rows = 8, 12, 150
    fuse_w, fuse_b = torch.randn(out, 2 * c, generator=g) / 4, torch.randn(out, generator=g)
    gate = [torch.randn(3 * c, c, generator=g) / 3, torch.randn(3 * c, generator=g), torch.randn(c, c, generator=g) / 3,
            torch.randn(c, generator=g), torch.randn(c, c, generator=g) / 3, torch.randn(c, generator=g)]  # fmt: skip
    u, s, grad = torch.randn(rows, c, generator=g), torch.randn(rows, c, generator=g), torch.randn(rows, out)
    results = []
    for fn in (run_compiled, gate_reference):
        leaves = [t.clone().requires_grad_(True) for t in (u, s, fuse_w, fuse_b, *gate)]
        z = fn(leaves[0], leaves[1], fold_gate(leaves[2], leaves[3], tuple(leaves[4:])))
        z.backward(grad)
        results.append([z.detach(), *(leaf.grad for leaf in leaves)])
    for a, b in zip(*results, strict=True):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5 * b.abs().max().item())


def test_the_thread_count_changes_only_rounding() -> None:
    tensors = inputs(997, 32, 32)
    before = torch.get_num_threads()
    results = []
    for n in (1, 2):
        torch.set_num_threads(n)
        results.append(output_and_gradients(run_compiled, tensors))
    torch.set_num_threads(before)
    for a, b in zip(results[0][:3], results[1][:3]):  # output and input gradients: each row computed the same way
        assert torch.equal(a, b)
    for a, b in zip(results[0][3:], results[1][3:]):  # the weight gradients: per-thread sums, added in order
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-5 * b.abs().max().item())


def test_banded_gate_runs_it_when_gradients_are_recorded(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    apply = compiled_gate._CompiledGate.apply
    monkeypatch.setattr(compiled_gate._CompiledGate, "apply", lambda *a: calls.append(1) or apply(*a))
    u, s, *weights, _ = inputs(300, 8, 8)
    weights[0].requires_grad_(True)
    z = banded_gate(u, s, GateWeights(*weights))
    assert calls == [1]
    assert torch.allclose(z, gate_reference(u, s, GateWeights(*weights)), rtol=1e-5, atol=1e-5)
    with torch.no_grad():  # inference: the banded PyTorch kernel
        banded_gate(u, s, GateWeights(*weights))
    banded_gate(u.double(), s.double(), GateWeights(*(w.double() for w in weights)))  # not float32
    assert calls == [1]


def test_inputs_it_does_not_take() -> None:
    u, s, *weights, _ = inputs(10, 4, 4)
    assert run_compiled(u.double(), s.double(), GateWeights(*(w.double() for w in weights))) is None
    assert run_compiled(u.half(), s, GateWeights(*weights)) is None


@pytest.mark.parametrize("case", ["narrow w_u", "wide w_u", "short s", "w_f without b_f", "b_f without w_f", "3-D u"])
def test_shapes_that_do_not_fit_are_refused(case: str) -> None:
    """The kernel reads and writes by raw pointers: a wrong shape would read or write out of bounds."""
    u, s, w_u, b_u, w_s, w_f, b_f, _ = inputs(20, 4, 3)
    if case == "narrow w_u":
        w_u, b_u = w_u[:, :-1], b_u[:-1]
    elif case == "wide w_u":
        w_u, b_u = torch.cat([w_u, w_u[:, :1]], 1), torch.cat([b_u, b_u[:1]])
    elif case == "short s":
        s = s[:-1]
    elif case == "w_f without b_f":
        b_f = None
    elif case == "b_f without w_f":
        w_f = None
    else:
        u = u.unsqueeze(0)
    with pytest.raises(ValueError, match=r"^compiled_gate: shapes u \("):
        run_compiled(u, s, GateWeights(w_u, b_u, w_s, w_f, b_f))


@pytest.mark.parametrize("gated", [True, False], ids=["gate", "no-gate"])
def test_inference_rows_match_reference(threads: int, gated: bool) -> None:
    u, s, *weights, _ = inputs(2 * TILE_ROWS + 7, 19, 17, gated)
    expected = gate_reference(u.double(), s.double(), GateWeights(*(w.double() for w in weights)))
    out = torch.empty(2 * TILE_ROWS + 7, 17)
    with torch.inference_mode():
        assert compiled_gate.compiled_gate_rows_(u, s, GateWeights(*weights), out)
    assert (out.double() - expected).abs().max().item() <= 2e-5 * expected.abs().max().item()


def test_inference_rows_need_contiguous_float32() -> None:
    u, s, *weights, _ = inputs(30, 4, 4)
    out = torch.empty(30, 4)
    transposed = GateWeights(weights[0].t().contiguous().t(), *weights[1:])
    assert not compiled_gate.compiled_gate_rows_(u, s, transposed, out)
    assert not compiled_gate.compiled_gate_rows_(u.double(), s.double(), GateWeights(*weights), out.double())
    with pytest.raises(ValueError, match=r"^compiled_gate_rows_: shapes u \(30, 4\), .*, out \(30, 3\) do not fit"):
        compiled_gate.compiled_gate_rows_(u, s, GateWeights(*weights), out[:, :3].contiguous())


def test_the_fast_path_runs_it(fast_path_runs: Callable[[type], None]) -> None:
    """``optimize_for_inference``'s decoder stages go through the compiled kernel, with the eager model's logits."""
    fast_path_runs(compiled_gate._Kernel)
