"""The output folder of ``convunext predict``: what is written for each image, and the rules of the folder.

>>> folder = PredictionFolder("masks", checkpoint, files, overlay=True)   # doctest: +SKIP
>>> with folder:                                      # locks the folder and claims it for the checkpoint
...     for path in files:
...         folder.save(path, *predictor.predict_file(path))

Each image ``NAME`` gets ``NAME_mask.png`` and, when asked for, ``NAME_prob.npy`` and ``NAME_overlay.png``, written
as one set (:func:`save_prediction`). :data:`PREDICTIONS_TABLE` lists how each image was run: its file, the resize
factor of scale matching and why (:mod:`~convunext.inference.scale`), and the threshold of its mask.

The folder belongs to one job at a time (a :class:`~convunext.utils.lock.RunLock`) and to one checkpoint: its
:data:`PREDICTIONS_MARKER` file names the checkpoint, and another checkpoint's predictions are refused there, so one
image's mask and overlay never come from two models. Outputs never replace an input or a file that predict did not
write, a folder of predictions is never read as input (:func:`expand_inputs`), and every check runs before the first
image.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from types import TracebackType

import numpy as np
from PIL import Image

from ..checkpoint import Checkpoint
from ..data.io import is_image_file
from ..errors import ConvUNeXtError
from ..utils.io import atomic_path, atomic_write_files, atomic_write_json, check_output_folder, temporary_files
from ..utils.lock import RunLock
from .predictor import Prediction, overlay

__all__ = [
    "OUTPUT_SUFFIXES",
    "PREDICTIONS_MARKER",
    "PREDICTIONS_TABLE",
    "PredictionFolder",
    "distinct_names",
    "expand_inputs",
    "output_paths",
    "save_prediction",
]

OUTPUT_SUFFIXES = ("_mask.png", "_prob.npy", "_overlay.png")
"""What :func:`save_prediction` appends to an image's name: the mask, the probabilities, the overlay."""
PREDICTIONS_MARKER = ".convunext-predictions.json"
"""The file ``convunext predict`` leaves in its output folder: such a folder is never read as input (its masks are
no images to segment), and only the checkpoint named in the file writes into it again."""
MARKER_FORMAT = "convunext-predictions"
PREDICTIONS_TABLE = "predictions.csv"
"""One row per image predicted into the folder (the latest prediction of each): ``name``, ``image`` (the input file),
``scale``, ``fov_diameter``, ``scale_reason``, ``threshold`` (empty: the argmax) and ``outside_fov`` (``background``:
the pixels outside the image's field of view were made background; empty: the model's output kept). Written when
predict ends (and every :data:`TABLE_EVERY` images), atomically."""
TABLE_EVERY = 50
TABLE_COLUMNS = ("name", "image", "scale", "fov_diameter", "scale_reason", "threshold", "outside_fov")


def expand_inputs(inputs: Iterable[str | Path]) -> list[Path]:
    """Files named directly plus the image files inside named folders (sorted), each file once.

    Raises:
        ConvUNeXtError: a missing input, a folder without images, an output folder of ``convunext predict`` (or a
            file in one; see :data:`PREDICTIONS_MARKER`), or two different files with the same stem (both would be
            written as ``NAME_mask.png``: the second would overwrite the first's results).
    """
    files: dict[Path, Path] = {}  # resolved path -> path as given
    for item in map(Path, inputs):
        folder = item if item.is_dir() else item.parent
        if (folder / PREDICTIONS_MARKER).is_file():
            raise ConvUNeXtError(
                f"{item}: convunext predict outputs (its folder holds {PREDICTIONS_MARKER}), not input images; "
                "give the images themselves"
            )
        if item.is_dir():
            found = sorted(p for p in item.iterdir() if is_image_file(p))
            if not found:
                raise ConvUNeXtError(f"{item}: folder holds no images (png, jpg, tif, bmp, gif)")
        elif item.is_file():
            found = [item]
        else:
            raise ConvUNeXtError(f"{item}: no such file or folder")
        for path in found:
            files.setdefault(path.resolve(), path)
    return distinct_names(list(files.values()), lambda path: path.stem)


