"""ConvUNeXt's skip gate and fusion conv in training (:mod:`.gate`, on folded weights) as one compiled CPU kernel,
forward and backward, with :func:`~.gate.banded_gate`'s PyTorch path as its reference and fallback.

With the depthwise convolution and the block MLP compiled, the decoder's gate took about a third of ConvUNeXt's CPU
training step: PyTorch runs it on bands of rows as three matrix products, three sigmoids, a tanh and a dozen
element-wise passes, each streaming a ``P x (3c + D)`` or ``P x c`` temporary through memory. This kernel walks the
rows in tiles of :data:`TILE_ROWS` and keeps every temporary of a tile (the products, the sigmoids, their gradients)
in the core's cache, with the register-tiled matrix products of :data:`~.compiled.MATRIX_PRODUCTS`.

Like the PyTorch path, the forward saves only its inputs and the backward recomputes each tile. Per-thread
weight-gradient sums are added in thread order (the result depends on the thread count within float32 rounding).

It runs where :func:`~.gate.banded_gate` records gradients on float32 CPU rows (ConvUNeXt's decoder stages while
fused training is on), and its forward pass in the inference fast path's decoder stages (:func:`compiled_gate_rows_`,
from :func:`~.gate.gate_rows_`); the ``kernels`` setting of :mod:`convunext.runtime` chooses (:mod:`.compiled`).
"""

from __future__ import annotations

import ctypes
from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from .compiled import (
    MATRIX_PRODUCTS,
    CompiledLibrary,
    check_against_reference,
    check_shapes,
    cpu_float32,
    data_pointer,
    matrix_shape,
)
from .gate_definition import GateWeights, gate_reference

__all__ = ["LIBRARY", "TILE_ROWS", "compiled_gate", "compiled_gate_rows_"]

TILE_ROWS = 48
"""Rows per tile: a tile's temporaries (about ``TILE_ROWS x 2 (3c + D)`` values) stay in L2 up to c = D = 128."""

