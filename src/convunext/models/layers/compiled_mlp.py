"""The ConvNeXt block's per-pixel MLP in training, ``act(x W1 + b1) W2 + b2`` on ``P x C`` rows, as one compiled CPU
kernel (forward and backward), with :func:`~.mlp.banded_mlp`'s PyTorch path as its reference and fallback.

After the compiled depthwise convolution, the matrix products of the blocks' 1x1 layers took about 60% of
ConvUNeXt's CPU training step, GELU and its gradient 9% (issue 34). PyTorch runs them as separate library calls on
bands of rows: each call streams the band's ``P x 4C`` hidden activation (or its gradient) through memory, and the
matrix library's CPU dispatch does not reach the machine's peak on these thin shapes (32 to 256 channels). This
kernel walks the rows in tiles of :data:`TILE_ROWS`: per tile it computes the pre-activation, the activation and its
derivative in one pass (GELU's ``erf`` and its density share one ``exp``), both weight gradients, the bias gradient
and the input gradient, so the hidden tensors never leave the core's cache; the matrix products are register-tiled
(up to 24 vector accumulators) with the machine's SIMD width. docs/speed.md has its measured speed.

Like the PyTorch path, the backward pass recomputes the hidden activation from the saved input instead of storing
it, so the forward saves only ``x`` and the weights. Per-thread weight-gradient sums are added in thread order: the
result depends on the thread count within float32 rounding (as the PyTorch path's does).

It runs where :func:`~.mlp.banded_mlp` records gradients on float32 CPU rows (ConvUNeXt's blocks while fused training
is on), and its forward pass, with the block's residual sum and output activation, in the inference fast path's
blocks (:func:`compiled_mlp_rows_`, from :func:`~.mlp.mlp_rows_`); the ``kernels`` setting of
:mod:`convunext.runtime` chooses (:mod:`.compiled`).
"""

from __future__ import annotations

import ctypes
from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from .activations import ActivationKind, activation
from .compiled import (
    MATRIX_PRODUCTS,
    CompiledLibrary,
    check_against_reference,
    check_shapes,
    cpu_float32,
    data_pointer,
    matrix_shape,
)

__all__ = ["LIBRARY", "TILE_ROWS", "compiled_mlp", "compiled_mlp_rows_"]

TILE_ROWS = 48
"""Rows per tile: the tile's three ``TILE_ROWS x 4C`` hidden buffers stay in the core's L2 cache up to C = 256."""

