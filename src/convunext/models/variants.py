"""The models of the paper's Section 3 studies as named variants of ConvUNeXt, and the two studies they form.

* **roadmap** (the paper's Fig. 2): from UNet to ConvUNeXt, one design choice per step, in the paper's order. Step 0
  is the registry's ``unet``; step 1 (``roadmap1_macro``) is ConvUNeXt's layout with UNet's choices
  (:data:`UNET_LIKE`); steps 2-10 then make the paper's choices one at a time (:data:`ROADMAP_CHOICES`), and step
  10 is the registry's ``convunext``. Where the paper tried alternatives at a step, they are *side branches* of it
  (``2a``, ``2b``, ``6a``): a branch differs from the step's predecessor by its own change. Step 6 keeps BatchNorm
  (the paper's choice), so its model is step 5's and only its side branch (LayerNorm) is new.
* **leave-one-out**: the paper's ConvUNeXt with one choice reverted at a time (:data:`LEAVE_ONE_OUT_CHOICES`).

Every model of a study is a registered variant (:func:`~convunext.models.registry.register_variant`), so
``create_model(name)`` and ``convunext train --model NAME`` build it alone; a configuration has one name (the
leave-one-out study's 1:1:1:1 model is roadmap step 9). Only ``width``, ``in_channels`` and ``num_classes`` stay
free. The variants are not in ``list_models()``: they are all the ``convunext`` class, which the
registry-parametrised tests already cover (and ``tests/models/test_convunext_ablations.py`` each knob), and 19
more names would multiply those tests and ``convunext reproduce``'s default model list.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from string import ascii_lowercase

from ..errors import ConvUNeXtError
from .registry import model_arguments, register_variant, variant_arguments

__all__ = [
    "LEAVE_ONE_OUT_CHOICES",
    "MACRO_NOTE",
    "ROADMAP_CHOICES",
    "STUDIES",
    "UNET_LIKE",
    "Choice",
    "arguments_text",
    "Study",
    "StudyRow",
    "study",
]

UNET_LIKE: dict[str, object] = {
    "kernel_size": 3,
    "depthwise": False,
    "expansion": 1,
    "act": "relu",
    "norm": "bn",
    "residual": "convnext",
    "downsample": "maxpool",
    "attention_gate": False,
    "depths": (1, 1, 1, 1),
}
"""ConvUNeXt's ablation knobs at roadmap step 1: UNet's choice wherever ConvUNeXt has an option for it (UNet has no
residual connection, but ConvUNeXt's blocks always have one: the plain sum, which step 7 replaces; see
:data:`MACRO_NOTE`)."""

MACRO_CHANGE = (
    "ConvUNeXt's macro design with UNet's choices: 3x3 dense convs, no inverted bottleneck, ReLU, BatchNorm, "
    "max-pooling, concatenated skips, stages 1:1:1:1"
)
MACRO_NOTE = (
    "Step 1 is ConvUNeXt's layout — a stem, four down stages (C, 2C, 4C, 8C, 8C) of blocks (conv, BN, 1x1 -> act "
    "-> 1x1, BN, residual sum) and a bilinear decoder with one block per stage — with UNet's choice wherever "
    "ConvUNeXt has an option for it. What no option reverts: every block keeps a residual sum (ConvNeXt's plain "
    "sum until step 7; UNet has none) and its 1x1 pair, a 1x1 conv follows the max-pooling and the concatenation, "
    "and the decoder normalises the deep input before upsampling."
)
"""What the roadmap's step 1 cannot make UNet-like (ConvUNeXt has no option for it)."""


@dataclass(frozen=True)
class Choice:
    """One design choice of the paper: the ConvUNeXt argument it sets, the value, and the model that makes it.

    Attributes:
        argument: the :class:`~convunext.models.convunext.ConvUNeXt` constructor argument.
        value: the value the step (or the leave-one-out row) gives it.
        name: the model this step makes (a variant, or ``convunext``); ``None`` when the step keeps the previous
            value (the previous step's model).
        short: a few words for the figure.
        change: the step in words.
        branches: alternatives tried at this step (same ``argument``), run as side branches.
    """

    argument: str
    value: object
    name: str | None
    short: str
    change: str
    branches: tuple[Choice, ...] = ()


