"""Pretrained models: shipped with the package (``from_pretrained("drive-vessels")`` works after ``pip install``,
with no download), saved into folders of one's own, and shared on the Hugging Face Hub.

A pretrained model is a checkpoint with float16 weights (widened to float32 on load, verified against their SHA-256
as every checkpoint load does) whose JSON carries a card: what it segments, the data and recipe it was trained with,
how the run was chosen, its test metrics and the data set's terms of use. Its folder also holds the card as a
``README.md`` (a Hugging Face model card).

* :mod:`~convunext.pretrained.store`: :func:`from_pretrained`, :func:`save_pretrained`, :func:`push_to_hub`, the
  shipped models (:func:`list_pretrained`) and the names the CLI takes (:func:`resolve_checkpoint`);
* :mod:`~convunext.pretrained.card`: :class:`PretrainedCard` and the model card it renders;
* :mod:`~convunext.pretrained.publish`: :func:`publish_pretrained`, a run with the test metrics of its evaluation
  (``convunext export RUN --pretrained NAME``, into ``./pretrained/NAME/``);
* :mod:`~convunext.pretrained.hub`: the optional ``huggingface_hub`` (``pip install "convunext[hub]"``).
"""

from __future__ import annotations

from .card import DATASET_TERMS, PretrainedCard
from .publish import publish_pretrained
from .store import (
    available_names,
    checkpoint_reference,
    from_pretrained,
    list_pretrained,
    push_to_hub,
    resolve_checkpoint,
    save_pretrained,
    shipped_name,
)

__all__ = [
    "DATASET_TERMS",
    "PretrainedCard",
    "available_names",
    "checkpoint_reference",
    "from_pretrained",
    "list_pretrained",
    "publish_pretrained",
    "push_to_hub",
    "resolve_checkpoint",
    "save_pretrained",
    "shipped_name",
]
