"""ConvUNeXt's depthwise ``k x k`` convolution (7x7 in the paper) as a compiled CPU kernel, with the PyTorch
convolution as its reference and fallback.

On channels-last float32 CPU tensors, oneDNN's depthwise 7x7 convolution computes its *weight* gradient at a few
GFLOP/s, the largest single cost of a ConvUNeXt training step on the CPU (issue 34). :func:`depthwise_conv7`
computes the forward, the input gradient and the weight (and bias) gradient with a small C++ kernel instead,
on ``N x C x H x W`` tensors in channels-last memory (C innermost), stride 1, zero padding ``p`` (default
``k // 2``, "same"), and falls back to ``F.conv2d(..., groups=C)`` (:func:`depthwise_reference`) everywhere else.

**Why a C++ kernel** (built and loaded by :mod:`.compiled`). Prototypes timed side by side with oneDNN in one
process (batch 4, 7x7, padding 3, one thread, medians of interleaved repeats) on a 2-core AVX-512 CPU busy with
another job, so only the ratios mean anything (oneDNN's time over the candidate's; above 1 = faster; the C++ rows
are this module's kernel, median of 3 runs):

==============================  ==========  ==========  ==========  ==========  ==========
C x H x W                       32x128x128  64x128x128  128x64x64   256x64x64   256x32x32
==============================  ==========  ==========  ==========  ==========  ==========
weight + bias gradient, C++     11.5        13.3        12.1        12.6        8.9
weight gradient, numba (best)   4.4         5.1         6.9         8.0
forward, C++                    2.3         2.1         1.4         1.4         1.2
forward, numba                  0.07        0.09        0.13        0.15
input gradient, C++             1.3         0.9         1.6         1.5         1.5
forward + backward, C++         3.2         3.5         4.9         3.5         3.8
==============================  ==========  ==========  ==========  ==========  ==========

The forward and input-gradient ratios of single runs ranged from 0.6 to 2.8 on that busy machine (the weight
gradient's from 8.5 to 14); two threads gave the same picture.

numba (``@njit(parallel=True, fastmath=True)``) can only vectorise its innermost loop, over the channels: its
accumulators live in memory, and its forward was not vectorised at all. The C++ kernel holds a tile of 8 outputs
(or, for the weight gradient, the ``k`` taps of one kernel row) in SIMD registers.

**Threads.** The weight gradient sums fixed blocks of 8 output rows in a fixed order, so it does not depend on the
thread count.

**Choosing the path**: the ``kernels`` setting of :mod:`convunext.runtime` (``CONVUNEXT_KERNELS``, :mod:`.compiled`).
Either way, inputs the kernel does not take (not float32, not on the CPU, a kernel size other than 3, 5, 7 or 9) use
the reference.

**Where it runs**: in ConvUNeXt's blocks while fused training is on (``model.set_fused_training()``, which
``convunext train`` turns on on CPUs), on channels-last float32 CPU inputs whose gradient is recorded
(:class:`~convunext.models.layers.padding.ReflectConv2d`); :func:`compiled_in_use` tells whether it will.
"""

from __future__ import annotations

import ctypes

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

from .compiled import CompiledLibrary, check_against_reference, cpu_float32

__all__ = ["KERNEL_SIZES", "compiled_available", "compiled_in_use", "depthwise_conv7", "depthwise_reference"]

KERNEL_SIZES = (3, 5, 7, 9)
"""The kernel sizes the compiled kernel is built for (each is a template instance)."""

