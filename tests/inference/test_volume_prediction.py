"""Volume prediction: slices in, a label volume on the input's exact geometry out (NIfTI and DICOM inputs)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from convunext.data.volumes import read_volume, write_dicom_series, write_nifti
from convunext.errors import ConvUNeXtError
from convunext.inference.predictor import Predictor
from convunext.inference.sliding_window import Inferer
from convunext.inference.volume import (
    VolumePredictor,
    expand_volume_inputs,
    is_volume_input,
    slice_montage,
    volume_name,
)
from volume_oracles import IntensityOracle, fixed_settings, staircase_case


def oracle_predictor(slice_axis: int, context: int = 1, slice_batch: int = 4) -> VolumePredictor:
    channels = context
    predictor = Predictor(
        IntensityOracle(context=context),
        mean=(0.0,) * channels,
        std=(1.0,) * channels,
        inferer=Inferer(tile_size=None, backend="eager", device="cpu"),
        class_names=["background", "one", "two"],
    )
    return VolumePredictor(predictor, fixed_settings(slice_axis, context), slice_batch=slice_batch)


@pytest.mark.parametrize("slice_axis", [0, 1, 2])
@pytest.mark.parametrize("context", [1, 3])
def test_a_known_phantom_comes_back_where_it_was_along_any_slice_axis(slice_axis: int, context: int) -> None:
    image, labels = staircase_case()
    result = oracle_predictor(slice_axis, context, slice_batch=3).predict([image])
    np.testing.assert_array_equal(result.labels.array, labels.array)
    np.testing.assert_array_equal(result.labels.affine, image.affine)
    assert result.probabilities.shape == (3, *image.shape)
    np.testing.assert_allclose(result.probabilities.sum(axis=0), 1.0, atol=1e-5)


def test_the_written_mask_reads_back_with_the_input_shape_affine_and_labels(tmp_path: Path) -> None:
    image, labels = staircase_case(seed=3)
    source = write_nifti(tmp_path / "scan.nii.gz", image.array, image)
    volume, result = oracle_predictor(slice_axis=1).predict_path(source)
    written = write_nifti(tmp_path / "out" / "scan_mask.nii.gz", result.labels.array, result.labels)
    back = read_volume(written, label=True)
    original = read_volume(source)
    assert back.shape == original.shape
    np.testing.assert_allclose(back.affine, original.affine, atol=1e-5)
    np.testing.assert_array_equal(back.array, labels.array)


def test_a_dicom_series_is_segmented_on_the_series_geometry(tmp_path: Path) -> None:
    image, labels = staircase_case(shape=(12, 10, 8), spacing=(0.7, 0.7, 2.5), seed=1)
    folder = tmp_path / "series"
    write_dicom_series(folder, image.array, spacing=(0.7, 0.7, 2.5))
    assert is_volume_input(folder)
    volume, result = oracle_predictor(slice_axis=2).predict_path(folder)
    np.testing.assert_array_equal(result.labels.array, labels.array)
    np.testing.assert_allclose(result.labels.affine, read_volume(folder).affine)


def test_volume_inputs_are_nifti_files_their_folders_and_dicom_series(tmp_path: Path) -> None:
    image, _ = staircase_case()
    nifti = write_nifti(tmp_path / "a" / "case_1.nii.gz", image.array, image)
    write_nifti(tmp_path / "a" / "case_2.nii", image.array, image)
    write_dicom_series(tmp_path / "series", np.zeros((4, 4, 3)), spacing=(1, 1, 1))
    found = expand_volume_inputs([tmp_path / "a", tmp_path / "series", nifti])
    assert sorted(volume_name(path) for path in found) == ["case_1", "case_2", "series"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConvUNeXtError, match="no NIfTI volume"):
        expand_volume_inputs([tmp_path / "empty"])
    write_nifti(tmp_path / "b" / "case_1.nii.gz", image.array, image)
    with pytest.raises(ConvUNeXtError, match="same name 'case_1'"):
        expand_volume_inputs([nifti, tmp_path / "b" / "case_1.nii.gz"])


def test_a_model_of_two_dimensional_images_refuses_volumes(tmp_path: Path) -> None:
    from convunext.checkpoint import save_checkpoint
    from convunext.models import create_model

    model = create_model("unet", in_channels=1, num_classes=2, width=4)
    meta = {
        "model": {"name": "unet", "kwargs": {"in_channels": 1, "num_classes": 2, "width": 4}},
        "classes": ["background", "foreground"],
        "normalization": {"mean": [0.5], "std": [0.25]},
    }
    path = save_checkpoint(tmp_path, "best", model, meta)
    with pytest.raises(ConvUNeXtError, match="trained on 2D images"):
        VolumePredictor.from_checkpoint(path)


def test_the_overlay_montage_has_a_row_per_label_volume() -> None:
    image, labels = staircase_case()
    picture = slice_montage(image, [labels.array, labels.array], slice_axis=1, count=3, min_height=1)
    height, width = image.shape[0], image.shape[2]  # slices along axis 1 are I x K
    assert picture.shape == (2 * height, 3 * width, 3) and picture.dtype == np.uint8
    enlarged = slice_montage(image, [labels.array], slice_axis=1, count=3, min_height=100)
    assert enlarged.shape == (5 * height, 5 * 3 * width, 3)  # 20 px rows, enlarged 5x to reach 100
