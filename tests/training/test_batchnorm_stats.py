"""recompute_batchnorm_statistics: exact population statistics of every BatchNorm's inputs, model left as it was."""

from __future__ import annotations

import copy
from collections import defaultdict
from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from convunext.models import blocks, create_model, list_models, model_arguments
from convunext.training.batchnorm_stats import recompute_batchnorm_statistics


def norms(model: nn.Module) -> dict[str, _BatchNorm]:
    return {name: m for name, m in model.named_modules() if isinstance(m, _BatchNorm)}


def population_statistics(model: nn.Module, batches: list[Tensor]) -> dict[str, tuple[Tensor, Tensor]]:
    """Mean and unbiased variance (float64) of every BatchNorm's inputs over all ``batches``, from a train-mode
    pass of a copy of ``model`` with its own capturing hooks."""
    reference = copy.deepcopy(model).train()
    inputs: defaultdict[str, list[Tensor]] = defaultdict(list)
    for name, norm in norms(reference).items():
        norm.register_forward_pre_hook(
            lambda m, args, name=name: inputs[name].append(args[0].transpose(0, 1).reshape(args[0].shape[1], -1))
        )
    with torch.no_grad():
        for batch in batches:
            reference(batch)
    values = {name: torch.cat(chunks, dim=1).double() for name, chunks in inputs.items()}
    return {name: (v.mean(dim=1), v.var(dim=1)) for name, v in values.items()}


def assert_population(model: nn.Module, expected: dict[str, tuple[Tensor, Tensor]]) -> None:
    found = norms(model)
    assert expected.keys() <= found.keys()
    for name, (mean, var) in expected.items():
        torch.testing.assert_close(
            found[name].running_mean, mean.float(), rtol=1e-6, atol=1e-6, msg=f"{name}.running_mean"
        )
        torch.testing.assert_close(
            found[name].running_var, var.float(), rtol=1e-6, atol=1e-6, msg=f"{name}.running_var"
        )


def snapshot(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    return {name: t.detach().clone() for name, t in tensors.items()}


def assert_unchanged(before: dict[str, Tensor], after: dict[str, Tensor]) -> None:
    assert before.keys() == after.keys()
    for name, value in before.items():
        assert torch.equal(value, after[name]), name


class TwoNorms(nn.Module):
    """Conv -> BN -> ReLU -> Conv -> BN, plus a BatchNorm that is never called."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 5, 3), nn.BatchNorm2d(5)
        )
        self.unused = nn.BatchNorm2d(4)

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)


def two_norms_and_batches() -> tuple[TwoNorms, list[Tensor]]:
    torch.manual_seed(0)
    model = TwoNorms()
    with torch.no_grad():
        for norm in norms(model).values():
            norm.running_mean.uniform_(-1, 1)
            norm.running_var.uniform_(0.5, 2)
    batches = [2 + 3 * torch.randn(n, 3, h, w) for n, h, w in ((2, 8, 8), (3, 6, 10), (5, 7, 7))]
    return model, batches


@pytest.mark.parametrize("start", ["train", "eval", "mixed"])
def test_small_model_gets_population_statistics(start: str) -> None:
    model, batches = two_norms_and_batches()
    model.train(start != "eval")
    if start == "mixed":
        model.body[1].eval()
    modes = {name: m.training for name, m in model.named_modules()}
    expected = population_statistics(model, batches)
    parameters = snapshot(dict(model.named_parameters()))
    unused = snapshot(dict(model.unused.named_buffers()))

    assert recompute_batchnorm_statistics(model, batches) == 2

    assert_population(model, expected)
    assert expected.keys() == {"body.1", "body.4"}
    assert_unchanged(unused, dict(model.unused.named_buffers()))
    assert_unchanged(parameters, dict(model.named_parameters()))
    assert {name: m.training for name, m in model.named_modules()} == modes
    assert [int(model.body[i].num_batches_tracked) for i in (1, 4)] == [3, 3]


def test_batchnorm1d_on_feature_vectors() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.BatchNorm1d(4))
    batches = [torch.randn(n, 5) for n in (3, 4)]
    expected = population_statistics(model, batches)
    assert recompute_batchnorm_statistics(model, batches) == 1
    assert_population(model, expected)


@pytest.mark.parametrize("name", list_models())
def test_registry_models_get_population_statistics(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name, **({"width": 8} if "width" in model_arguments(name) else {}))
    batches = [torch.randn(2, 3, 64, 64) for _ in range(2)]
    expected = population_statistics(model, batches)
    assert expected
    assert recompute_batchnorm_statistics(model.eval(), batches) == len(expected)
    assert_population(model, expected)
    assert not model.training


def counting(function: Callable[..., Tensor], calls: list[str]) -> Callable[..., Tensor]:
    def wrapper(*args: object, **kwargs: object) -> Tensor:
        calls.append(function.__name__)
        return function(*args, **kwargs)

    return wrapper


def test_fused_training_gives_the_eager_statistics(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    eager = create_model("convunext", width=8).to(memory_format=torch.channels_last)
    fused = copy.deepcopy(eager)
    fused.set_fused_training(True)
    batches = [torch.randn(2, 3, 64, 64).to(memory_format=torch.channels_last) for _ in range(2)]
    calls: list[str] = []
    monkeypatch.setattr(blocks, "banded_mlp", counting(blocks.banded_mlp, calls))
    monkeypatch.setattr(blocks, "banded_gate", counting(blocks.banded_gate, calls))

    assert recompute_batchnorm_statistics(eager, batches) == recompute_batchnorm_statistics(fused, batches)
    assert {"banded_mlp", "banded_gate"} <= set(calls)  # the fused kernels did run
    assert all(m.fused_training for m in fused.modules() if "fused_training" in vars(m))
    eager_norms, fused_norms = norms(eager), norms(fused)
    for name, norm in eager_norms.items():
        torch.testing.assert_close(fused_norms[name].running_mean, norm.running_mean, msg=name)
        torch.testing.assert_close(fused_norms[name].running_var, norm.running_var, msg=name)


def test_large_mean_does_not_cancel_the_variance() -> None:
    torch.manual_seed(0)
    model = nn.BatchNorm2d(3)
    batches = [1e4 + 1e-2 * torch.randn(n, 3, 8, 8) for n in (4, 3, 5)]
    values = torch.cat(batches).double().transpose(0, 1).reshape(3, -1)
    recompute_batchnorm_statistics(model, batches)
    torch.testing.assert_close(model.running_mean.double(), values.mean(dim=1), rtol=1e-6, atol=0)
    torch.testing.assert_close(model.running_var.double(), values.var(dim=1), rtol=1e-6, atol=0)


def test_failing_forward_leaves_the_model_as_it_was() -> None:
    model, batches = two_norms_and_batches()
    model.eval()
    buffers = snapshot(dict(model.named_buffers()))

    def forward(module: nn.Module, batch: Tensor) -> None:
        module(batch)
        if batch is batches[1]:
            raise RuntimeError("out of memory")

    with pytest.raises(RuntimeError, match="out of memory"):
        recompute_batchnorm_statistics(model, batches, forward)

    assert all(not m._forward_pre_hooks for m in model.modules())
    assert not any(m.training for m in model.modules())
    assert_unchanged(buffers, dict(model.named_buffers()))
