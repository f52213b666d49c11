"""The :class:`~convunext.inference.predictor.Predictor` runs by its :class:`~convunext.inference.Inferer`."""

from __future__ import annotations

from collections.abc import Callable

import torch

from convunext.checkpoint import Checkpoint
from convunext.cli.main import build_parser
from convunext.inference import Inferer
from convunext.inference.predictor import PREDICT_TILE_SIZE, Predictor


def test_the_tile_size_is_the_commands_unless_told_and_none_means_the_checkpoints_own(
    tiny_checkpoint: Callable[..., Checkpoint],
) -> None:
    checkpoint = tiny_checkpoint(data={"eval_tile_size": 96})
    parsed = build_parser().parse_args(["predict", "run", "image.png", "--out", "masks"])
    assert Predictor.from_checkpoint(checkpoint).inferer.tile_size == PREDICT_TILE_SIZE == parsed.tile_size
    assert Predictor(checkpoint.model, [0.5] * 3, [0.25] * 3).inferer.tile_size == PREDICT_TILE_SIZE
    own = Predictor.from_checkpoint(checkpoint, Inferer(backend="eager"))
    assert own.inferer.tile_size == 96 and own.class_names == ["background", "vessel"]
    image = torch.rand(3, 100, 120)
    expected = Inferer(tile_size=96)(own.model, (image - own.mean) / own.std)
    assert torch.equal(torch.from_numpy(own.predict(image).probabilities), expected)
