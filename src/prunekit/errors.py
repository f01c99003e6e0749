"""Errors users see.

Every problem a user can cause (a bad recipe, an unknown layer, a corrupt file) is raised as
a subclass of :class:`PrunekitError` with a message that names the offending thing, so a user
never has to read a traceback from deep inside torch to learn what they did wrong.

A :class:`ConfigError` may carry the ``key`` path of the recipe entry it is about (``("prune",
"targets", "2", "sparsity")``): checks deep inside a config only know the key they check, and
the recipe loader, which knows the file, turns the path into ``file:line: key: message``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager


class PrunekitError(Exception):
    """Base class of every error prunekit raises on purpose."""


class ConfigError(PrunekitError, ValueError):
    """A recipe, rule or option is malformed (unknown key, wrong type, value out of range)."""

    def __init__(self, message: str, *, key: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.message = message
        #: the recipe key path this error is about, innermost last ("" parts never appear)
        self.key: tuple[str, ...] = tuple(str(k) for k in key)
        #: set once the message names the file and line (nothing is prefixed twice)
        self.located = False


class TargetError(ConfigError):
    """A target rule does not fit the model (unknown layer, unsupported type, wrong scheme)."""


class DataError(PrunekitError, OSError):
    """A data set or checkpoint file is missing, truncated or corrupt."""


@contextmanager
def within(*prefix: str) -> Iterator[None]:
    """Prefix the key path of any :class:`ConfigError` raised inside with ``prefix``, so a
    check that knows only its own key reports the full path (``data`` + ``batch_size``)."""
    try:
        yield
    except ConfigError as exc:
        if not exc.located:
            exc.key = (*map(str, prefix), *exc.key)
        raise
