"""Files written atomically: readers see the old file or the whole new one, never half of it.

Also what guards such a write: :func:`check_free_space` before it starts, and :func:`remove_stale_temporaries` for
the temporary files of writers that were killed (a kernel restart, a full disk's SIGBUS); and
:class:`BackgroundWriter`, which makes such writes on a thread while training goes on.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import glob
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

try:
    import fcntl
except ImportError:  # Windows: there a file that a live process holds open cannot be removed, which says as much
    fcntl = None  # type: ignore[assignment]

GIB = 1 << 30  # the project's one definition of a GiB


@functools.cache
def _file_mode() -> int:
    """The permissions a newly created file gets (``0o666`` less the umask); the umask is read once."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary file beside ``path`` for the block to fill by name (a memory map, a library that takes a path).

    When the block ends without error the file is fsynced and renamed over ``path``, so readers see the old file or
    the whole new one; on any error (disk full, interrupt) it is removed and ``path`` is untouched. The file gets the
    usual permissions of a new file (``0o666`` less the umask), not ``mkstemp``'s ``0o600``.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        claim, tmp_name = _new_temporary(path)
    except OSError as err:
        raise OSError(f"cannot write {path}: {err.strerror or err}; choose a writable output folder") from err
    try:
        try:
            os.chmod(tmp_name, _file_mode())
            yield Path(tmp_name)
        except BaseException:
            _release(claim)
            Path(tmp_name).unlink(missing_ok=True)
            raise
        try:
            with open(tmp_name, "rb+") as f:
                os.fsync(f.fileno())
            if fcntl is None:
                _release(claim)  # Windows renames no file that is open
            os.replace(tmp_name, path)
        except OSError as err:
            _release(claim)
            Path(tmp_name).unlink(missing_ok=True)
            raise _not_written(path, err) from err
    finally:
        _release(claim)


def _new_temporary(path: Path) -> tuple[list[int], str]:
    """A new claimed temporary file beside ``path`` (see :func:`_claim`) and its name."""
    while True:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        claim = _claim(fd)
        if fcntl is None or os.fstat(fd).st_nlink:  # another process's sweep may remove it before the lock is held
            return claim, tmp_name
        _release(claim)


def _claim(fd: int) -> list[int]:
    """Mark the new temporary file ``fd`` as being written, for :func:`remove_stale_temporaries` in other processes.

    On POSIX ``fd`` stays open with an exclusive ``flock`` until the file is renamed or removed: the kernel drops
    the lock when its process dies, however it dies. On Windows ``fd`` is closed: the writer's own open file (or
    memory map) already stops other processes from removing it. Returns the descriptors to close (see
    :func:`_release`).
    """
    if fcntl is None:
        os.close(fd)
        return []
    with contextlib.suppress(OSError):  # a filesystem without locks: other processes then leave the file alone
        fcntl.flock(fd, fcntl.LOCK_EX)  # waits only while another process's sweep looks at this new file
    return [fd]


def _release(claim: list[int]) -> None:
    while claim:
        os.close(claim.pop())


def _abandoned(tmp: Path) -> bool:
    """Whether no live process is writing the temporary file ``tmp`` (then it is removed here and now)."""
    try:
        if fcntl is None:
            tmp.unlink()  # refused while a live writer holds it open
            return True
        fd = os.open(tmp, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # refused while its writer lives
            tmp.unlink()
            return True
        finally:
            os.close(fd)
    except OSError:
        return False


def remove_stale_temporaries(path: str | Path) -> int:
    """Remove the temporary files of :func:`atomic_path` writes of ``path`` whose writer was killed (a kernel
    restart, a full disk); those a live process is still writing are left alone. Returns the bytes freed.

    A writer is known alive by its lock on the file (POSIX, see :func:`_claim`), or on Windows by its holding the
    file open; neither survives the process, so no clock or process id is trusted.
    """
    path = Path(path)
    freed, removed = 0, []
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        with contextlib.suppress(OSError):
            size = tmp.stat().st_size
            if _abandoned(tmp):
                freed += size
                removed.append(tmp.name)
    if removed:
        print(f"Removed {len(removed)} temporary file(s) of an interrupted write of {path} ({freed / GIB:.1f} GiB): "
              f"{', '.join(sorted(removed))}")
    return freed


def check_free_space(folder: str | Path, needed: int, what: str, remedy: str) -> None:
    """Raise ``OSError`` (ENOSPC) before anything is written when the disk holding ``folder`` (which need not exist
    yet) has fewer than ``needed`` bytes free; the message names the folder, ``what`` needs them, the GiB needed and
    free, and the ``remedy``."""
    place = Path(folder).absolute()
    while not place.exists() and place != place.parent:
        place = place.parent
    free = shutil.disk_usage(place).free
    if needed > free:
        raise OSError(errno.ENOSPC, f"not enough disk space in {folder} for {what}: {needed / GIB:.2f} GiB needed, "
                                    f"{free / GIB:.2f} GiB free. {remedy}")


def _not_written(path: Path, err: OSError) -> OSError:
    return OSError(f"could not write {path} ({err.strerror or err}); the previous file, if any, is intact")


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None]) -> Path:
    """Write a file through ``write(fileobj)`` with the guarantees of :func:`atomic_path`."""
    path = Path(path)
    with atomic_path(path) as tmp:
        try:
            with open(tmp, "wb") as f:
                write(f)
        except OSError as err:
            raise _not_written(path, err) from err
    return path



class BackgroundWriter:
    """:func:`atomic_write` calls made one at a time on a background thread, so the caller goes on meanwhile.

    :meth:`submit` first waits for the write before it; :meth:`wait` waits for the last one. Either raises the error
    of a write that failed (its file untouched, see :func:`atomic_path`), in the caller's thread. ``write`` must
    only read what nothing changes meanwhile (copies made before :meth:`submit`).
    """

    def __init__(self, name: str = "background write") -> None:
        self.name = name
        self.thread: threading.Thread | None = None
        self.error: BaseException | None = None

    def submit(self, path: str | Path, write: Callable[[IO[bytes]], None]) -> None:
        """Wait for the previous write (raising its error), then start writing ``path`` through ``write``."""
        self.wait()
        self.thread = threading.Thread(target=self._write, args=(Path(path), write), name=self.name)
        self.thread.start()

    def _write(self, path: Path, write: Callable[[IO[bytes]], None]) -> None:
        try:
            atomic_write(path, write)
        except BaseException as err:  # noqa: BLE001 - handed to the caller's thread by wait()
            self.error = err

    def wait(self) -> None:
        """Wait until the last write is done; raise its error, if it failed."""
        if self.thread is not None:
            self.thread.join()
            self.thread = None
        error, self.error = self.error, None
        if error is not None:
            raise error
