"""Fixtures for pretrained folders and the Hugging Face Hub: tiny pretrained models written in a moment (random
weights, a hand-written card), and a stand-in for ``huggingface_hub`` that keeps its repositories in local folders."""

from __future__ import annotations

import fnmatch
import shutil
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from convunext import create_model
from convunext.checkpoint import load_checkpoint, save_checkpoint
from convunext.pretrained import PretrainedCard, save_pretrained
from convunext.pretrained.card import CardTest

CLASSES = ["background", "vessel"]
NORMALIZATION = {"mean": [0.5, 0.4, 0.3], "std": [0.25, 0.2, 0.15]}


def _tiny_card(name: str) -> PretrainedCard:
    return PretrainedCard(
        name=name,
        model="convunext",
        task="vessels of tiny synthetic images",
        data="synthetic (2 test images evaluated)",
        selection="the only run",
        tests=(CardTest("synthetic", {"dice_fg_mean": 0.5}),),
        terms="research use only",
    )


@pytest.fixture
def tiny_card() -> Callable[[str], PretrainedCard]:
    """``tiny_card(name)``: a hand-written card for a tiny ConvUNeXt called ``name``."""
    return _tiny_card


@pytest.fixture
def make_run(tmp_path: Path) -> Callable[..., Path]:
    """``make_run(name, seed=0, **meta)``: the run folder ``runs/NAME`` of a tiny ConvUNeXt with random weights,
    ``meta`` added to its checkpoint description."""

    def make(name: str, seed: int = 0, **meta: Any) -> Path:
        torch.manual_seed(seed)
        kwargs = {"in_channels": 3, "num_classes": len(CLASSES), "width": 8}
        description = {"model": {"name": "convunext", "kwargs": kwargs}, "classes": CLASSES}
        description |= {"normalization": NORMALIZATION, **meta}
        save_checkpoint(tmp_path / "runs" / name, "best", create_model("convunext", **kwargs), description)
        return tmp_path / "runs" / name

    return make


@pytest.fixture
def make_pretrained(tmp_path: Path, make_run: Callable[..., Path]) -> Callable[..., Path]:
    """``make_pretrained(name, folder=None, seed=0)``: a pretrained folder (default ``tmp_path/NAME``) of a tiny
    ConvUNeXt with a hand-written card."""

    def make(name: str, folder: Path | None = None, seed: int = 0) -> Path:
        folder = tmp_path / name if folder is None else folder
        save_pretrained(load_checkpoint(make_run(name, seed)), folder, _tiny_card(name))
        return folder

    return make


class FakeHub:
    """``huggingface_hub``'s download and upload on local folders: ``remote/USER/REPO`` is a repository,
    ``cache/`` the download cache, and every call is recorded in :attr:`calls`."""

    def __init__(self, root: Path) -> None:
        self.remote, self.cache = root / "remote", root / "cache"
        self.calls: list[tuple[Any, ...]] = []

    def snapshot_download(self, repo_id: str, *, revision: str | None = None, allow_patterns: list[str]) -> str:
        self.calls.append(("snapshot_download", repo_id, revision))
        source = self.remote / repo_id
        if not source.is_dir():
            raise OSError(f"404 Client Error.\n\nRepository Not Found for url: https://huggingface.co/{repo_id}")
        target = self.cache / repo_id / (revision or "main")
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        for path in source.iterdir():
            if any(fnmatch.fnmatch(path.name, pattern) for pattern in allow_patterns):
                shutil.copy(path, target / path.name)
        return str(target)

    def create_repo(self, repo_id: str, *, repo_type: str, private: bool, exist_ok: bool) -> str:
        self.calls.append(("create_repo", repo_id, repo_type, private, exist_ok))
        (self.remote / repo_id).mkdir(parents=True, exist_ok=exist_ok)
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(
        self, *, repo_id: str, repo_type: str, folder_path: str, commit_message: str, delete_patterns: list[str]
    ) -> str:
        self.calls.append(("upload_folder", repo_id, repo_type, commit_message))
        target, uploaded = self.remote / repo_id, sorted(Path(folder_path).iterdir())
        names = {path.name for path in uploaded}
        for path in target.iterdir():
            if path.name not in names and any(fnmatch.fnmatch(path.name, pattern) for pattern in delete_patterns):
                path.unlink()
        for path in uploaded:
            shutil.copy(path, target / path.name)
        return f"https://huggingface.co/{repo_id}/commit/1"


@pytest.fixture
def fake_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeHub:
    """A :class:`FakeHub` installed as the ``huggingface_hub`` module: nothing goes over the network."""
    hub = FakeHub(tmp_path / "hub")
    module = types.ModuleType("huggingface_hub")
    module.snapshot_download = hub.snapshot_download  # type: ignore[attr-defined]
    module.HfApi = lambda: hub  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "huggingface_hub", module)
    return hub


@pytest.fixture
def no_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    """``huggingface_hub`` not installed: importing it fails."""
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
