"""Every compiled CPU kernel (:mod:`convunext.models.layers.compiled`) loads where a C++ compiler is found, and falls
back to its PyTorch reference where it cannot be built or loaded: one notice, same results; ``CONVUNEXT_KERNELS``
chooses. Parametrized over the kernels, so a new one is tested the day it is added to :data:`KERNELS`."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from convunext.errors import ConvUNeXtError
from convunext.models.layers import compiled, compiled_gate, compiled_mlp, depthwise
from convunext.models.layers.compiled import CompiledLibrary
from convunext.models.layers.gate import GateWeights, banded_gate, gate_reference
from convunext.models.layers.mlp import mlp_reference

CHANNELS_LAST = torch.channels_last


@dataclass(frozen=True)
class Kernel:
    """One compiled kernel as these tests drive it."""

    library: CompiledLibrary
    call: Callable[[], torch.Tensor]  # one differentiable call of the public operator that may run it
    expected: Callable[[], torch.Tensor]  # the same call on the reference
    module: str  # the module whose operator runs it (for a fresh process)
    first_call: str  # Python source: the operator's first call, inside a checkpointed forward pass


def _generator() -> torch.Generator:
    return torch.Generator().manual_seed(0)


def _depthwise_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    g = _generator()
    x = torch.randn(1, 3, 8, 8, generator=g).contiguous(memory_format=CHANNELS_LAST)
    return x, torch.randn(3, 1, 7, 7, generator=g)


def _mlp_inputs() -> list[torch.Tensor]:
    g = _generator()
    return [torch.randn(shape, generator=g) for shape in ((50, 5), (5, 20), (20,), (20, 5), (5,))]


def _mlp_call() -> torch.Tensor:
    from convunext.models.layers.mlp import banded_mlp

    leaves = [t.requires_grad_(True) for t in _mlp_inputs()]
    return banded_mlp(*leaves, "gelu")


def _gate_inputs() -> list[torch.Tensor]:
    g = _generator()
    shapes = ((50, 5), (50, 5), (5, 20), (20,), (5, 5), (5, 5), (5,))  # u, s, then GateWeights' (3c + D = 20)
    return [torch.randn(shape, generator=g) for shape in shapes]


def _gate_call() -> torch.Tensor:
    u, s, *weights = (t.requires_grad_(True) for t in _gate_inputs())
    return banded_gate(u, s, GateWeights(*weights))


def _gate_reference() -> torch.Tensor:
    u, s, *weights = _gate_inputs()
    return gate_reference(u, s, GateWeights(*weights))


KERNELS = {
    "depthwise": Kernel(
        depthwise.LIBRARY,
        lambda: depthwise.depthwise_conv7(*(t.requires_grad_(True) for t in _depthwise_inputs())),
        lambda: depthwise.depthwise_reference(*_depthwise_inputs()),
        "depthwise",
        "y = depthwise.depthwise_conv7(t, torch.randn(8, 1, 7, 7, requires_grad=True))",
    ),
    "mlp": Kernel(
        compiled_mlp.LIBRARY,
        _mlp_call,
        lambda: mlp_reference(*_mlp_inputs(), "gelu"),
        "compiled_mlp",
        "y = banded_mlp(flat(t), *(torch.randn(s, requires_grad=True) for s in ((8, 32), (32,), (32, 8), (8,))), "
        "'gelu')",
    ),
    "gate": Kernel(
        compiled_gate.LIBRARY,
        _gate_call,
        _gate_reference,
        "compiled_gate",
        "y = banded_gate(flat(t), flat(t), GateWeights(*(torch.randn(s, requires_grad=True) "
        "for s in ((8, 32), (32,), (8, 8), (8, 8), (8,)))))",
    ),
}

pytestmark = pytest.mark.parametrize("kernel", list(KERNELS.values()), ids=list(KERNELS))


def compiler_found() -> bool:
    try:
        compiled.compiler()
    except OSError:
        return False
    return True


@pytest.fixture
def unloaded(kernel: Kernel, monkeypatch: pytest.MonkeyPatch) -> None:
    """The kernel's loader as at the start of a process (restored afterwards)."""
    monkeypatch.setattr(kernel.library, "_loaded", None)
    monkeypatch.setattr(kernel.library, "_noticed", False)


def test_loads_where_a_compiler_exists(kernel: Kernel) -> None:
    """It must load wherever a compiler is found, and always in CI (else the other kernel tests test the fallback)."""
    if kernel.library.available():
        return
    if compiler_found() or os.environ.get("CI", "").strip().lower() in ("1", "true", "yes"):
        pytest.fail(f"{kernel.library.what} did not load: {kernel.library.loaded()}")
    pytest.skip("no C++ compiler here (set CXX): the fallback is what runs")


