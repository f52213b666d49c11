"""Training: the segmentation loss (``convunext.training.losses``), recipes, schedules and the trainer.

From Python, :func:`experiment_config` builds an experiment as ``convunext train`` does (a preset or YAML file,
then ``SECTION.FIELD=VALUE`` overrides) and :func:`train_seeds` trains it once per seed, or continues it
(:mod:`convunext.training.experiment`); :class:`Trainer` trains one run.
"""

from .config import ExperimentConfig
from .experiment import experiment_config, train_seeds
from .trainer import Trainer, TrainResult

__all__ = ["ExperimentConfig", "TrainResult", "Trainer", "experiment_config", "train_seeds"]