_SOURCE = r"""
// Depthwise k x k convolution, stride 1, zero padding p, on N x H x W x C float32 arrays (C innermost).
#define TILE 8  // outputs per register tile: TILE accumulators + K weights (or K accumulators + TILE gradients)

// One output row, channels [c0, c0 + width of T): y[o, c] = b[c] + sum_ij x[ho + i - p, o + j - p, c] * w[i, j, c]
template <int K, class T>
static inline void conv_row(const float* x, const float* w, const float* b, float* y, i64 H, i64 W, i64 C, i64 Wo,
                            i64 p, i64 ho, i64 c0) {
  const i64 lo = std::min(p, Wo), hi = W - K + 1 + p;  // outputs in [lo, hi) have all K taps inside the row
  const T bias = b ? ld<T>(b + c0) : T{};
  auto edge = [&](i64 o) {
    T acc = bias;
    for (int i = 0; i < K; ++i) {
      const i64 r = ho + i - p;
      if (r < 0 || r >= H) continue;
      for (int j = 0; j < K; ++j) {
        const i64 s = o + j - p;
        if (s >= 0 && s < W) acc += ld<T>(x + (r * W + s) * C + c0) * ld<T>(w + (i * K + j) * C + c0);
      }
    }
    st<T>(y + o * C + c0, acc);
  };
  i64 o = 0;
  for (; o < lo; ++o) edge(o);
  for (; o + TILE <= hi; o += TILE) {
    T acc[TILE];
#pragma GCC unroll 32
    for (int t = 0; t < TILE; ++t) acc[t] = bias;
    for (int i = 0; i < K; ++i) {
      const i64 r = ho + i - p;
      if (r < 0 || r >= H) continue;
      T wv[K];
#pragma GCC unroll 32
      for (int j = 0; j < K; ++j) wv[j] = ld<T>(w + (i * K + j) * C + c0);
      const float* xr = x + (r * W + o - p) * C + c0;
#pragma GCC unroll 64
      for (int u = 0; u < TILE + K - 1; ++u) {
        const T xv = ld<T>(xr + u * C);
#pragma GCC unroll 32
        for (int j = 0; j < K; ++j) {
          const int t = u - j;
          if (t >= 0 && t < TILE) acc[t] += xv * wv[j];
        }
      }
    }
#pragma GCC unroll 32
    for (int t = 0; t < TILE; ++t) st<T>(y + (o + t) * C + c0, acc[t]);
  }
  for (; o < Wo; ++o) edge(o);
}

template <int K>
static void conv(const float* x, const float* w, const float* b, float* y, i64 N, i64 H, i64 W, i64 C, i64 p,
                 int threads) {
  const i64 Ho = H + 2 * p - K + 1, Wo = W + 2 * p - K + 1;
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
  for (i64 row = 0; row < N * Ho; ++row) {
    const float* xn = x + (row / Ho) * H * W * C;
    float* yr = y + row * Wo * C;
    i64 c0 = 0;
    for (; c0 + LANES <= C; c0 += LANES) conv_row<K, vec>(xn, w, b, yr, H, W, C, Wo, p, row % Ho, c0);
    for (; c0 < C; ++c0) conv_row<K, float>(xn, w, b, yr, H, W, C, Wo, p, row % Ho, c0);
  }
}

// One output row of dy: part[i, j, c] += sum_o dy[o, c] * x[ho + i - p, o + j - p, c]; part[K, 0, c] += sum_o dy[o, c]
template <int K, class T>
static inline void wgrad_row(const float* x, const float* dy, float* part, i64 H, i64 W, i64 C, i64 Wo, i64 p,
                             i64 ho, i64 c0) {
  const i64 hi = W - K + 1 + p, lo = std::min(p, hi);
  T db{};
  for (i64 o = 0; o < Wo; ++o) db += ld<T>(dy + o * C + c0);
  st<T>(part + K * K * C + c0, ld<T>(part + K * K * C + c0) + db);
  for (int i = 0; i < K; ++i) {
    const i64 r = ho + i - p;
    if (r < 0 || r >= H) continue;
    const float* xr = x + r * W * C + c0;
    T acc[K];
#pragma GCC unroll 32
    for (int j = 0; j < K; ++j) acc[j] = T{};
    auto edge = [&](i64 o) {
      const T d = ld<T>(dy + o * C + c0);
      for (int j = 0; j < K; ++j) {
        const i64 s = o + j - p;
        if (s >= 0 && s < W) acc[j] += d * ld<T>(xr + s * C);
      }
    };
    i64 o = 0;
    for (; o < lo; ++o) edge(o);
    for (; o + TILE <= hi; o += TILE) {
      T d[TILE];
#pragma GCC unroll 32
      for (int t = 0; t < TILE; ++t) d[t] = ld<T>(dy + (o + t) * C + c0);
      const float* xs = xr + (o - p) * C;
#pragma GCC unroll 64
      for (int u = 0; u < TILE + K - 1; ++u) {
        const T xv = ld<T>(xs + u * C);
#pragma GCC unroll 32
        for (int j = 0; j < K; ++j) {
          const int t = u - j;
          if (t >= 0 && t < TILE) acc[j] += d[t] * xv;
        }
      }
    }
    for (; o < Wo; ++o) edge(o);
#pragma GCC unroll 32
    for (int j = 0; j < K; ++j) st<T>(part + (i * K + j) * C + c0, ld<T>(part + (i * K + j) * C + c0) + acc[j]);
  }
}

static const i64 WGRAD_ROWS = 8;  // output rows per partial sum: the blocks do not depend on the thread count

template <int K>
static void wgrad(const float* x, const float* dy, float* parts, i64 N, i64 H, i64 W, i64 C, i64 p, int threads) {
  const i64 Ho = H + 2 * p - K + 1, Wo = W + 2 * p - K + 1, blocks = (Ho + WGRAD_ROWS - 1) / WGRAD_ROWS;
  const i64 size = (K * K + 1) * C;
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
  for (i64 block = 0; block < N * blocks; ++block) {
    const i64 n = block / blocks, h0 = (block % blocks) * WGRAD_ROWS, h1 = std::min(Ho, h0 + WGRAD_ROWS);
    float* part = parts + block * size;
    std::fill(part, part + size, 0.f);
    for (i64 ho = h0; ho < h1; ++ho) {
      const float* xn = x + n * H * W * C;
      const float* dyr = dy + (n * Ho + ho) * Wo * C;
      i64 c0 = 0;
      for (; c0 + LANES <= C; c0 += LANES) wgrad_row<K, vec>(xn, dyr, part, H, W, C, Wo, p, ho, c0);
      for (; c0 < C; ++c0) wgrad_row<K, float>(xn, dyr, part, H, W, C, Wo, p, ho, c0);
    }
  }
}

#define DISPATCH(K, CALL) \
  switch (K) {            \
    case 3: CALL(3); break; \
    case 5: CALL(5); break; \
    case 7: CALL(7); break; \
    case 9: CALL(9); break; \
    default: return -1;   \
  }                       \
  return 0;

extern "C" {
int dw_lanes(void) { return LANES; }

int64_t dw_wgrad_blocks(int64_t N, int64_t Ho) { return N * ((Ho + WGRAD_ROWS - 1) / WGRAD_ROWS); }

int dw_conv(const float* x, const float* w, const float* b, float* y, int64_t N, int64_t H, int64_t W, int64_t C,
            int64_t K, int64_t p, int threads) {
#define CONV(k) conv<k>(x, w, b, y, N, H, W, C, p, threads)
  DISPATCH(K, CONV)
}

int dw_wgrad(const float* x, const float* dy, float* parts, int64_t N, int64_t H, int64_t W, int64_t C, int64_t K,
             int64_t p, int threads) {
#define WGRAD(k) wgrad<k>(x, dy, parts, N, H, W, C, p, threads)
  DISPATCH(K, WGRAD)
}

// out[e] = sum over r = 0, 1, ... (in this order) of parts[r, e]
void dw_sum_rows(const float* parts, float* out, int64_t rows, int64_t len, int threads) {
  const int64_t chunk = 1024;
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1 && len >= 4 * chunk)
  for (int64_t e0 = 0; e0 < len; e0 += chunk) {
    const int64_t e1 = std::min(len, e0 + chunk);
    std::copy(parts + e0, parts + e1, out + e0);
    for (int64_t r = 1; r < rows; ++r)
      for (int64_t e = e0; e < e1; ++e) out[e] += parts[r * len + e];
  }
}
}
"""


