"""The compiled CPU kernels' shared machinery: build at first use, cache, load with ctypes, check, fall back.

ConvUNeXt's training step has three kernels compiled from C++ (issue 34): the depthwise ``k x k`` convolution
(:mod:`.depthwise`), the block's MLP (:mod:`.compiled_mlp`) and the decoder's skip gate with its fusion conv
(:mod:`.compiled_gate`). Each is a :class:`CompiledLibrary`: a C++ source
(:data:`PRELUDE` + its own), its ctypes binding and a self-check against its PyTorch reference.

**Why C++ built at first use, loaded with ctypes.** A plain shared library with C entry points on raw pointers
needs neither PyTorch's headers, ninja nor the Python headers; it compiles in a few seconds and is tied to no PyTorch
version; ctypes releases the GIL while it runs; and ``pip install`` stays a pure-Python install (no build step that
could fail on a user's machine). GCC/Clang vector types of the machine's width (``-march=native``) hold the register
tiles; numba, the other candidate, could only vectorise innermost loops (:mod:`.depthwise` has the measurements).

**Building and loading.** At the first call that can use a kernel, its source is compiled with ``$CXX`` (default
``c++``) into ``$CONVUNEXT_CACHE/kernels`` (default ``~/.cache/convunext``), under a name hashing the source, the
flags and this CPU's model and features (a binary built for one CPU is never loaded on another: ``-march=native``
code may use instructions other CPUs lack), written to a temporary file and renamed (concurrent processes are safe),
then checked against its reference on a small input. Where any step fails (no compiler, a build error, a read-only
cache, a wrong result), the reference runs, after one notice (a ``RuntimeWarning``, once per process and kernel).

**Threads.** A kernel runs one OpenMP region per call with ``torch.get_num_threads()`` threads (PyTorch's own
OpenMP runtime: the library links ``libgomp.so.1``, the one PyTorch has loaded); one thread runs no OpenMP at all.

**Choosing the path**: the ``kernels`` setting of :mod:`convunext.runtime`, read at each call: ``auto`` (default:
each kernel where it loads), ``compiled`` (an error where one cannot be loaded) or ``reference``. It starts from
``CONVUNEXT_KERNELS`` and ``convunext.runtime.configure(kernels=...)`` changes it.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
import threading
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Generic, TypeVar

import torch
from torch import Tensor

from ...errors import ConvUNeXtError
from ...runtime import KERNELS_ENV, KernelMode, settings

__all__ = [
    "FLAGS",
    "MATRIX_PRODUCTS",
    "PRELUDE",
    "CompiledLibrary",
    "check_shapes",
    "compiler",
    "kernel_mode",
    "matrix_shape",
]

FLAGS = ("-O3", "-march=native", "-fopenmp", "-std=c++17", "-shared", "-fPIC")
_BUILD_TIMEOUT_S = 300

PRELUDE = r"""
#include <algorithm>
#include <cstdint>
#ifdef _OPENMP
#include <omp.h>
#endif

#if defined(__AVX512F__)
#define LANES 16
#elif defined(__AVX__)
#define LANES 8
#else
#define LANES 4
#endif

typedef float vec __attribute__((vector_size(LANES * 4)));
typedef int32_t ivec __attribute__((vector_size(LANES * 4)));
typedef int64_t i64;

// unaligned loads and stores (a pixel's channels start anywhere when C is not a multiple of LANES)
template <class T> static inline T ld(const float* p) { T v; __builtin_memcpy(&v, p, sizeof(T)); return v; }
template <class T> static inline void st(float* p, T v) { __builtin_memcpy(p, &v, sizeof(T)); }
template <class T> static inline T splat(float a) { return T{} + a; }
template <class T> static constexpr i64 width() { return sizeof(T) / sizeof(float); }

