"""Recomputing activations in backward (``set_grad_checkpointing``) changes memory, not results: same loss,
gradients and BN running statistics."""

from __future__ import annotations

import copy

import pytest
import torch

from convunext import create_model
from convunext.models.blocks import ConvNeXtBlock, DownStage, GatedUpStage, Stem
from convunext.models.unet_blocks import DoubleConv, PreActResidualUnit

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is faster, the CPU is shared


def test_every_repeated_unit_recomputes() -> None:
    """ConvUNeXt: its 9 stages (stem, 4 down, 4 up) and, for a stage run plainly, their 11 blocks."""
    expected = {"convunext": 20, "unet": 9, "attention_unet": 9, "unet_plus_plus": 15, "resunet": 11}
    switched: set[type] = set()
    for name, count in expected.items():
        model = create_model(name, width=4)
        assert model.set_grad_checkpointing() == count, name
        switched |= {type(m) for m in model.modules() if getattr(m, "grad_checkpointing", False)}
    assert switched == {ConvNeXtBlock, Stem, DownStage, GatedUpStage, DoubleConv, PreActResidualUnit}


def test_a_block_inside_a_recomputed_stage_runs_twice_not_three_times() -> None:
    """The stage stores only its inputs and recomputes its blocks once in backward; the blocks' own switch
    applies where their stage runs plainly."""
    model = create_model("convunext", width=8).train()
    model.set_grad_checkpointing()
    calls = []
    # a layer inside each block: every run of the block's computation, its own recomputation included
    model.stem.block.norm1.register_forward_pre_hook(lambda *_: calls.append("stem block"))
    model.down3.blocks[0].norm1.register_forward_pre_hook(lambda *_: calls.append("down3 block"))
    x = torch.randn(1, 3, 64, 64)
    model(x).sum().backward()
    assert calls.count("stem block") == 2 and calls.count("down3 block") == 2
    calls.clear()
    model.down3.grad_checkpointing = False  # the stage runs plainly: its blocks recompute on their own
    model(x).sum().backward()
    assert calls.count("down3 block") == 2 and calls.count("stem block") == 2


@pytest.mark.parametrize("name", ["convunext", "resunet", "unet"])
def test_recomputing_gives_the_same_gradients_and_statistics(name: str) -> None:
    torch.manual_seed(0)
    plain = create_model(name, width=8).train()
    recomputing = copy.deepcopy(plain)
    assert recomputing.set_grad_checkpointing() > 0
    x = torch.randn(2, 3, 64, 48)
    target = torch.randint(0, 2, (2, 64, 48))
    losses = []
    for model in (plain, recomputing):
        loss = torch.nn.functional.cross_entropy(model(x), target)
        loss.backward()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)
    for (key, a), (_, b) in zip(plain.named_parameters(), recomputing.named_parameters()):
        assert torch.allclose(a.grad, b.grad, rtol=1e-4, atol=1e-6), key
    for (key, a), (_, b) in zip(plain.named_buffers(), recomputing.named_buffers()):
        assert torch.equal(a, b), key  # running statistics updated once, not twice


def test_recomputing_is_inactive_in_eval_and_no_grad() -> None:
    model = create_model("convunext", width=8).eval()
    model.set_grad_checkpointing()
    assert model.set_grad_checkpointing() == 0  # idempotent
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 2, 64, 64)
