"""The fused training kernels (banded MLP and gated fusion, the compiled depthwise convolution and MLP) give the
plain model's loss, gradients and statistics."""

from __future__ import annotations

import copy
import functools
import warnings
from collections import Counter
from collections.abc import Callable

import pytest
import torch

from convunext import create_model, runtime
from convunext.models.blocks import ConvNeXtBlock
from convunext.models.layers import compiled_gate, compiled_mlp, depthwise

CHANNELS_LAST = torch.channels_last

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is faster, the CPU is shared


def _step(model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor) -> float:
    loss = torch.nn.functional.cross_entropy(model(x), target)
    loss.backward()
    return loss.item()


@pytest.mark.parametrize(
    ("kwargs", "recompute", "band_elements"),
    [
        ({}, False, None),
        ({}, False, 5000),  # many bands per map
        ({"act": "relu", "residual": "convnext"}, False, 5000),
        ({}, True, None),
        ({"attention_gate": False}, False, None),
    ],
)
def test_fused_training_matches_plain(kwargs: dict, recompute: bool, band_elements: int | None) -> None:
    torch.manual_seed(0)
    plain = create_model("convunext", width=8, **kwargs).train().to(memory_format=torch.channels_last)
    fused = copy.deepcopy(plain)
    assert fused.set_fused_training(band_elements=band_elements) == 11 + 4
    if recompute:
        fused.set_grad_checkpointing()
    x = torch.randn(2, 3, 67, 64).contiguous(memory_format=torch.channels_last)  # odd height: padded decoder
    target = torch.randint(0, 2, (2, 67, 64))
    assert _step(plain, x, target) == pytest.approx(_step(fused, x, target), rel=1e-5)
    for (key, a), (_, b) in zip(plain.named_parameters(), fused.named_parameters()):
        scale = a.grad.abs().max().item()
        # biases right before a BatchNorm have a zero gradient (float noise ~1e-7): compare on an absolute floor
        assert (a.grad - b.grad).abs().max().item() <= 1e-4 * max(scale, 1e-2), key
    for (key, a), (_, b) in zip(plain.named_buffers(), fused.named_buffers()):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6), key
    assert plain.state_dict().keys() == fused.state_dict().keys()


def test_fused_kernels_fall_back_on_nchw_inputs_and_switch_off() -> None:
    torch.manual_seed(0)
    model = create_model("convunext", width=8).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
        model.set_fused_training()
        assert torch.allclose(model(x), expected, atol=1e-6)  # NCHW: plain path
        fused_cl = model.to(memory_format=torch.channels_last)(x.contiguous(memory_format=torch.channels_last))
        assert torch.allclose(fused_cl, expected, atol=1e-5)
    assert model.set_fused_training(False) == 15
    assert not any(getattr(m, "fused_training", False) for m in model.modules())


