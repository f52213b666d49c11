"""The card of a pretrained model: what it segments, the data it was trained and tested on, how the run was chosen,
its test metrics (one set per data set it was trained on: a model of several data sets states each one's) and the
data sets' terms of use.

The card is stored in the model's JSON (its ``pretrained`` entry, beside the checkpoint description) and rendered as
the ``README.md`` of the model's folder: a Hugging Face model card, with the configuration prediction needs (input
normalisation, classes and, when the checkpoint records one, its training scale).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConvUNeXtError
from ..utils.table import markdown_table

__all__ = ["DATASET_TERMS", "MODEL_CARD", "CardTest", "PretrainedCard", "dataset_terms", "model_card_markdown"]

MODEL_CARD = "README.md"
"""The model card of a pretrained folder (the Hugging Face convention)."""

DATASET_TERMS = {
    "drive": "DRIVE (Staal et al., IEEE TMI 2004) is distributed by its authors for research use; cite the paper. "
    "These weights are derived from it: research use only, not for diagnosis.",
    "glas": "GlaS (Sirinukunwattana et al., Medical Image Analysis 2017) is distributed for research use by the "
    "challenge organisers; cite the paper. These weights are derived from it: research use only, not for diagnosis.",
    "hrf": "HRF (Budai et al., International Journal of Biomedical Imaging 2013) is distributed for research use; "
    "cite the paper. These weights are derived from it: research use only, not for diagnosis.",
    "stare": "STARE (Hoover et al., IEEE TMI 2000) is made available by its authors for research; cite the paper. "
    "These weights are derived from it: research use only, not for diagnosis.",
    "chase_db1": "CHASE_DB1 (Fraz et al., IEEE TBME 2012) is made available by Kingston University for research; "
    "cite the paper. These weights are derived from it: research use only, not for diagnosis.",
}
"""Terms of use of each data set, as stated on the cards of models trained on it."""

_TEXT_FIELDS = ("task", "data", "selection", "terms")


def dataset_terms(datasets: Sequence[str]) -> str:
    """The terms of use a model trained on ``datasets`` inherits: each data set's (:data:`DATASET_TERMS`), or a
    pointer to them for a data set without stated terms."""
    known = [DATASET_TERMS[name] for name in datasets if name in DATASET_TERMS]
    if len(known) < len(datasets) or not known:
        return "see the terms of use of the data set it was trained on"
    return " ".join(known)


@dataclass(frozen=True)
class CardTest:
    """One test evaluation a card states: the data set, its metrics, how it ran and its first image's score."""

    dataset: str
    """The registry name of the data set tested (``drive``)."""
    metrics: dict[str, float]
    """Metrics of the evaluation (``dice_fg_mean``, ``miou_cm``, ...)."""
    evaluation: dict[str, Any] | None = None
    """How it ran: its ``dataset``, ``split``, ``images``, ``tile_size``, ``threshold`` and ``scale_setting``."""
    reference_image: dict[str, Any] | None = None
    """The first test image's ``name`` and ``dice_fg``, to check the weights on one image."""

    @classmethod
    def from_entry(cls, json_path: Path, entry: Any) -> CardTest:
        """One entry of the card's ``tests``, or a one-line error naming ``json_path``."""
        metrics = entry.get("metrics") if isinstance(entry, dict) else None
        if not isinstance(metrics, dict) or not all(_is_number(value) for value in metrics.values()):
            raise ConvUNeXtError(f"{json_path}: a test of the card has no 'metrics' mapping of numbers")
        if not isinstance(entry.get("dataset"), str):
            raise ConvUNeXtError(f"{json_path}: a test of the card names no 'dataset'")
        return cls(entry["dataset"], dict(metrics), entry.get("evaluation"), entry.get("reference_image"))

    def to_entry(self) -> dict[str, Any]:
        """The entry of the card's ``tests`` (:meth:`from_entry` reads it back)."""
        entry: dict[str, Any] = {"dataset": self.dataset, "metrics": dict(self.metrics)}
        if self.evaluation is not None:
            entry["evaluation"] = dict(self.evaluation)
        if self.reference_image is not None:
            entry["reference_image"] = dict(self.reference_image)
        return entry


