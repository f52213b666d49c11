"""ModelEma: hand-computed averages, copied buffers, exact resume, an independent eval-only copy."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from convunext.training.ema import ModelEma


class Pair(nn.Module):
    """Two scalar float parameters, an integer parameter and two buffers (float and integer)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.tensor(0.0, dtype=torch.float64))
        self.b = nn.Parameter(torch.tensor(10.0, dtype=torch.float64))
        self.step = nn.Parameter(torch.tensor(0), requires_grad=False)
        self.register_buffer("stat", torch.tensor(1.0))
        self.register_buffer("count", torch.tensor(0))


def set_values(model: Pair, a: float, b: float, stat: float = 1.0, count: int = 0) -> None:
    with torch.no_grad():
        model.a.fill_(a)
        model.b.fill_(b)
        model.stat.fill_(stat)
        model.count.fill_(count)
        model.step.fill_(count)


MODEL_VALUES = [(1.0, 0.0), (2.0, 0.0), (4.0, 0.0)]
"""``(a, b)`` of the model at updates 0, 1, 2; the EMA starts from ``a = 0, b = 10``."""


@pytest.mark.parametrize(
    "decay, warmup, expected_a, expected_b",
    [
        # warmup: d = 1/10, 2/11, 3/12 (all below 0.9)
        # a: 0.1*0 + 0.9*1 = 0.9;  (2/11)*0.9 + (9/11)*2 = 1.8;  0.25*1.8 + 0.75*4 = 3.45
        # b: 0.1*10 = 1;  (2/11)*1 = 2/11;  0.25*(2/11) = 1/22
        (0.9, True, [0.9, 1.8, 3.45], [1.0, 2 / 11, 1 / 22]),
        # warmup capped by decay = 0.15 from the second update: d = 0.1, 0.15, 0.15
        # a: 0.9;  0.15*0.9 + 0.85*2 = 1.835;  0.15*1.835 + 0.85*4 = 3.67525
        # b: 1;  0.15;  0.0225
        (0.15, True, [0.9, 1.835, 3.67525], [1.0, 0.15, 0.0225]),
        # no warmup, d = 0.5: a: 0.5, 1.25, 2.625; b: 5, 2.5, 1.25
        (0.5, False, [0.5, 1.25, 2.625], [5.0, 2.5, 1.25]),
    ],
)
def test_averages_match_hand_computation(
    decay: float, warmup: bool, expected_a: list[float], expected_b: list[float]
) -> None:
    model = Pair()
    ema = ModelEma(model, decay=decay, warmup=warmup)
    for n, ((a, b), want_a, want_b) in enumerate(zip(MODEL_VALUES, expected_a, expected_b)):
        set_values(model, a, b, stat=2.0 + n, count=n + 1)
        ema.update(model)
        assert ema.module.a.item() == pytest.approx(want_a, rel=1e-12)
        assert ema.module.b.item() == pytest.approx(want_b, rel=1e-12)
        assert ema.module.stat.item() == 2.0 + n
        assert ema.module.count.item() == ema.module.step.item() == n + 1
    assert ema.updates == 3


def test_decay_at() -> None:
    assert ModelEma(Pair(), 0.999).decay_at(0) == pytest.approx(0.1)
    assert ModelEma(Pair(), 0.999).decay_at(10_000) == 0.999
    assert ModelEma(Pair(), 0.5, warmup=False).decay_at(0) == 0.5


def test_batchnorm_statistics_are_copied() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    ema = ModelEma(model)
    model(torch.randn(2, 3, 8, 8))
    ema.update(model)
    for name, buffer in model.named_buffers():
        assert torch.equal(ema.module.get_buffer(name), buffer), name


def test_state_dict_round_trip_continues_identically() -> None:
    model = Pair()
    ema = ModelEma(model, decay=0.9)
    for a, b in MODEL_VALUES[:2]:
        set_values(model, a, b)
        ema.update(model)
    saved = io.BytesIO()
    torch.save(ema.state_dict(), saved)
    saved.seek(0)
    resumed = ModelEma(Pair(), decay=0.9)
    resumed.load_state_dict(torch.load(saved, weights_only=True))
    assert resumed.updates == 2

    set_values(model, *MODEL_VALUES[2])
    ema.update(model)
    resumed.update(model)
    for name, value in ema.module.state_dict().items():
        assert torch.equal(resumed.module.state_dict()[name], value), name
    assert resumed.module.a.item() == pytest.approx(3.45, rel=1e-12)


@pytest.mark.parametrize("decay", [0.0, 1.0, -0.5, 1.5])
def test_bad_decay_is_refused(decay: float) -> None:
    with pytest.raises(ValueError, match=f"decay={decay!r}"):
        ModelEma(Pair(), decay=decay)


def test_copy_is_independent_and_frozen() -> None:
    model = Pair().train()
    ema = ModelEma(model)
    model_tensors = [*model.parameters(), *model.buffers()]
    ema_tensors = [*ema.module.parameters(), *ema.module.buffers()]
    assert {t.untyped_storage().data_ptr() for t in model_tensors}.isdisjoint(
        t.untyped_storage().data_ptr() for t in ema_tensors
    )
    assert not any(p.requires_grad for p in ema.module.parameters())
    assert model.a.requires_grad and model.training
    assert not ema.module.training
    assert all(e.device == m.device and e.dtype == m.dtype for e, m in zip(ema_tensors, model_tensors))
    set_values(model, 5.0, 5.0)
    assert ema.module.a.item() == 0.0


def test_a_different_model_is_refused() -> None:
    ema = ModelEma(Pair())
    with pytest.raises(ValueError, match="parameters"):
        ema.update(nn.Linear(2, 2))
