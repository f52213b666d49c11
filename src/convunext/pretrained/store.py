"""Where pretrained models are kept, and the one way to save, load and share them.

A pretrained model is a checkpoint (:mod:`convunext.checkpoint`) with float16 weights whose JSON carries a card
(:class:`~convunext.pretrained.card.PretrainedCard`). It is kept in one of three places, all loaded by
:func:`from_pretrained`:

* shipped with the package, in its ``pretrained/`` folder (``NAME.json`` + ``NAME.safetensors``), loaded by name
  (``drive-vessels``) with no download;
* a pretrained folder of the user's: ``NAME.json``, ``NAME.safetensors`` and ``README.md`` (the model card), written by
  :func:`save_pretrained` (``convunext export RUN --pretrained NAME`` writes ``./pretrained/NAME/``); any command that
  takes a checkpoint takes the folder;
* a Hugging Face Hub repository holding such a folder (:func:`push_to_hub`), loaded by its id ``USER/REPO`` when the
  optional ``huggingface_hub`` package is installed.

Nothing here writes into the package: maintainers ship a model by copying its ``NAME.json`` and ``NAME.safetensors``
into ``src/convunext/pretrained/``.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save
from torch import nn

from ..checkpoint import RUN_TAGS, Checkpoint, folder_checkpoint, load_checkpoint, read_checkpoint_meta
from ..errors import ConvUNeXtError
from ..utils.io import atomic_write_files, check_output_folder, sha256_bytes
from .card import MODEL_CARD, PretrainedCard, model_card_markdown
from .hub import download_model, is_repo_id, require_huggingface_hub, upload_model

__all__ = [
    "PRETRAINED_DIR",
    "available_names",
    "check_destination",
    "check_name",
    "checkpoint_reference",
    "from_pretrained",
    "list_pretrained",
    "pretrained_json",
    "push_to_hub",
    "resolve_checkpoint",
    "save_pretrained",
    "shipped_name",
]

PRETRAINED_DIR = Path(__file__).resolve().parent
"""Where the shipped models live (package data)."""


def list_pretrained() -> list[PretrainedCard]:
    """The cards of the models shipped with the package, by name."""
    cards = []
    for path in sorted(PRETRAINED_DIR.glob("*.json")):
        meta, _ = read_checkpoint_meta(path)
        cards.append(PretrainedCard.from_meta(path, meta))
    return cards


def available_names() -> str:
    """The shipped models' names for an error message: ``"a, b"``, or ``"none"``."""
    return ", ".join(card.name for card in list_pretrained()) or "none"


def _is_model_name(text: str) -> bool:
    """Whether ``text`` can name a pretrained model: letters, digits and ``-`` (so never a path)."""
    return bool(text) and all(c.isalnum() or c == "-" for c in text)


def check_name(name: str) -> None:
    """Refuse a name a pretrained model cannot take (its files are ``NAME.json`` and ``NAME.safetensors``)."""
    if not _is_model_name(name):
        raise ConvUNeXtError(f"pretrained name {name!r}: use letters, digits and '-' only")
    if name in RUN_TAGS:
        raise ConvUNeXtError(f"pretrained name {name!r}: the name of a run's checkpoint; choose another")


def _shipped_json(name: str) -> Path | None:
    """The ``NAME.json`` of the shipped model ``name``, or None if no shipped model has that name."""
    path = PRETRAINED_DIR / f"{name}.json"
    return path if _is_model_name(name) and path.is_file() else None


def shipped_name(checkpoint_path: str | Path) -> str | None:
    """The name of the shipped model whose checkpoint JSON ``checkpoint_path`` is, or None for any other path."""
    path = Path(checkpoint_path)
    return path.stem if path.parent.resolve() == PRETRAINED_DIR.resolve() else None


def checkpoint_reference(checkpoint_path: str | Path) -> str:
    """How a report names a checkpoint: a shipped model by its name (``"drive-vessels"``, not a path inside this
    machine's installation), any other by its path as given."""
    return shipped_name(checkpoint_path) or str(checkpoint_path)


def _is_run_folder(folder: Path) -> bool:
    return any((folder / f"{tag}.json").is_file() for tag in RUN_TAGS)


def pretrained_json(folder: str | Path) -> Path | None:
    """The ``NAME.json`` of the pretrained folder ``folder``: its one top-level JSON file. None when ``folder`` is
    not a folder, is a run folder (``best.json``, ``last.json``) or holds no JSON file or several."""
    folder = Path(folder)
    if not folder.is_dir() or _is_run_folder(folder):
        return None
    return folder_checkpoint(folder)


