"""The Hugging Face Hub, through the optional ``huggingface_hub`` package (``pip install "convunext[hub]"``).

The only module that imports it, at call time: ``import convunext`` never needs it, and the tests stand a local fake
in for it (``sys.modules["huggingface_hub"]``), so nothing here is tested over the network. Logging in is
``huggingface_hub``'s business (``hf auth login`` or the ``HF_TOKEN`` environment variable).
"""

from __future__ import annotations

import re
from pathlib import Path
from types import ModuleType

from ..errors import ConvUNeXtError
from .card import MODEL_CARD

__all__ = ["MODEL_FILES", "download_model", "is_repo_id", "require_huggingface_hub", "upload_model"]

MODEL_FILES = ["*.json", "*.safetensors", MODEL_CARD]
"""The files of a pretrained model's folder: the only ones downloaded, and those an upload replaces."""

_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")


def is_repo_id(text: str) -> bool:
    """Whether ``text`` has the form of a Hub model repository id, ``USER/REPO`` (the Hub checks the rest)."""
    return _REPO_ID.fullmatch(text) is not None


def require_huggingface_hub(repo_id: str) -> ModuleType:
    """The ``huggingface_hub`` module, or a one-line error saying how to install it."""
    try:
        import huggingface_hub
    except ImportError:
        raise ConvUNeXtError(
            f'{repo_id}: the Hugging Face Hub needs the huggingface_hub package: pip install "convunext[hub]"'
        ) from None
    return huggingface_hub


def _hub_failure(repo_id: str, doing: str, error: Exception) -> ConvUNeXtError:
    first_line = next((line for line in str(error).splitlines() if line.strip()), type(error).__name__)
    return ConvUNeXtError(f"{repo_id}: cannot {doing} the Hugging Face Hub ({first_line.strip()})")


def download_model(repo_id: str, revision: str | None = None) -> Path:
    """The local folder (in the Hugging Face cache, downloaded once) holding the model files of the Hub repository
    ``repo_id`` at ``revision`` (a branch, tag or commit; default the main branch).

    Raises:
        ConvUNeXtError: huggingface_hub is not installed, or the download failed (no such repository or revision,
            no access, no network), naming the repository.
    """
    hub = require_huggingface_hub(repo_id)
    try:
        return Path(hub.snapshot_download(repo_id=repo_id, revision=revision, allow_patterns=MODEL_FILES))
    except (OSError, ValueError) as error:  # the Hub's HTTP and validation errors derive from these
        raise _hub_failure(repo_id, "download from", error) from error


def upload_model(folder: Path, repo_id: str, private: bool, commit_message: str) -> str:
    """Upload the pretrained model folder ``folder`` to the Hub repository ``repo_id`` (created if need be, private
    if asked) as one commit, which deletes the model files of an earlier upload that ``folder`` does not hold (so
    the repository holds one model); return the repository's URL.

    Raises:
        ConvUNeXtError: huggingface_hub is not installed, or the upload failed (no access, no network), naming the
            repository.
    """
    hub = require_huggingface_hub(repo_id)
    api = hub.HfApi()
    try:
        url = api.create_repo(repo_id=repo_id, repo_type="model", private=private, exist_ok=True)
        api.upload_folder(
            repo_id=repo_id,
            repo_type="model",
            folder_path=str(folder),
            commit_message=commit_message,
            delete_patterns=MODEL_FILES,
        )
    except (OSError, ValueError) as error:
        raise _hub_failure(repo_id, "upload to", error) from error
    return str(url)
