"""What a fer command sets up for its process when it starts (never at import): warning filters, Lightning's
tips quieted, and the CPU allocator kept from returning memory between training steps."""

from __future__ import annotations

import ctypes
import logging
import os
import sys
import warnings

QUIET_LIGHTNING_INFO = ("💡 Tip:", "already configured with model summary", "litlogger")


class _DropMessages(logging.Filter):
    def __init__(self, fragments: tuple[str, ...]) -> None:
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(fragment in message for fragment in self.fragments)


def quiet_known_warnings() -> None:
    """Silence library warnings and tips that say nothing about the user's run."""
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
    # on a machine with SLURM's tools, every run outside a SLURM job (trainer=slurm is for inside one)
    warnings.filterwarnings(
        "ignore", message=r"The `srun` command is available on your system but is not used"
    )
    # frozen parts of the network are kept in eval mode on purpose (fer.models.freeze.set_frozen_eval)
    warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode at the start of training.*")
    drop = _DropMessages(QUIET_LIGHTNING_INFO)
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMessages) for f in logger.filters):
            logger.addFilter(drop)


def tune_cpu_allocator() -> bool:
    """Keep freed memory in the process heap instead of handing it back to the OS.

    With glibc's defaults, the activations of a training step (tens of MB each) are mmap-ed, returned
    and page-faulted in again at every step; measured on 2 CPU cores, MobileNetV3-small with a frozen
    backbone at 224 px trains 1.6x faster with the heap kept. Linux/glibc only; ``FER_MALLOC_TUNING=0``
    leaves the allocator alone. Returns whether the setting was applied.
    """
    if not sys.platform.startswith("linux") or os.environ.get("FER_MALLOC_TUNING", "1") == "0":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        return bool(libc.mallopt(m_mmap_threshold, 1 << 30) and libc.mallopt(m_trim_threshold, 1 << 30))
    except (OSError, AttributeError):
        return False


def prepare_process() -> None:
    """Everything above, for a command that trains or evaluates."""
    quiet_known_warnings()
    tune_cpu_allocator()