_SOURCE = (
    MATRIX_PRODUCTS
    + f"static const int TILE_ROWS = {TILE_ROWS};\n"
    + r"""
// One tile's activation: act = f(pre); with `derivative`, pre is overwritten by f'(pre).
// GELU(x) = x Phi(x), GELU'(x) = Phi(x) + x phi(x); erf by Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7), whose
// exp(-x^2 / 2) is also the density's.
static void activate(float* pre, float* act, i64 count, bool gelu, bool derivative) {
  i64 e = 0;
  for (; e + LANES <= count; e += LANES) {
    const vec x = ld<vec>(pre + e);
    if (!gelu) {
      st<vec>(act + e, x > 0 ? x : vec{});
      if (derivative) st<vec>(pre + e, x > 0 ? splat<vec>(1.f) : vec{});
      continue;
    }
    const vec z = (x < 0 ? -x : x) * 0.7071067811865476f;
    const vec t = 1.f / (1.f + 0.3275911f * z);
    const vec g = exp_nonpositive(-z * z);
    vec poly = splat<vec>(1.061405429f);
    poly = poly * t - 1.453152027f;
    poly = poly * t + 1.421413741f;
    poly = poly * t - 0.284496736f;
    poly = poly * t + 0.254829592f;
    const vec erf_abs = 1.f - poly * t * g;
    const vec cdf = 0.5f + 0.5f * (x < 0 ? -erf_abs : erf_abs);
    st<vec>(act + e, x * cdf);
    if (derivative) st<vec>(pre + e, cdf + x * g * 0.3989422804014327f);
  }
  for (; e < count; ++e) {
    const float x = pre[e];
    if (!gelu) {
      act[e] = x > 0 ? x : 0.f;
      if (derivative) pre[e] = x > 0 ? 1.f : 0.f;
      continue;
    }
    const float cdf = 0.5f * (1.f + std::erf(x * 0.7071067811865476f));
    act[e] = x * cdf;
    if (derivative) pre[e] = cdf + x * std::exp(-0.5f * x * x) * 0.3989422804014327f;
  }
}

extern "C" {
int mlp_lanes(void) { return LANES; }

// y = [act](act(x w1 + b1) w2 + b2 [+ residual]): x P x C, w1 C x H, b1 H, w2 H x D, b2 D, residual (or null) and
// y P x D; the output activation with out_act. y may be x (each tile's rows of x are read before they are written).
void mlp_forward(const float* x, const float* w1, const float* b1, const float* w2, const float* b2,
                 const float* residual, float* y, i64 P, i64 C, i64 H, i64 D, int gelu, int out_act, int threads) {
#pragma omp parallel num_threads(threads) if (threads > 1)
  {
    i64 first, last;
    my_rows(P, &first, &last);
    std::vector<float> pre(TILE_ROWS * H), act(TILE_ROWS * H);
    for (i64 r0 = first; r0 < last; r0 += TILE_ROWS) {
      const i64 m = std::min<i64>(TILE_ROWS, last - r0);
      float* yt = y + r0 * D;
      gemm(x + r0 * C, C, 1, m, w1, H, C, H, pre.data(), H, b1, false);
      activate(pre.data(), act.data(), m * H, gelu, false);
      gemm(act.data(), H, 1, m, w2, D, H, D, yt, D, b2, false);
      if (residual)
        for (i64 e = 0; e < m * D; ++e) yt[e] += residual[r0 * D + e];
      if (out_act) activate(yt, yt, m * D, gelu, false);
    }
  }
}

// The backward pass from the output gradient g (P x D), recomputing each tile's hidden activation.
// w1t (H x C) and w2t (D x H): the transposed weights. gx: P x C, or null (not needed).
// sums: threads x (C*H + H + H*D), each thread's sums of the gradients of w1, b1 and w2 (in that order).
void mlp_backward(const float* x, const float* w1, const float* b1, const float* w1t, const float* w2t, const float* g,
                  float* gx, float* sums, i64 P, i64 C, i64 H, i64 D, int gelu, int threads) {
  const i64 size = C * H + H + H * D;
  std::fill(sums, sums + threads * size, 0.f);
#pragma omp parallel num_threads(threads) if (threads > 1)
  {
    i64 first, last;
    my_rows(P, &first, &last);
    float* gw1 = sums + team_thread() * size;
    float* gb1 = gw1 + C * H;
    float* gw2 = gb1 + H;
    std::vector<float> pre(TILE_ROWS * H), act(TILE_ROWS * H), gh(TILE_ROWS * H);
    for (i64 r0 = first; r0 < last; r0 += TILE_ROWS) {
      const i64 m = std::min<i64>(TILE_ROWS, last - r0);
      const float* xt = x + r0 * C;
      const float* gt = g + r0 * D;
      gemm(xt, C, 1, m, w1, H, C, H, pre.data(), H, b1, false);
      activate(pre.data(), act.data(), m * H, gelu, true);           // pre now holds act'(pre)
      gemm(act.data(), 1, H, H, gt, D, m, D, gw2, D, nullptr, true);  // gw2 += act^T g
      gemm(gt, D, 1, m, w2t, H, D, H, gh.data(), H, nullptr, false);  // gh = g w2^T
      for (i64 e = 0; e < m * H; ++e) gh[e] *= pre[e];                // the pre-activation's gradient
      for (i64 r = 0; r < m; ++r)
        for (i64 h = 0; h < H; ++h) gb1[h] += gh[r * H + h];
      gemm(xt, 1, C, C, gh.data(), H, m, H, gw1, H, nullptr, true);  // gw1 += x^T gh
      if (gx) gemm(gh.data(), H, 1, m, w1t, C, H, C, gx + r0 * C, C, nullptr, false);  // gx = gh w1^T
    }
  }
}
}
"""
)


