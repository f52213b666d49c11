"""``convunext data prepare``: convert a DRIVE / GlaS / HRF / STARE / CHASE_DB1 download (folder, ``.zip`` or
``.tar[.gz]``), or any folder dataset, into the generic folder layout (:mod:`convunext.data.folder`) with lossless
PNGs, ``splits.json`` and a ``dataset.json`` (name, class names, counts per split, mean/std of the training images,
sha256 of every file). A dataset that ships no field-of-view masks but derives them (STARE, CHASE_DB1) gets its
derived FOVs written into ``fov/``, so the prepared folder is read with the same fields of view. A dataset with a
converter of its own (:attr:`~convunext.data.registry.DatasetSpec.convert`: ``volumes``, into nnU-Net v2's raw
layout, :mod:`convunext.data.volumes.prepare`) is written by it, with the same guarantees below.

The output appears all at once, complete: everything is written into a temporary sibling ``OUT.partial-<pid>``
that holds the marker file :data:`~convunext.data.folder.INCOMPLETE_MARKER` until ``dataset.json`` is written; the
marker is then removed and the folder renamed to ``OUT`` (an empty ``OUT`` given by the user is replaced). On an
error or Ctrl-C the temporary folder is removed; after a kill it stays behind, and every reader refuses it as an
interrupted prepare (a hand-made folder cannot be told apart otherwise; see :mod:`convunext.data.folder`).

Nothing is written outside those two folders: an archive is extracted into a temporary ``.source`` folder inside the
temporary one (and removed afterwards), after checking that no member would land outside it.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import tarfile
import zipfile
from functools import partial
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from ..errors import ConvUNeXtError, error_text
from ..utils.io import sha256_file
from .base import DatasetInfo, FileDataset, Record
from .folder import INCOMPLETE_MARKER, load_dataset_json
from .io import image_channels, image_size, list_images, open_image, read_image
from .registry import DatasetSpec, dataset_spec, list_datasets
from .stats import compute_mean_std

FORMAT_VERSION = 1
_EXTRACT_DIR = ".source"


# -------------------------------------------------------------------------------------------- archive safety
def _member_refusal(name: str, base: Path, special: str | None) -> str | None:
    """Why an archive member may not be extracted into ``base`` (the resolved output folder), None when it may:
    ``special`` (the archive's own reason: a link, a special file), then an absolute path (``/``, a drive letter),
    a ``..`` component, or any path that resolves outside ``base``. Backslashes count as separators (archives made
    on Windows)."""
    name = name.replace("\\", "/")
    if special is not None:
        return special
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        return "absolute path"
    if ".." in PurePosixPath(name).parts:
        return "path with '..'"
    target = (base / name).resolve()
    if target != base and base not in target.parents:
        return "path outside the output folder"
    return None


def safe_extract(archive: Path, destination: Path) -> Path:
    """Extract ``archive`` into ``destination``, refusing (before writing anything) members with an absolute
    path, a ``..`` component, a symbolic link, or any path that resolves outside ``destination``.

    Raises:
        ConvUNeXtError: not a zip, unreadable, or an unsafe member (named in the message).
    """
    archive, destination = Path(archive), Path(destination)
    try:
        handle = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as error:
        raise ConvUNeXtError(f"{archive}: cannot open zip ({error_text(error)})") from None
    with handle:
        members = handle.infolist()
        base = destination.resolve()
        for info in members:
            reason = _member_refusal(
                info.filename, base, "symbolic link" if stat.S_ISLNK(info.external_attr >> 16) else None
            )
            if reason:
                raise ConvUNeXtError(f"{archive}: refusing member {info.filename!r} ({reason})")
        destination.mkdir(parents=True, exist_ok=True)
        try:
            for info in members:
                target = base / info.filename.replace("\\", "/")
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with handle.open(info) as source, open(target, "wb") as sink:
                    shutil.copyfileobj(source, sink)
        except (zipfile.BadZipFile, OSError, EOFError) as error:
            raise ConvUNeXtError(f"{archive}: cannot extract ({error_text(error)})") from None
    return destination


def safe_extract_tar(archive: Path, destination: Path) -> Path:
    """:func:`safe_extract` for a ``.tar``, ``.tar.gz``, ``.tgz``, ``.tar.bz2`` or ``.tar.xz`` (the Medical
    Segmentation Decathlon's downloads are tars): only regular files and folders, none outside ``destination``.

    Raises:
        ConvUNeXtError: not a readable tar, a truncated one, an unsafe member (a link, a sparse file, a device, an
            absolute or ``..`` path), named in the message, or more bytes than the disk has free, before anything
            is written.
    """
    archive, destination = Path(archive), Path(destination)
    try:
        with tarfile.open(archive) as handle:
            _extract_tar_members(archive, handle, destination)
    except (tarfile.TarError, OSError, EOFError) as error:
        raise ConvUNeXtError(f"{archive}: cannot extract tar ({error_text(error)})") from None
    return destination


def _extract_tar_members(archive: Path, handle: tarfile.TarFile, destination: Path) -> None:
    members = handle.getmembers()
    base = destination.resolve()
    names = []
    for member in members:
        regular = (member.isfile() or member.isdir()) and not member.issparse()
        reason = _member_refusal(member.name, base, None if regular else "link, sparse or special file")
        if reason:
            raise ConvUNeXtError(f"{archive}: refusing member {member.name!r} ({reason})")
        names.append(member.name.replace("\\", "/"))
    destination.mkdir(parents=True, exist_ok=True)
    needed, free = sum(member.size for member in members), shutil.disk_usage(destination).free
    if needed > free:
        raise ConvUNeXtError(f"{archive}: needs {needed / 2**30:.1f} GiB to extract, {free / 2**30:.1f} GiB are free")
    for member, name in zip(members, names):
        target = base / name
        if member.isdir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        source = handle.extractfile(member)
        assert source is not None  # a regular file
        with source, open(target, "wb") as sink:
            shutil.copyfileobj(source, sink)


def extract_archive(archive: Path, destination: Path) -> Path:
    """Extract a zip (:func:`safe_extract`) or a tar (:func:`safe_extract_tar`) into ``destination``.

    Raises:
        ConvUNeXtError: neither a folder, a zip nor a tar; or the extractor's errors.
    """
    if zipfile.is_zipfile(archive):
        return safe_extract(archive, destination)
    if tarfile.is_tarfile(archive):
        return safe_extract_tar(archive, destination)
    raise ConvUNeXtError(f"{archive}: not a folder, a .zip or a .tar file")


# ------------------------------------------------------------------------------------------------ writing
def _save_image_png(source: Path, target: Path) -> None:
    """Re-encode an image file as PNG without changing its pixels (8/16-bit grey, RGB; alpha and palettes
    become RGB); float images (validated by :func:`read_image`) become 16-bit grey, within 1/131070 of the value."""
    image = open_image(source)
    if image.mode == "F":
        out = Image.fromarray(np.round(read_image(source)[..., 0] * 65535).astype(np.uint16))
    elif image.mode in ("1", "L", "RGB", "I;16"):
        out = image
    elif image.mode in ("I;16B", "I;16L", "I;16N", "I"):
        array = np.asarray(image)
        out = Image.fromarray(array.astype(np.uint8 if array.max(initial=0) <= 255 else np.uint16))
    elif image.mode == "LA":
        out = image.convert("L")
    else:
        out = image.convert("RGB")
    if out.mode == "1":
        out = out.convert("L")
    out.save(target, format="PNG")


def _save_mask_png(mask: np.ndarray, num_classes: int, target: Path) -> None:
    values = (mask > 0).astype(np.uint8) * 255 if num_classes == 2 else mask.astype(np.uint8)
    Image.fromarray(values, mode="L").save(target, format="PNG")


def preparable_datasets() -> list[str]:
    """The registered datasets that :func:`prepare_dataset` converts (those with a
    :attr:`~convunext.data.registry.DatasetSpec.locate_download` or a
    :attr:`~convunext.data.registry.DatasetSpec.convert`), in registration order."""
    return [name for name in list_datasets() if dataset_spec(name).preparable]


def prepare_dataset(name: str, source: str | Path, out: str | Path, progress: bool = True) -> dict[str, Any]:
    """Convert a dataset download into the folder layout and return the ``dataset.json`` written.

    Args:
        name: one of :func:`preparable_datasets` (``"drive"``, ``"glas"``, ``"hrf"``, ``"stare"``, ``"chase_db1"``,
            ``"folder"``, ``"volumes"``).
        source: the downloaded folder, ``.zip`` or ``.tar[.gz]`` (any folder level above the dataset's own files
            works).
        out: the output folder; must not exist or be empty.
        progress: show a progress bar on stderr.

    Raises:
        ConvUNeXtError: a bad name, source or output folder, an unsafe zip, or any bad file in the download.
    """
    preparable = preparable_datasets()
    if str(name).lower() not in preparable:
        raise ConvUNeXtError(f"cannot prepare dataset {name!r}; expected one of {', '.join(preparable)}")
    spec = dataset_spec(name)
    source, out = Path(source).expanduser(), Path(out).expanduser()
    if not source.exists():
        raise ConvUNeXtError(f"{source}: not found")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConvUNeXtError(f"{out}: output folder exists and is not empty")
    if source.is_dir() and out.resolve() == source.resolve():
        raise ConvUNeXtError(f"{out}: the output folder must differ from the source")
    final = out.resolve()  # an OUT that is a symbolic link to an empty folder: that folder is replaced
    partial = final.with_name(f"{final.name}.partial-{os.getpid()}")
    if partial.exists():  # a killed run's, whose process id this one has inherited
        if not (partial / INCOMPLETE_MARKER).is_file():
            raise ConvUNeXtError(f"{partial}: exists (it is where the output is built); move it away")
        shutil.rmtree(partial)
    try:
        partial.mkdir(parents=True)
    except OSError as error:
        raise ConvUNeXtError(f"{out}: cannot create the output folder ({error.strerror or error})") from None
    try:
        (partial / INCOMPLETE_MARKER).write_text(
            "convunext data prepare is writing this folder: it is incomplete while this file is here\n",
            encoding="utf-8",
        )
        meta = _prepare(spec, source, partial, progress)
        (partial / INCOMPLETE_MARKER).unlink()
        _move_into_place(partial, final, out)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return meta


def _move_into_place(partial: Path, final: Path, out: Path) -> None:
    """Rename the finished ``partial`` folder to ``final`` (replacing an empty folder there); ``out`` is the name
    the user gave, for the error message."""
    try:
        if final.is_dir() and not any(final.iterdir()):
            final.rmdir()
        partial.rename(final)
    except OSError as error:
        if final.exists():
            raise ConvUNeXtError(f"{out}: output folder exists and is not empty") from None
        raise ConvUNeXtError(f"{out}: cannot create the output folder ({error.strerror or error})") from None


def _prepare(spec: DatasetSpec, source: Path, out: Path, progress: bool) -> dict[str, Any]:
    extracted = extract_archive(source, out / _EXTRACT_DIR) if source.is_file() else None
    try:
        convert = spec.convert if spec.convert is not None else partial(_convert_images, spec)
        return convert(extracted or source, out, progress, source.name)
    finally:
        if extracted is not None:
            shutil.rmtree(extracted, ignore_errors=True)


def _convert_images(spec: DatasetSpec, source: Path, out: Path, progress: bool, source_name: str) -> dict[str, Any]:
    assert spec.locate_download is not None  # prepare_dataset took only preparable datasets
    name = spec.name
    root = spec.locate_download(source)

    readers: dict[str, FileDataset] = {}
    for split in ("train", "val", "test"):
        try:
            readers[split] = spec.reader(root=root, split=split)
        except ConvUNeXtError as error:
            # a user's folder may lack a test split; a dataset with fixed split lists must be complete
            if spec.split_file is not None or split == "train" or "missing split" not in str(error):
                raise
    class_names = readers["train"].info.class_names
    dataset_name = readers["train"].info.name  # a folder's: its dataset.json's name, else the folder's
    num_classes = len(class_names)
    has_fov = any(
        reader.derived_fov or any(record.fov is not None for record in reader.records) for reader in readers.values()
    )
    folders = ["images", "masks"] + (["fov"] if has_fov else [])
    for folder in folders:
        (out / folder).mkdir()

    items = [(split, index) for split, reader in readers.items() for index in range(len(reader))]
    for split, index in tqdm(items, desc=f"prepare {name}", unit="image", disable=not progress, leave=False):
        reader = readers[split]
        record = reader.records[index]
        sample = reader[index]  # decodes and validates image, mask, fov
        _save_image_png(record.image, out / "images" / f"{record.name}.png")
        _save_mask_png(sample["mask"].numpy(), num_classes, out / "masks" / f"{record.name}.png")
        if has_fov:
            fov = sample["fov"].numpy().astype(np.uint8) * 255
            Image.fromarray(fov, mode="L").save(out / "fov" / f"{record.name}.png", format="PNG")

    splits = {split: readers[split].names if split in readers else [] for split in ("train", "val", "test")}
    (out / "splits.json").write_text(json.dumps(splits, indent=1) + "\n", encoding="utf-8")

    train = _written_trainval(out, splits["train"] + splits["val"], dataset_name, class_names, has_fov)
    largest = max(image_size(train.records[0].image))
    mean, std = compute_mean_std(train, reduce=4 if largest > 2000 else 1)
    meta: dict[str, Any] = {
        "name": dataset_name,
        "format_version": FORMAT_VERSION,
        "created_by": created_by(name),
        "source": source_name,
        "class_names": class_names,
        "in_channels": train.info.in_channels,
        "has_fov": has_fov,
        "ignore_index": 255,
        "mask_values": "0/255 (binary)" if num_classes == 2 else "class ids (255 = ignore)",
        "counts": {split: len(splits[split]) for split in ("train", "val", "test")}
        | {"trainval": len(splits["train"]) + len(splits["val"])},
        "mean": list(mean),
        "std": list(std),
        "stats": "per-channel mean/std of the trainval split (all training images), pooled over pixels inside the "
        "FOV where there is one, values in [0, 1]",
        "files": file_digests(out),
    }
    (out / "dataset.json").write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    return meta


def created_by(name: str) -> str:
    """``dataset.json``'s ``created_by``: the package version and the command."""
    from .. import __version__

    return f"convunext {__version__} data prepare {name}"


def file_digests(out: Path) -> dict[str, str]:
    """The sha256 of every file written into ``out`` (by relative POSIX path), for :func:`verify_prepared`;
    the extracted archive and the incomplete marker are left out."""
    files = sorted(
        p
        for p in out.rglob("*")
        if p.is_file() and p.name != INCOMPLETE_MARKER and _EXTRACT_DIR not in p.relative_to(out).parts
    )
    return {p.relative_to(out).as_posix(): sha256_file(p) for p in files}


def _written_trainval(out: Path, stems: list[str], name: str, class_names: list[str], has_fov: bool) -> FileDataset:
    """The ``trainval`` images as written into ``out`` (which the folder readers refuse until it is complete)."""
    records = [
        Record(
            stem,
            out / "images" / f"{stem}.png",
            out / "masks" / f"{stem}.png",
            out / "fov" / f"{stem}.png" if has_fov else None,
        )
        for stem in stems
    ]
    in_channels = image_channels(list_images(out / "images")[0])
    info = DatasetInfo(name=name, class_names=class_names, in_channels=in_channels, has_fov=has_fov)
    return FileDataset(records, info, "trainval", out, check_sizes=False)


def verify_prepared(root: str | Path) -> list[str]:
    """Files of a prepared folder whose sha256 differs from ``dataset.json`` (missing files included)."""
    root = Path(root)
    meta = load_dataset_json(root)
    bad = []
    for relative, digest in meta.get("files", {}).items():
        path = root / relative
        if not path.is_file() or sha256_file(path) != digest:
            bad.append(relative)
    return bad
