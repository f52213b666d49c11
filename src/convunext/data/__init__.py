"""Datasets, augmentation and batching.

* :func:`open_dataset` / :func:`dataset_info`: the built-in synthetic data, DRIVE, GlaS and HRF in their
  distributed layouts, and any folder of images + masks; every item is a :data:`Sample` dict
  (``image`` ``C x H x W`` float in [0, 1], ``mask`` ``H x W`` int64 class ids with 255 = ignore, ``fov``
  ``H x W`` bool, ``name`` str).
* :class:`TrainTransform` / :class:`EvalTransform`, :class:`TransformedDataset`, :func:`pad_collate`.
* :func:`prepare_dataset`: a download -> the folder layout (``convunext data prepare``).
"""

from .base import SPLITS, DatasetInfo, FileDataset, Record, Sample
from .datasets import DATASETS, dataset_info, list_datasets, open_dataset
from .detect import detect_dataset
from .drive import DriveDataset
from .folder import FolderDataset
from .glas import GlasDataset
from .hrf import HrfDataset
from .io import IGNORE_INDEX, IMAGE_EXTENSIONS, read_fov, read_image, read_mask
from .paths import default_data_root
from .prepare import prepare_dataset, safe_extract, verify_prepared
from .stats import compute_mean_std
from .synthetic import SyntheticDataset, generate_glands, generate_vessels, threshold_baseline
from .transforms import EvalTransform, TrainTransform, TransformedDataset, denormalize, normalize, pad_collate

__all__ = [
    "DATASETS",
    "IGNORE_INDEX",
    "IMAGE_EXTENSIONS",
    "SPLITS",
    "DatasetInfo",
    "DriveDataset",
    "EvalTransform",
    "FileDataset",
    "FolderDataset",
    "GlasDataset",
    "HrfDataset",
    "Record",
    "Sample",
    "SyntheticDataset",
    "TrainTransform",
    "TransformedDataset",
    "compute_mean_std",
    "dataset_info",
    "default_data_root",
    "denormalize",
    "detect_dataset",
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
    "safe_extract",
    "threshold_baseline",
    "verify_prepared",
]
