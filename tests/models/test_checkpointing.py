"""Activation checkpointing changes memory, not results: same loss, gradients and BN running statistics."""

from __future__ import annotations

import copy

import pytest
import torch

from convunext import create_model
from convunext.models.blocks import ConvNeXtBlock
from convunext.models.checkpointing import CHECKPOINTED_BLOCKS, enable_activation_checkpointing
from convunext.models.unet_blocks import DoubleConv, PreActResidualUnit

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is faster, the CPU is shared


def test_every_baseline_unit_is_covered() -> None:
    assert {ConvNeXtBlock, DoubleConv, PreActResidualUnit} <= set(CHECKPOINTED_BLOCKS)
    expected = {"convunext": 11, "unet": 9, "attention_unet": 9, "unet_plus_plus": 15, "resunet": 11}
    for name, count in expected.items():
        assert enable_activation_checkpointing(create_model(name, width=4)) == count, name


@pytest.mark.parametrize("name", ["convunext", "resunet", "unet"])
def test_checkpointing_gives_the_same_gradients_and_statistics(name: str) -> None:
    torch.manual_seed(0)
    plain = create_model(name, width=8).train()
    checkpointed = copy.deepcopy(plain)
    assert enable_activation_checkpointing(checkpointed) > 0
    x = torch.randn(2, 3, 64, 48)
    target = torch.randint(0, 2, (2, 64, 48))
    losses = []
    for model in (plain, checkpointed):
        loss = torch.nn.functional.cross_entropy(model(x), target)
        loss.backward()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)
    for (key, a), (_, b) in zip(plain.named_parameters(), checkpointed.named_parameters()):
        assert torch.allclose(a.grad, b.grad, rtol=1e-4, atol=1e-6), key
    for (key, a), (_, b) in zip(plain.named_buffers(), checkpointed.named_buffers()):
        assert torch.equal(a, b), key  # running statistics updated once, not twice


def test_checkpointing_is_inactive_in_eval_and_no_grad() -> None:
    model = create_model("convunext", width=8).eval()
    enable_activation_checkpointing(model)
    assert enable_activation_checkpointing(model) == 0  # idempotent
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 2, 64, 64)
