"""The fast inference paths compute the eager model's logits; the training model is never touched."""

from __future__ import annotations

import copy
import os

import pytest
import torch
from torch import nn

from convunext import create_model, list_models, runtime
from convunext.inference import Inferer
from convunext.inference.optimize import InferenceModel, make_backend, optimize_for_inference
from convunext.inference.predictor import Predictor
from convunext.models.fast import FastUpStage
from convunext.models.layers.banding import Workspace

SIZES = [(64, 64), (67, 53)]  # even and odd (the odd one pads after upsampling at every decoder stage)


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is faster, the CPU is shared


def randomize_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BN non-trivial running statistics and affine parameters (at init they are the identity)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                c = module.num_features
                module.running_mean.copy_(torch.rand(c, generator=generator) - 0.5)
                module.running_var.copy_(torch.rand(c, generator=generator) + 0.5)
                module.weight.copy_(torch.rand(c, generator=generator) + 0.5)
                module.bias.copy_(torch.rand(c, generator=generator) - 0.5)
    return model


def make(name: str = "convunext", **kwargs: object) -> nn.Module:
    torch.manual_seed(0)
    return randomize_batchnorm(create_model(name, **kwargs)).eval()


def is_fast(model: InferenceModel) -> bool:
    """Whether ``optimize_for_inference`` replaced the stages by their fast forms."""
    return model.description.startswith("fused") and isinstance(model.module.up4, FastUpStage)


def assert_close(got: torch.Tensor, expected: torch.Tensor, rtol: float = 1e-4) -> None:
    assert got.shape == expected.shape
    scale = expected.abs().max().item()
    assert (got - expected).abs().max().item() <= rtol * max(scale, 1e-6), (got - expected).abs().max().item()


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("band_elements", [1 << 20, 3000])  # one band per map, and many (R = kernel // 2 rows)
def test_fast_convunext_equals_eager(size: tuple[int, int], band_elements: int) -> None:
    model = make(width=16)
    fast = optimize_for_inference(model, band_elements=band_elements)
    assert is_fast(fast)
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        expected = model(x)
    assert_close(fast(x), expected)
    assert_close(fast(x), expected)  # second call reuses the workspace
    assert fast(x).is_contiguous()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"act": "relu", "residual": "convnext"},
        {"attention_gate": False, "downsample": "maxpool"},
        {"kernel_size": 3, "expansion": 2, "depthwise": False, "width": 8, "depths": (1, 0, 2, 1)},
    ],
)
def test_fast_convunext_ablation_variants(kwargs: dict) -> None:
    model = make(**kwargs)
    fast = optimize_for_inference(model, band_elements=5000)
    assert is_fast(fast)
    x = torch.randn(1, 3, 67, 53)
    with torch.no_grad():
        assert_close(fast(x), model(x))


def test_fast_convunext_on_tiny_maps_uses_replicate_padding_like_eager() -> None:
    model = make(width=8)
    x = torch.randn(1, 3, 17, 16)  # bottom map 1x1: reflect falls back to replicate
    with torch.no_grad():
        assert_close(optimize_for_inference(model)(x), model(x))


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("size", SIZES)
def test_folded_channels_last_path_equals_eager_for_every_model(name: str, size: tuple[int, int]) -> None:
    model = make(name, width=8)
    optimized = optimize_for_inference(model, fuse=False)
    assert "bn-folded" in optimized.description and "channels-last" in optimized.description
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        assert_close(optimized(x), model(x))


@pytest.mark.parametrize("mode", ["pool", "openmp"])
def test_fast_convunext_with_two_threads(mode: runtime.FusedParallelism) -> None:
    """Two threads: chunks of rows on the worker pool (default) or one after the other with OpenMP operators."""
    model = make(width=8)
    fast = optimize_for_inference(model, band_elements=3000)
    x = torch.randn(3, 3, 67, 53)
    previous = runtime.settings().fused_parallelism
    runtime.configure(fused_parallelism=mode, threads=2)
    try:
        with torch.inference_mode():
            got = fast(x)
        assert torch.get_num_threads() == 2  # the workers' one-thread setting does not leak
    finally:
        runtime.configure(fused_parallelism=previous, threads=1)
    with torch.no_grad():
        assert_close(got, model(x))


