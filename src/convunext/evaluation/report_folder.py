"""Report folders written whole, by one job: ``convunext evaluate``'s (``metrics.json``, ``per_image.csv``,
``metrics.md``, ``report.html``, ``maps/``) and ``convunext compare``'s.

A job holds the folder's lock (:class:`~convunext.utils.lock.RunLock`) from start to end and writes its report into
a staging folder inside it (:data:`STAGING`). Only once every file is written does the new report replace the
folder's earlier one: the earlier report's record (``metrics.json``, ``comparison.json``: the file that says what
the report is of) is deleted first, then its other files, then the new files are moved in, the record last. So a
record always stands beside the files of its own report only, and a job that fails or is interrupted leaves the
earlier report as it was. (A kill within the few milliseconds of the moves leaves no record and the staging folder;
the next job into the folder sees the staging folder and replaces what is there.)

Only files a report of that kind writes are ever deleted; anything else in the folder is the user's and stays. A
folder that holds such files without a record of that kind (the user's own ``metrics.json``, say) is refused.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from ..errors import ConvUNeXtError
from ..utils.io import fsync_folder, temporary_files, writing
from ..utils.lock import RunLock

STAGING = ".convunext-staging"
"""The folder, inside a report folder, where a job writes its report until it is complete."""


@dataclass(frozen=True)
class ReportKind:
    """What one kind of report folder holds.

    Attributes:
        name: what the report is, for messages (``evaluation``).
        record: the file that says what the report is of; written last, so its presence means a complete report.
        files: glob patterns, relative to the folder, of the report's other files.
        record_keys: keys a record of this kind holds (a JSON file without them is not one).
    """

    name: str
    record: str
    files: tuple[str, ...]
    record_keys: tuple[str, ...]

    def is_record(self, path: Path) -> bool:
        """Whether ``path`` is a readable record of this kind."""
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False
        return isinstance(data, dict) and all(key in data for key in self.record_keys)


EVALUATION_REPORT = ReportKind(
    "evaluation",
    "metrics.json",
    ("per_image.csv", "per_volume.csv", "metrics.md", "report.html", "maps/*_prediction.png", "maps/*_errors.png"),
    ("weights_sha256", "metrics"),
)
COMPARISON_REPORT = ReportKind(
    "comparison",
    "comparison.json",
    ("comparison.md", "paired_differences.csv", "paired-*.png"),
    ("runs", "comparisons"),
)


class ReportFolder:
    """``with ReportFolder(folder, kind) as report:`` write every file into ``report.staging``; on a normal exit the
    folder's earlier report (if any) is replaced by the new one, whole (see the module docstring).

    Entering checks the folder before any work: it must not be a file, another process must not be writing a
    report into it, and its files of a report of ``kind`` must be a report of ``kind``. The folder is created if
    needed (and removed again if the job fails and leaves it empty).

    Attributes:
        replaces: whether the folder held an earlier report (which a normal exit replaces).

    Raises:
        ConvUNeXtError: the folder is a file, is in use, or holds files of the report's names that are not a report.
    """

    def __init__(self, folder: str | Path, kind: ReportKind) -> None:
        self.folder = Path(folder)
        self.kind = kind
        self.staging = self.folder / STAGING
        self.replaces = False
        self._lock = RunLock(self.folder, hint="wait for it to finish, or write the report into another folder")
        self._created = False
        self._committing = False

    def __enter__(self) -> ReportFolder:
        if self.folder.exists() and not self.folder.is_dir():
            raise ConvUNeXtError(
                f"{self.folder}: is a file, not a folder (the {self.kind.name} report is a folder of files)"
            )
        self._created = not self.folder.exists()
        self._lock.acquire()
        try:
            self.replaces = self._check_contents()
            shutil.rmtree(self.staging, ignore_errors=True)  # left by a killed job
            with writing(self.staging):
                self.staging.mkdir()
        except BaseException:
            self._release()
            raise
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        try:
            if error is None:
                self._committing = True
                with writing(self.folder):
                    self._commit()
        finally:
            self._release()

    def _report_files(self, with_temporary: bool = False) -> list[Path]:
        """The files of a report of this kind in the folder, the record first (``with_temporary``: and the
        temporary files an interrupted write of one of them left)."""
        patterns = [self.kind.record, *self.kind.files]
        if with_temporary:
            patterns += [str(Path(pattern).parent / temporary_files(Path(pattern).name)) for pattern in patterns]
        found = dict.fromkeys(path for pattern in patterns for path in sorted(self.folder.glob(pattern)))
        return [path for path in found if path.is_file()]

    def _check_contents(self) -> bool:
        """Whether the folder holds a report of this kind to replace; raise if it holds files that only look like
        one."""
        for pattern in self.kind.files:
            parent = self.folder / Path(pattern).parent
            if parent.exists() and not parent.is_dir():
                raise ConvUNeXtError(f"{parent}: is a file, where the {self.kind.name} report keeps a folder")
        found = self._report_files()
        record = self.folder / self.kind.record
        if not found or self.kind.is_record(record) or self.staging.is_dir():
            return bool(found)
        if record.exists():
            raise ConvUNeXtError(
                f"{record}: not the record of a convunext {self.kind.name}, which would replace it; "
                "move it away or write the report into another folder"
            )
        names = ", ".join(str(path.relative_to(self.folder)) for path in found[:3])
        raise ConvUNeXtError(
            f"{self.folder}: holds {names}{', ...' if len(found) > 3 else ''} but no {self.kind.record} (files of "
            f"your own, or a report left unfinished); move them away or write the report into another folder"
        )

    def _commit(self) -> None:
        """Replace the earlier report by the staged one: the old record first, the new record last."""
        earlier = self._report_files(with_temporary=True)
        for path in earlier:
            path.unlink()
        for emptied in {path.parent for path in earlier} - {self.folder}:
            if not any(emptied.iterdir()):
                emptied.rmdir()
        record = self.staging / self.kind.record
        staged = sorted((path for path in self.staging.rglob("*") if path.is_file()), key=lambda p: p == record)
        for path in staged:
            target = self.folder / path.relative_to(self.staging)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, target)
        for folder in dict.fromkeys(self.folder / path.relative_to(self.staging).parent for path in staged):
            fsync_folder(folder)
        shutil.rmtree(self.staging)

    def _release(self) -> None:
        """Drop the staging folder (kept after a failed commit: it marks the folder's files as a report's), unlock,
        and remove the folder if this job created it and leaves it empty."""
        if not self._committing:
            shutil.rmtree(self.staging, ignore_errors=True)
        self._lock.release()
        if self._created:
            with contextlib.suppress(OSError):  # not empty: the report, or anything else
                self.folder.rmdir()
