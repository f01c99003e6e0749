"""A user's own code named in a recipe as ``"package.module:function"``.

Models (``model.name``) and data sets (``data.name``) can both come from a user's factory.
Importing it and checking its keyword arguments is the same job for both, and every way it
can go wrong (no such module, the module fails to import, no such function, an option the
function does not take) is a :class:`ConfigError` saying what to fix.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping
from typing import Any

from .errors import ConfigError


def is_factory_spec(name: object) -> bool:
    """Whether ``name`` names a user's factory (``module:function``) rather than a built-in."""
    return isinstance(name, str) and ":" in name


def import_factory(spec: str, what: str = "spec") -> Callable[..., Any]:
    """The callable ``spec`` (``"package.module:function"``, dotted attributes allowed)."""
    module_name, _, attr_path = spec.partition(":")
    if not module_name or not attr_path:
        raise ConfigError(f"{what} {spec!r} must look like 'package.module:function'")
    try:
        obj: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name is not None and module_name.startswith(e.name):
            raise ConfigError(
                f"{what} {spec!r}: no module named {e.name!r} "
                "(is its directory on PYTHONPATH, or the package installed?)"
            ) from e
        raise ConfigError(f"{what} {spec!r}: importing {module_name!r} failed: {e}") from e
    except Exception as e:  # a user's module may fail in any way while importing
        raise ConfigError(
            f"{what} {spec!r}: importing {module_name!r} failed: {type(e).__name__}: {e}"
        ) from e
    for part in attr_path.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"{what} {spec!r}: module {module_name!r} has no {attr_path!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(f"{what} {spec!r}: {attr_path!r} is not callable")
    return obj


def check_kwargs(what: str, factory: Callable[..., Any], kwargs: Mapping[str, Any]) -> None:
    """Reject options ``factory`` does not take, naming them and the ones it does take."""
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):  # some builtins and C extensions have no signature
        return
    params = sig.parameters.values()
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        accepted = [
            p.name
            for p in params
            if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        ]
        unknown = sorted(set(kwargs) - set(accepted))
        if unknown:
            raise ConfigError(
                f"{what} got unknown option(s) {', '.join(map(repr, unknown))}; "
                f"accepted: {', '.join(accepted) or '(none)'}"
            )
    try:
        sig.bind(**kwargs)
    except TypeError as e:
        raise ConfigError(f"{what} cannot be called with options {sorted(kwargs)}: {e}") from e
