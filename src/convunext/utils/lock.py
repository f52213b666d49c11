"""An exclusive lock on a folder for the length of a job (a training run, the writing of a report).

``with RunLock(folder): ...`` holds ``folder/.lock``; a second process asking for the same folder is refused with
one line naming the folder and the holder (pid, host, start time, which the holder writes into the file).

* POSIX: ``fcntl.flock`` on the file. The kernel drops the lock when its process ends, however it ends (SIGKILL
  included), so a ``.lock`` file left behind by a killed process is stale and never blocks anyone.
* Elsewhere (no ``fcntl``), or on a filesystem without ``flock``: the file is created with ``O_EXCL``; a file whose
  holder is no longer running on this host is stale and taken over.

The holder deletes the file on release, before unlocking it; a process that locked the deleted file in between
sees that its file is no longer the folder's ``.lock`` and starts again, so two processes never both hold a folder.
The lock is not re-entrant: a second ``RunLock`` on a held folder is refused even within the same process.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any

from ..errors import ConvUNeXtError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".lock"
_UNWRITTEN_GRACE_S = 10.0  # an O_EXCL lock file still empty after this long belongs to a process that died


class RunLock:
    """Exclusive lock on ``folder`` (created if needed), as a context manager; released on any exit.

    Args:
        folder: the folder to lock (its ``.lock`` file is the lock).
        timeout: seconds to wait for a busy folder before refusing (0: refuse at once).
        hint: what the refusal message suggests to do instead.

    Raises:
        ConvUNeXtError: the folder is held by another process (``"FOLDER: in use by another process (pid P on
            HOST since TIME); HINT"``), or cannot be created.
    """

    def __init__(
        self, folder: str | Path, timeout: float = 0.0, hint: str = "wait for it to finish, or use another folder"
    ) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.timeout = timeout
        self.hint = hint
        self._fd: int | None = None
        self._flock = fcntl is not None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.release()

    def acquire(self) -> None:
        """Take the lock, waiting up to ``timeout`` seconds; raise :class:`ConvUNeXtError` if it stays busy."""
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise ConvUNeXtError(f"{self.folder}: cannot create this folder ({error.strerror or error})") from error
        deadline = time.monotonic() + self.timeout
        while (fd := self._try_lock()) is None:
            if time.monotonic() >= deadline:
                raise ConvUNeXtError(
                    f"{self.folder}: in use by another process ({self._describe_holder()}); {self.hint}"
                )
            time.sleep(0.05)
        holder = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": datetime.now().isoformat(" ", "seconds"),
            "command": " ".join(sys.argv),
        }
        os.ftruncate(fd, 0)
        os.write(fd, (json.dumps(holder) + "\n").encode())
        self._fd = fd

    def release(self) -> None:
        """Give the lock up (delete the file, then unlock it); a no-op when not held."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        if self._flock:  # delete, then unlock: see the module docstring
            self.path.unlink(missing_ok=True)
            os.close(fd)
        else:  # Windows cannot delete an open file, and O_EXCL needs only the deletion
            os.close(fd)
            self.path.unlink(missing_ok=True)

    def busy(self) -> str | None:
        """Who holds the folder (``"pid P on HOST since T"``) when another process does, else None; takes nothing."""
        holder = self._holder()
        mine = holder is not None and (holder["pid"], holder.get("host")) == (os.getpid(), socket.gethostname())
        if self._fd is not None or mine or not self.path.exists():
            return None
        if self._flock:
            try:
                fd = os.open(self.path, os.O_RDWR)
            except FileNotFoundError:
                return None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return self._describe_holder()
            except OSError:  # no flock on this filesystem: judge by the holder's pid
                pass
            else:
                fcntl.flock(fd, fcntl.LOCK_UN)
                return None
            finally:
                os.close(fd)
        return None if self._stale() else self._describe_holder()

    def _try_lock(self) -> int | None:
        """The descriptor of the locked ``.lock`` file, or None while another process holds it."""
        if self._flock:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return None
            except OSError:  # a filesystem without flock (some network mounts): use the O_EXCL scheme
                os.close(fd)
                self._flock = False
                return self._try_lock()
            if _same_file(fd, self.path):
                return fd
            os.close(fd)  # the holder released (deleted) this file after we opened it: try the new one
            return self._try_lock()
        try:
            return os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            if not self._stale():
                return None
        self.path.unlink(missing_ok=True)
        return self._try_lock()

    def _holder(self) -> dict[str, Any] | None:
        try:
            holder = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return holder if isinstance(holder, dict) and isinstance(holder.get("pid"), int) else None

    def _stale(self) -> bool:
        """Whether the existing O_EXCL lock file belongs to a process that no longer runs (on this host)."""
        holder = self._holder()
        if holder is None:
            try:
                return time.time() - self.path.stat().st_mtime > _UNWRITTEN_GRACE_S
            except FileNotFoundError:
                return True
        return holder.get("host") == socket.gethostname() and not _pid_alive(holder["pid"])

    def _describe_holder(self) -> str:
        holder = self._holder()
        if holder is None:
            return "pid unknown"
        return f"pid {holder['pid']} on {holder.get('host', '?')} since {holder.get('started', '?')}"


def _same_file(fd: int, path: Path) -> bool:
    try:
        mine, current = os.fstat(fd), os.stat(path)
    except FileNotFoundError:
        return False
    return (mine.st_dev, mine.st_ino) == (current.st_dev, current.st_ino)


def _pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this machine."""
    if os.name == "nt":
        import ctypes

        kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)  # type: ignore[attr-defined]
        handle = kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
        if not handle:
            return ctypes.get_last_error() == 5  # type: ignore[attr-defined]  # access denied: it exists
        code = ctypes.c_ulong()
        kernel32.GetExitCodeProcess(handle, ctypes.byref(code))
        kernel32.CloseHandle(handle)
        return code.value == 259  # STILL_ACTIVE
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True
