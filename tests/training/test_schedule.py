"""Learning rates of the two recipes at known steps."""

from __future__ import annotations

import pytest
import torch

from convunext.training.config import OptimConfig
from convunext.training.schedule import build_scheduler, lr_factor

STEPS = 10  # per epoch


@pytest.mark.parametrize(
    "step, expected",
    [
        (0, 0.0),
        (25, 0.5),  # half-way through the 5 warm-up epochs
        (50, 1.0),  # warm-up done
        (60, 0.985),  # one epoch of decay
        (55, 0.985**0.5),
        (50 + 295 * STEPS, 0.985**295),
    ],
)
def test_paper_schedule(step: int, expected: float) -> None:
    assert lr_factor(step, STEPS, 300, OptimConfig.for_recipe("paper")) == pytest.approx(expected)


@pytest.mark.parametrize(
    "step, expected",
    [
        (0, 1e-3),
        (5, 1e-3 + (1 - 1e-3) * 0.5),
        (10, 1.0),  # warm-up (1 epoch) done
        (10 + 45, 0.5**0.9),  # half of the remaining 90 steps
        (100, 0.0),
    ],
)
def test_reference_schedule(step: int, expected: float) -> None:
    assert lr_factor(step, STEPS, 10, OptimConfig.for_recipe("reference")) == pytest.approx(expected)


def test_scheduler_drives_the_optimizer() -> None:
    optim = OptimConfig.for_recipe("reference")
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=optim.lr)
    scheduler = build_scheduler(optimizer, STEPS, 10, optim)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1.5e-3 * 1e-3)
    for _ in range(10):
        optimizer.step()
        scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1.5e-3)