// this thread's index and the team's size inside an OpenMP region (0 and 1 without OpenMP)
static inline int team_thread() {
#ifdef _OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}
static inline int team_size() {
#ifdef _OPENMP
  return omp_get_num_threads();
#else
  return 1;
#endif
}
"""
"""The C++ every kernel starts from: the SIMD width (``LANES``), the vector types and unaligned loads and stores."""

MATRIX_PRODUCTS = r"""
#include <cmath>
#include <vector>

// out[i, n] (=, or +=) sum_k a[i * ai + k * ak] * b[k * ldb + n] (+ bias[n]), for i < MI and NV vectors of n.
template <int MI, int NV, class T>
static inline void block(const float* a, i64 ai, i64 ak, const float* b, i64 ldb, i64 kk, float* out, i64 ldo,
                         const float* bias, bool accumulate) {
  T acc[MI][NV];
  for (int i = 0; i < MI; ++i)
    for (int v = 0; v < NV; ++v)
      acc[i][v] = accumulate ? ld<T>(out + i * ldo + v * width<T>()) : bias ? ld<T>(bias + v * width<T>()) : T{};
  for (i64 k = 0; k < kk; ++k) {
    T bv[NV];
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) bv[v] = ld<T>(b + k * ldb + v * width<T>());
#pragma GCC unroll 16
    for (int i = 0; i < MI; ++i) {
      const T av = splat<T>(a[i * ai + k * ak]);
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) acc[i][v] += av * bv[v];
    }
  }
  for (int i = 0; i < MI; ++i)
    for (int v = 0; v < NV; ++v) st<T>(out + i * ldo + v * width<T>(), acc[i][v]);
}

template <int NV, int MI, class T>
static inline void rows_of(const float* a, i64 ai, i64 ak, i64 m, const float* b, i64 ldb, i64 kk, float* out,
                           i64 ldo, const float* bias, bool accumulate) {
  i64 i = 0;
  for (; i + MI <= m; i += MI) block<MI, NV, T>(a + i * ai, ai, ak, b, ldb, kk, out + i * ldo, ldo, bias, accumulate);
  for (; i < m; ++i) block<1, NV, T>(a + i * ai, ai, ak, b, ldb, kk, out + i * ldo, ldo, bias, accumulate);
}

// out[m x n] (=, or +=) A[m x kk] B[kk x n] (+ bias[n]): A addressed by strides (ai, ak), B and out row-major.
// Register tiles: 6 rows x 4 vectors, 12 x 2 or 12 x 1, then single columns.
static void gemm(const float* a, i64 ai, i64 ak, i64 m, const float* b, i64 ldb, i64 kk, i64 n, float* out, i64 ldo,
                 const float* bias, bool accumulate) {
  i64 c = 0;
#define COLUMNS(NV, MI, T, STEP)                                                                                  \
  for (; c + (STEP) <= n; c += (STEP))                                                                            \
    rows_of<NV, MI, T>(a, ai, ak, m, b + c, ldb, kk, out + c, ldo, bias ? bias + c : nullptr, accumulate);
  COLUMNS(4, 6, vec, 4 * LANES)
  COLUMNS(2, 12, vec, 2 * LANES)
  COLUMNS(1, 12, vec, LANES)
  COLUMNS(1, 4, float, 1)
#undef COLUMNS
}

