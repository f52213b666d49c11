"""3D CT and MR volumes for a 2D model: reading, geometry, dataset layouts, slicing, normalisation, phantoms.

* :class:`Volume` (``array[i, j, k]`` + a RAS+ mm ``affine``), :func:`same_geometry`, :func:`label_array`;
* :func:`read_volume`: a ``.nii``/``.nii.gz`` file or a folder holding one DICOM series (:func:`read_dicom_series`);
* :func:`write_nifti` (atomic, with the source's affine and header) and :func:`nifti_bytes`, its file's bytes;
* :func:`write_dicom_series`: a minimal DICOM writer, for tests and examples;
* :func:`read_layout`: a Decathlon, nnU-Net v2 raw or ``images/`` + ``labels/`` folder (:class:`VolumeLayout`);
* :func:`read_case`: a case's channels and label, checked; :func:`~convunext.data.volumes.prepare.prepare_volumes`:
  ``convunext data prepare volumes`` (a download into nnU-Net v2's raw layout);
* :class:`VolumeSliceDataset`: its slices as 2D samples (dataset ``volumes``), split by volume, with
  :class:`VolumeSettings` (slice axis, 2.5D context, :class:`IntensityNormalization`) stored in the checkpoint;
* :func:`phantom_case`, :func:`write_phantom_dataset`: synthetic cases, and a Decathlon-layout dataset of them
  (dataset ``synthetic_ct``, :func:`synthetic_ct_root`).
"""

from __future__ import annotations

from .cases import check_label_values, read_case, read_case_label
from .dataset import VolumeSliceDataset, case_split, layout_info, volume_info
from .dicom import write_dicom_series
from .layout import VolumeCase, VolumeLayout, is_volume_root, read_layout  # noqa: I001  (after .volume)
from .nifti import NIFTI_SUFFIXES, is_nifti_path, nifti_stem
from .normalization import IntensityNormalization, fit_ct_normalization, parse_window
from .phantom import PHANTOM_LABELS, phantom_case, write_phantom_dataset
from .slicing import VolumeSettings, largest_spacing_axis
from .synthetic import SyntheticCtDataset, synthetic_ct_root, synthetic_ct_root_of
from .volume import (
    Volume,
    label_array,
    nifti_bytes,
    read_dicom_series,
    read_volume,
    same_geometry,
    write_nifti,
)

__all__ = [
    "NIFTI_SUFFIXES",
    "PHANTOM_LABELS",
    "IntensityNormalization",
    "SyntheticCtDataset",
    "Volume",
    "VolumeCase",
    "VolumeLayout",
    "VolumeSettings",
    "VolumeSliceDataset",
    "case_split",
    "check_label_values",
    "fit_ct_normalization",
    "is_nifti_path",
    "is_volume_root",
    "label_array",
    "largest_spacing_axis",
    "layout_info",
    "nifti_bytes",
    "nifti_stem",
    "parse_window",
    "phantom_case",
    "read_case",
    "read_case_label",
    "read_dicom_series",
    "read_layout",
    "read_volume",
    "same_geometry",
    "synthetic_ct_root",
    "synthetic_ct_root_of",
    "volume_info",
    "write_dicom_series",
    "write_nifti",
    "write_phantom_dataset",
]
