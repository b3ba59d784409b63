"""Atomic file writes: a kill leaves either the old file or the new one, whole."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from mbrl.core.errors import UserError


def check_output_path(path: Path, what: str = "output file") -> Path:
    """Check, before any work is done, that a file can be written at `path` (its directory exists and is writable,
    and `path` is not a directory); returns it as a Path.

    Raises:
        UserError: naming the path and what is wrong with it.
    """
    path = Path(path)
    if str(path) in ("", ".") or path.is_dir():
        raise UserError(f"{what} '{path}' is a directory; give a file path")
    parent = path.parent
    if not parent.is_dir():
        problem = "is a file" if parent.exists() else "does not exist"
        raise UserError(f"cannot write {what} {path}: the directory {parent} {problem}")
    if not os.access(parent, os.W_OK):
        raise UserError(f"cannot write {what} {path}: the directory {parent} is not writable")
    return path


def write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` via a temp file in the same directory, fsync and `os.replace`."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