def resolve_checkpoint(argument: str) -> str:
    """A CLI checkpoint argument: a path as given (for a pretrained folder, its ``NAME.json``), or the name of a
    shipped model (its JSON path).

    When the argument is both a shipped model's name and a local path, the path wins if it is a folder holding a
    checkpoint (a run folder, or a pretrained folder), else the shipped model does (a report folder named after the
    model, say); one line on stderr says which was used.
    """
    local = Path(argument)
    in_folder = pretrained_json(local)
    local_checkpoint = str(in_folder) if in_folder is not None else argument
    shipped = _shipped_json(argument)
    if shipped is None:
        return local_checkpoint
    if not local.exists():
        return str(shipped)
    if in_folder is not None or (local.is_dir() and _is_run_folder(local)):
        kind = "pretrained" if in_folder is not None else "run"
        print(f"convunext: {argument}: using the {kind} folder here, not the shipped pretrained model", file=sys.stderr)
        return local_checkpoint
    print(
        f"convunext: {argument}: using the shipped pretrained model ({local} here holds no checkpoint)",
        file=sys.stderr,
    )
    return str(shipped)


def check_destination(folder: str | Path, name: str) -> Path:
    """Check, before any work, that the pretrained model ``name`` can be written into ``folder``: a new or empty
    folder, or one holding an earlier version of the same model (which is replaced); never the package's own.

    Raises:
        ConvUNeXtError: ``folder`` is the package's, a file, or holds anything else, naming it.
    """
    folder = Path(folder)
    package = PRETRAINED_DIR.resolve()
    if folder.resolve() == package or package in folder.resolve().parents:
        raise ConvUNeXtError(
            f"{folder}: the installed package's pretrained models; save to a folder of your own (to ship a model "
            "with the package, copy its NAME.json and NAME.safetensors into src/convunext/pretrained/ by hand)"
        )
    check_output_folder(folder)
    if not folder.is_dir():
        return folder
    others = sorted(path.name for path in folder.glob("*.json") if path.name != f"{name}.json")
    if others:
        raise ConvUNeXtError(f"{folder}: holds another checkpoint ({others[0]}); give {name} a folder of its own")
    if not (folder / f"{name}.json").is_file() and any(folder.iterdir()):
        raise ConvUNeXtError(
            f"{folder}: not empty; give a new or empty folder ({name}.json, {name}.safetensors and {MODEL_CARD} "
            "are written there)"
        )
    return folder


def _float16_weights(model: nn.Module) -> bytes:
    """The model's state as a safetensors file, floating-point tensors in float16 (half the size)."""
    state = {
        key: (tensor.half() if tensor.is_floating_point() else tensor).detach().to("cpu").contiguous()
        for key, tensor in model.state_dict().items()
    }
    return save(state)


def _write_pretrained(
    checkpoint: Checkpoint, folder: Path, card: PretrainedCard | None, location: str, on_hub: bool
) -> Path:
    """:func:`save_pretrained`, the model card telling to load it from ``location`` (the folder, or a Hub
    repository id when ``on_hub``)."""
    carried = card is None
    if card is None:
        card = PretrainedCard.from_meta(checkpoint.path, checkpoint.meta)
    check_name(card.name)
    if card.model != checkpoint.meta["model"]["name"]:
        raise ConvUNeXtError(
            f"the card of {card.name!r} describes a {card.model!r} model, the checkpoint {checkpoint.path} is a "
            f"{checkpoint.meta['model']['name']!r} model"
        )
    check_destination(folder, card.name)
    weights = _float16_weights(checkpoint.model)
    if carried and sha256_bytes(weights) != checkpoint.meta["weights"]["sha256"]:
        raise ConvUNeXtError(
            f"{checkpoint.path}: the weights changed since its card's test metrics were measured; give a card of "
            "the new weights (or publish their run: convunext export RUN --pretrained NAME)"
        )
    meta = {key: value for key, value in checkpoint.meta.items() if key not in ("weights", "state", "pretrained")}
    meta["weights"] = {"file": f"{card.name}.safetensors", "sha256": sha256_bytes(weights), "dtype": "float16"}
    meta["pretrained"] = card.to_meta()
    parameters = sum(parameter.numel() for parameter in checkpoint.model.parameters())
    readme = model_card_markdown(card, meta, parameters, location, on_hub)
    json_path = folder / f"{card.name}.json"
    atomic_write_files(  # all or none; the JSON, which names the weights, last
        [
            (folder / meta["weights"]["file"], weights),
            (folder / MODEL_CARD, readme.encode("utf-8")),
            (json_path, (json.dumps(meta, indent=2) + "\n").encode("utf-8")),
        ]
    )
    return json_path


def save_pretrained(checkpoint: Checkpoint, folder: str | Path, card: PretrainedCard | None = None) -> Path:
    """Write ``checkpoint`` as the pretrained model folder ``folder``: ``NAME.safetensors`` (float16 weights),
    ``NAME.json`` (the checkpoint description: architecture, classes, normalisation, the training ``scale`` when it
    records one, and the card) and ``README.md`` (the model card), all or none.

    Args:
        checkpoint: the model and its description, from :func:`~convunext.checkpoint.load_checkpoint` or
            :func:`from_pretrained`; its model returns ``N x K x H x W`` logits for normalised ``N x C x H x W``
            images.
        folder: a new or empty folder, or one holding an earlier version of the same model (replaced); never the
            package's own.
        card: the card (its ``name`` names the files). Default: the card the checkpoint carries, when its weights
            are still those the card's test metrics were measured on.

    Returns:
        The JSON path written.

    Raises:
        ConvUNeXtError: a bad name or folder, a card of another architecture, or no card for these weights.
    """
    return _write_pretrained(checkpoint, Path(folder), card, location=str(folder), on_hub=False)