def distinct_names(inputs: list[Path], name_of: Callable[[Path], str]) -> list[Path]:
    """``inputs``, once no two of them have the same output name ``name_of(path)``.

    Raises:
        ConvUNeXtError: two inputs of one name (the second's outputs would overwrite the first's), naming both.
    """
    by_name: dict[str, Path] = {}
    for path in inputs:
        other = by_name.setdefault(name_of(path), path)
        if other is not path:
            raise ConvUNeXtError(
                f"{other} and {path}: same name {name_of(path)!r}, their outputs would overwrite each other "
                "(rename one or segment them into different --out folders)"
            )
    return inputs


def output_paths(out_dir: Path, name: str, probabilities: bool = False, overlay: bool = False) -> list[Path]:
    """The files :func:`save_prediction` writes for image ``name``: ``NAME_mask.png``, then ``NAME_prob.npy`` and
    ``NAME_overlay.png`` when asked for."""
    wanted = (True, probabilities, overlay)
    return [out_dir / f"{name}{suffix}" for suffix, want in zip(OUTPUT_SUFFIXES, wanted, strict=True) if want]


def png_bytes(pixels: np.ndarray) -> bytes:
    """``pixels`` (``H x W`` or ``H x W x 3`` uint8) as the bytes of a PNG file."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def save_prediction(
    out_dir: Path,
    name: str,
    prediction: Prediction,
    image: np.ndarray | None = None,
    probabilities: bool = False,
    binary_as_255: bool = True,
) -> list[Path]:
    """Write ``NAME_mask.png`` (0/255 for two classes, else class ids), optionally ``NAME_prob.npy``
    (``K x H x W`` float16) and, when ``image`` is given, ``NAME_overlay.png``. Returns the written paths.

    The files are written as one set (:func:`~convunext.utils.io.atomic_write_files`): each to a temporary name
    first, all renamed into place once all are complete, so a kill or a full disk never leaves a truncated file
    under an output's name, nor one image's mask without the overlay it asked for.

    Raises:
        ConvUNeXtError: a full disk (or another machine-side write failure), naming the file.
    """
    mask = prediction.mask
    stored = (mask * 255).astype(np.uint8) if binary_as_255 and prediction.probabilities.shape[0] == 2 else mask
    contents = [png_bytes(stored)]
    if probabilities:
        contents.append(_npy_bytes(prediction.probabilities.astype(np.float16)))
    if image is not None:
        contents.append(png_bytes(overlay(image, mask)))
    paths = output_paths(out_dir, name, probabilities, image is not None)
    atomic_write_files(list(zip(paths, contents, strict=True)))
    return paths


class PredictionFolder:
    """``with PredictionFolder(out_dir, checkpoint, inputs) as folder:`` ... ``folder.save(path, image,
    prediction)`` for each input: the outputs of ``checkpoint``'s predictions of ``inputs`` (see the module
    docstring).

    Args:
        out_dir: the folder (created if needed; apart from the images).
        checkpoint: the checkpoint whose predictions the folder holds.
        inputs: the image files to be segmented (:func:`expand_inputs`).
        probabilities: also write ``NAME_prob.npy`` for each image.
        overlay: also write ``NAME_overlay.png`` for each image.

    Raises:
        ConvUNeXtError: here, before any work: ``out_dir`` cannot be a folder (it, or a parent, is a file), holds an
            input image, or an input's outputs would replace an input. On entering: the folder is in use by another
            job, holds another checkpoint's predictions, or holds files of the outputs' names that predict did not
            write.
    """

    def __init__(
        self,
        out_dir: str | Path,
        checkpoint: Checkpoint,
        inputs: Sequence[Path],
        probabilities: bool = False,
        overlay: bool = False,
    ) -> None:
        self.out_dir = check_output_folder(out_dir)
        self.checkpoint = checkpoint
        self.probabilities, self.overlay = probabilities, overlay
        self.outputs = [out for path in inputs for out in self.output_paths(path)]
        self._check_inputs(inputs)
        self._lock = RunLock(self.out_dir, hint="wait for it to finish, or give another --out folder")
        self.rows: dict[str, dict[str, object]] = {}
        self._unwritten = 0

    suffixes: tuple[str, ...] = OUTPUT_SUFFIXES
    """What the outputs' names end with (for the temporary files a killed predict leaves)."""

    def name_of(self, path: Path) -> str:
        """The name of input ``path``'s outputs: its stem."""
        return path.stem

    def output_paths(self, path: Path) -> list[Path]:
        """The files written for input ``path`` (:func:`output_paths`)."""
        return output_paths(self.out_dir, self.name_of(path), self.probabilities, self.overlay)

    def _check_inputs(self, inputs: Sequence[Path]) -> None:
        """Refuse a folder where the outputs would replace an input or be read back as one."""
        if not self.out_dir.is_dir():
            return
        given = {path.resolve(): path for path in inputs}
        for path in inputs:
            for output in self.output_paths(path):
                if output.resolve() in given:
                    raise ConvUNeXtError(
                        f"{given[output.resolve()]}: is an input image, and the outputs of {path} would replace it; "
                        "give an --out folder apart from the images"
                    )
        folder = self.out_dir.resolve()
        held = next((path for resolved, path in given.items() if resolved.parent == folder), None)
        if held is not None:
            raise ConvUNeXtError(
                f"--out {self.out_dir}: holds the input image {held}; give an --out folder apart from the images "
                "(masks written beside them would later be read as images)"
            )

    def __enter__(self) -> PredictionFolder:
        self._lock.acquire()
        try:
            self._claim()
        except BaseException:
            self._lock.release()
            raise
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        try:
            if self._unwritten:
                self._write_table()
        finally:
            self._lock.release()

    def _write_table(self) -> None:
        """Write :data:`PREDICTIONS_TABLE`: the rows of earlier predicts into the folder, updated with this one's."""
        with atomic_path(self.out_dir / PREDICTIONS_TABLE) as tmp, open(tmp, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=TABLE_COLUMNS)
            writer.writeheader()
            writer.writerows(self.rows[name] for name in sorted(self.rows))
        self._unwritten = 0

    def _claim(self) -> None:
        """Mark the locked folder as holding the checkpoint's predictions, after refusing a folder that holds
        another checkpoint's, or files that predict did not write under the outputs' names; then remove the
        temporary files a killed predict left."""
        marker = self.out_dir / PREDICTIONS_MARKER
        weights_sha256 = self.checkpoint.meta["weights"]["sha256"]
        if marker.is_file():
            try:
                recorded = json.loads(marker.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                recorded = None
            recorded = recorded if isinstance(recorded, dict) else {}
            if recorded.get("weights_sha256") != weights_sha256:
                raise ConvUNeXtError(
                    f"{self.out_dir}: holds the predictions of another checkpoint "
                    f"({recorded.get('checkpoint', 'unknown')}); give another --out folder, or empty this one"
                )
        else:
            existing = next((path for path in [*self.outputs, self.out_dir / PREDICTIONS_TABLE] if path.exists()), None)
            if existing is not None:
                raise ConvUNeXtError(
                    f"{existing}: exists and was not written by convunext predict; give another --out folder"
                )
            checkpoint_path = str(self.checkpoint.path.resolve())
            atomic_write_json(
                marker, {"format": MARKER_FORMAT, "checkpoint": checkpoint_path, "weights_sha256": weights_sha256}
            )
        table = self.out_dir / PREDICTIONS_TABLE
        if table.is_file():  # the rows of earlier predicts of this checkpoint into the folder stay listed
            with open(table, newline="") as handle:
                self.rows = {row["name"]: dict(row) for row in csv.DictReader(handle) if row.get("name")}
        written = [f"*{suffix}" for suffix in self.suffixes] + [PREDICTIONS_MARKER, PREDICTIONS_TABLE]
        for pattern in written:  # the temporary files of a predict killed while writing
            for leftover in self.out_dir.glob(temporary_files(pattern)):
                leftover.unlink(missing_ok=True)

    def save(self, path: Path, image: np.ndarray, prediction: Prediction) -> list[Path]:
        """Write the outputs of input ``path`` (its ``image``, ``H x W x C`` float in [0, 1], for the overlay);
        returns the written paths (:func:`save_prediction`)."""
        overlaid = image if self.overlay else None
        written = save_prediction(self.out_dir, path.stem, prediction, overlaid, probabilities=self.probabilities)
        scale = prediction.scale.record() if prediction.scale is not None else {}
        self.rows[path.stem] = {
            "name": path.stem,
            "image": str(path),
            **{key: scale.get(key) for key in ("scale", "fov_diameter", "scale_reason")},
            "threshold": prediction.threshold,
            "outside_fov": prediction.outside_fov,
        }
        self._unwritten += 1
        if self._unwritten >= TABLE_EVERY:
            self._write_table()
        return written
