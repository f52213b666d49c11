"""One flag vocabulary for every command that runs a model: the same inference flags, read into one
:class:`~convunext.inference.Inferer`."""

from __future__ import annotations

import pytest

from convunext.cli.main import build_parser
from convunext.cli.options import inferer_from_args
from convunext.errors import ConvUNeXtError
from convunext.inference import Inferer

POSITIONALS = {
    "predict": ["run", "image.png", "--out", "masks"],
    "evaluate": ["run", "synthetic"],
    "compare": ["run-a", "run-b", "synthetic"],
    "reproduce": [],
    "ablate": [],
}
WINDOWS = ["--tile-size", "64", "--overlap", "0.5", "--tta", "--batch-size", "2"]
RUNNING = ["--device", "cpu", "--backend", "eager", "--threads", "1"]


@pytest.mark.parametrize("command", ["predict", "evaluate", "compare"])
def test_the_commands_that_predict_read_the_same_flags_into_one_inferer(command: str) -> None:
    args = build_parser().parse_args([command, *POSITIONALS[command], *WINDOWS, *RUNNING])
    expected = Inferer(tile_size=64, overlap=0.5, tta=True, batch_size=2, device="cpu", backend="eager")
    assert inferer_from_args(args) == expected and args.threads == 1


@pytest.mark.parametrize(("command", "tile_size"), [("predict", 512), ("evaluate", None), ("compare", None)])
def test_the_defaults(command: str, tile_size: int | None) -> None:
    """Predict tiles any image (bounded memory); evaluate and compare run each checkpoint at its own tile size."""
    args = build_parser().parse_args([command, *POSITIONALS[command]])
    assert inferer_from_args(args) == Inferer(tile_size=tile_size)
    assert build_parser().parse_args([command, *POSITIONALS[command], "--tile-size", "0"]).tile_size == 0  # whole


@pytest.mark.parametrize("command", ["reproduce", "ablate"])
def test_the_protocol_commands_take_where_and_how_the_model_runs(command: str) -> None:
    args = build_parser().parse_args([command, *RUNNING])
    assert inferer_from_args(args) == Inferer(device="cpu", backend="eager") and args.threads == 1


@pytest.mark.parametrize("command", list(POSITIONALS))
@pytest.mark.parametrize("flag", [["--backend", "turbo"], ["--threads", "0"]])
def test_bad_values_are_refused_alike(command: str, flag: list[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args([command, *POSITIONALS[command], *flag])


@pytest.mark.parametrize("command", ["predict", "evaluate", "compare"])
@pytest.mark.parametrize(
    ("flag", "expected"),
    [
        (["--tile-size", "-1"], "a tile side in pixels"),
        (["--overlap", "1"], "a fraction"),
        (["--batch-size", "0"], "a number of images"),
    ],
)
def test_bad_numbers_are_refused_alike(
    command: str, flag: list[str], expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args([command, *POSITIONALS[command], *flag])
    assert f"argument {flag[0]}: {flag[1]!r}: expected {expected}" in capsys.readouterr().err


@pytest.mark.parametrize("command", list(POSITIONALS))
def test_an_unknown_device_is_refused_when_the_inferer_is_made(command: str) -> None:
    args = build_parser().parse_args([command, *POSITIONALS[command], "--device", "bogus"])
    with pytest.raises(ConvUNeXtError, match="^--device 'bogus' is not a valid device"):
        inferer_from_args(args)
