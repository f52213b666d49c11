"""The output folder of ``convunext predict`` as a library object: checked when made, claimed when entered."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from convunext.checkpoint import Checkpoint
from convunext.errors import ConvUNeXtError
from convunext.inference import Inferer
from convunext.inference.prediction_folder import PREDICTIONS_MARKER, PREDICTIONS_TABLE, PredictionFolder, expand_inputs
from convunext.inference.predictor import Predictor


def _images(folder: Path, names: tuple[str, ...] = ("a", "b")) -> list[Path]:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in names:
        Image.fromarray(rng.integers(0, 256, (24, 40, 3), dtype=np.uint8)).save(folder / f"{name}.png")
    return expand_inputs([folder])


def test_a_folder_holds_one_checkpoints_predictions(tmp_path: Path, tiny_checkpoint: Callable[..., Checkpoint]) -> None:
    files = _images(tmp_path / "in")
    checkpoint = tiny_checkpoint()
    predictor = Predictor.from_checkpoint(checkpoint, Inferer(device="cpu", backend="eager"))
    folder = PredictionFolder(tmp_path / "out", checkpoint, files, probabilities=True)
    assert not folder.out_dir.exists()  # made: checked, nothing written
    with folder:
        for path in files:
            folder.save(path, *predictor.predict_file(path))
    names = {p.name for p in folder.out_dir.iterdir()}
    assert names == {PREDICTIONS_MARKER, PREDICTIONS_TABLE, "a_mask.png", "a_prob.npy", "b_mask.png", "b_prob.npy"}
    with open(folder.out_dir / PREDICTIONS_TABLE, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(row["name"], row["image"], row["threshold"]) for row in rows] == [(p.stem, str(p), "") for p in files]
    marker = json.loads((folder.out_dir / PREDICTIONS_MARKER).read_text())
    assert marker["weights_sha256"] == checkpoint.meta["weights"]["sha256"]
    expected = predictor.predict_file(files[0])[1].probabilities.astype(np.float16)
    assert np.array_equal(np.load(folder.out_dir / "a_prob.npy"), expected)

    other = tiny_checkpoint("other", seed=1)
    refused = pytest.raises(ConvUNeXtError, match="holds the predictions of another checkpoint")
    with refused, PredictionFolder(folder.out_dir, other, files):
        pass
    with PredictionFolder(folder.out_dir, checkpoint, files):  # the same checkpoint again: fine, and unlocked after
        pass


def test_a_folder_that_would_mix_outputs_with_inputs_is_refused_when_made(
    tmp_path: Path, tiny_checkpoint: Callable[..., Checkpoint]
) -> None:
    files = _images(tmp_path / "in")
    checkpoint = tiny_checkpoint()
    with pytest.raises(ConvUNeXtError, match="holds the input image"):
        PredictionFolder(tmp_path / "in", checkpoint, files)
    with pytest.raises(ConvUNeXtError, match="is a file, not a folder"):
        PredictionFolder(files[0], checkpoint, files)