// exp(x) for -87 <= x <= 0 (smaller x is clamped): 2^n p(r), r = x - n ln2, |r| <= ln2 / 2 (Cephes' expf polynomial)
static inline vec exp_nonpositive(vec x) {
  x = x < splat<vec>(-87.f) ? splat<vec>(-87.f) : x;
  const ivec n = __builtin_convertvector(x * 1.44269504f - 0.5f, ivec);  // truncation: round(x log2 e) for x <= 0
  const vec nf = __builtin_convertvector(n, vec);
  const vec r = x - nf * 0.693145751953125f - nf * 1.428606765330187e-06f;
  vec p = splat<vec>(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.f;
  const ivec bits = (n + 127) << 23;
  vec scale;
  __builtin_memcpy(&scale, &bits, sizeof(vec));
  return p * scale;
}

// this thread's rows of [0, P): contiguous ranges in thread order
static inline void my_rows(i64 P, i64* first, i64* last) {
  const int thread = team_thread(), threads = team_size();
  *first = P * thread / threads;
  *last = P * (thread + 1) / threads;
}
"""
"""C++ for the kernels built on matrix products (after :data:`PRELUDE`): ``gemm`` (register-tiled, A by strides,
accumulating or not, with a bias), ``exp_nonpositive`` (vector ``exp`` of ``x <= 0``) and ``my_rows`` (a thread's
share of the rows)."""

Kernel = TypeVar("Kernel")


def check_shapes(
    operator: str, layout: str, got: dict[str, Tensor | None], expected: dict[str, tuple[int, ...]]
) -> None:
    """``ValueError`` naming every shape unless each tensor of ``got`` has its ``expected`` shape (a missing entry:
    the tensor must be None). A kernel on raw pointers would read or write out of bounds on a wrong shape.

    >>> import torch
    >>> check_shapes("op", "P x C", {"x": torch.zeros(2, 3)}, {"x": (2, 4)})
    Traceback (most recent call last):
    ValueError: op: shapes x (2, 3) do not fit P x C
    """
    shapes = {name: None if tensor is None else tuple(tensor.shape) for name, tensor in got.items()}
    if any(shapes[name] != expected.get(name) for name in shapes):
        described = ", ".join(f"{name} {shape}" for name, shape in shapes.items())
        raise ValueError(f"{operator}: shapes {described} do not fit {layout}")


def cpu_float32(*tensors: Tensor) -> bool:
    """Whether every tensor is float32 on the CPU: what the compiled kernels take."""
    return all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors)


def check_against_reference(
    reference: Callable[..., Tensor],
    compiled: Callable[..., Tensor],
    tensors: Sequence[Tensor],
    grad: Tensor,
    against: str,
) -> None:
    """A kernel's self-check: ``RuntimeError`` ("... failed its check against ``against``") unless ``compiled`` gives
    ``reference``'s output and, for the output gradient ``grad``, its gradient of every one of ``tensors``."""
    leaves = [[t.clone().requires_grad_(True) for t in tensors] for _ in range(2)]
    outputs = [reference(*leaves[0]), compiled(*leaves[1])]
    for output in outputs:
        output.backward(grad)
    pairs = [(outputs[1], outputs[0])] + [(b.grad, a.grad) for a, b in zip(*leaves, strict=True)]
    for got, expected in pairs:
        if not torch.allclose(got, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item()):
            raise RuntimeError(f"the compiled kernel failed its check against {against}")


def data_pointer(tensor: Tensor | None) -> int | None:
    """A tensor's address for a kernel's pointer argument; None (a null pointer) for None."""
    return None if tensor is None else tensor.data_ptr()


def matrix_shape(tensor: Tensor) -> tuple[int, int]:
    """The rows and columns of a matrix; (-1, -1) for another shape, which then fits no layout."""
    return (tensor.shape[0], tensor.shape[1]) if tensor.dim() == 2 else (-1, -1)


def kernel_mode() -> KernelMode:
    """The ``kernels`` setting of :mod:`convunext.runtime` now (``CONVUNEXT_KERNELS``, else ``auto``).

    Raises:
        ConvUNeXtError: ``CONVUNEXT_KERNELS`` holds a value other than ``auto``, ``compiled`` or ``reference``.
    """
    return settings().kernels


def compiler() -> list[str]:
    """The compiler command: ``$CXX`` (may hold arguments) or ``c++``; ``OSError`` where it is not found."""
    command = shlex.split(os.environ.get("CXX", "")) or ["c++"]
    found = shutil.which(command[0])
    if found is None:
        raise OSError(f"no C++ compiler found ({command[0]!r}; set CXX)")
    return [found, *command[1:]]


class CompiledLibrary(Generic[Kernel]):
    """One compiled kernel: its source, built, loaded and checked at first use, or why it cannot be.

    Args:
        name: the library's file name stem (``depthwise``, ``mlp``).
        source: the C++ after :data:`PRELUDE`.
        bind: the loaded library -> the kernel object (declares the entry points' ctypes signatures).
        check: raises unless the kernel matches its reference; runs on a thread of its own (see :meth:`_self_check`).
        what: the kernel in the notices ("the compiled depthwise convolution").
        fallback: what runs instead ("PyTorch's convolution").
    """

    def __init__(
        self,
        name: str,
        source: str,
        bind: Callable[[ctypes.CDLL], Kernel],
        check: Callable[[Kernel], None],
        what: str,
        fallback: str,
    ) -> None:
        self.name, self.source, self.what, self.fallback = name, PRELUDE + source, what, fallback
        self._bind, self._check = bind, check
        self._lock = threading.Lock()
        self._loaded: Kernel | str | None = None  # the kernel, or why it cannot be loaded; None until the first try
        self._noticed = False

    def loaded(self) -> Kernel | str:
        """The kernel, or a one-line reason why it cannot be loaded (built, loaded and checked at the first call)."""
        with self._lock:
            if self._loaded is None:
                try:
                    self._loaded = self._load()
                except Exception as error:  # whatever goes wrong, the reference path must still run
                    self._loaded = _one_line(f"{type(error).__name__}: {error}")
            return self._loaded

    def available(self) -> bool:
        """Whether the kernel is loaded, building it now if needed (without the fallback's notice)."""
        return not isinstance(self.loaded(), str)

    def for_call(self, stacklevel: int = 3) -> Kernel | None:
        """The kernel to run now: None with the ``reference`` setting, or (``auto``) where it cannot be loaded,
        after the one notice (a ``RuntimeWarning`` pointing ``stacklevel`` frames up, 3: the caller's caller).

        Raises:
            ConvUNeXtError: an invalid ``CONVUNEXT_KERNELS``, or ``compiled`` where the kernel cannot be loaded.
        """
        mode = kernel_mode()
        if mode == "reference":
            return None
        loaded = self.loaded()
        if not isinstance(loaded, str):
            return loaded
        if mode == "compiled":
            raise ConvUNeXtError(f"{KERNELS_ENV}=compiled: {self.what} is unavailable ({loaded})")
        with self._lock:
            notice, self._noticed = not self._noticed, True
        if notice:
            warnings.warn(
                f"convunext: {self.what} is unavailable ({loaded}); using {self.fallback}",
                RuntimeWarning,
                stacklevel=stacklevel,
            )
        return None

    def library_path(self, command: list[str]) -> Path:
        """Where the build for this source, these flags, ``command`` and this CPU is cached."""
        cache = Path(os.environ.get("CONVUNEXT_CACHE", "~/.cache/convunext")).expanduser() / "kernels"
        key = "\0".join([self.source, *FLAGS, *command, platform.machine(), _cpu_signature()])
        return cache / f"{self.name}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.so"

    def _load(self) -> Kernel:
        """Build (unless cached), load and check the kernel."""
        command = compiler()
        path = self.library_path(command)
        if not path.is_file():
            _build(command, self.source, path)
        kernel = self._bind(ctypes.CDLL(str(path)))
        self._self_check(kernel)
        return kernel

    def _self_check(self, kernel: Kernel) -> None:
        """Run the check on a thread of its own.

        The first call may come from inside a checkpointed forward pass (activation recomputation), whose
        saved-tensor hooks are thread-local state. On the caller's thread they would capture the check's own graph,
        and its ``backward`` would re-run that checkpoint, which calls this kernel again while the loader's lock is
        held: a deadlock. A new thread also starts outside inference mode, no-grad and autocast.
        """
        failure: list[BaseException] = []

        def check() -> None:
            try:
                self._check(kernel)
            except BaseException as error:  # re-raised on the caller's thread
                failure.append(error)

        thread = threading.Thread(target=check, name=f"convunext-{self.name}-check")
        thread.start()
        thread.join()
        if failure:
            raise failure[0]


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _cpu_signature() -> str:
    """This CPU's model and feature flags (``/proc/cpuinfo`` on Linux), so that a cached ``-march=native`` build
    is only loaded on the CPU it was built for."""
    try:
        lines = Path("/proc/cpuinfo").read_text().split("\n\n")[0].splitlines()
    except OSError:
        return f"{platform.machine()} {platform.processor()}"
    keys = ("vendor_id", "cpu family", "model", "model name", "flags", "features", "cpu part")
    return "\n".join(line for line in lines if line.split(":")[0].strip().lower() in keys)


def _build(command: list[str], source: str, target: Path) -> None:
    """Compile ``source`` into ``target`` (built beside it, then renamed); ``OSError`` with the compiler's first
    error line on failure."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".build-") as folder:
        source_file, library = Path(folder) / f"{target.stem}.cpp", Path(folder) / target.name
        source_file.write_text(source)
        arguments = [*command, *FLAGS, str(source_file), "-o", str(library)]
        done = subprocess.run(arguments, capture_output=True, text=True, timeout=_BUILD_TIMEOUT_S, check=False)
        if done.returncode:
            lines = [line.strip() for line in done.stderr.splitlines() if line.strip()]
            first = next((line for line in lines if "error" in line), lines[0] if lines else "")
            raise OSError(f"{Path(command[0]).name} failed (exit {done.returncode}){': ' * bool(first)}{first}")
        os.replace(library, target)