ROADMAP_CHOICES: tuple[Choice, ...] = (
    Choice(
        "kernel_size",
        7,
        "roadmap2_kernel7",
        "kernel 7x7",
        "larger kernels: 7x7 instead of 3x3 (stem and blocks)",
        (
            Choice("kernel_size", 5, "roadmap2_kernel5", "kernel 5x5", "5x5 kernels instead of 3x3"),
            Choice("kernel_size", 9, "roadmap2_kernel9", "kernel 9x9", "9x9 kernels instead of 3x3"),
        ),
    ),
    Choice("depthwise", True, "roadmap3_depthwise", "depthwise", "depthwise large convolution instead of a dense one"),
    Choice(
        "expansion",
        4,
        "roadmap4_bottleneck",
        "inverted bottleneck",
        "inverted bottleneck: the block's 1x1 pair 4x wider (expansion 4)",
    ),
    Choice("act", "gelu", "roadmap5_gelu", "GELU", "GELU instead of ReLU"),
    Choice(
        "norm",
        "bn",
        None,
        "BatchNorm kept",
        "BatchNorm kept (step 5's model); LayerNorm tried as a side branch",
        (Choice("norm", "ln", "roadmap6_layernorm", "LayerNorm", "LayerNorm instead of BatchNorm"),),
    ),
    Choice(
        "residual",
        "resnet",
        "roadmap7_resnet_residual",
        "ResNet-style residual",
        "ResNet-style residual (activation after the sum) instead of ConvNeXt's plain sum",
    ),
    Choice(
        "downsample",
        "conv",
        "roadmap8_strided_conv",
        "stride-2 conv",
        "2x2 stride-2 convolution instead of max-pooling and a 1x1 conv (the norm before it stays)",
    ),
    Choice(
        "attention_gate",
        True,
        "roadmap9_gate",
        "attention gate",
        "LSTM-like attention gate on each skip instead of plain concatenation",
    ),
    Choice(
        "depths",
        (1, 1, 3, 1),
        "convunext",
        "stage ratio 1:1:3:1",
        "stage compute ratio 1:1:3:1 instead of 1:1:1:1: the paper's ConvUNeXt",
    ),
)
"""Roadmap steps 2-10, in the paper's order: each sets one argument from :data:`UNET_LIKE` to the paper's value."""

LEAVE_ONE_OUT_CHOICES: tuple[Choice, ...] = (
    Choice("kernel_size", 3, "loo_kernel3", "kernel 3x3", "3x3 kernels instead of 7x7"),
    Choice("depthwise", False, "loo_dense", "dense conv", "dense large convolution instead of depthwise"),
    Choice("expansion", 1, "loo_no_bottleneck", "no bottleneck", "no inverted bottleneck (expansion 1 instead of 4)"),
    Choice("act", "relu", "loo_relu", "ReLU", "ReLU instead of GELU"),
    Choice("norm", "ln", "loo_layernorm", "LayerNorm", "LayerNorm instead of BatchNorm"),
    Choice(
        "residual",
        "convnext",
        "loo_convnext_residual",
        "ConvNeXt residual",
        "ConvNeXt's plain-sum residual instead of ResNet's",
    ),
    Choice(
        "downsample",
        "maxpool",
        "loo_maxpool",
        "max-pooling",
        "max-pooling and a 1x1 conv instead of the stride-2 convolution",
    ),
    Choice("attention_gate", False, "loo_concat", "concatenation", "plain concatenation instead of the attention gate"),
    Choice(
        "depths",
        (1, 1, 1, 1),
        "roadmap9_gate",
        "stage ratio 1:1:1:1",
        "stage ratio 1:1:1:1 instead of 1:1:3:1 (= roadmap step 9)",
    ),
)
"""The paper's ConvUNeXt with one choice reverted: to UNet's (:data:`UNET_LIKE`), or to the rejected alternative
where UNet's and the paper's coincide (BatchNorm -> LayerNorm)."""


@dataclass(frozen=True)
class StudyRow:
    """One row of a study: a model, and how it differs from the model it is compared with.

    Attributes:
        label: ``"0"``, ``"1"``, ... for the steps; ``"2a"``, ``"2b"`` for the side branches of step 2.
        name: a registry model or variant.
        short: a few words for the figure.
        change: what the row changes, in words.
        changes: the ConvUNeXt arguments it changes with respect to ``parent`` (``{}``: the same model).
        parent: the model it is compared with (the previous step; for a side branch, its step's previous; ``None``
            for the first row).
        branch: a side branch (an alternative the paper did not keep).
    """

    label: str
    name: str
    short: str
    change: str
    changes: Mapping[str, object]
    parent: str | None
    branch: bool = False


