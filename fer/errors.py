"""Errors a user can cause and fix, and how the entry points report them."""

from __future__ import annotations


class FERError(Exception):
    """A problem with the user's input (data, config, checkpoint, network): reported as one message."""


class DataLayoutError(FERError):
    """The data folder does not have the MMAFEDB layout, or an image in it cannot be read."""


class CheckpointError(FERError):
    """A checkpoint path is missing or the file is not a fer checkpoint."""


class IncompatibleCheckpointError(CheckpointError):
    """A checkpoint or weights file made for another architecture or set of classes than the one expected."""


class WeightsUnavailableError(FERError):
    """Pretrained weights could not be loaded (offline, or a bad local file)."""


def user_message(error: BaseException) -> str:
    """The message of a user error, without the traceback text that DataLoader workers wrap around it."""
    text = str(error)
    marker = f"{type(error).__name__}: "
    if "Original Traceback" in text and marker in text:
        text = text.rsplit(marker, 1)[1]
    return text.strip()


class NonFiniteLossError(FERError):
    """The training loss became NaN or infinite (the run stops before the bad step touches the weights)."""
