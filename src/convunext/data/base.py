"""What every dataset returns (:data:`Sample`), what it describes about itself (:class:`DatasetInfo`), and the
file-backed base class the DRIVE, GlaS, HRF, STARE, CHASE_DB1 and folder readers share."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import ConvUNeXtError
from .fov import derive_fov
from .io import IGNORE_INDEX, image_size, is_image_file, read_fov, read_image, read_instances, read_mask

SPLITS = ("train", "val", "test", "trainval")
BINARY_CLASS_NAMES = ("background", "foreground")
"""The class names of a binary dataset that does not name its classes (a folder without ``class_names``)."""

Sample = dict[str, Any]
"""One item of a dataset, a plain dict:

* ``"image"``: float32 tensor ``C x H x W``, values in ``[0, 1]`` (not normalised);
* ``"mask"``: int64 tensor ``H x W`` of class ids (255 = ignore);
* ``"fov"``: bool tensor ``H x W``, True inside the field of view (all True when the dataset has none);
* ``"name"``: str, the image's file stem.

Transforms (:mod:`convunext.data.transforms`) take and return the same dict with ``"image"`` normalised.
"""


@dataclass(frozen=True)
class DatasetInfo:
    """What a model and a trainer need to know about a dataset.

    Attributes:
        name: dataset name (``"drive"``, ``"glas"``, ``"hrf"``, ``"synthetic"`` or the folder's own name).
        class_names: one name per class, background first; ``len(class_names)`` is the model's ``num_classes``.
        in_channels: channels of ``Sample["image"]``.
        mean: per-channel mean of the training images (values in ``[0, 1]``; inside the FOV where there is one).
        std: per-channel standard deviation, same pixels.
        has_fov: whether the dataset's items have a field of view (retinal datasets): shipped as masks, or derived
            from each image (:class:`FileDataset` with ``derived_fov``).
        ignore_index: the mask value that losses and metrics skip.
        volume: for slices of volumes, the :class:`~convunext.data.volumes.VolumeSettings` record (slice axis,
            2.5D context, intensity normalisation) that prediction must reproduce; None for 2D images.
    """

    name: str
    class_names: list[str] = field(default_factory=lambda: list(BINARY_CLASS_NAMES))
    in_channels: int = 3
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    std: tuple[float, ...] = (0.25, 0.25, 0.25)
    has_fov: bool = False
    ignore_index: int = IGNORE_INDEX
    volume: dict[str, Any] | None = None

    @property
    def num_classes(self) -> int:
        """Number of classes, background included."""
        return len(self.class_names)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (lists instead of tuples)."""
        data = asdict(self)
        data["mean"] = list(self.mean)
        data["std"] = list(self.std)
        return data


def vessel_info(
    name: str, mean: tuple[float, ...] = (0.5, 0.5, 0.5), std: tuple[float, ...] = (0.25, 0.25, 0.25)
) -> DatasetInfo:
    """:class:`DatasetInfo` of a retinal vessel dataset ``name`` (RGB fundus photographs, background / vessel, a
    field of view) with the given statistics."""
    return DatasetInfo(name=name, class_names=["background", "vessel"], in_channels=3, mean=mean, std=std, has_fov=True)


@dataclass(frozen=True)
class Record:
    """Files of one item of a file-backed dataset (``fov`` is None where the dataset ships no FOV mask)."""

    name: str
    image: Path
    mask: Path
    fov: Path | None = None


def check_split(split: str) -> str:
    """Return ``split`` if it is one of :data:`SPLITS`, else raise a one-line error."""
    if split not in SPLITS:
        raise ConvUNeXtError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    return split


def load_split_file(dataset: str) -> dict[str, Any]:
    """The fixed split lists shipped with the package for ``dataset`` (``drive``, ``glas``, ``hrf``, ``stare``,
    ``chase_db1``)."""
    text = resources.files("convunext.data").joinpath("splits", f"{dataset}.json").read_text(encoding="utf-8")
    return json.loads(text)


def to_sample(image: np.ndarray, mask: np.ndarray, fov: np.ndarray | None, name: str) -> Sample:
    """Numpy arrays (``H x W x C`` float image, ``H x W`` int mask, ``H x W`` bool fov or None) -> :data:`Sample`."""
    image_tensor = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
    mask_tensor = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.int64))
    if fov is None:
        fov_tensor = torch.ones(mask_tensor.shape, dtype=torch.bool)
    else:
        fov_tensor = torch.from_numpy(np.ascontiguousarray(fov, dtype=bool))
    return {"image": image_tensor, "mask": mask_tensor, "fov": fov_tensor, "name": name}


