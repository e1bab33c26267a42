"""Atomic file writes: the one implementation every writer of the package uses.

A file is written under a temporary name in its destination folder, flushed to
disk and moved into place with :func:`os.replace`, so a reader (or a resumed
job after a crash) sees either the old file or the whole new one, never a part.
"""
from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, BinaryIO, Union

import torch

__all__ = ["atomic_write", "atomic_write_bytes", "atomic_save"]

PathLike = Union[str, os.PathLike]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: PathLike, write: Callable[[BinaryIO], Any]) -> Path:
    """Call ``write(f)`` on a temporary binary file beside ``path``, then move it to ``path``.

    The parent folder is created if needed. The file gets the usual mode
    (``0o666`` less the umask), not ``mkstemp``'s ``0o600``. If ``write`` raises,
    the temporary file is removed and ``path`` is left as it was.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def atomic_write_bytes(path: PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write`)."""
    return atomic_write(path, lambda f: f.write(data))


def atomic_save(obj: Any, path: PathLike) -> Path:
    """``torch.save(obj, path)`` atomically (see :func:`atomic_write`)."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    return atomic_write_bytes(path, buf.getvalue())