@dataclass(frozen=True)
class PretrainedCard:
    """What a pretrained model is: its name, architecture, task, data, test metrics and terms of use."""

    name: str
    """The model's name, that of its files ``NAME.json`` and ``NAME.safetensors``: letters, digits and ``-``."""
    model: str
    """The registry name of its architecture (the checkpoint's ``model.name``)."""
    task: str
    """One line on what it segments."""
    data: str
    """The data sets it was trained on and how many test images its metrics cover."""
    selection: str
    """One line on how the run was chosen (on validation)."""
    tests: tuple[CardTest, ...]
    """Its test evaluations, one per data set it was trained on."""
    terms: str
    """The terms of use of the data sets, which the weights inherit."""

    @property
    def test_metrics(self) -> dict[str, float]:
        """The metrics of its first (for a model of one data set, its only) test evaluation."""
        return self.tests[0].metrics

    @classmethod
    def from_meta(cls, json_path: str | Path, meta: Mapping[str, Any]) -> PretrainedCard:
        """The card in the checkpoint description ``meta`` read from ``json_path`` (which names the model).

        Raises:
            ConvUNeXtError: the description has no card (a plain checkpoint) or a malformed one, naming the file.
        """
        json_path = Path(json_path)
        card = meta.get("pretrained")
        if not isinstance(card, dict):
            raise ConvUNeXtError(
                f"{json_path}: not a pretrained model (its JSON has no 'pretrained' card); publish a run with "
                "`convunext export RUN --pretrained NAME`"
            )
        for key in _TEXT_FIELDS:
            if not isinstance(card.get(key), str):
                raise ConvUNeXtError(f"{json_path}: the card's {key!r} is missing or not text")
        entries = card.get("tests")
        if "test_metrics" in card:  # convunext 0.1's one test, written before cards held one per data set
            evaluation = card.get("test_evaluation") or {}
            dataset = evaluation.get("dataset", meta.get("data", {}).get("name", ""))
            entries = [{"dataset": dataset, "metrics": card["test_metrics"], "evaluation": card.get("test_evaluation")}]
            entries[0] |= {"reference_image": card["reference_image"]} if card.get("reference_image") else {}
        if not isinstance(entries, list) or not entries:
            raise ConvUNeXtError(f"{json_path}: the card's 'tests' is missing or empty")
        return cls(
            name=json_path.stem,
            model=meta["model"]["name"],
            task=card["task"],
            data=card["data"],
            selection=card["selection"],
            tests=tuple(CardTest.from_entry(json_path, entry) for entry in entries),
            terms=card["terms"],
        )

    def to_meta(self) -> dict[str, Any]:
        """The ``pretrained`` entry of the model's JSON (:meth:`from_meta` reads it back)."""
        return {
            "task": self.task,
            "data": self.data,
            "selection": self.selection,
            "tests": [test.to_entry() for test in self.tests],
            "terms": self.terms,
        }


def _decision(meta: Mapping[str, Any]) -> str:
    """How the card says a pixel's class is decided: the argmax, or the operating threshold chosen on validation."""
    threshold = meta.get("threshold")
    if not isinstance(threshold, Mapping) or not _is_number(threshold.get("value")):
        return "the predicted class of a pixel is the argmax."
    dice, at_half = threshold.get("dice", math.nan), threshold.get("dice_at_0.5", math.nan)
    return (
        f"a pixel is {meta['classes'][1]} where its probability is above **{threshold['value']:g}**, the threshold "
        f"chosen on the {threshold.get('split', 'validation')} split (Dice {dice:.4f} there, {at_half:.4f} at the "
        "argmax); `--threshold argmax` gives the argmax."
    )


def _scale_line(scale: Mapping[str, Any]) -> str:
    """The card's line on the training scale (``meta["scale"]``)."""
    diameter = scale.get("fov_diameter") if isinstance(scale, Mapping) else None
    if not _is_number(diameter):
        return f"- Training scale: `{json.dumps(scale)}` (the checkpoint JSON's `scale`)."
    return (
        f"- Training scale: fields of view {diameter:g} px across. `convunext predict` and `evaluate` resize each "
        "image so that its field of view has this diameter, and the result back to the image's size "
        "(`--scale off` runs images as they are)."
    )


