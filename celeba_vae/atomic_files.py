"""Files written atomically: readers see the old file or the whole new one, never half of it."""

from __future__ import annotations

import contextlib
import functools
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO


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
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
    except OSError as err:
        raise OSError(f"cannot write {path}: {err.strerror or err}; choose a writable output folder") from err
    try:
        os.chmod(tmp_name, _file_mode())
        yield Path(tmp_name)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    try:
        with open(tmp_name, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
    except OSError as err:
        Path(tmp_name).unlink(missing_ok=True)
        raise _not_written(path, err) from err


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

