"""Typed YAML configs, presets, recipes and ``--set`` overrides."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from convunext.errors import ConvUNeXtError
from convunext.training.config import ExperimentConfig, OptimConfig, list_presets


def test_presets_exist_and_load() -> None:
    assert {"synthetic", "drive", "glas", "hrf"} <= set(list_presets())
    crops = {name: ExperimentConfig.from_yaml(name).data.crop_size for name in ("drive", "glas", "hrf")}
    assert crops == {"drive": 480, "glas": 480, "hrf": 960}
    drive = ExperimentConfig.from_yaml("drive")
    assert (drive.optim.lr, drive.optim.weight_decay, drive.optim.batch_size, drive.train.epochs) == (
        4e-4,
        5e-5,
        4,
        300,
    )
    assert drive.optim.warmup_epochs == 5 and drive.optim.decay == "exponential"


def test_reference_recipe_defaults() -> None:
    reference = ExperimentConfig.from_dict({"optim": {"recipe": "reference"}})
    assert reference.optim == OptimConfig.for_recipe("reference")
    assert (reference.optim.lr, reference.optim.warmup_epochs, reference.optim.warmup_start_factor) == (1.5e-3, 1, 1e-3)
    assert reference.optim.decay == "poly" and reference.optim.poly_power == 0.9


def test_overrides_are_typed_and_nested() -> None:
    config = ExperimentConfig.from_yaml(
        "synthetic", ["train.epochs=3", "optim.lr=1e-3", "data.scale_range=[0.5, 2]", "model.kwargs.kernel_size=5"]
    )
    assert config.train.epochs == 3 and config.optim.lr == 1e-3
    assert config.data.scale_range == (0.5, 2.0)
    assert config.model.kwargs == {"kernel_size": 5}


def test_round_trip_through_yaml(tmp_path: Path) -> None:
    config = ExperimentConfig.from_yaml("hrf", ["train.seed=7", "optim.recipe=reference"])
    config.to_yaml(tmp_path / "config.yaml")
    assert ExperimentConfig.from_yaml(tmp_path / "config.yaml") == config


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.epochs=ten", r"train.epochs='ten' is not valid; expected an integer"),
        ("train.epoch=3", r"unknown field 'epoch'"),
        ("trainer.epochs=3", r"unknown section 'trainer'"),
        ("epochs", r"expected SECTION.FIELD=VALUE"),
        ("optim.recipe=fast", r"optim.recipe='fast' is not valid"),
        ("optim.decay=linear", r"optim.decay='linear' is not valid"),
        ("train.amp=maybe", r"expected true or false"),
    ],
)
def test_bad_overrides_name_the_field(override: str, message: str) -> None:
    with pytest.raises(ConvUNeXtError, match=message):
        ExperimentConfig.from_yaml("synthetic", [override])


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(ConvUNeXtError, match="no such config file or preset"):
        ExperimentConfig.from_yaml(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("model: [unclosed\n")
    with pytest.raises(ConvUNeXtError, match="broken.yaml: not valid YAML"):
        ExperimentConfig.from_yaml(broken)
    listing = tmp_path / "list.yaml"
    listing.write_text(yaml.safe_dump([1, 2]))
    with pytest.raises(ConvUNeXtError, match="list.yaml: expected a mapping"):
        ExperimentConfig.from_yaml(listing)


def test_a_renamed_field_loads_under_its_old_name(tmp_path: Path) -> None:
    """``train.activation_checkpointing`` (the name in the runs of reports/) is ``train.recompute_activations``."""
    path = tmp_path / "config.yaml"
    path.write_text("train:\n  activation_checkpointing: true\n  epochs: 3\n")
    config = ExperimentConfig.from_yaml(path)
    assert config.train.recompute_activations is True and config.train.epochs == 3
    assert "activation_checkpointing" not in config.to_dict()["train"]
    overridden = ExperimentConfig.from_dict({}, overrides=["train.activation_checkpointing=true"])
    assert overridden.train.recompute_activations is True
    both = {"train": {"activation_checkpointing": True, "recompute_activations": False}}
    message = "run.yaml: train.activation_checkpointing is the old name of train.recompute_activations; give only "
    with pytest.raises(ConvUNeXtError, match=f"^{message}train.recompute_activations$"):
        ExperimentConfig.from_dict(both, "run.yaml")


def test_every_recorded_run_configuration_loads() -> None:
    recorded = sorted((Path(__file__).resolve().parents[2] / "reports").glob("**/config.yaml"))
    assert recorded
    for path in recorded:
        ExperimentConfig.from_yaml(path)