def _metrics_table(tests: Sequence[CardTest]) -> str:
    """The card's test metrics: one column per data set tested, one row per metric (in the first test's order)."""
    keys = list(dict.fromkeys(key for test in tests for key in test.metrics))
    if len(tests) == 1:
        return markdown_table(["metric", "value"], [[key, f"{tests[0].metrics[key]:.4f}"] for key in keys])
    rows = [[key, *(f"{test.metrics[key]:.4f}" if key in test.metrics else "" for test in tests)] for key in keys]
    counts = [(test.evaluation or {}).get("images") for test in tests]
    headers = [f"{test.dataset} ({count} images)" if count else test.dataset for test, count in zip(tests, counts)]
    return markdown_table(["metric", *headers], rows)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _usage(card: PretrainedCard, location: str, on_hub: bool) -> str:
    """The card's "Use" section: load it in Python; predict with the CLI (which takes a folder, not a Hub id)."""
    folder = card.name if on_hub else location
    download = (
        "On the command line, give a folder holding this repository's files (download them with "
        f'`huggingface_hub.snapshot_download("{location}", local_dir="{card.name}")`):\n\n'
        if on_hub
        else "On the command line:\n\n"
    )
    install = 'pip install "convunext[hub]"' if on_hub else "pip install convunext"
    return (
        f"```python\n# {install}\nfrom convunext.pretrained import from_pretrained\n\n"
        f'checkpoint = from_pretrained("{location}")  # weights checked against their SHA-256\n'
        "logits = checkpoint.model(images)  # normalised images N x C x H x W -> logits N x K x H x W\n```\n\n"
        f"{download}```bash\nconvunext predict {folder} image.png --out predictions\n```\n"
    )


def model_card_markdown(
    card: PretrainedCard, meta: Mapping[str, Any], parameters: int, location: str, on_hub: bool = False
) -> str:
    """The ``README.md`` of a pretrained model's folder: a Hugging Face model card (YAML front matter, then what
    the model does, how to load it, its input and output, training, test metrics, terms of use and files).

    Args:
        card: the model's card.
        meta: its checkpoint description (normalisation, classes, the optional ``scale``).
        parameters: its number of parameters.
        location: what :func:`~convunext.pretrained.store.from_pretrained` takes to load it: the folder, or the Hub
            repository id.
        on_hub: whether ``location`` is a Hub repository id.
    """
    normalization, classes = meta["normalization"], meta["classes"]
    channels = len(normalization["mean"])
    lines = [
        "---",
        "library_name: convunext",
        "license: other",
        "pipeline_tag: image-segmentation",
        "tags:",
        "- convunext",
        "- medical-imaging",
        "- semantic-segmentation",
        "---",
        "",
        f"# {card.name}",
        "",
        f"{card.task[:1].upper()}{card.task[1:]}, by a `{card.model}` model ({parameters / 1e6:.2f}M parameters) "
        "of the convunext library.",
        "",
        "## Use",
        "",
        _usage(card, location, on_hub),
        "## Input and output",
        "",
        f"- Input: `N x {channels} x H x W` images scaled to [0, 1] (pixel / 255), then normalised per channel with "
        f"mean {list(normalization['mean'])} and std {list(normalization['std'])}.",
        f"- Output: `N x {len(classes)} x H x W` logits over the classes {', '.join(map(str, classes))}; "
        + _decision(meta),
    ]
    if meta.get("scale") is not None:
        lines.append(_scale_line(meta["scale"]))
    lines += [
        "",
        "## Data",
        "",
        f"- Trained and tested on: {card.data}",
        f"- Chosen as: {card.selection}",
        "",
        "## Test metrics",
        "",
    ]
    lines.append(_metrics_table(card.tests))
    for test in card.tests:
        if test.reference_image is not None:
            name, dice = test.reference_image["name"], test.reference_image["dice_fg"]
            lines += ["", f"The first {test.dataset} test image, `{name}`, scores Dice {dice:.4f}."]
    lines += [
        "",
        "## Terms of use",
        "",
        card.terms,
        "",
        "## Files",
        "",
        f"- `{card.name}.safetensors`: the weights, in float16 (widened to float32 on load).",
        f"- `{card.name}.json`: the checkpoint description (architecture and its arguments, classes, normalisation, "
        "training recipe) with this card.",
        "",
    ]
    return "\n".join(lines)
