"""File writes that never leave a half-written file behind: write to a temporary file, fsync, rename.

A write that fails because of the machine rather than the program (disk full, quota, file size limit, read-only
file system, no permission) raises a one-line :class:`~convunext.errors.ConvUNeXtError` naming the destination,
and the destination keeps its previous content.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from ..errors import ConvUNeXtError

ENVIRONMENT_ERRNOS = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file size limit exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.EIO: "input/output error (failing disk or network file system)",
}
# torch.save(obj, path) reports a failed write as a RuntimeError without the errno.
_TORCH_WRITE_FAILURES = ("unexpected pos", "file write failed")


def write_failure(error: BaseException, path: str | Path) -> ConvUNeXtError | None:
    """The one-line error for ``error`` raised while writing ``path``, or None if it is not a problem of the machine
    (then it is a bug and should propagate as it is)."""
    if isinstance(error, OSError) and error.errno in ENVIRONMENT_ERRNOS:
        return ConvUNeXtError(f"{ENVIRONMENT_ERRNOS[error.errno]} while writing {path}")
    if isinstance(error, RuntimeError) and any(text in str(error) for text in _TORCH_WRITE_FAILURES):
        return ConvUNeXtError(f"no space left on device (or file size limit reached) while writing {path}")
    return None


@contextlib.contextmanager
def writing(path: str | Path) -> Iterator[None]:
    """Within this block, a machine-side write failure (see :func:`write_failure`) becomes a one-line
    :class:`~convunext.errors.ConvUNeXtError` naming ``path``."""
    try:
        yield
    except (OSError, RuntimeError) as error:
        failure = write_failure(error, path)
        if failure is None:
            raise
        raise failure from error


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_read_umask()
"""The mode a plain ``open(path, "w")`` gives. Read once: reading the umask sets it for a moment, and every other
thread creating a file in that moment would get the wrong mode."""


def temporary_files(name: str = "*") -> str:
    """The glob pattern of the temporary files that writes of file ``name`` (a name or a glob pattern of names) use
    before their rename, and that a killed process leaves behind: ``.NAME.*.tmp``."""
    return f".{name}.*.tmp"


def _temp_beside(path: Path) -> Path:
    """A new empty temporary file in ``path``'s folder (created with its parents), named as
    :func:`temporary_files` says, with the permissions a plain ``open(path, "w")`` would give (``mkstemp`` makes it
    private to the owner)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, _FILE_MODE)
    except (AttributeError, OSError):  # no fchmod (Windows) or a file system without modes
        pass
    finally:
        os.close(fd)
    return Path(name)


def fsync_folder(folder: Path) -> None:
    """Make the renames in ``folder`` durable (a no-op where the file system cannot sync folders)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as error:
        if error.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; once the block succeeds it atomically replaces ``path``.

    If the block raises (or the process dies) the destination keeps its previous content; a machine-side write
    failure inside the block becomes a one-line :class:`~convunext.errors.ConvUNeXtError` naming ``path``.
    """
    path = Path(path)
    with writing(path):
        tmp = _temp_beside(path)
    try:
        with writing(path):
            yield tmp
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())
            os.replace(tmp, path)
            fsync_folder(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write(path: str | Path, write: Callable[[Path], Any]) -> None:
    """Call ``write(tmp_path)`` and atomically move the result to ``path``."""
    with atomic_path(path) as tmp:
        write(tmp)


def atomic_write_files(files: Sequence[tuple[str | Path, bytes]]) -> None:
    """Replace several files together: every one is written to a temporary file beside it and synced, and only
    when all are written are they renamed into place, in the given order.

    A failed write (a full disk, say) leaves every destination as it was. Only a crash during the renames
    themselves can leave the first few replaced and the others not, so put the file that marks the set as
    complete last.
    """
    pending: list[tuple[Path, Path]] = []
    try:
        for destination, data in files:
            destination = Path(destination)
            with writing(destination):
                tmp = _temp_beside(destination)
                pending.append((tmp, destination))
                with open(tmp, "wb") as handle:
                    handle.write(data)
                    handle.flush()
                    os.fsync(handle.fileno())
        for tmp, destination in pending:
            with writing(destination):
                os.replace(tmp, destination)
        for folder in dict.fromkeys(destination.parent for _, destination in pending):
            with writing(folder):
                fsync_folder(folder)
    finally:
        for tmp, _ in pending:
            tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Atomically replace ``path`` with ``text`` (UTF-8)."""
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_json(path: str | Path, data: Any) -> None:
    """Atomically replace ``path`` with ``data`` as indented JSON."""
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def prepare_output_file(path: str | Path) -> Path:
    """Check, before any expensive work, that ``path`` can be written as a file; create its missing parent folders.

    Raises:
        ConvUNeXtError: ``path`` is a folder, lies under a regular file, or its folder cannot be written (read-only,
            no permission, no space), with ``path`` named.
    """
    path = Path(path)
    if path.is_dir():
        raise ConvUNeXtError(f"{path}: is a folder; give a file name, e.g. {path / 'model.onnx'}")
    _refuse_file_on_the_way(path, path.parents)
    with writing(path):
        _temp_beside(path).unlink()
    return path


def check_output_folder(path: str | Path) -> Path:
    """Check, before any work, that ``path`` is a folder or can be created as one (neither it nor a parent folder
    is a regular file); creates nothing.

    Raises:
        ConvUNeXtError: ``path`` or one of its parents is a file, with ``path`` named.
    """
    path = Path(path)
    _refuse_file_on_the_way(path, [path, *path.parents])
    return path


def _refuse_file_on_the_way(path: Path, folders: Iterable[Path]) -> None:
    """Raise when the first of ``folders`` (``path``'s own folders, innermost first) that exists is not a folder."""
    existing = next((folder for folder in folders if folder.exists()), None)
    if existing is not None and not existing.is_dir():
        raise ConvUNeXtError(f"{path}: cannot create it, {existing} is a file, not a folder")


def sha256_bytes(data: bytes) -> str:
    """Hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path, chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()