def test_load_failure_falls_back_with_one_notice(
    kernel: Kernel, monkeypatch: pytest.MonkeyPatch, unloaded: None, set_kernels: Callable[[str], object]
) -> None:
    def failing_load() -> None:
        raise OSError("no C++ compiler found ('c++'; set CXX)")

    monkeypatch.setattr(kernel.library, "_load", failing_load)
    set_kernels("auto")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):
            got = kernel.call()
            assert "Compiled" not in type(got.grad_fn).__name__
            assert torch.allclose(got, kernel.expected(), rtol=1e-5, atol=1e-5)
        assert kernel.library.for_call() is None
    assert [str(w.message) for w in caught] == [
        f"convunext: {kernel.library.what} is unavailable (OSError: no C++ compiler found ('c++'; set CXX)); "
        f"using {kernel.library.fallback}"
    ]
    assert caught[0].category is RuntimeWarning
    assert not kernel.library.available()


def test_the_notice_points_at_the_operators_caller(
    kernel: Kernel, monkeypatch: pytest.MonkeyPatch, unloaded: None, set_kernels: Callable[[str], object]
) -> None:
    monkeypatch.setattr(kernel.library, "_loaded", "OSError: no compiler")
    set_kernels("auto")
    with pytest.warns(RuntimeWarning, match="unavailable") as caught:
        kernel.call()
    assert caught[0].filename == __file__  # the line that called the operator


def test_compiled_forced_where_it_cannot_load(
    kernel: Kernel, monkeypatch: pytest.MonkeyPatch, unloaded: None, set_kernels: Callable[[str], object]
) -> None:
    monkeypatch.setenv("CXX", "convunext-no-such-compiler")
    set_kernels("compiled")
    message = rf"^CONVUNEXT_KERNELS=compiled: {kernel.library.what} is unavailable \(OSError: no C\+\+ comp"
    with pytest.raises(ConvUNeXtError, match=message):
        kernel.call()
    with pytest.raises(ConvUNeXtError, match=message):
        kernel.library.for_call()


def test_the_setting_chooses(kernel: Kernel, set_kernels: Callable[[str], object]) -> None:
    set_kernels("reference")
    assert kernel.library.for_call() is None
    assert "Compiled" not in type(kernel.call().grad_fn).__name__
    set_kernels("auto")
    assert (kernel.library.for_call() is not None) == kernel.library.available()
    assert ("Compiled" in type(kernel.call().grad_fn).__name__) == kernel.library.available()


def test_a_failing_build_falls_back_and_leaves_nothing(
    kernel: Kernel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, unloaded: None, set_kernels: Callable
) -> None:
    monkeypatch.setenv("CONVUNEXT_CACHE", str(tmp_path))
    monkeypatch.setenv("CXX", "false")  # a "compiler" that fails without a word
    set_kernels("auto")
    with pytest.warns(RuntimeWarning, match=r"unavailable \(OSError: false failed \(exit 1\)\); using "):
        got = kernel.call()
    assert torch.allclose(got, kernel.expected(), rtol=1e-5, atol=1e-5)
    assert list((tmp_path / "kernels").iterdir()) == []


def test_builds_are_cached_per_source_and_cpu(kernel: Kernel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONVUNEXT_CACHE", str(tmp_path))
    path = kernel.library.library_path(["c++"])
    assert path.parent == tmp_path / "kernels" and path.name.startswith(f"{kernel.library.name}-")
    library = kernel.library
    other = CompiledLibrary(library.name, "// another source", library._bind, library._check, "", "")
    assert other.library_path(["c++"]) != path
    monkeypatch.setattr(compiled, "_cpu_signature", lambda: "another CPU")
    assert kernel.library.library_path(["c++"]) != path


def test_first_call_in_inference_mode(kernel: Kernel, unloaded: None, set_kernels: Callable[[str], object]) -> None:
    """The load's self-check runs autograd even when the first use comes from inference code."""
    set_kernels("auto")
    with torch.inference_mode():
        assert (kernel.library.for_call() is not None) == compiler_found()


FIRST_CALL_IN_A_CHECKPOINT = """
import torch
from torch.utils.checkpoint import checkpoint
from convunext.models.layers import {module} as layer
from convunext.models.layers import depthwise
from convunext.models.layers.banding import flat
from convunext.models.layers.gate import GateWeights, banded_gate
from convunext.models.layers.mlp import banded_mlp
def forward(t):
    {first_call}
    return y.relu()
x = torch.randn(2, 8, 24, 24).contiguous(memory_format=torch.channels_last).requires_grad_()
checkpoint(forward, x, use_reentrant=False).sum().backward()
print(layer.LIBRARY.available(), x.grad.shape)
"""


def test_first_call_inside_a_checkpointed_forward(kernel: Kernel) -> None:
    """The load's self-check runs in its own thread: on the caller's, a checkpoint's saved-tensor hooks captured the
    check's graph and its backward re-ran the checkpoint into the loader's lock (a deadlock, so a fresh process)."""
    code = FIRST_CALL_IN_A_CHECKPOINT.format(module=kernel.module, first_call=kernel.first_call)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(compiler_found()), "torch.Size([2,", "8,", "24,", "24])"]