@pytest.mark.parametrize("mode", ["pool", "openmp"])
def test_fused_training_with_two_threads(mode: runtime.FusedParallelism) -> None:
    torch.manual_seed(0)
    plain = create_model("convunext", width=8).train().to(memory_format=torch.channels_last)
    fused = copy.deepcopy(plain)
    fused.set_fused_training(band_elements=5000)
    x = torch.randn(2, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    target = torch.randint(0, 2, (2, 64, 64))
    expected = _step(plain, x, target)
    previous = runtime.settings().fused_parallelism
    runtime.configure(fused_parallelism=mode, threads=2)
    try:
        got = _step(fused, x, target)
    finally:
        runtime.configure(fused_parallelism=previous, threads=1)
    assert got == pytest.approx(expected, rel=1e-5)
    for (key, a), (_, b) in zip(plain.named_parameters(), fused.named_parameters()):
        assert (a.grad - b.grad).abs().max().item() <= 1e-4 * max(a.grad.abs().max().item(), 1e-2), key


KERNELS = {
    "depthwise": (depthwise.LIBRARY, depthwise._CompiledDepthwise),
    "mlp": (compiled_mlp.LIBRARY, compiled_mlp._CompiledMLP),
    "gate": (compiled_gate.LIBRARY, compiled_gate._CompiledGate),
}


@pytest.fixture
def compiled_runs(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Calls of each compiled kernel (``depthwise``, ``mlp``, ``gate``), counted (skipped where they do not load:
    where a compiler is found, and in CI, tests/models/test_compiled.py fails then)."""
    runs: Counter[str] = Counter()
    for name, (library, function) in KERNELS.items():
        if not library.available():
            pytest.skip(f"{library.what} does not load here (no C++ compiler): nothing to compare")
        counted = functools.partial(
            lambda name, apply, *args: runs.update([name]) or apply(*args), name, function.apply
        )
        monkeypatch.setattr(function, "apply", counted)
    return runs


def _assert_same_gradients(model: torch.nn.Module, other: torch.nn.Module, rtol: float = 1e-5) -> None:
    """Every parameter gradient equal within ``rtol`` of the larger of its own largest magnitude and a tenth of the
    model's largest (a gradient that should be zero, a bias right before a BatchNorm, is float noise; a BatchNorm
    over few values amplifies its input's rounding); the BatchNorm statistics likewise."""
    largest = max(p.grad.abs().max().item() for p in other.parameters())
    for (key, a), (_, b) in zip(model.named_parameters(), other.named_parameters()):
        scale = max(b.grad.abs().max().item(), largest / 10)
        assert (a.grad - b.grad).abs().max().item() <= rtol * scale, key
    for (key, a), (_, b) in zip(model.named_buffers(), other.named_buffers()):
        assert torch.allclose(a, b, rtol=rtol, atol=1e-6), key


@pytest.mark.parametrize("threads", [1, 2], indirect=True, ids=lambda n: f"{n}-threads")
@pytest.mark.parametrize(
    ("dim", "size"),
    [(8, (1, 1)), (8, (3, 5)), (19, (13, 9))],  # 1x1, 3x5: replicate padding; 19 channels: SIMD and scalar
    ids=lambda v: "x".join(map(str, v)) if isinstance(v, tuple) else f"dim{v}",
)
def test_block_with_compiled_kernels_matches_reference(
    threads: int, dim: int, size: tuple[int, int], set_kernels: Callable, compiled_runs: Counter[str]
) -> None:
    torch.manual_seed(0)
    block = ConvNeXtBlock(dim).train().to(memory_format=CHANNELS_LAST)
    block.fused_training = True
    x = torch.randn(2, dim, *size).contiguous(memory_format=CHANNELS_LAST)
    grad = torch.randn(x.shape)
    results = []
    for mode in ("compiled", "reference"):
        set_kernels(mode)
        copied, leaf = copy.deepcopy(block), x.clone().requires_grad_(True)
        y = copied(leaf)
        y.backward(grad)
        results.append((copied, y, leaf.grad))
        assert compiled_runs == {"depthwise": 1, "mlp": 1}  # the first mode's calls, none with the reference
    (compiled, *got), (reference, *expected) = results
    for a, b in zip(got, expected):
        assert (a - b).abs().max().item() <= 1e-5 * b.abs().max().item()
    _assert_same_gradients(compiled, reference)


@pytest.mark.parametrize(("threads", "recompute"), [(1, False), (2, False), (1, True)], indirect=["threads"], ids=str)
def test_model_step_with_compiled_kernels_matches_reference(
    threads: int, recompute: bool, set_kernels: Callable, compiled_runs: Counter[str]
) -> None:
    torch.manual_seed(0)
    model = create_model("convunext", width=8).train().to(memory_format=CHANNELS_LAST)
    model.set_fused_training()
    model.set_grad_checkpointing(recompute)
    x = torch.randn(2, 3, 67, 61).contiguous(memory_format=CHANNELS_LAST)  # odd sizes: padded decoder
    target = torch.randint(0, 2, (2, 67, 61))
    compiled, reference = model, copy.deepcopy(model)
    set_kernels("compiled")
    loss = _step(compiled, x, target)
    # every block's depthwise conv and MLP, every decoder stage's gate, and under recomputation again when the
    # checkpoint re-runs each stage
    calls = {"depthwise": 11, "mlp": 11, "gate": 4}
    expected = {name: count * (2 if recompute else 1) for name, count in calls.items()}
    assert compiled_runs == expected
    set_kernels("reference")
    assert loss == pytest.approx(_step(reference, x, target), rel=1e-5)
    assert compiled_runs == expected
    _assert_same_gradients(compiled, reference, rtol=1e-4)  # through 11 blocks: the tolerance of the tests above


@pytest.mark.parametrize("case", ["no_grad", "exportable", "nchw", "float64", "fused_off"])
def test_compiled_kernels_only_in_fused_float32_training(
    case: str, set_kernels: Callable, compiled_runs: Counter[str]
) -> None:
    """Inference, export, NCHW and float64 models keep PyTorch's operators (the fused training switch's banded
    kernels aside), with the same output."""
    set_kernels("compiled")
    torch.manual_seed(0)
    model = create_model("convunext", width=4).train()
    x = torch.randn(1, 3, 64, 64)
    expected = model(x)
    if case != "nchw":
        model, x = model.to(memory_format=CHANNELS_LAST), x.contiguous(memory_format=CHANNELS_LAST)
    if case == "float64":
        model, x, expected = model.double(), x.double(), expected.double()
    model.set_fused_training(case != "fused_off")
    model.set_exportable(case == "exportable")
    with torch.set_grad_enabled(case != "no_grad"):
        got = model(x)
    assert not compiled_runs
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_model_step_falls_back_where_the_kernels_cannot_load(
    monkeypatch: pytest.MonkeyPatch, set_kernels: Callable
) -> None:
    """``auto`` without the kernels: one notice each, PyTorch's operators, the same step."""

    def failing_load() -> None:
        raise OSError("no C++ compiler found ('c++'; set CXX)")

    for library, _ in KERNELS.values():
        monkeypatch.setattr(library, "_loaded", None)
        monkeypatch.setattr(library, "_noticed", False)
        monkeypatch.setattr(library, "_load", failing_load)
    set_kernels("auto")
    torch.manual_seed(0)
    plain = create_model("convunext", width=8).train().to(memory_format=CHANNELS_LAST)
    fused = copy.deepcopy(plain)
    fused.set_fused_training()
    x = torch.randn(2, 3, 33, 35).contiguous(memory_format=CHANNELS_LAST)
    target = torch.randint(0, 2, (2, 33, 35))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loss = _step(fused, x, target)
        assert not depthwise.compiled_in_use()
    why = "(OSError: no C++ compiler found ('c++'; set CXX))"
    assert [str(w.message) for w in caught] == [
        f"convunext: the compiled depthwise convolution is unavailable {why}; using PyTorch's convolution",
        f"convunext: the compiled MLP kernel is unavailable {why}; using PyTorch's matrix products",
        f"convunext: the compiled gate kernel is unavailable {why}; using PyTorch's matrix products",
    ]
    assert loss == pytest.approx(_step(plain, x, target), rel=1e-5)
    _assert_same_gradients(fused, plain, rtol=1e-4)