def test_default_width_convunext_once() -> None:
    model = make()
    x = torch.randn(1, 3, 65, 64)
    with torch.no_grad():
        assert_close(optimize_for_inference(model)(x), model(x))


@pytest.mark.skipif(not os.environ.get("CONVUNEXT_TEST_COMPILE"), reason="torch.compile takes minutes on a small CPU")
def test_compiled_path_equals_eager() -> None:
    model = make(width=8)
    compiled = optimize_for_inference(model, compile=True)
    for size in SIZES:
        x = torch.randn(1, 3, *size)
        with torch.no_grad():
            assert_close(compiled(x), model(x))


def test_layernorm_convunext_is_not_fused_but_still_equal() -> None:
    model = make(norm="ln", width=8)
    optimized = optimize_for_inference(model)
    assert not is_fast(optimized)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert_close(optimized(x), model(x))


def test_optimized_model_is_an_independent_copy() -> None:
    model = make(width=8)
    model.train()
    before = copy.deepcopy(model.state_dict())
    fast = optimize_for_inference(model)
    generic = optimize_for_inference(model, fuse=False)
    assert model.training  # mode untouched
    assert all(p.requires_grad for p in model.parameters())
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 31  # nothing folded in the original
    derived = [*fast.buffers(), *generic.parameters()]
    assert not {p.data_ptr() for p in model.parameters()} & {t.data_ptr() for t in derived}
    x = torch.randn(1, 3, 64, 64)
    fast(x)
    model.train()
    model(x)  # the training model still trains (BN in training mode)
    assert not fast.training and not fast.train().training  # the inference model stays in eval mode


def test_fast_path_runs_without_autograd_even_if_asked() -> None:
    fast = optimize_for_inference(make(width=8))
    x = torch.randn(1, 3, 64, 64, requires_grad=True)
    out = fast(x)
    assert not out.requires_grad


def test_workspace_is_per_thread_and_reset_on_copy() -> None:
    workspace = Workspace()
    buffer = workspace.get("a", (1, 2, 3, 4), torch.zeros(1))
    assert workspace.get("a", (1, 2, 3, 4), torch.zeros(1)) is buffer
    assert workspace.get("a", (1, 2, 3, 5), torch.zeros(1)) is not buffer
    assert copy.deepcopy(workspace).buffers() == {}


def test_fast_model_runs_outside_inference_mode_after_running_inside_it() -> None:
    """The Predictor runs under ``torch.inference_mode``; a user may then call its model under ``no_grad``."""
    fast, x = optimize_for_inference(make(width=8)), torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        inside = fast(x).clone()
    with torch.no_grad():
        outside = fast(x)
    assert torch.equal(inside, outside)
    with torch.inference_mode():
        assert torch.equal(fast(x), outside)  # a buffer made outside is fine inside


def test_make_backend_rejects_unknown_names() -> None:
    from convunext.errors import ConvUNeXtError

    with pytest.raises(ConvUNeXtError, match="eager, fast, compile, onnx"):
        make_backend(make(width=8), "turbo")


def test_predictor_fast_backend_gives_the_eager_probabilities() -> None:
    model = make(width=8)
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    image = torch.rand(3, 70, 90)
    eager = Predictor(model, mean, std, Inferer(tile_size=64, device="cpu", backend="eager")).predict(image)
    fast_predictor = Predictor(model, mean, std, Inferer(tile_size=64, device="cpu"))  # the default, as in the CLI
    assert isinstance(fast_predictor.model, InferenceModel)
    fast = fast_predictor.predict(image)
    assert abs(fast.probabilities - eager.probabilities).max() < 1e-5
    assert (fast.mask == eager.mask).mean() > 0.999


def test_predict_command_has_a_backend_option() -> None:
    from convunext.cli.main import build_parser

    args = build_parser().parse_args(["predict", "ckpt", "image.png", "--out", "masks", "--backend", "fast"])
    assert args.backend == "fast"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["predict", "ckpt", "image.png", "--out", "masks", "--backend", "turbo"])
