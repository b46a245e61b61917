"""The machine and its file system: usable cores, and replacing a folder in one step."""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the platform has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def replace_folder(new: Path, target: Path) -> None:
    """Put the finished folder ``new`` at ``target``, replacing what was there, so that readers see either
    the old tree or the new one, never a half-written one."""
    if target.exists():
        old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
        target.rename(old)
        new.rename(target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        new.rename(target)
