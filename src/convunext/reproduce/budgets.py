"""The training budgets of ``convunext reproduce``: how long and on how large crops every model trains."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from ..training.config import OptimConfig, TrainConfig
from ..training.schedule import compress_schedule


def paper_schedule(epochs: int) -> tuple[str, ...]:
    """``--set`` overrides that compress the paper's schedule (5 warm-up epochs of 300, then the lr decays by
    0.985 per epoch to 0.985^295 = 1.16% of its peak) into ``epochs`` epochs with the same proportions
    (:func:`~convunext.training.schedule.compress_schedule`)."""
    optim = compress_schedule(OptimConfig(), TrainConfig().epochs, epochs)
    return (
        f"train.epochs={epochs}",
        f"optim.warmup_epochs={optim.warmup_epochs:.4f}",
        f"optim.decay_gamma={optim.decay_gamma:.6f}",
    )


@dataclass(frozen=True)
class Budget:
    """How long and on how large crops every model trains: ``--set`` overrides on top of each dataset's preset.

    ``overrides[dataset]`` applies to that dataset, ``overrides["*"]`` to every dataset (first).
    """

    name: str
    description: str
    overrides: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    default_seeds: tuple[int, ...] = (0,)

    def overrides_for(self, dataset: str) -> list[str]:
        """The overrides of ``dataset`` under this budget."""
        return [*self.overrides.get("*", ()), *self.overrides.get(dataset, ())]


BUDGETS: dict[str, Budget] = {
    "paper": Budget(
        "paper",
        "the paper's full recipe, unchanged: the dataset presets (300 epochs, crop 480 for DRIVE and GlaS, 960 for "
        "HRF, AdamW lr 4e-4, weight decay 5e-5, batch 4, 5 warm-up epochs then exponential decay), validation every "
        "5 epochs. Meant for a GPU (hours per model).",
        {},
        default_seeds=(0, 1, 2),
    ),
    "cpu": Budget(
        "cpu",
        "a short CPU budget: the paper's recipe compressed to about 160 optimiser steps of batch 4 on 192x192 crops "
        "(HRF: 384x384) — DRIVE 40 epochs, GlaS 9, HRF 32 — with warm-up and exponential decay in the paper's "
        "proportions (warm-up 5/300 of the run, final lr 1.16% of the peak). About an hour for DRIVE x five models "
        "x one seed on a 2-core CPU. The models are under-trained compared with the paper: compare them with each "
        "other, not with the paper's numbers.",
        {
            "drive": (*paper_schedule(40), "data.crop_size=192", "train.eval_every=5"),
            "glas": (*paper_schedule(9), "data.crop_size=192", "train.eval_every=3"),
            "hrf": (*paper_schedule(32), "data.crop_size=384", "data.eval_tile_size=960", "train.eval_every=8"),
            "synthetic": (),  # the synthetic preset is already a CPU recipe (12 epochs on 128x128 crops)
        },
    ),
    "smoke": Budget(
        "smoke",
        "a plumbing test, not a result: width-8 models, two epochs without warm-up on 64x64 crops (synthetic: 10 "
        "images of 64x64, 48x48 crops).",
        {
            "*": (
                "model.kwargs.width=8",
                "train.epochs=2",
                "optim.warmup_epochs=0",
                "train.eval_every=1",
                "data.crop_size=64",
            ),
            "synthetic": ("data.options.num_images=10", "data.options.size=64", "data.crop_size=48"),
        },
        default_seeds=(0, 1),
    ),
}