class _Kernel:
    """The loaded library's entry points on tensors (raw pointers, and the caller's intra-op thread count)."""

    def __init__(self, library: ctypes.CDLL) -> None:
        i64, ptr, c_int = ctypes.c_int64, ctypes.c_void_p, ctypes.c_int
        library.mlp_lanes.argtypes, library.mlp_lanes.restype = [], c_int
        library.mlp_forward.argtypes = [ptr] * 7 + [i64] * 4 + [c_int, c_int, c_int]
        library.mlp_forward.restype = None
        library.mlp_backward.argtypes = [ptr] * 8 + [i64] * 4 + [c_int, c_int]
        library.mlp_backward.restype = None
        self.library = library
        self.lanes = int(library.mlp_lanes())

    def forward(
        self,
        x: Tensor,
        w1: Tensor,
        b1: Tensor,
        w2: Tensor,
        b2: Tensor,
        gelu: bool,
        residual: Tensor | None = None,
        out_act: bool = False,
        out: Tensor | None = None,
    ) -> Tensor:
        """``[act](act(x w1 + b1) w2 + b2 [+ residual])``, the output activation with ``out_act``, into ``out`` (new
        unless given; may be ``x``); all contiguous float32 CPU tensors: ``P x C``, ``C x H``, ``H``, ``H x D``,
        ``D`` -> ``P x D``."""
        (p, c), (h, d) = x.shape, w2.shape
        y = x.new_empty(p, d) if out is None else out
        pointers = [data_pointer(t) for t in (x, w1, b1, w2, b2, residual, y)]
        self.library.mlp_forward(*pointers, p, c, h, d, int(gelu), int(out_act), torch.get_num_threads())
        return y

    def backward(
        self, x: Tensor, w1: Tensor, b1: Tensor, w2t: Tensor, grad: Tensor, gelu: bool, input_grad: bool
    ) -> tuple[Tensor | None, Tensor, Tensor, Tensor]:
        """The gradients of ``x`` (None unless ``input_grad``), ``w1``, ``b1`` and ``w2`` from the output gradient
        ``grad`` (``P x D``); ``w2t`` is ``w2`` transposed (``D x H``), all contiguous."""
        (p, c), (d, h) = x.shape, w2t.shape
        threads = torch.get_num_threads()
        w1t = w1.t().contiguous()
        grad_x = x.new_empty(p, c) if input_grad else None
        sums = x.new_empty(threads, c * h + h + h * d)
        pointers = [data_pointer(t) for t in (x, w1, b1, w1t, w2t, grad, grad_x, sums)]
        self.library.mlp_backward(*pointers, p, c, h, d, int(gelu), threads)
        total = sums.sum(0) if threads > 1 else sums[0]
        return grad_x, total[: c * h].view(c, h), total[c * h : c * h + h], total[c * h + h :].view(h, d)