@dataclass(frozen=True)
class Study:
    """A study: its rows in order, the final model, and whether the rows are cumulative (each step builds on the
    previous one) or each compared with the final model."""

    name: str
    title: str
    rows: tuple[StudyRow, ...]
    cumulative: bool

    @property
    def final(self) -> str:
        """The paper's model, which every row is also compared with."""
        return "convunext"

    @property
    def models(self) -> list[str]:
        """The distinct models of the study, in row order."""
        return list(dict.fromkeys(row.name for row in self.rows))


def _row(label: str, choice: Choice, parent: str, branch: bool = False) -> StudyRow:
    """The row of a choice that makes a model (``choice.name`` set), compared with ``parent``."""
    if choice.name is None:
        raise ValueError(f"the choice {choice.short!r} names no model")
    return StudyRow(label, choice.name, choice.short, choice.change, {choice.argument: choice.value}, parent, branch)


def _roadmap() -> Study:
    rows = [
        StudyRow("0", "unet", "UNet", "UNet, the registry's baseline", {}, None),
        StudyRow("1", "roadmap1_macro", "macro design", MACRO_CHANGE, dict(UNET_LIKE), "unet"),
    ]
    previous = rows[-1]
    for number, choice in enumerate(ROADMAP_CHOICES, 2):
        if choice.name is None:  # the step keeps the previous value: the previous step's model
            step = StudyRow(str(number), previous.name, choice.short, choice.change, {}, previous.name)
        else:
            step = _row(str(number), choice, previous.name)
        rows.append(step)
        rows += [
            _row(f"{number}{letter}", branch, previous.name, True)
            for letter, branch in zip(ascii_lowercase, choice.branches)
        ]
        previous = step
    return Study("roadmap", "the roadmap from UNet to ConvUNeXt (paper Section 3, Fig. 2)", tuple(rows), True)


def _leave_one_out() -> Study:
    rows = [StudyRow("0", "convunext", "ConvUNeXt", "the paper's ConvUNeXt, every choice made", {}, None)]
    rows += [_row(str(number), choice, "convunext") for number, choice in enumerate(LEAVE_ONE_OUT_CHOICES, 1)]
    return Study("leave-one-out", "ConvUNeXt with one choice reverted at a time", tuple(rows), False)


STUDIES: dict[str, Study] = {"roadmap": _roadmap(), "leave-one-out": _leave_one_out()}


def study(name: str) -> Study:
    """The study ``name`` (``roadmap`` or ``leave-one-out``); ``ConvUNeXtError`` for another name."""
    if name not in STUDIES:
        raise ConvUNeXtError(f"unknown study {name!r}; choose from {', '.join(STUDIES)}")
    return STUDIES[name]


def arguments_text(name: str) -> str:
    """The constructor arguments that make model ``name`` differ from the paper's ConvUNeXt (``—`` for ConvUNeXt
    itself; the base model's name for another registry model)."""
    base, fixed = variant_arguments(name)
    if base != "convunext":
        return f"the registry's {base}"
    paper = model_arguments("convunext")
    return ", ".join(f"{key}={value!r}" for key, value in fixed.items() if value != paper[key]) or "—"


def _register() -> None:
    """Register every study model that is not a registry model, with the knobs it has: the paper's values
    (``convunext``'s defaults) changed along each row's chain of parents."""
    paper = {argument: model_arguments("convunext")[argument] for argument in UNET_LIKE}
    knobs: dict[str, dict[str, object]] = {"convunext": paper}
    for row in (row for s in STUDIES.values() for row in s.rows):
        if row.parent is None or (row.name in knobs and not row.changes):
            continue
        base = {} if row.parent == "unet" else knobs[row.parent]
        wanted = {**base, **row.changes}
        if row.name in knobs:
            if knobs[row.name] != wanted:
                raise ValueError(f"{row.name}: two study rows give this name different configurations")
            continue
        knobs[row.name] = wanted
        register_variant(row.name, "convunext", **wanted)


_register()
