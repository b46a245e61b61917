"""Building objects from config (``_target_``) with one clear error for a key that is not an argument."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from hydra.utils import get_object, instantiate

from fer.errors import FERError


def _parameters(target: Any) -> tuple[list[str], bool] | None:
    """The keyword parameters of a callable and whether it takes any (``**kwargs``); None when unknown."""
    try:
        signature = inspect.signature(target)
    except (TypeError, ValueError):
        return None
    names, takes_any = [], False
    for parameter in signature.parameters.values():
        if parameter.kind is inspect.Parameter.VAR_KEYWORD:
            takes_any = True
        elif parameter.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY):
            names.append(parameter.name)
    return names, takes_any


def check_arguments(config: Mapping[str, Any], key: str, given: tuple[str, ...] = ()) -> None:
    """Refuse, naming ``<key>.<name>`` and the target's arguments, a config key its ``_target_`` does not take
    (``given``: the arguments fer passes itself, e.g. ``params``)."""
    target_name = config.get("_target_")
    if not target_name:
        raise FERError(f"{key} has no _target_: name the class or function to build, e.g. {key}._target_=...")
    try:
        target = get_object(str(target_name))
    except Exception as error:
        raise FERError(f"{key}._target_={target_name}: cannot be imported ({error}).") from None
    known = _parameters(target)
    if known is None or known[1]:
        return
    names = known[0]
    for name in config:
        if not str(name).startswith("_") and name not in names:
            accepted = ", ".join(n for n in names if n not in given and n != "self")
            raise FERError(
                f"{key}.{name}: {target_name} has no argument {name!r}; it takes {accepted}. Fix the key on the "
                f"command line or in the {key} config."
            )


def build(config: Mapping[str, Any], key: str, given: tuple[str, ...] = (), **kwargs: Any) -> Any:
    """``hydra.utils.instantiate(config, **kwargs)`` after :func:`check_arguments`."""
    check_arguments(config, key, given)
    return instantiate(config, _convert_="all", **kwargs)
