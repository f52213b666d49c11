"""Datasets, augmentation and batching.

* :func:`open_dataset` / :func:`dataset_info`: the built-in synthetic data, DRIVE, GlaS, HRF, STARE and CHASE_DB1
  in their distributed layouts, and any folder of images + masks; every item is a :data:`Sample` dict
  (``image`` ``C x H x W`` float in [0, 1], ``mask`` ``H x W`` int64 class ids with 255 = ignore, ``fov``
  ``H x W`` bool, ``name`` str).
* :func:`register_dataset` / :func:`list_datasets` / :func:`dataset_spec`: the dataset registry; each dataset
  module registers its :class:`DatasetSpec` on import (:mod:`convunext.data.registry`).
* :class:`TrainTransform` / :class:`EvalTransform`, :class:`TransformedDataset`, :func:`pad_collate`.
* :func:`prepare_dataset`: a download -> the folder layout (``convunext data prepare``).
"""

from .base import SPLITS, DatasetInfo, FileDataset, Record, Sample
from .registry import DatasetSpec, dataset_spec, list_datasets, register_dataset

# The built-in datasets register on import, in this order: list_datasets() (and the CLI's choices) follow it.
# isort: off
from .synthetic import SyntheticDataset, generate_glands, generate_vessels, threshold_baseline
from .drive import DriveDataset
from .glas import GlasDataset
from .hrf import HrfDataset
from .stare import StareDataset
from .chase_db1 import ChaseDb1Dataset
from .mixed import MixedDataset
from .folder import FolderDataset
from .volumes import SyntheticCtDataset, VolumeSliceDataset

# isort: on
from .datasets import dataset_info, open_dataset
from .detect import detect_dataset, detectable_datasets
from .io import IGNORE_INDEX, IMAGE_EXTENSIONS, read_fov, read_image, read_mask
from .paths import default_data_root
from .prepare import prepare_dataset, safe_extract, verify_prepared
from .stats import compute_mean_std
from .transforms import EvalTransform, TrainTransform, TransformedDataset, denormalize, normalize, pad_collate

__all__ = [
    "IGNORE_INDEX",
    "IMAGE_EXTENSIONS",
    "SPLITS",
    "DatasetInfo",
    "ChaseDb1Dataset",
    "DatasetSpec",
    "DriveDataset",
    "EvalTransform",
    "FileDataset",
    "FolderDataset",
    "GlasDataset",
    "HrfDataset",
    "MixedDataset",
    "Record",
    "Sample",
    "StareDataset",
    "SyntheticCtDataset",
    "SyntheticDataset",
    "TrainTransform",
    "TransformedDataset",
    "VolumeSliceDataset",
    "compute_mean_std",
    "dataset_info",
    "dataset_spec",
    "default_data_root",
    "denormalize",
    "detect_dataset",
    "detectable_datasets",
    "generate_glands",
    "generate_vessels",
    "list_datasets",
    "normalize",
    "open_dataset",
    "pad_collate",
    "prepare_dataset",
    "read_fov",
    "read_image",
    "read_mask",
    "register_dataset",
    "safe_extract",
    "threshold_baseline",
    "verify_prepared",
]
