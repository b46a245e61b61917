"""How every fer command ends on a user's mistake: one ``fer: error:`` line and exit code 2.

A :class:`fer.errors.FERError` (bad data, config, checkpoint, path) is the user's to fix and is reported
as one line; anything else is a bug and keeps its traceback. :func:`command` wraps the argparse tools,
:func:`hydra_command` the Hydra entry points (``fer.train``, ``fer.eval``), and :func:`user_errors` the work
inside a Hydra job, where in a sweep only that job fails.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from fer.errors import FERError, user_message

log = logging.getLogger("fer")


def one_line(text: str) -> str:
    return " ".join(text.split())


def print_error(message: str) -> None:
    print(f"fer: error: {message}", file=sys.stderr)


def fail(message: str) -> None:
    """Stop now with one error line and exit code 2: for checks that run inside Hydra before a job exists
    (resolvers and callbacks, where an ordinary exception would be swallowed or wrapped)."""
    print_error(message)
    raise SystemExit(2)


def user_error_in_chain(error: BaseException | None) -> FERError | None:
    """The FERError behind ``error``, also when a library (Hydra's instantiate) wrapped it in its own."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, FERError):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def command(main: Callable[[Sequence[str] | None], int]) -> Callable[[Sequence[str] | None], int]:
    """An argparse tool's ``main(argv) -> exit code``: a FERError becomes one line and exit code 2."""

    @functools.wraps(main)
    def run(argv: Sequence[str] | None = None) -> int:
        try:
            return main(argv)
        except Exception as raised:
            error = user_error_in_chain(raised)
            if error is None:
                raise
            print_error(one_line(user_message(error)))
            return 2

    return run


def _in_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def _log_to_files(message: str) -> None:
    """Record an error in the run's log file only (the console gets it once, on stderr)."""
    record = log.makeRecord(log.name, logging.ERROR, __file__, 0, message, None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Inside a Hydra job: a FERError becomes one message and exit code 2; in a sweep only this job fails
    (the sweeper records it and goes on) and its log keeps the message."""
    try:
        yield
    except Exception as raised:
        error = user_error_in_chain(raised)
        if error is None:
            raise
        message = user_message(error)
        if _in_multirun():
            log.error(message)
            # a new exception of the same type, so that the traceback starts here instead of listing every
            # library frame down to the cause
            try:
                short = type(error)(*error.args)
            except Exception:
                short = FERError(message)
            raise short from None
        _log_to_files(message)
        print_error(message)
        raise SystemExit(2) from None


def _override_error(error: BaseException) -> str | None:
    """Hydra's "Could not override 'group.key'" for a key that a config group does not have, in words that
    list the keys the group has (Hydra's own advice, to prefix ``+``, only moves the error elsewhere)."""
    from omegaconf.errors import OmegaConfBaseException

    cause = error.__cause__
    if not isinstance(cause, OmegaConfBaseException) or "not in struct" not in str(cause):
        return None
    full_key = str(getattr(cause, "full_key", "") or "")
    parent = getattr(cause, "parent_node", None)
    if not full_key or parent is None or not hasattr(parent, "keys"):
        return None
    group, _, key = full_key.rpartition(".")
    keys = ", ".join(str(k) for k in parent if not str(k).startswith("_")) or "none"
    where = f"the {group} config" if group else "the top-level config"
    return (
        f"{full_key}: {where} has no key {key!r}; its keys are: {keys}. Fix the spelling (an argument the "
        f"config does not list can be added with +{full_key}=..., if the target takes it)."
    )


def hydra_command(hydra_main: Callable[[], Any]) -> Callable[[], Any]:
    """A ``@hydra.main`` entry point whose configuration errors end as one ``fer: error:`` line.

    Hydra prints its own message for a config it cannot compose; fer asks it to raise instead
    (``HYDRA_FULL_ERROR``) and reports a key that a group does not have with the keys it does have.
    """

    @functools.wraps(hydra_main)
    def run() -> Any:
        own = "HYDRA_FULL_ERROR" not in os.environ
        if own:
            os.environ["HYDRA_FULL_ERROR"] = "1"
        try:
            return hydra_main()
        except SystemExit:
            raise
        except Exception as raised:
            from fer.run.sweep import report_pending

            report_pending()  # a sweep whose failed job ended it: its table of jobs first
            if not own:
                raise
            from hydra.errors import HydraException

            error = user_error_in_chain(raised)
            if error is not None:  # a job of a sweep failed with a user error (its message is in its log)
                print_error(one_line(user_message(error)))
                raise SystemExit(2) from None
            if isinstance(raised, ValueError) and str(raised).startswith("Only one of --run, --multirun"):
                print_error(f"{raised}: drop -m/--multirun to print one config with --cfg")
                raise SystemExit(2) from None
            if not isinstance(raised, HydraException):
                raise
            message = _override_error(raised) or one_line(str(raised))
            if raised.__cause__ is not None and _override_error(raised) is None:
                message = f"{message} {one_line(str(raised.__cause__))}"
            print_error(message)
            raise SystemExit(1) from None
        finally:
            if own:
                os.environ.pop("HYDRA_FULL_ERROR", None)

    return run


def hydra_entry_point(config_name: str, work: Callable[[Any], Any]) -> Callable[[], Any]:
    """The ``main`` of a Hydra command that runs ``work(cfg)`` once on ``conf/<config_name>.yaml``, with
    fer's process set-up and one-line errors (``fer.train`` keeps its own: its task must pickle)."""
    import hydra

    from fer.run.config import CONFIG_DIR, register_resolvers
    from fer.run.process import prepare_process

    def task(cfg: Any) -> None:
        with user_errors():
            prepare_process()
            work(cfg)

    task.__module__ = work.__module__  # Hydra names the job (log file, --help) after the task's module
    hydra_main = hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name=config_name)(task)

    def main() -> Any:
        register_resolvers()
        return hydra_command(hydra_main)()

    main.__doc__ = f"``python -m fer.{config_name}`` / ``fer-{config_name}``."
    return main
