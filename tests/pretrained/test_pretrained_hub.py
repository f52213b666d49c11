"""The Hugging Face Hub, with a local stand-in for ``huggingface_hub`` (never the network): a pushed folder loads by
its repository id with the same weights, description and card; a repository holds one model; revisions, failures
and a missing ``huggingface_hub`` are one-line errors; local folders never need it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from convunext.errors import ConvUNeXtError
from convunext.pretrained import from_pretrained, push_to_hub

pytestmark = pytest.mark.usefixtures("one_thread")
# fake_hub: conftest.FakeHub, huggingface_hub on local folders

REPO = "me/tiny-vessels"


def test_a_pushed_model_loads_by_its_repository_id(make_pretrained: Callable[..., Path], fake_hub: Any) -> None:
    folder = make_pretrained("tiny")
    assert push_to_hub(folder, REPO, private=True) == f"https://huggingface.co/{REPO}"
    repository = fake_hub.remote / REPO
    assert sorted(path.name for path in repository.iterdir()) == ["README.md", "tiny.json", "tiny.safetensors"]
    for name in ("tiny.json", "tiny.safetensors"):
        assert (repository / name).read_bytes() == (folder / name).read_bytes(), name
    readme = (repository / "README.md").read_text()
    assert f'checkpoint = from_pretrained("{REPO}")' in readme and 'pip install "convunext[hub]"' in readme
    assert f'snapshot_download("{REPO}", local_dir="tiny")' in readme and "convunext predict tiny image.png" in readme
    assert fake_hub.calls == [
        ("create_repo", REPO, "model", True, True),
        ("upload_folder", REPO, "model", "Upload tiny"),
    ]
    downloaded, local = from_pretrained(REPO), from_pretrained(folder)
    assert fake_hub.calls[-1] == ("snapshot_download", REPO, None)
    assert downloaded.path.parent != folder and downloaded.meta == local.meta
    for key, value in local.model.state_dict().items():
        assert torch.equal(downloaded.model.state_dict()[key], value), key


def test_a_repository_holds_the_last_model_pushed_and_loads_at_a_revision(
    make_pretrained: Callable[..., Path], fake_hub: Any
) -> None:
    push_to_hub(make_pretrained("tiny"), REPO)
    checkpoint = from_pretrained(make_pretrained("other", seed=1))
    push_to_hub(checkpoint, REPO, commit_message="a better run")  # a checkpoint from_pretrained returned
    names = sorted(path.name for path in (fake_hub.remote / REPO).iterdir())
    assert names == ["README.md", "other.json", "other.safetensors"]  # the earlier model's files are gone
    assert fake_hub.calls[-1] == ("upload_folder", REPO, "model", "a better run")
    assert from_pretrained(REPO, revision="v2").path.stem == "other"
    assert fake_hub.calls[-1] == ("snapshot_download", REPO, "v2")


def test_changed_weights_are_refused_before_anything_is_uploaded(
    make_pretrained: Callable[..., Path], fake_hub: Any
) -> None:
    checkpoint = from_pretrained(make_pretrained("tiny"))
    with torch.no_grad():
        next(checkpoint.model.parameters()).mul_(2.0)
    with pytest.raises(ConvUNeXtError, match="the weights changed since its card's test metrics were measured"):
        push_to_hub(checkpoint, REPO)
    assert fake_hub.calls == []


def test_hub_failures_are_one_line_naming_the_repository(make_pretrained: Callable[..., Path], fake_hub: Any) -> None:
    with pytest.raises(ConvUNeXtError) as refused:
        from_pretrained("me/missing")
    assert str(refused.value) == "me/missing: cannot download from the Hugging Face Hub (404 Client Error.)"
    with pytest.raises(ConvUNeXtError, match=r"^me/x y: not a Hugging Face Hub repository id \(USER/REPO\)$"):
        push_to_hub(make_pretrained("tiny"), "me/x y")
    (fake_hub.remote / "me" / "empty").mkdir(parents=True)
    with pytest.raises(ConvUNeXtError, match="^me/empty: the Hub repository holds no pretrained model"):
        from_pretrained("me/empty")


@pytest.mark.usefixtures("no_hub")
def test_without_huggingface_hub_repository_ids_say_how_to_install_it_and_folders_still_load(
    make_pretrained: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    install = f'{REPO}: the Hugging Face Hub needs the huggingface_hub package: pip install "convunext[hub]"'
    with pytest.raises(ConvUNeXtError) as refused:
        from_pretrained(REPO)
    assert str(refused.value) == install
    folder = make_pretrained("tiny")
    with pytest.raises(ConvUNeXtError) as refused:
        push_to_hub(folder, REPO)
    assert str(refused.value) == install
    monkeypatch.chdir(tmp_path)
    make_pretrained("tiny", tmp_path / REPO)  # a local folder of that path wins: no Hub needed
    assert from_pretrained(REPO).path == Path(REPO) / "tiny.json"