def _locate(name_or_folder: str, revision: str | None) -> Path:
    """The checkpoint file that :func:`from_pretrained` loads (downloading a Hub repository's files)."""
    local = Path(name_or_folder)
    in_folder = local if local.is_file() else pretrained_json(local)
    shipped = _shipped_json(name_or_folder)
    from_hub = in_folder is None and shipped is None and not local.exists() and is_repo_id(name_or_folder)
    if revision is not None and not from_hub:
        raise ConvUNeXtError(f"{name_or_folder}: a revision applies to a Hugging Face Hub repository id only")
    if in_folder is not None:
        return in_folder
    if shipped is not None:
        return shipped
    if from_hub:
        downloaded = download_model(name_or_folder, revision)
        in_download = pretrained_json(downloaded)
        if in_download is None:
            raise ConvUNeXtError(
                f"{name_or_folder}: the Hub repository holds no pretrained model ({_contents(downloaded)})"
            )
        return in_download
    if local.is_dir():
        if _is_run_folder(local):
            raise ConvUNeXtError(
                f"{local}: a run folder, not a pretrained model; load it with convunext.checkpoint.load_checkpoint, "
                f"or publish it: convunext export {local} --pretrained NAME"
            )
        raise ConvUNeXtError(f"{local}: not a pretrained model folder ({_contents(local)})")
    raise ConvUNeXtError(
        f"{name_or_folder}: no such folder, shipped pretrained model (available: {available_names()}) or Hugging Face "
        "Hub repository id (USER/REPO)"
    )


def _contents(folder: Path) -> str:
    """What a folder that should hold one pretrained model holds instead, for an error message."""
    found = sorted(path.name for path in folder.glob("*.json"))
    if not found:
        return "expected NAME.json and NAME.safetensors, as save_pretrained writes them; found no JSON file"
    return f"expected one NAME.json, found {', '.join(found)}"


def from_pretrained(
    name_or_folder: str | Path, map_location: str | torch.device = "cpu", *, revision: str | None = None
) -> Checkpoint:
    """Load a pretrained model: weights checked against their SHA-256 and widened to float32, ready for
    :class:`~convunext.inference.predictor.Predictor` or :func:`~convunext.evaluation.evaluate.evaluate_checkpoint`.
    Its model returns ``N x K x H x W`` logits for ``N x C x H x W`` images normalised with the checkpoint's
    ``mean`` and ``std``; its card is ``PretrainedCard.from_meta(checkpoint.path, checkpoint.meta)``.

    Args:
        name_or_folder: a pretrained folder (written by :func:`save_pretrained`) or its ``NAME.json``, which wins
            over a shipped model of the same name; the name of a model shipped with the package
            (``drive-vessels``); or the id ``USER/REPO`` of a Hugging Face Hub repository (needs the optional
            ``huggingface_hub``; its files are downloaded once into the Hugging Face cache).
        map_location: device for the weights.
        revision: for a Hub repository, a branch, tag or commit (default: the main branch).

    Raises:
        ConvUNeXtError: nothing of that name, a folder or JSON that is no pretrained model, files that fail the
            checkpoint's checks, or a Hub download that failed, with the name or file named.
    """
    meta, json_path = read_checkpoint_meta(_locate(str(name_or_folder), revision))
    PretrainedCard.from_meta(json_path, meta)  # a card, before the weights are read
    checkpoint = load_checkpoint(json_path, map_location)
    checkpoint.model.float()
    return checkpoint


def push_to_hub(
    source: str | Path | Checkpoint, repo_id: str, *, private: bool = False, commit_message: str | None = None
) -> str:
    """Upload a pretrained model to the Hugging Face Hub repository ``repo_id`` (created if need be) as one commit,
    with a model card that loads it from there; :func:`from_pretrained` then takes ``repo_id``. Needs the optional
    ``huggingface_hub`` package, logged in.

    Args:
        source: anything :func:`from_pretrained` loads (a pretrained folder, a shipped model's name), or a
            checkpoint it returned, its weights unchanged. A model without a card goes through
            :func:`save_pretrained` with one first.
        repo_id: ``USER/REPO``; the repository then holds this model only (an earlier model's files are deleted).
        private: create the repository private.
        commit_message: default ``"Upload NAME"``.

    Returns:
        The repository's URL.
    """
    if not is_repo_id(repo_id):
        raise ConvUNeXtError(f"{repo_id}: not a Hugging Face Hub repository id (USER/REPO)")
    require_huggingface_hub(repo_id)
    checkpoint = source if isinstance(source, Checkpoint) else from_pretrained(source)
    with tempfile.TemporaryDirectory(prefix="convunext-push-") as staging:
        json_path = _write_pretrained(checkpoint, Path(staging), None, location=repo_id, on_hub=True)
        return upload_model(Path(staging), repo_id, private, commit_message or f"Upload {json_path.stem}")
