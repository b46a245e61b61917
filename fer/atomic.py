"""Files written whole or not at all: a temporary file in the same folder, flushed, then renamed.

A run killed (or a disk filling up) while a checkpoint or result file is being written leaves the previous
version of that file intact, never a truncated one: ``os.replace`` within one folder is atomic on POSIX
and Windows.
"""

from __future__ import annotations

import contextlib
import errno
import io
import logging
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from fer.errors import FERError

log = logging.getLogger(__name__)


class OutputWriteError(FERError):
    """A result (checkpoint, metrics, run record) could not be written: no space, no permission, ..."""


def _fsync_folder(folder: Path) -> None:
    # the rename itself reaches the disk only once the folder entry is flushed (POSIX; no-op elsewhere)
    with contextlib.suppress(OSError, AttributeError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_failure_hint(error: OSError) -> str:
    if error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return "free some space there (or set paths.log_dir=<folder on another disk>) and run again"
    if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "make the folder writable or set paths.log_dir=<writable folder>, and run again"
    return "check that the folder can be created and written, or set paths.log_dir=<writable folder>, and run again"


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "wb", what: str = "file") -> Iterator[IO[Any]]:
    """Open a temporary sibling of ``path`` for writing; on success it replaces ``path`` in one rename.

    On any error the temporary file is removed and ``path`` keeps its previous content; an ``OSError``
    becomes an :class:`OutputWriteError` that names the file and what to do.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        _fsync_folder(path.parent)
    except OSError as error:
        kept = " The previous version of it is intact." if path.exists() else ""
        raise OutputWriteError(
            f"Cannot write the {what} {path}: {error.strerror or error}.{kept} "
            f"{write_failure_hint(error).capitalize()}."
        ) from error
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def atomic_write_text(path: str | Path, text: str, what: str = "file") -> Path:
    with atomic_open(path, "w", what) as handle:
        handle.write(text)
    return Path(path)


def atomic_save(obj: Any, path: str | Path, what: str = "checkpoint", save: Callable | None = None) -> None:
    """``torch.save`` (or ``save(obj, file)``) into memory, then the bytes to a temporary file renamed over
    ``path``. (Serializing into memory first keeps the file system's own error: torch's zip writer turns a
    failed write into an unspecific RuntimeError.)"""
    if save is None:
        import torch

        save = torch.save
    buffer = io.BytesIO()
    save(obj, buffer)
    with atomic_open(path, "wb", what) as handle:
        handle.write(buffer.getbuffer())