_SOURCE = (
    MATRIX_PRODUCTS
    + f"#include <type_traits>\nstatic const int TILE_ROWS = {TILE_ROWS};\n"
    + r"""
static inline vec sigmoid(vec x) {  // 1 / (1 + e^-x), from e = exp(-|x|) <= 1 (no overflow)
  const vec e = exp_nonpositive(x < 0 ? x : -x);
  const vec r = 1.f / (1.f + e);
  return x < 0 ? e * r : r;
}
static inline float sigmoid(float x) { return 1.f / (1.f + std::exp(-x)); }

// Apply op(j, width) to the columns [0, c) of a row: vectors of LANES (width LANES), then single columns (width 1).
template <class Op> static inline void columns(i64 c, Op op) {
  i64 j = 0;
  for (; j + LANES <= c; j += LANES) op(j, std::integral_constant<int, LANES>{});
  for (; j < c; ++j) op(j, std::integral_constant<int, 1>{});
}
template <int N> using lanes_t = typename std::conditional<N == 1, float, vec>::type;
template <int N> static inline lanes_t<N> load(const float* p) {
  if constexpr (N == 1) return *p; else return ld<vec>(p);
}
template <int N> static inline void store(float* p, lanes_t<N> v) {
  if constexpr (N == 1) *p = v; else st<vec>(p, v);
}

// One tile's gate, from g = u w_u + b_u (m x W, W = 3c + D: [g1 | g2 | g3 | fusion]) and the skip s (m x c):
// t = g1 + s, f = sigmoid(t w_f + b_f), gated = f s + sigmoid(g2) tanh(g3); tanh(x) = 2 sigmoid(2x) - 1.
// Leaves t, f (after the sigmoid), sig2 = sigmoid(g2), th3 = tanh(g3) and gated in their buffers.
static void gate_tile(const float* g, const float* s, const float* wf, const float* bf, i64 m, i64 c, i64 W,
                      float* t, float* f, float* sig2, float* th3, float* gated) {
  for (i64 r = 0; r < m; ++r)
    columns(c, [&](i64 j, auto n) {
      constexpr int N = decltype(n)::value;
      store<N>(t + r * c + j, load<N>(g + r * W + j) + load<N>(s + r * c + j));
    });
  gemm(t, c, 1, m, wf, c, c, c, f, c, bf, false);
  for (i64 r = 0; r < m; ++r)
    columns(c, [&](i64 j, auto n) {
      constexpr int N = decltype(n)::value;
      const i64 e = r * c + j;
      const auto fv = sigmoid(load<N>(f + e));
      const auto s2 = sigmoid(load<N>(g + r * W + c + j));
      const auto t3 = 2.f * sigmoid(2.f * load<N>(g + r * W + 2 * c + j)) - 1.f;
      store<N>(f + e, fv);
      store<N>(sig2 + e, s2);
      store<N>(th3 + e, t3);
      store<N>(gated + e, fv * load<N>(s + e) + s2 * t3);
    });
}

extern "C" {
int gate_lanes(void) { return LANES; }

// z = fusion + gated w_s (gate: wf non-null), or z = u w_u + b_u + s w_s (no gate).
// u, s: P x c; w_u: c x W; b_u: W; w_s: c x D; wf: c x c; bf: c; z: P x D.
void gate_forward(const float* u, const float* s, const float* wu, const float* bu, const float* ws, const float* wf,
                  const float* bf, float* z, i64 P, i64 c, i64 W, i64 D, int threads) {
#pragma omp parallel num_threads(threads) if (threads > 1)
  {
    i64 first, last;
    my_rows(P, &first, &last);
    std::vector<float> g(TILE_ROWS * W), tmp(5 * TILE_ROWS * c);
    float *t = tmp.data(), *f = t + TILE_ROWS * c, *sig2 = f + TILE_ROWS * c, *th3 = sig2 + TILE_ROWS * c;
    float* gated = th3 + TILE_ROWS * c;
    for (i64 r0 = first; r0 < last; r0 += TILE_ROWS) {
      const i64 m = std::min<i64>(TILE_ROWS, last - r0);
      const float* ut = u + r0 * c;
      const float* st_ = s + r0 * c;
      float* zt = z + r0 * D;
      if (!wf) {
        gemm(ut, c, 1, m, wu, W, c, D, zt, D, bu, false);
        gemm(st_, c, 1, m, ws, D, c, D, zt, D, nullptr, true);
        continue;
      }
      gemm(ut, c, 1, m, wu, W, c, W, g.data(), W, bu, false);
      gate_tile(g.data(), st_, wf, bf, m, c, W, t, f, sig2, th3, gated);
      for (i64 r = 0; r < m; ++r) std::copy(g.data() + r * W + 3 * c, g.data() + r * W + W, zt + r * D);
      gemm(gated, c, 1, m, ws, D, c, D, zt, D, nullptr, true);
    }
  }
}

// The backward pass from dz (P x D), recomputing each tile. wut (W x c), wst (D x c), wft (c x c): the transposed
// weights. du, ds: P x c. sums: threads x (c*W + W + c*D [+ c*c + c]): each thread's sums of the gradients of w_u,
// b_u, w_s [, w_f, b_f] (in that order).
void gate_backward(const float* u, const float* s, const float* wu, const float* bu, const float* wf, const float* bf,
                   const float* wut, const float* wst, const float* wft, const float* dz, float* du, float* ds,
                   float* sums, i64 P, i64 c, i64 W, i64 D, int threads) {
  const i64 size = c * W + W + c * D + (wf ? c * c + c : 0);
  std::fill(sums, sums + threads * size, 0.f);
#pragma omp parallel num_threads(threads) if (threads > 1)
  {
    i64 first, last;
    my_rows(P, &first, &last);
    float* gwu = sums + team_thread() * size;
    float* gbu = gwu + c * W;
    float* gws = gbu + W;
    float* gwf = gws + c * D;
    float* gbf = gwf + c * c;
    std::vector<float> g(TILE_ROWS * W), dg(TILE_ROWS * W), tmp(6 * TILE_ROWS * c);
    float *t = tmp.data(), *f = t + TILE_ROWS * c, *sig2 = f + TILE_ROWS * c, *th3 = sig2 + TILE_ROWS * c;
    float *gated = th3 + TILE_ROWS * c, *dgated = gated + TILE_ROWS * c;
    for (i64 r0 = first; r0 < last; r0 += TILE_ROWS) {
      const i64 m = std::min<i64>(TILE_ROWS, last - r0);
      const float* ut = u + r0 * c;
      const float* st_ = s + r0 * c;
      const float* dzt = dz + r0 * D;
      float* dut = du + r0 * c;
      float* dst = ds + r0 * c;
      const float* dgt = dzt;  // the gradient of g = u w_u + b_u (m x W, row stride W)
      if (!wf) {
        gemm(st_, 1, c, c, dzt, D, m, D, gws, D, nullptr, true);  // gws += s^T dz
        gemm(dzt, D, 1, m, wst, c, D, c, dst, c, nullptr, false);  // ds = dz w_s^T
      } else {
        gemm(ut, c, 1, m, wu, W, c, W, g.data(), W, bu, false);
        gate_tile(g.data(), st_, wf, bf, m, c, W, t, f, sig2, th3, gated);
        gemm(gated, 1, c, c, dzt, D, m, D, gws, D, nullptr, true);     // gws += gated^T dz
        gemm(dzt, D, 1, m, wst, c, D, c, dgated, c, nullptr, false);  // dgated = dz w_s^T
        float* dpre = gated;  // gated is spent: it now holds the gradient of t w_f + b_f
        for (i64 r = 0; r < m; ++r) {
          float* dgr = dg.data() + r * W;
          columns(c, [&](i64 j, auto n) {
            constexpr int N = decltype(n)::value;
            const i64 e = r * c + j;
            const auto d = load<N>(dgated + e), fv = load<N>(f + e), sv = load<N>(st_ + e);
            const auto s2 = load<N>(sig2 + e), t3 = load<N>(th3 + e);
            store<N>(dst + j + r * c, d * fv);                         // gated = f s + ...
            store<N>(dpre + e, d * sv * fv * (1.f - fv));              // f = sigmoid(pre)
            store<N>(dgr + c + j, d * t3 * s2 * (1.f - s2));           // sigmoid(g2)
            store<N>(dgr + 2 * c + j, d * s2 * (1.f - t3 * t3));       // tanh(g3)
          });
          std::copy(dzt + r * D, dzt + r * D + D, dgr + 3 * c);       // the fusion part of g: dz
        }
        gemm(t, 1, c, c, dpre, c, m, c, gwf, c, nullptr, true);             // gwf += t^T dpre
        for (i64 r = 0; r < m; ++r)
          for (i64 j = 0; j < c; ++j) gbf[j] += dpre[r * c + j];
        gemm(dpre, c, 1, m, wft, c, c, c, dg.data(), W, nullptr, false);  // dg1 = dpre w_f^T
        for (i64 r = 0; r < m; ++r)
          for (i64 j = 0; j < c; ++j) dst[r * c + j] += dg[r * W + j];     // t = g1 + s
        dgt = dg.data();
      }
      const i64 ldg = wf ? W : D;
      gemm(ut, 1, c, c, dgt, ldg, m, W, gwu, W, nullptr, true);  // gwu += u^T dg
      for (i64 r = 0; r < m; ++r)
        for (i64 j = 0; j < W; ++j) gbu[j] += dgt[r * ldg + j];
      gemm(dgt, ldg, 1, m, wut, c, W, c, dut, c, nullptr, false);  // du = dg w_u^T
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
        library.gate_lanes.argtypes, library.gate_lanes.restype = [], c_int
        library.gate_forward.argtypes = [ptr] * 8 + [i64] * 4 + [c_int]
        library.gate_forward.restype = None
        library.gate_backward.argtypes = [ptr] * 13 + [i64] * 4 + [c_int]
        library.gate_backward.restype = None
        self.library = library
        self.lanes = int(library.gate_lanes())

    def forward(self, u: Tensor, s: Tensor, weights: GateWeights, out: Tensor | None = None) -> Tensor:
        """:func:`~.gate.gate_reference` into ``out`` (new unless given); contiguous float32 CPU tensors (``u``,
        ``s``: ``P x c``) -> ``P x D``."""
        (p, c), (width, d) = u.shape, (weights.w_u.shape[1], weights.w_s.shape[1])
        z = u.new_empty(p, d) if out is None else out
        pointers = [data_pointer(t) for t in (u, s, *weights, z)]
        self.library.gate_forward(*pointers, p, c, width, d, torch.get_num_threads())
        return z

    def backward(self, u: Tensor, s: Tensor, weights: GateWeights, grad: Tensor) -> tuple[Tensor, ...]:
        """The gradients of ``u``, ``s`` and each weight of ``weights`` (in its order; those of a stage without a
        gate end at ``w_s``) from the output gradient ``grad`` (``P x D``)."""
        (p, c), (width, d) = u.shape, (weights.w_u.shape[1], weights.w_s.shape[1])
        threads = torch.get_num_threads()
        transposed = [None if w is None else w.t().contiguous() for w in (weights.w_u, weights.w_s, weights.w_f)]
        grad_u, grad_s = torch.empty_like(u), torch.empty_like(s)
        shapes = [w.shape for w in weights if w is not None]
        sums = u.new_empty(threads, sum(shape.numel() for shape in shapes))
        w_u, b_u, _, w_f, b_f = weights
        pointers = [data_pointer(t) for t in (u, s, w_u, b_u, w_f, b_f, *transposed, grad, grad_u, grad_s, sums)]
        self.library.gate_backward(*pointers, p, c, width, d, threads)
        total = sums.sum(0) if threads > 1 else sums[0]
        parts = total.split([shape.numel() for shape in shapes])
        return grad_u, grad_s, *(part.view(shape) for part, shape in zip(parts, shapes, strict=True))


class _CompiledGate(torch.autograd.Function):
    """:func:`compiled_gate`'s autograd: the forward saves its inputs, the backward recomputes."""

    @staticmethod
    def forward(ctx: Any, u: Tensor, s: Tensor, kernel: _Kernel, *tensors: Tensor) -> Tensor:  # type: ignore[override]
        u, s, *tensors = (t.detach().contiguous() for t in (u, s, *tensors))
        ctx.save_for_backward(u, s, *tensors)
        ctx.kernel = kernel
        return kernel.forward(u, s, GateWeights(*tensors))

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        u, s, *tensors = ctx.saved_tensors
        grad_u, grad_s, *grads = ctx.kernel.backward(u, s, GateWeights(*tensors), grad.contiguous())
        return (grad_u, grad_s, None, *grads)


def compiled_gate(u: Tensor, s: Tensor, weights: GateWeights) -> Tensor | None:
    """:func:`~.gate.gate_reference` through the compiled kernel, differentiable (first order), or None where it does
    not run: tensors other than float32 on the CPU, the ``reference`` setting, or (``auto``) a kernel that cannot be
    loaded (after one notice).

    Shapes: ``u``, ``s`` ``P x c`` -> ``P x D`` (:class:`~.gate.GateWeights` has the weights' shapes).

    Raises:
        ConvUNeXtError: an invalid ``CONVUNEXT_KERNELS``, or ``compiled`` where the kernel cannot be loaded.
        ValueError: shapes that do not fit together.
    """
    tensors = [t for t in weights if t is not None]
    kernel = LIBRARY.for_call(stacklevel=4) if cpu_float32(u, s, *tensors) else None
    if kernel is None:
        return None
    _check_shapes("compiled_gate", u, s, weights)
    return _CompiledGate.apply(u, s, kernel, *tensors)


def compiled_gate_rows_(u: Tensor, s: Tensor, weights: GateWeights, out: Tensor) -> bool:
    """One band of :func:`~.gate.gate_rows_` (inference: no gradients) into ``out`` (``P x D``) through the compiled
    kernel; False, with nothing done, where it does not run: tensors other than contiguous float32 on the CPU, the
    ``reference`` setting, or (``auto``) a kernel that cannot be loaded (after one notice).

    Raises:
        ConvUNeXtError: an invalid ``CONVUNEXT_KERNELS``, or ``compiled`` where the kernel cannot be loaded.
        ValueError: shapes that do not fit together.
    """
    tensors = [u, s, out, *(t for t in weights if t is not None)]
    if not (cpu_float32(*tensors) and all(t.is_contiguous() for t in tensors)):
        return False
    kernel = LIBRARY.for_call(stacklevel=4)
    if kernel is None:
        return False
    _check_shapes("compiled_gate_rows_", u, s, weights, out)
    kernel.forward(u, s, weights, out)
    return True


def _check_shapes(operator: str, u: Tensor, s: Tensor, weights: GateWeights, out: Tensor | None = None) -> None:
    (p, c), (_, d) = matrix_shape(u), matrix_shape(weights.w_s)
    gated = weights.w_f is not None
    expected = {"u": (p, c), "s": (p, c), "w_u": (c, 3 * c + d if gated else d), "b_u": (3 * c + d if gated else d,)}
    expected |= {"w_s": (c, d)} | ({"w_f": (c, c), "b_f": (c,)} if gated else {})
    given = {"u": u, "s": s, **weights._asdict()}
    if out is not None:
        given["out"], expected["out"] = out, (p, d)
    layout = "u and s P x c, w_u c x (3c + D) (c x D without a gate), b_u its width, w_s c x D, w_f c x c, b_f c"
    check_shapes(operator, layout + (", out P x D" if out is not None else ""), given, expected)


def _compare_with_reference(kernel: _Kernel) -> None:
    """``RuntimeError`` unless the kernel's output and gradients match PyTorch's on a small input that covers its
    vector and scalar columns and a partial tile of rows, with and without a gate."""
    generator = torch.Generator().manual_seed(0)
    c, d, rows = kernel.lanes + 3, kernel.lanes + 5, 2 * TILE_ROWS + 7
    for gated in (True, False):
        width = 3 * c + d if gated else d
        shapes = [(rows, c), (rows, c), (c, width), (width,), (c, d)] + ([(c, c), (c,)] if gated else [])
        tensors = [torch.randn(shape, generator=generator) for shape in shapes]
        grad = torch.randn(rows, d, generator=generator)
        check_against_reference(
            lambda u, s, *weights: gate_reference(u, s, GateWeights(*weights)),
            lambda u, s, *weights: _CompiledGate.apply(u, s, kernel, *weights),
            tensors,
            grad,
            "PyTorch's operators",
        )


LIBRARY = CompiledLibrary(
    "gate",
    _SOURCE,
    _Kernel,
    _compare_with_reference,
    what="the compiled gate kernel",
    fallback="PyTorch's matrix products",
)
"""The compiled kernel's build, load and check (:mod:`.compiled`)."""