def depthwise_reference(x: Tensor, weight: Tensor, bias: Tensor | None = None, padding: int | None = None) -> Tensor:
    """The reference: ``F.conv2d(x, weight, bias, padding=padding, groups=C)``, padding ``k // 2`` by default.

    Shapes: ``x`` ``N x C x H x W``, ``weight`` ``C x 1 x k x k``, ``bias`` ``C`` -> ``N x C x Ho x Wo`` with
    ``Ho = H + 2 * padding - k + 1`` (``Wo`` likewise).
    """
    k = weight.shape[-1]
    return F.conv2d(x, weight, bias, padding=k // 2 if padding is None else padding, groups=weight.shape[0])


def depthwise_conv7(x: Tensor, weight: Tensor, bias: Tensor | None = None, padding: int | None = None) -> Tensor:
    """Depthwise convolution (groups = C), stride 1, zero padding, with the compiled kernel where it applies.

    The compiled kernel takes float32 CPU tensors and kernel sizes :data:`KERNEL_SIZES` (7 is ConvUNeXt's); it
    works on channels-last memory, so an input in another layout is copied into it first, and the output (and
    the input gradient) is channels-last. Results equal :func:`depthwise_reference` within float32 rounding;
    gradients flow to ``x``, ``weight`` and ``bias`` (first order only). ``CONVUNEXT_KERNELS`` chooses the
    path (:mod:`.compiled`).

    Args:
        x: ``N x C x H x W``.
        weight: ``C x 1 x k x k``, ``k`` odd.
        bias: ``C``, or None.
        padding: zero padding of each side, ``0 <= padding < k``; default ``k // 2`` (output size = input size).

    Returns:
        ``N x C x Ho x Wo``, ``Ho = H + 2 * padding - k + 1`` and ``Wo = W + 2 * padding - k + 1``.

    Raises:
        ValueError: shapes that do not describe a depthwise convolution, or a padding out of range.
        ConvUNeXtError: an invalid ``CONVUNEXT_KERNELS``, or ``compiled`` where the kernel cannot be loaded.
    """
    k = _check(x, weight, bias, padding)
    p = k // 2 if padding is None else padding
    kernel = LIBRARY.for_call() if _takes(x, weight, bias) else None
    if kernel is None:
        return depthwise_reference(x, weight, bias, p)
    return _CompiledDepthwise.apply(x, weight, bias, p, kernel)


def compiled_available() -> bool:
    """Whether the compiled kernel is loaded, building it now if needed (without the fallback's notice)."""
    return LIBRARY.available()


def compiled_in_use() -> bool:
    """Whether :func:`depthwise_conv7` now runs the compiled kernel on the inputs it takes: building it if needed,
    False with the ``reference`` setting, or (``auto``) after the fallback's one notice where it cannot be loaded.

    Raises:
        ConvUNeXtError: an invalid ``CONVUNEXT_KERNELS``, or ``compiled`` where the kernel cannot be loaded.
    """
    return LIBRARY.for_call() is not None


def _check(x: Tensor, weight: Tensor, bias: Tensor | None, padding: int | None) -> int:
    """``k``, after checking the shapes and the padding (``ValueError`` naming the problem)."""
    if x.dim() != 4:
        raise ValueError(f"depthwise convolution: x has shape {tuple(x.shape)}; expected N x C x H x W")
    c = x.shape[1]
    k = weight.shape[-1]
    if weight.shape != (c, 1, k, k) or k % 2 == 0:
        raise ValueError(
            f"depthwise convolution: weight has shape {tuple(weight.shape)}; expected {c} x 1 x k x k with k odd"
        )
    if bias is not None and bias.shape != (c,):
        raise ValueError(f"depthwise convolution: bias has shape {tuple(bias.shape)}; expected ({c},)")
    p = k // 2 if padding is None else padding
    if not 0 <= p < k:
        raise ValueError(f"depthwise convolution: padding={padding!r}; use 0 <= padding < {k}")
    if min(x.shape[2], x.shape[3]) + 2 * p < k:
        raise ValueError(f"depthwise convolution: a {k}x{k} kernel with padding {p} on a {x.shape[2]}x{x.shape[3]} map")
    return k


def _takes(x: Tensor, weight: Tensor, bias: Tensor | None) -> bool:
    """Whether the compiled kernel applies: float32 CPU tensors and a kernel size it is built for."""
    tensors = (x, weight) if bias is None else (x, weight, bias)
    return cpu_float32(*tensors) and weight.shape[-1] in KERNEL_SIZES


def _nhwc(t: Tensor) -> Tensor:
    """``N x C x H x W`` as an ``N x H x W x C`` contiguous tensor: a view where ``t`` is channels-last, else a copy."""
    view = t.permute(0, 2, 3, 1)
    return view if view.is_contiguous() else view.contiguous()


def _taps(weight: Tensor) -> Tensor:
    """``C x 1 x k x k`` -> ``k x k x C`` contiguous (the kernel's layout)."""
    return weight.detach()[:, 0].permute(1, 2, 0).contiguous()


class _Kernel:
    """The loaded library's entry points on tensors (raw pointers, and the caller's intra-op thread count)."""

    def __init__(self, library: ctypes.CDLL) -> None:
        i64, ptr, c_int = ctypes.c_int64, ctypes.c_void_p, ctypes.c_int
        signatures = {  # name: (argument types, result type), as the C source declares them
            "dw_lanes": ([], c_int),
            "dw_wgrad_blocks": ([i64, i64], i64),
            "dw_conv": ([ptr, ptr, ptr, ptr, i64, i64, i64, i64, i64, i64, c_int], c_int),
            "dw_wgrad": ([ptr, ptr, ptr, i64, i64, i64, i64, i64, i64, c_int], c_int),
            "dw_sum_rows": ([ptr, ptr, i64, i64, c_int], None),
        }
        for name, (arguments, result) in signatures.items():
            function = getattr(library, name)
            function.argtypes, function.restype = arguments, result
        self.library = library
        self.lanes = int(library.dw_lanes())

    def conv(self, x: Tensor, taps: Tensor, bias: Tensor | None, padding: int) -> Tensor:
        """``x`` ``N x H x W x C`` contiguous, ``taps`` ``k x k x C`` contiguous -> ``N x Ho x Wo x C``."""
        n, h, w, c = x.shape
        k = taps.shape[0]
        y = x.new_empty(n, h + 2 * padding - k + 1, w + 2 * padding - k + 1, c)
        b = None if bias is None else bias.detach().contiguous()
        pointers = (x.data_ptr(), taps.data_ptr(), None if b is None else b.data_ptr(), y.data_ptr())
        if self.library.dw_conv(*pointers, n, h, w, c, k, padding, torch.get_num_threads()):
            raise ValueError(f"compiled depthwise convolution: no kernel for k={k}")
        return y

    def weight_grad(self, x: Tensor, grad: Tensor, k: int, padding: int) -> tuple[Tensor, Tensor]:
        """``(k x k x C, C)``: the weight and bias gradients of :meth:`conv` from ``x`` and the output gradient
        ``grad`` (``N x Ho x Wo x C`` contiguous)."""
        n, h, w, c = x.shape
        size = (k * k + 1) * c
        blocks = int(self.library.dw_wgrad_blocks(n, grad.shape[1]))
        parts, total = x.new_empty(blocks, size), x.new_empty(size)
        threads = torch.get_num_threads()
        if self.library.dw_wgrad(x.data_ptr(), grad.data_ptr(), parts.data_ptr(), n, h, w, c, k, padding, threads):
            raise ValueError(f"compiled depthwise convolution: no kernel for k={k}")
        self.library.dw_sum_rows(parts.data_ptr(), total.data_ptr(), blocks, size, threads)
        return total[: k * k * c].view(k, k, c), total[k * k * c :]


class _CompiledDepthwise(torch.autograd.Function):
    """:func:`depthwise_conv7` on the compiled kernel (inputs already checked and taken by it)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: FunctionCtx, x: Tensor, weight: Tensor, bias: Tensor | None, padding: int, kernel: _Kernel
    ) -> Tensor:
        rows = _nhwc(x.detach())
        ctx.save_for_backward(rows, weight)
        ctx.padding, ctx.kernel, ctx.has_bias = padding, kernel, bias is not None  # type: ignore[attr-defined]
        return kernel.conv(rows, _taps(weight), bias, padding).permute(0, 3, 1, 2)

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        rows, weight = ctx.saved_tensors  # type: ignore[attr-defined]
        padding, kernel = ctx.padding, ctx.kernel  # type: ignore[attr-defined]
        k = weight.shape[-1]
        grad_rows = _nhwc(grad)
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:  # type: ignore[attr-defined]
            # the input gradient is the output gradient convolved with the flipped kernel, padded by k - 1 - p
            flipped = _taps(weight.flip(-2, -1))
            grad_x = kernel.conv(grad_rows, flipped, None, k - 1 - padding).permute(0, 3, 1, 2)
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:  # type: ignore[attr-defined]
            taps, sums = kernel.weight_grad(rows, grad_rows, k, padding)
            grad_weight = taps.permute(2, 0, 1).unsqueeze(1).contiguous()
            grad_bias = sums if ctx.has_bias else None  # type: ignore[attr-defined]
        return grad_x, grad_weight, grad_bias, None, None


def _compare_with_reference(kernel: _Kernel) -> None:
    generator = torch.Generator().manual_seed(0)
    c = kernel.lanes + 3
    x = torch.randn(2, c, 5, 21, generator=generator).contiguous(memory_format=torch.channels_last)
    weight, bias = torch.randn(c, 1, 7, 7, generator=generator), torch.randn(c, generator=generator)
    grad = torch.randn(x.shape, generator=generator)
    check_against_reference(
        lambda x, weight, bias: depthwise_reference(x, weight, bias, 3),
        lambda x, weight, bias: _CompiledDepthwise.apply(x, weight, bias, 3, kernel),
        (x, weight, bias),
        grad,
        "PyTorch's convolution",
    )


LIBRARY = CompiledLibrary(
    "depthwise",
    _SOURCE,
    _Kernel,
    _compare_with_reference,
    what="the compiled depthwise convolution",
    fallback="PyTorch's convolution",
)
"""The compiled kernel's build, load and check (:mod:`.compiled`)."""