class _CompiledMLP(torch.autograd.Function):
    """:func:`compiled_mlp`'s autograd: the forward saves ``x`` and the weights, the backward recomputes."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, x: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor, act: ActivationKind, kernel: _Kernel
    ) -> Tensor:
        x, w1, b1, w2 = (t.detach().contiguous() for t in (x, w1, b1, w2))
        w2t = w2.t().contiguous()
        ctx.save_for_backward(x, w1, b1, w2t)
        ctx.gelu, ctx.kernel = act == "gelu", kernel
        return kernel.forward(x, w1, b1, w2, b2.detach().contiguous(), ctx.gelu)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        x, w1, b1, w2t = ctx.saved_tensors
        grad = grad.contiguous()
        grad_x, grad_w1, grad_b1, grad_w2 = ctx.kernel.backward(
            x, w1, b1, w2t, grad, ctx.gelu, input_grad=ctx.needs_input_grad[0]
        )
        return grad_x, grad_w1, grad_b1, grad_w2, grad.sum(0), None, None


def compiled_mlp(x: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor, act: ActivationKind) -> Tensor | None:
    """``act(x w1 + b1) w2 + b2`` through the compiled kernel, differentiable (first order), or None where it does
    not run: tensors other than float32 on the CPU, the ``reference`` setting, or (``auto``) a kernel that cannot
    be loaded (after one notice).

    Shapes: ``x`` ``P x C``, ``w1`` ``C x H``, ``b1`` ``H``, ``w2`` ``H x D``, ``b2`` ``D`` -> ``P x D``.

    Raises:
        ConvUNeXtError: an invalid ``CONVUNEXT_KERNELS``, or ``compiled`` where the kernel cannot be loaded.
        ValueError: shapes that do not chain.
    """
    kernel = LIBRARY.for_call(stacklevel=4) if cpu_float32(x, w1, b1, w2, b2) else None
    if kernel is None:
        return None
    _check_shapes("compiled_mlp", x, w1, b1, w2, b2)
    return _CompiledMLP.apply(x, w1, b1, w2, b2, act, kernel)


def compiled_mlp_rows_(
    x: Tensor,
    w1: Tensor,
    b1: Tensor,
    w2: Tensor,
    b2: Tensor,
    act: ActivationKind,
    residual: Tensor | None,
    out_act: bool,
    out: Tensor,
) -> bool:
    """One band of :func:`~.mlp.mlp_rows_` (inference: no gradients) into ``out`` through the compiled kernel; False,
    with nothing done, where it does not run: tensors other than contiguous float32 on the CPU, the ``reference``
    setting, or (``auto``) a kernel that cannot be loaded (after one notice). Shapes as :func:`compiled_mlp`'s,
    ``residual`` and ``out`` like the output; ``out`` may be ``x``.

    Raises:
        ConvUNeXtError: an invalid ``CONVUNEXT_KERNELS``, or ``compiled`` where the kernel cannot be loaded.
        ValueError: shapes that do not chain.
    """
    tensors = [t for t in (x, w1, b1, w2, b2, residual, out) if t is not None]
    if not (cpu_float32(*tensors) and all(t.is_contiguous() for t in tensors)):
        return False
    kernel = LIBRARY.for_call(stacklevel=4)
    if kernel is None:
        return False
    _check_shapes("compiled_mlp_rows_", x, w1, b1, w2, b2, residual, out)
    kernel.forward(x, w1, b1, w2, b2, act == "gelu", residual, out_act, out)
    return True


def _check_shapes(
    operator: str,
    x: Tensor,
    w1: Tensor,
    b1: Tensor,
    w2: Tensor,
    b2: Tensor,
    residual: Tensor | None = None,
    out: Tensor | None = None,
) -> None:
    """``ValueError`` unless the shapes chain: ``x`` ``P x C``, ``w1`` ``C x H``, ``b1`` ``H``, ``w2`` ``H x D``,
    ``b2`` ``D`` (and ``residual``, ``out`` ``P x D`` where given)."""
    (p, c), (h, d) = matrix_shape(x), matrix_shape(w2)
    given = {"x": x, "w1": w1, "b1": b1, "w2": w2, "b2": b2}
    expected = {"x": (p, c), "w1": (c, h), "b1": (h,), "w2": (h, d), "b2": (d,)}
    layout = "x P x C, w1 C x H, b1 H, w2 H x D, b2 D"
    if out is not None:
        given |= {"residual": residual, "out": out}
        expected |= {"out": (p, d)} | ({"residual": (p, d)} if residual is not None else {})
        layout += ", residual and out P x D"
    check_shapes(operator, layout, given, expected)


def _compare_with_reference(kernel: _Kernel) -> None:
    """``RuntimeError`` unless the kernel's output and gradients match PyTorch's on a small input that covers its
    register tiles, its vector and scalar columns and a partial tile of rows, for both activations."""
    generator = torch.Generator().manual_seed(0)
    c, h = kernel.lanes + 3, 4 * kernel.lanes + 5
    shapes = ((2 * TILE_ROWS + 7, c), (c, h), (h,), (h, c), (c,))
    tensors = [torch.randn(shape, generator=generator) for shape in shapes]
    grad = torch.randn(2 * TILE_ROWS + 7, c, generator=generator)
    for act in ("gelu", "relu"):
        check_against_reference(
            lambda x, w1, b1, w2, b2, act=act: activation(act)(x @ w1 + b1) @ w2 + b2,
            lambda *leaves, act=act: _CompiledMLP.apply(*leaves, act, kernel),
            tensors,
            grad,
            "PyTorch's operators",
        )


LIBRARY = CompiledLibrary(
    "mlp",
    _SOURCE,
    _Kernel,
    _compare_with_reference,
    what="the compiled MLP kernel",
    fallback="PyTorch's matrix products",
)
"""The compiled kernel's build, load and check (:mod:`.compiled`)."""
