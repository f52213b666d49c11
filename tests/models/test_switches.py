"""Switches are attributes the layers read (no patching): deep copies keep them and run on their own weights;
fast forms refuse, loudly, every option they do not support."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from torch import nn

from convunext import create_model
from convunext.errors import ConvUNeXtError
from convunext.inference.export import export_friendly
from convunext.models.blocks import BlockOptions, ConvNeXtBlock
from convunext.models.fast import fast_form_problems, reparameterize_model

SWITCHES = {
    "grad_checkpointing": lambda m: m.set_grad_checkpointing(),
    "fused_training": lambda m: m.set_fused_training(band_elements=3000),
    "exportable": lambda m: m.set_exportable(),
}


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is faster, the CPU is shared


def switch_states(model: nn.Module, switch: str) -> list[bool]:
    return [vars(m)[switch] for m in model.modules() if switch in vars(m)]


@pytest.mark.parametrize("switch", list(SWITCHES))
def test_a_deep_copy_keeps_the_switch_and_uses_its_own_weights(switch: str) -> None:
    torch.manual_seed(0)
    model = create_model("convunext", width=8).train().to(memory_format=torch.channels_last)
    assert SWITCHES[switch](model) > 0
    clone = copy.deepcopy(model)
    assert switch_states(clone, switch) and all(switch_states(clone, switch))
    with torch.no_grad():
        for p in clone.parameters():
            p.add_(0.1 * torch.randn_like(p))
    reference = create_model("convunext", width=8).train().to(memory_format=torch.channels_last)
    reference.load_state_dict(clone.state_dict())
    x = torch.randn(2, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    target = torch.randint(0, 2, (2, 64, 64))
    losses = []
    for net in (clone, reference):
        loss = nn.functional.cross_entropy(net(x), target)
        loss.backward()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    for (key, a), (_, b) in zip(clone.named_parameters(), reference.named_parameters()):
        assert (a.grad - b.grad).abs().max().item() <= 1e-4 * max(b.grad.abs().max().item(), 1e-2), key
    assert all(p.grad is None for p in model.parameters())  # the original took no part


def test_switches_count_changes_and_switch_off() -> None:
    model = create_model("convunext", width=4)
    assert model.set_grad_checkpointing() == 9 + 11 and model.set_grad_checkpointing() == 0  # stages, blocks
    assert model.set_grad_checkpointing(False) == 20
    assert (
        model.set_fused_training() == 15 and model.set_exportable() == 12 + 4 + 11
    )  # reflect convs, decoder stages, blocks
    assert create_model("unet", width=4).set_grad_checkpointing() == 9
    assert create_model("unet", width=4).set_fused_training() == 0


def test_export_mode_is_per_model_and_restored() -> None:
    tiny = torch.randn(1, 3, 17, 16)  # bottom map 1x1: reflect padding impossible, eager falls back to replicate
    exported, other = create_model("convunext", width=4).eval(), create_model("convunext", width=4).eval()
    with torch.no_grad():
        with export_friendly(exported):
            assert all(switch_states(exported, "exportable"))
            assert other(tiny).shape == (1, 2, 17, 16)  # other models are unaffected
            with pytest.raises(RuntimeError):
                exported(tiny)
        assert not any(switch_states(exported, "exportable"))
        assert exported(tiny).shape == (1, 2, 17, 16)
        with exported.export_mode():
            assert all(switch_states(exported, "exportable"))
        assert not any(switch_states(exported, "exportable"))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"norm": "ln"}, "norm='ln' has no fast form"),
        ({"options": "approximate-gelu"}, "activation GELU\\(approximate='tanh'\\) has no fast form"),
        ({"options": "new-option"}, "does not know the option dropout=0.1"),
    ],
)
def test_fast_forms_refuse_unsupported_options(kwargs: dict, message: str) -> None:
    if kwargs.get("options") == "new-option":

        @dataclasses.dataclass(frozen=True)
        class NewOptions(BlockOptions):
            dropout: float = 0.1

        block = ConvNeXtBlock(8, NewOptions())
    elif kwargs.get("options") == "approximate-gelu":
        block = ConvNeXtBlock(8)
        block.act = nn.GELU(approximate="tanh")
    else:
        block = ConvNeXtBlock(8, BlockOptions(**kwargs))
    with pytest.raises(ConvUNeXtError, match=message):
        block.fast_form()


def test_a_model_with_an_unsupported_stage_is_refused_by_the_walker() -> None:
    model = create_model("convunext", width=4, norm="ln").eval()
    assert any("norm='ln'" in problem for problem in fast_form_problems(model))
    with pytest.raises(ConvUNeXtError, match="norm='ln'"):
        reparameterize_model(model)
    assert fast_form_problems(create_model("unet", width=4)) == ["UNet has no stage with a fast form"]
    new_downsample = create_model("convunext", width=4)
    new_downsample.down2.downsample = "avgpool"  # as if a new choice were added without a fast form
    assert fast_form_problems(new_downsample) == [
        "downsample='avgpool' has no fast form (it supports 'conv', 'maxpool')"
    ]
    training_bn = create_model("convunext", width=4)
    training_bn.down1.norm.track_running_stats, training_bn.down1.norm.running_mean = False, None
    assert any("running statistics" in problem for problem in fast_form_problems(training_bn))


def test_reparameterized_model_keeps_the_forward_wiring() -> None:
    torch.manual_seed(0)
    model = create_model("convunext", width=8).eval()
    fast = reparameterize_model(model)
    assert type(fast) is type(model) and isinstance(fast.head, nn.Identity)
    assert isinstance(model.head, nn.Conv2d)  # a copy: the source is untouched
    x = torch.randn(1, 3, 67, 64)
    with torch.no_grad():
        assert (fast(x) - model(x)).abs().max().item() < 1e-4
