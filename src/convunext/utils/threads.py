"""A small pool of worker threads for the banded kernels (``convunext.models.layers``, ``convunext.models.fast``).

The banded kernels cut an image into chunks of rows (or a batch of pixels into ranges), one per intra-op thread.
Each worker runs its chunk with **one** intra-op thread. Parallelising every small operator with OpenMP instead
puts a thread barrier after each one: on a quiet machine both are as fast, but on a machine shared with other busy
processes a descheduled thread stalls every barrier (measured on a loaded 2-core machine: 18 s instead of 1.9 s
for one 512x512 image). The operators release the GIL, so the workers run in parallel.

The strategy is the ``fused_parallelism`` setting of :mod:`convunext.runtime` (``pool`` by default, ``openmp``
for PyTorch's per-operator parallelism). Nothing happens at import: the pool starts at the first call with several
tasks and intra-op threads, and only then looks up the per-thread setters of PyTorch's OpenMP and MKL.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import queue
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .. import runtime

__all__ = ["ranges", "run_tasks", "workers"]


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


@functools.cache
def _thread_local_setters() -> list[Callable[[int], Any]] | None:
    """``omp_set_num_threads`` of PyTorch's OpenMP runtime and MKL's ``mkl_set_num_threads_local``: both change the
    *calling thread's* thread count only (``torch.set_num_threads`` would also change process-wide defaults,
    e.g. disable MKL's dynamic threading). ``None`` when they cannot be found (not Linux, or an unusual PyTorch
    build: then the pool is not used)."""
    if not sys.platform.startswith("linux"):
        return None
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


def _single_threaded_here() -> None:
    """Make PyTorch's operators run on one thread when called from the current thread (and only there)."""
    torch.get_num_threads()  # PyTorch's lazy per-thread initialisation first, so it does not undo what follows
    for setter in _thread_local_setters() or ():
        setter(1)


_POOL: _BandPool | None = None
_POOL_LOCK = threading.Lock()


def run_tasks(tasks: list[Callable[[], None]]) -> None:
    """Run independent tasks: inline with one thread or with ``fused_parallelism`` ``openmp`` (or where the
    per-thread settings the pool needs are unavailable), else on the worker pool (each task under the caller's
    grad / inference mode). Re-raises the first error."""
    global _POOL
    workers = torch.get_num_threads()
    inline = workers <= 1 or len(tasks) <= 1 or threading.current_thread().name.startswith("convunext-band-")
    if inline or runtime.settings().fused_parallelism == "openmp" or _thread_local_setters() is None:
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
