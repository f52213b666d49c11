"""``save_pretrained`` / ``from_pretrained`` on folders of one's own: the same files as the shipped models plus a
model card, byte for byte round trips, a card carried only with the weights it was measured on, the optional training
scale, where a model may be written, and one-line errors for what is no pretrained model."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

import convunext.pretrained.store as store
from convunext.checkpoint import load_checkpoint, save_checkpoint
from convunext.errors import ConvUNeXtError
from convunext.pretrained import PretrainedCard, from_pretrained, resolve_checkpoint, save_pretrained
from convunext.pretrained.card import CardTest

pytestmark = pytest.mark.usefixtures("one_thread")


def _files(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


def test_resaving_the_shipped_model_reproduces_its_files_byte_for_byte(tmp_path: Path) -> None:
    checkpoint = from_pretrained("drive-vessels")
    json_path = save_pretrained(checkpoint, tmp_path / "copy")
    for suffix in (".json", ".safetensors"):
        shipped = (store.PRETRAINED_DIR / "drive-vessels").with_suffix(suffix)
        assert json_path.with_suffix(suffix).read_bytes() == shipped.read_bytes(), suffix
    readme = (tmp_path / "copy" / "README.md").read_text()
    assert f'from_pretrained("{tmp_path / "copy"}")' in readme and "- Chosen as: the best validation Dice" in readme
    assert "\nRetinal vessel segmentation of colour fundus photographs, by a `convunext` model (3.51M parameters)" in (
        readme
    )


def test_a_folder_round_trip_keeps_weights_description_and_card(
    make_pretrained: Callable[..., Path], tiny_card: Callable[[str], PretrainedCard]
) -> None:
    folder = make_pretrained("tiny")
    assert sorted(_files(folder)) == ["README.md", "tiny.json", "tiny.safetensors"]
    loaded = from_pretrained(folder)
    assert loaded.path == folder / "tiny.json" and all(p.dtype == torch.float32 for p in loaded.model.parameters())
    assert PretrainedCard.from_meta(loaded.path, loaded.meta) == tiny_card("tiny")
    assert loaded.meta["weights"]["dtype"] == "float16" and loaded.class_names == ["background", "vessel"]
    for file in ("tiny.json", "tiny.safetensors"):
        assert from_pretrained(folder / file).meta == loaded.meta
    again = save_pretrained(loaded, folder.parent / "again")
    assert again.read_bytes() == (folder / "tiny.json").read_bytes()
    assert again.with_suffix(".safetensors").read_bytes() == (folder / "tiny.safetensors").read_bytes()


def test_a_card_is_carried_only_with_the_weights_it_was_measured_on(
    make_pretrained: Callable[..., Path],
    make_run: Callable[..., Path],
    tiny_card: Callable[[str], PretrainedCard],
    tmp_path: Path,
) -> None:
    checkpoint = from_pretrained(make_pretrained("tiny"))
    with torch.no_grad():
        next(checkpoint.model.parameters()).add_(1.0)  # fine-tuned, say
    with pytest.raises(ConvUNeXtError, match="the weights changed since its card's test metrics were measured"):
        save_pretrained(checkpoint, tmp_path / "tuned")
    assert not (tmp_path / "tuned").exists()
    card = dataclasses.replace(tiny_card("tuned"), tests=(CardTest("synthetic", {"dice_fg_mean": 0.75}),))
    path = save_pretrained(checkpoint, tmp_path / "tuned", card)
    assert PretrainedCard.from_meta(path, json.loads(path.read_text())) == card
    with pytest.raises(ConvUNeXtError, match="card of 'tuned' describes a 'unet' model, the checkpoint .* 'convunext'"):
        save_pretrained(checkpoint, tmp_path / "other", dataclasses.replace(card, model="unet"))
    run = load_checkpoint(make_run("plain"))
    with pytest.raises(ConvUNeXtError, match=r"best\.json: not a pretrained model \(its JSON has no 'pretrained' card"):
        save_pretrained(run, tmp_path / "plain")


def test_a_training_scale_the_checkpoint_records_is_kept_and_stated(
    make_run: Callable[..., Path], tiny_card: Callable[[str], PretrainedCard], tmp_path: Path
) -> None:
    run = make_run("scaled", scale={"fov_diameter": 540})
    json_path = save_pretrained(load_checkpoint(run), tmp_path / "scaled", tiny_card("scaled"))
    assert json.loads(json_path.read_text())["scale"] == {"fov_diameter": 540}
    assert "- Training scale: fields of view 540 px across." in (tmp_path / "scaled" / "README.md").read_text()
    assert from_pretrained(tmp_path / "scaled").meta["scale"] == {"fov_diameter": 540}


@pytest.mark.parametrize(
    "prepare, problem",
    [
        (lambda folder: folder.write_text("a file"), "cannot create it, {folder} is a file, not a folder"),
        (lambda folder: (folder / "notes.txt").write_text("mine"), "{folder}: not empty; give a new or empty folder"),
        (lambda folder: (folder / "best.json").write_text("{}"), "{folder}: holds another checkpoint (best.json)"),
    ],
)
def test_a_folder_holding_anything_else_is_refused_before_any_write(
    make_run: Callable[..., Path],
    tiny_card: Callable[[str], PretrainedCard],
    tmp_path: Path,
    prepare: Callable[[Path], object],
    problem: str,
) -> None:
    folder = tmp_path / "out"
    if "a file" not in problem:
        folder.mkdir()
    prepare(folder)
    before = folder.read_bytes() if folder.is_file() else _files(folder)
    with pytest.raises(ConvUNeXtError) as refused:
        save_pretrained(load_checkpoint(make_run("tiny")), folder, tiny_card("tiny"))
    assert problem.format(folder=folder) in str(refused.value)
    assert (folder.read_bytes() if folder.is_file() else _files(folder)) == before


def test_the_package_folder_and_names_of_run_checkpoints_are_refused(
    make_run: Callable[..., Path],
    tiny_card: Callable[[str], PretrainedCard],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    checkpoint = load_checkpoint(make_run("tiny"))
    monkeypatch.setattr(store, "PRETRAINED_DIR", tmp_path / "package")
    for folder in (tmp_path / "package", tmp_path / "package" / "tiny"):
        with pytest.raises(ConvUNeXtError, match="the installed package's pretrained models; save to a folder"):
            save_pretrained(checkpoint, folder, tiny_card("tiny"))
    for name, problem in (("best", "the name of a run's checkpoint"), ("../x", "letters, digits and '-' only")):
        with pytest.raises(ConvUNeXtError, match=problem):
            save_pretrained(checkpoint, tmp_path / "named", dataclasses.replace(tiny_card("tiny"), name=name))
    assert not (tmp_path / "package").exists() and not (tmp_path / "named").exists()


def test_what_is_no_pretrained_model_is_refused_in_one_line(
    make_pretrained: Callable[..., Path], make_run: Callable[..., Path], tmp_path: Path
) -> None:
    run = make_run("run")
    (tmp_path / "empty").mkdir()
    two = make_pretrained("two")
    (two / "extra.json").write_text("{}")
    save_checkpoint(tmp_path / "plain", "model", load_checkpoint(run).model, load_checkpoint(run).meta)
    cases = {
        str(run): "a run folder, not a pretrained model; load it with convunext.checkpoint.load_checkpoint",
        str(tmp_path / "empty"): "not a pretrained model folder (expected NAME.json and NAME.safetensors, as",
        str(two): "not a pretrained model folder (expected one NAME.json, found extra.json, two.json)",
        str(tmp_path / "plain"): "model.json: not a pretrained model (its JSON has no 'pretrained' card)",
        str(two / "README.md"): "README.md: not a checkpoint; give a run folder, its CHECKPOINT.json or",
        "drive-vessel": "no such folder, shipped pretrained model (available: drive-vessels, hrf-vessels, "
        "retina-vessels) or Hugging Face Hub",
    }
    for argument, problem in cases.items():
        with pytest.raises(ConvUNeXtError) as refused:
            from_pretrained(argument)
        message = str(refused.value)
        assert problem in message and "\n" not in message, message
    with pytest.raises(ConvUNeXtError, match="a revision applies to a Hugging Face Hub repository id only"):
        from_pretrained("drive-vessels", revision="v1")


def test_a_pretrained_folder_named_like_a_shipped_model_wins_and_says_so(
    make_pretrained: Callable[..., Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(store, "PRETRAINED_DIR", make_pretrained("tiny-vessels", tmp_path / "package"))
    monkeypatch.chdir(tmp_path)
    assert resolve_checkpoint("tiny-vessels") == str(tmp_path / "package" / "tiny-vessels.json")
    make_pretrained("tiny-vessels", tmp_path / "tiny-vessels", seed=1)
    assert resolve_checkpoint("tiny-vessels") == str(Path("tiny-vessels") / "tiny-vessels.json")
    assert capsys.readouterr().err == (
        "convunext: tiny-vessels: using the pretrained folder here, not the shipped pretrained model\n"
    )
    local, shipped = from_pretrained("tiny-vessels"), from_pretrained(tmp_path / "package")
    assert local.path == Path("tiny-vessels/tiny-vessels.json")
    assert local.meta["weights"]["sha256"] != shipped.meta["weights"]["sha256"]