class FileDataset(Dataset):
    """A dataset of image / mask (/ FOV) files listed by :class:`Record`.

    Construction checks that every file exists and, from the headers only, that image, mask and FOV have the
    same size; decoding happens in ``__getitem__``, which raises a one-line :class:`ConvUNeXtError` naming the
    file for an unreadable/truncated image or bad mask values. :meth:`validate` decodes everything up front.

    A fundus dataset that ships no FOV masks (STARE, CHASE_DB1) is built with ``derived_fov=True``: each item's
    field of view is then derived from its image (:func:`~convunext.data.fov.derive_fov`) wherever it is read
    (:meth:`__getitem__` and :meth:`read_arrays`), so training, statistics and evaluation all see the same one.

    Subclasses set ``info`` and call ``super().__init__(records, ...)``.
    """

    info: DatasetInfo

    def __init__(
        self,
        records: list[Record],
        info: DatasetInfo,
        split: str,
        root: Path,
        instances: bool = False,
        check_sizes: bool = True,
        derived_fov: bool = False,
    ) -> None:
        self.records = list(records)
        self.info = info
        self.split = split
        self.root = Path(root)
        self.instances = instances
        self.derived_fov = derived_fov
        if derived_fov and (not info.has_fov or any(record.fov is not None for record in self.records)):
            raise ValueError("derived_fov is for datasets with a field of view (info.has_fov) that ship no FOV masks")
        if not self.records:
            raise ConvUNeXtError(f"{self.root}: no images for split {split!r}")
        if check_sizes:
            for record in self.records:
                self._check_sizes(record)

    @staticmethod
    def _check_sizes(record: Record) -> None:
        size = image_size(record.image)
        for other in (record.mask, record.fov):
            if other is None:
                continue
            other_size = image_size(other)
            if other_size != size:
                raise ConvUNeXtError(
                    f"{other}: size {other_size[1]}x{other_size[0]} does not match its image {record.image.name} "
                    f"({size[1]}x{size[0]})"
                )

    @property
    def names(self) -> list[str]:
        """Item names (file stems) in dataset order."""
        return [record.name for record in self.records]

    def __len__(self) -> int:
        return len(self.records)

    def _fov(self, record: Record, image: np.ndarray) -> np.ndarray | None:
        """The FOV (``H x W`` bool) of ``record``: its mask file's, else derived from its full-size ``image``
        (``H x W x C``) when the dataset derives them, else None.

        Raises:
            ConvUNeXtError: an unreadable FOV mask, or no field of view found in the image (naming the file).
        """
        if record.fov is not None:
            return read_fov(record.fov)
        if not self.derived_fov:
            return None
        try:
            return derive_fov(image)
        except ConvUNeXtError as error:
            raise ConvUNeXtError(f"{record.image}: {error} (is it a fundus photograph?)") from None

    def read_arrays(self, index: int, reduce: int = 1) -> tuple[np.ndarray, np.ndarray | None]:
        """Image (``H x W x C`` float) and FOV (``H x W`` bool or None) of item ``index`` without the mask,
        optionally subsampled by ``reduce`` (for statistics; a derived FOV is derived at full size first)."""
        record = self.records[index]
        image = read_image(record.image, channels=self.info.in_channels, reduce=reduce)
        full = image if reduce == 1 or not self.derived_fov else read_image(record.image, self.info.in_channels)
        fov = self._fov(record, full)
        if fov is not None and reduce > 1:
            fov = fov[::reduce, ::reduce]
            if fov.shape != image.shape[:2]:  # JPEG draft sizes can differ by a pixel
                rows = np.minimum(np.arange(image.shape[0]) * fov.shape[0] // image.shape[0], fov.shape[0] - 1)
                cols = np.minimum(np.arange(image.shape[1]) * fov.shape[1] // image.shape[1], fov.shape[1] - 1)
                fov = fov[rows][:, cols]
        return image, fov

    def __getitem__(self, index: int) -> Sample:
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        record = self.records[index]
        image = read_image(record.image, channels=self.info.in_channels)
        mask = read_mask(record.mask, num_classes=self.info.num_classes, instances=self.instances)
        fov = self._fov(record, image)
        for path, array in ((record.mask, mask), (record.fov, fov)):
            if array is not None and array.shape != image.shape[:2]:
                raise ConvUNeXtError(
                    f"{path}: size {array.shape[1]}x{array.shape[0]} does not match its image {record.image.name} "
                    f"({image.shape[1]}x{image.shape[0]})"
                )
        return to_sample(image, mask, fov, record.name)

    def instance_map(self, name: str) -> np.ndarray:
        """The instance ids (``H x W``, 0 = background) of item ``name`` of a dataset of instance masks (GlaS), for
        object-level metrics.

        Raises:
            ValueError: the dataset's masks are not instance masks, or no item is called ``name``.
        """
        if not self.instances:
            raise ValueError(f"{type(self).__name__} has no instance masks")
        record = next((record for record in self.records if record.name == name), None)
        if record is None:
            raise ValueError(f"no item named {name!r}")
        return read_instances(record.mask)

    def validate(self) -> None:
        """Decode every item once; raises :class:`ConvUNeXtError` naming the first bad file."""
        for index in range(len(self)):
            self[index]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(root={str(self.root)!r}, split={self.split!r}, items={len(self)})"


def split_stems(lists: dict[str, Any], split: str) -> list[str]:
    """Stems of ``split`` from a shipped split file: ``train`` = ``trainval`` minus ``val``."""
    check_split(split)
    if split == "train":
        val = set(lists["val"])
        return [stem for stem in lists["trainval"] if stem not in val]
    return list(lists[split])


class FolderIndex:
    """Case-insensitive lookup of image files by stem in one folder (``01_h`` finds ``01_h.JPG``).

    A stem that two files answer to (``a.png`` and ``a.tif``, or ``a.png`` and ``A.png``) is refused when it is
    looked up, naming both, rather than one of them being used in silence.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.by_stem: dict[str, list[Path]] = {}
        if self.folder.is_dir():
            for path in sorted(self.folder.iterdir(), key=lambda p: p.name):
                if is_image_file(path):
                    self.by_stem.setdefault(path.stem.lower(), []).append(path)

    def find(self, stem: str) -> Path | None:
        """The image file named ``stem`` + any image extension, or None.

        Raises:
            ConvUNeXtError: two files answer to ``stem``.
        """
        found = self.by_stem.get(stem.lower(), [])
        if len(found) > 1:
            raise ConvUNeXtError(f"{found[0]} and {found[1].name}: two files for {stem!r}; keep one of them")
        return found[0] if found else None


def locate_root(
    root: str | Path | None, folder_name: str, is_root: Callable[[Path], bool], label: str, expected: str
) -> Path:
    """Find a dataset's top folder.

    Looks at ``root`` itself, ``root / folder_name``, then one and two levels of sub-folders (a download that
    unpacks into a versioned folder); ``root=None`` means :func:`default_data_root` ``/ folder_name``.

    Raises:
        ConvUNeXtError: nothing that ``is_root`` accepts was found; the message names ``root`` and ``expected``.
    """
    if root is None:
        from .paths import default_data_root

        root = default_data_root() / folder_name
    root = Path(root).expanduser()
    if not root.exists():
        raise ConvUNeXtError(f"{root}: {label} folder not found")
    if not root.is_dir():
        raise ConvUNeXtError(f"{root}: not a folder ({label} expects a folder with {expected})")
    found = find_root(root, folder_name, is_root)
    if found is None:
        raise ConvUNeXtError(f"{root}: no {label} copy found (expected {expected})")
    return found


def find_root(root: Path, folder_name: str, is_root: Callable[[Path], bool]) -> Path | None:
    """The first folder that ``is_root`` accepts among the existing folder ``root``, ``root / folder_name``, then
    one and two levels of sub-folders (hidden ones skipped), in name order; None if there is none."""
    candidates = [root, root / folder_name]
    for child in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        candidates.append(child)
        candidates.extend(sorted(p for p in child.iterdir() if p.is_dir() and not p.name.startswith(".")))
    return next((candidate for candidate in candidates if candidate.is_dir() and is_root(candidate)), None)
