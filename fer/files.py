"""Writing files and folders safely: whole or not at all, and never over what fer did not make.

- A file is written to a temporary sibling, flushed and renamed over its target (``os.replace`` within one
  folder is atomic on POSIX and Windows): a kill or a full disk leaves the previous version intact.
- A folder is built in a temporary sibling and renamed into place once complete.
- fer replaces a folder only when it is absent, empty or holds fer's own marker file, and a file the user
  names (``--out``) only when told to (``--overwrite``): what the user owns is never deleted or rewritten.
"""

from __future__ import annotations

import contextlib
import errno
import io
import logging
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from fer.errors import FERError

log = logging.getLogger(__name__)


class OutputWriteError(FERError):
    """A result (checkpoint, metrics, run record) could not be written: no space, no permission, ..."""


class NotOwnedError(FERError):
    """fer was asked to replace a file or folder that it did not create."""


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


def temporary_sibling(path: Path, kind: str = "tmp") -> Path:
    """A hidden name beside ``path`` that no other writer uses (``.<name>.<random>.<kind>``)."""
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.{kind}")


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "wb", what: str = "file") -> Iterator[IO[Any]]:
    """Open a temporary sibling of ``path`` for writing; on success it replaces ``path`` in one rename.

    On any error the temporary file is removed and ``path`` keeps its previous content; an ``OSError``
    becomes an :class:`OutputWriteError` that names the file and what to do.
    """
    path = Path(path)
    tmp = temporary_sibling(path)
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


# ----------------------------------------------------------------------------------- user-named files


def check_output_file(path: str | Path, overwrite: bool = False, option: str = "--out") -> Path:
    """The file a command was asked to write: refused when it is a folder, or when it exists and
    ``overwrite`` was not given (fer does not replace a file it may not have made)."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise FERError(
            f"{option} {path} is a folder: give a file name inside it, e.g. {path / 'out'}{path.suffix}"
        )
    if path.exists() and not overwrite:
        raise NotOwnedError(
            f"{option} {path} already exists: fer does not replace a file unless told to. Pass --overwrite to "
            "replace it, or choose another file name."
        )
    return path


# ------------------------------------------------------------------------------------ owned folders


def is_replaceable(folder: Path, marker: str) -> bool:
    """Whether fer may replace ``folder``: it does not exist, is empty, or holds fer's ``marker`` file."""
    if not folder.exists() and not folder.is_symlink():
        return True
    if not folder.is_dir():
        return False
    return (folder / marker).is_file() or not any(folder.iterdir())


def check_replaceable(folder: Path, marker: str, what: str, fix: str) -> None:
    """Refuse, naming the folder and ``fix``, to write ``what`` into a folder fer does not own."""
    if not is_replaceable(folder, marker):
        kind = "a file" if folder.is_file() else "a folder that fer did not create"
        raise NotOwnedError(
            f"{folder} is {kind} (it has no {marker}), so fer will not write {what} into it: it never "
            f"deletes or replaces what it did not make. {fix}"
        )


@contextlib.contextmanager
def building_folder(
    target: str | Path, marker: str, what: str, fix: str, replace: bool = True
) -> Iterator[Path]:
    """Build a folder in a temporary sibling, then put it at ``target`` in one rename.

    ``target`` must be replaceable (:func:`is_replaceable`); the body must write ``marker`` into the
    temporary folder, so that fer recognises the folder as its own next time. Readers see the old tree or
    the new one, never a half-written one; on an error the temporary folder is removed. With
    ``replace=False`` (a cache named by its content) a folder that another process completed meanwhile is
    kept; FileExistsError then tells the caller to use it, as it does for a folder that appears between the
    check and the rename whatever ``replace`` says.
    """
    target = Path(target).absolute()
    check_replaceable(target, marker, what, fix)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(target)
    tmp.mkdir()
    try:
        yield tmp
        if not (tmp / marker).is_file():
            raise RuntimeError(f"building_folder: the new {what} holds no {marker}")
        check_replaceable(target, marker, what, fix)  # (nothing appeared there meanwhile)
        if target.exists() and (replace or not (target / marker).is_file()):
            old = temporary_sibling(target, "old")
            target.rename(old)
            _rename_into_place(tmp, target, what)
            shutil.rmtree(old, ignore_errors=True)
        else:
            _rename_into_place(tmp, target, what)  # (a complete folder there refuses it)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _rename_into_place(tmp: Path, target: Path, what: str) -> None:
    """Rename ``tmp`` to ``target``; a folder with files at ``target`` is FileExistsError on every OS."""
    try:
        tmp.rename(target)
    except OSError as error:
        if error.errno not in (errno.EEXIST, errno.ENOTEMPTY):
            raise
        raise FileExistsError(
            errno.EEXIST, f"another process made the {what} meanwhile", str(target)
        ) from None
