"""The training budgets of ``convunext reproduce``: how long and on how large crops every model trains."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from ..data.base import load_split_file
from ..training.schedule import steps_epochs
from ..training.time_budget import SHORT_BUDGET_RECIPE, short_budget_crop

CPU_STEPS = 1200
"""Optimiser steps of every model under the ``cpu`` budget (batch 4, so 4,800 crops)."""

HRF_CPU_STEPS = 600
"""HRF's steps under the ``cpu`` budget: its 384x384 crops hold 2.25x the pixels of the 256x256 ones, so 600 steps
see about as many pixels as DRIVE's 1,200 and both models train and test (at 3504x2336) in one 3-hour session."""


VOLUME_CPU_RECIPE = (
    "optim.batch_size=16",
    "train.epochs=40",
    "optim.warmup_epochs=0.133333",
    "data.crop_size=48",
    "train.eval_every=5",
)
"""The ``cpu`` budget of a volume dataset, sized for the Decathlon hippocampus sample (24 MR crops of about
35x51x35 voxels): 40 epochs of its training slices in 48x48 crops, batch 16 — about 1,400 steps."""


def training_images(dataset: str) -> int:
    """Training images per epoch of ``dataset``: its shipped ``trainval`` list minus its ``val`` list."""
    lists = load_split_file(dataset)
    return len(set(lists["trainval"]) - set(lists["val"]))


def step_budget(steps: int, training_images: int, batch_size: int = 4) -> tuple[str, ...]:
    """``--set`` overrides that train for ``steps`` optimiser steps (``train.steps``: whole epochs, fixed once the
    training data is known), with the warm-up lasting 1/300 of the run as in the reference code's 300-epoch DRIVE
    recipe (1 of 300 epochs). The epochs written are those of the dataset's shipped split, ``training_images //
    batch_size`` steps each (the trainer drops the last partial batch); a run on fewer images (HRF without its
    unannotated ones) trains more epochs, the same steps."""
    epochs = steps_epochs(steps, training_images // batch_size)
    return f"train.steps={steps}", f"train.epochs={epochs}", f"optim.warmup_epochs={epochs / 300:.6f}"


def _cpu_dataset(dataset: str, eval_every: int, steps: int = CPU_STEPS, extra: tuple[str, ...] = ()) -> tuple[str, ...]:
    """The ``cpu`` budget's overrides of one dataset: ``steps`` optimiser steps, the short-budget recipe's crop
    (:func:`~convunext.training.time_budget.short_budget_crop`), validation cadence."""
    return (
        *step_budget(steps, training_images(dataset)),
        f"data.crop_size={short_budget_crop(dataset)}",
        f"train.eval_every={eval_every}",
        *extra,
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
        "the paper's full recipe, unchanged: the dataset presets (300 epochs, crop 480 for DRIVE, GlaS, STARE and "
        "CHASE_DB1, 960 for HRF, AdamW lr 4e-4, weight decay 5e-5, batch 4, 5 warm-up epochs then exponential "
        "decay), validation every 5 epochs. Meant for a GPU (hours per model).",
        {},
        default_seeds=(0, 1, 2),
    ),
    "cpu": Budget(
        "cpu",
        f"the short CPU recipe chosen on DRIVE's validation split (reports/drive-recipe-sweep): the reference "
        f"code's recipe (AdamW lr 1.5e-3, weight decay 1e-4, poly decay) for {CPU_STEPS:,} optimiser steps of batch "
        f"4 on every dataset and model (HRF: {HRF_CPU_STEPS} steps of 384x384 crops, about as many pixels), 256x256 "
        f"crops, BatchNorm statistics recomputed before each validation — DRIVE 300 epochs, GlaS 67, HRF 120 (150 "
        f"without 12_h), STARE 600, CHASE_DB1 300; a volume dataset (the Decathlon hippocampus sample) 40 epochs "
        f"of its training slices in 48x48 crops, batch 16. DRIVE takes ConvUNeXt 50 to 95 minutes of training on "
        f"a 2-core CPU (the two machines of reports/drive-cpu). "
        f"Still a small fraction of the paper's training for GlaS and HRF: compare the models with each other.",
        {
            "*": SHORT_BUDGET_RECIPE,
            "drive": _cpu_dataset("drive", eval_every=10),
            "glas": _cpu_dataset("glas", eval_every=3),
            "hrf": _cpu_dataset("hrf", eval_every=20, steps=HRF_CPU_STEPS, extra=("data.eval_tile_size=960",)),
            "stare": _cpu_dataset("stare", eval_every=60),
            "chase_db1": _cpu_dataset("chase_db1", eval_every=30),
            "synthetic": (),  # the synthetic preset is already a CPU recipe (12 epochs on 128x128 crops)
            "volumes": VOLUME_CPU_RECIPE,
            "synthetic_ct": (),  # the synthetic_ct preset is already a CPU recipe
        },
    ),
    "smoke": Budget(
        "smoke",
        "a plumbing test, not a result: width-8 models, two epochs without warm-up on 64x64 crops (synthetic: 10 "
        "images of 64x64, 48x48 crops; synthetic_ct: 5 phantoms; both volume datasets: 48x48 crops).",
        {
            "*": (
                "model.kwargs.width=8",
                "train.epochs=2",
                "optim.warmup_epochs=0",
                "train.eval_every=1",
                "data.crop_size=64",
            ),
            "synthetic": ("data.options.num_images=10", "data.options.size=64", "data.crop_size=48"),
            "synthetic_ct": ("data.options.cases=5", "data.crop_size=48"),
            "volumes": ("data.crop_size=48",),
        },
        default_seeds=(0, 1),
    ),
}
