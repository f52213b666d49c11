"""The card of a pretrained model: what it segments, the data it was trained and tested on, how the run was chosen,
its test metrics and the data set's terms of use.

The card is stored in the model's JSON (its ``pretrained`` entry, beside the checkpoint description) and rendered as
the ``README.md`` of the model's folder: a Hugging Face model card, with the configuration prediction needs (input
normalisation, classes and, when the checkpoint records one, its training scale).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConvUNeXtError
from ..utils.table import markdown_table

__all__ = ["DATASET_TERMS", "MODEL_CARD", "PretrainedCard", "model_card_markdown"]

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
    """The data set it was trained on and how many test images its metrics cover."""
    selection: str
    """One line on how the run was chosen (on validation)."""
    test_metrics: dict[str, float]
    """Metrics of its test evaluation (``dice_fg_mean``, ``miou_cm``, ...)."""
    terms: str
    """The terms of use of the data set, which the weights inherit."""
    test_evaluation: dict[str, Any] | None = None
    """The evaluation the metrics come from: its ``dataset``, ``split``, ``images`` and ``tile_size``."""
    reference_image: dict[str, Any] | None = None
    """The first test image's ``name`` and ``dice_fg``, to check the weights on one image."""

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
        metrics = card.get("test_metrics")
        if not isinstance(metrics, dict) or not all(_is_number(value) for value in metrics.values()):
            raise ConvUNeXtError(f"{json_path}: the card's 'test_metrics' is missing or not a mapping of numbers")
        return cls(
            name=json_path.stem,
            model=meta["model"]["name"],
            task=card["task"],
            data=card["data"],
            selection=card["selection"],
            test_metrics=dict(metrics),
            terms=card["terms"],
            test_evaluation=card.get("test_evaluation"),
            reference_image=card.get("reference_image"),
        )

    def to_meta(self) -> dict[str, Any]:
        """The ``pretrained`` entry of the model's JSON (:meth:`from_meta` reads it back)."""
        entry: dict[str, Any] = {
            "task": self.task,
            "data": self.data,
            "selection": self.selection,
            "test_metrics": dict(self.test_metrics),
        }
        if self.test_evaluation is not None:
            entry["test_evaluation"] = dict(self.test_evaluation)
        entry["terms"] = self.terms
        if self.reference_image is not None:
            entry["reference_image"] = dict(self.reference_image)
        return entry


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
    lines.append(
        markdown_table(["metric", "value"], [[key, f"{value:.4f}"] for key, value in card.test_metrics.items()])
    )
    if card.reference_image is not None:
        reference = card.reference_image
        lines += ["", f"The first test image, `{reference['name']}`, scores Dice {reference['dice_fg']:.4f}."]
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
