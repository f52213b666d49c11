"""A small pool of worker threads for the banded kernels (``convunext.models.layers``, ``convunext.models.fast``).

The banded kernels cut an image into chunks of rows (or a batch of pixels into ranges), one per intra-op thread.
Each worker runs its chunk with **one** intra-op thread. Parallelising every small operator with OpenMP instead
puts a thread barrier after each one: on a quiet machine both are as fast, but on a machine shared with other busy
processes a descheduled thread stalls every barrier (measured on a loaded 2-core machine: 18 s instead of 1.9 s
for one 512x512 image). The operators release the GIL, so the workers run in parallel.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import queue
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

__all__ = ["PARALLELISM_ENV", "parallelism", "ranges", "run_tasks", "workers"]


class _BandPool:
    """Daemon worker threads, each with one intra-op thread, running submitted tasks."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._tasks: queue.SimpleQueue[tuple[Callable[[], None], _Batch] | None] = queue.SimpleQueue()
        ready = threading.Barrier(workers + 1)
        self._threads = [
            threading.Thread(target=self._work, args=(ready,), name=f"convunext-band-{i}", daemon=True)
            for i in range(workers)
        ]
        for thread in self._threads:
            thread.start()
        ready.wait()

    def _work(self, ready: threading.Barrier) -> None:
        _single_threaded_here()
        ready.wait()
        while True:
            item = self._tasks.get()
            if item is None:
                return
            task, batch = item
            try:
                with torch.inference_mode(batch.inference_mode), torch.set_grad_enabled(batch.grad_enabled):
                    task()
            except BaseException as error:  # handed to the caller
                batch.errors.append(error)
            finally:
                batch.done.release()

    def close(self) -> None:
        """Let the workers finish their queued tasks and exit."""
        for _ in self._threads:
            self._tasks.put(None)

    def run(self, tasks: list[Callable[[], None]]) -> None:
        """Run ``tasks`` on the workers and wait for all of them; re-raises the first error."""
        batch = _Batch()
        for task in tasks:
            self._tasks.put((task, batch))
        for _ in tasks:
            batch.done.acquire()
        if batch.errors:
            raise batch.errors[0]


class _Batch:
    """One ``run`` call: completion count, errors, and the caller's autograd modes (thread-local in PyTorch)."""

    def __init__(self) -> None:
        self.done = threading.Semaphore(0)
        self.errors: list[BaseException] = []
        self.inference_mode = torch.is_inference_mode_enabled()
        self.grad_enabled = torch.is_grad_enabled()


def _thread_local_setters() -> list[Callable[[int], Any]] | None:
    """``omp_set_num_threads`` of PyTorch's OpenMP runtime and MKL's ``mkl_set_num_threads_local``: both change the
    *calling thread's* thread count only (``torch.set_num_threads`` would also change process-wide defaults,
    e.g. disable MKL's dynamic threading). ``None`` when they cannot be found (then the pool is not used)."""
    library_dir = Path(torch.__file__).resolve().parent / "lib"
    setters: list[Callable[[int], Any]] = []
    try:
        gomp = [p for p in library_dir.glob("libgomp*.so*")] or [Path(ctypes.util.find_library("gomp") or "")]
        setters.append(ctypes.CDLL(str(gomp[0])).omp_set_num_threads)
    except (OSError, AttributeError):
        return None
    try:
        # the Fortran-convention alias (trailing underscore) takes its argument by reference
        mkl_local = ctypes.CDLL(str(library_dir / "libtorch_cpu.so")).mkl_set_num_threads_local_
        setters.append(lambda n: mkl_local(ctypes.byref(ctypes.c_int(n))))
    except (OSError, AttributeError):
        if torch.backends.mkl.is_available():
            return None
    return setters


_SETTERS = _thread_local_setters() if sys.platform.startswith("linux") else None


def _single_threaded_here() -> None:
    """Make PyTorch's operators run on one thread when called from the current thread (and only there)."""
    torch.get_num_threads()  # PyTorch's lazy per-thread initialisation first, so it does not undo what follows
    for setter in _SETTERS or ():
        setter(1)


_POOL: _BandPool | None = None
_POOL_LOCK = threading.Lock()
PARALLELISM_ENV = "CONVUNEXT_FUSED_PARALLELISM"
"""Environment variable choosing how the fused kernels use several threads: ``pool`` (default: one chunk of rows
per worker thread, one intra-op thread each) or ``openmp`` (chunks run one after the other in the calling thread,
every operator parallelised by PyTorch's OpenMP threads)."""


def parallelism() -> str:
    """The current strategy (``"pool"`` or ``"openmp"``), from :data:`PARALLELISM_ENV`; ``"openmp"`` where the
    per-thread settings the pool needs are unavailable (not Linux, or an unusual PyTorch build)."""
    mode = os.environ.get(PARALLELISM_ENV, "pool").strip().lower()
    return mode if mode in ("pool", "openmp") and _SETTERS is not None else "openmp"


def run_tasks(tasks: list[Callable[[], None]]) -> None:
    """Run independent tasks: inline with one thread or in ``openmp`` mode, else on the worker pool (each task
    under the caller's grad / inference mode). Re-raises the first error."""
    global _POOL
    workers = torch.get_num_threads()
    inline = workers <= 1 or len(tasks) <= 1 or parallelism() == "openmp" or _SETTERS is None
    if inline or threading.current_thread().name.startswith("convunext-band-"):
        for task in tasks:
            task()
        return
    with _POOL_LOCK:
        if _POOL is None or _POOL.workers != workers:
            if _POOL is not None:
                _POOL.close()
            _POOL = _BandPool(workers)
        pool = _POOL
    pool.run(tasks)


def workers(device: torch.device) -> int:
    """How many chunks to split work on ``device`` into: the intra-op thread count on CPU, else 1."""
    return torch.get_num_threads() if device.type == "cpu" else 1


def ranges(length: int, parts: int) -> list[tuple[int, int]]:
    """``parts`` (at most ``length``) contiguous, near-equal ranges covering ``[0, length)``."""
    parts = max(1, min(parts, length))
    edges = [round(i * length / parts) for i in range(parts + 1)]
    return list(zip(edges[:-1], edges[1:]))
