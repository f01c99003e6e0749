"""The value checks every config shares: known keys, type, bounds, choice.

The plan's sections, the training settings, the pruning methods' options and the target
rules check their values with these few functions, so one mistake reads the same wherever
it is made. Every check raises a :class:`~prunekit.errors.ConfigError` (or the subclass
given as ``error``) carrying ``key`` when given, which the recipe loader turns into
``file:line: key: message``. ``subject`` names the value in the message (``"rho"``,
``"train option 'lr'"``): ``"rho must be > 0, got -1"``. Without one the key path printed
before the message names it: ``data.batch_size: expected an integer, got 'x'``.

Bounds are written as the message shows them: ``"> 0"``, ``">= 1"``, or an interval
``"[0, 1)"`` (read as "a number in [0, 1)"). None is refused unless ``optional``.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NoReturn

from .errors import ConfigError


def fail(message: str, key: str | None = None, error: type[ConfigError] = ConfigError
         ) -> NoReturn:
    raise error(message, key=() if key is None else (key,))


def _wrong(value: Any, expected: str, key: str | None, subject: str,
           error: type[ConfigError], typed: bool = False) -> NoReturn:
    """``subject must be expected, got value``; a wrong type without a subject reads
    ``expected an integer, got 'x'``."""
    text = f"{subject} must be" if subject else "expected" if typed else "must be"
    fail(f"{text} {expected}, got {value!r}", key, error)


def kind(value: Any, kinds: type | tuple[type, ...], expected: str, key: str | None = None, *,
         subject: str = "", optional: bool = False, error: type[ConfigError] = ConfigError
         ) -> Any:
    """``value`` is one of ``kinds``; a bool only where ``bool`` is listed."""
    kinds = kinds if isinstance(kinds, tuple) else (kinds,)
    if not (value is None and optional) and (
            not isinstance(value, kinds) or isinstance(value, bool) and bool not in kinds):
        _wrong(value, expected, key, subject, error, typed=True)
    return value


def _inside(x: float, bounds: str) -> bool:
    if bounds[0] in "[(":
        low, high = (float(b) for b in bounds[1:-1].split(","))
        return ((low <= x) if bounds[0] == "[" else (low < x)) and \
            ((x <= high) if bounds[-1] == "]" else (x < high))
    op, bound = bounds.split()
    return {">": x > float(bound), ">=": x >= float(bound)}[op]


def number(value: Any, key: str | None = None, *, bounds: str | None = None,
           subject: str = "", text: bool = False, optional: bool = False,
           error: type[ConfigError] = ConfigError) -> Any:
    """A finite number inside ``bounds``, as a float. ``text``: also a numeric string (YAML
    1.1 reads ``1e-3`` as one)."""
    if value is None and optional:
        return None
    two_sided = bounds is not None and bounds[0] in "[("
    expected = f"a number in {bounds}" if two_sided else "a number"
    result = value
    if text and isinstance(value, str):
        try:
            result = float(value)
        except ValueError:
            _wrong(value, expected, key, subject, error, typed=True)
    if isinstance(result, bool) or not isinstance(result, int | float):
        _wrong(value, expected, key, subject, error, typed=True)
    if not math.isfinite(result):
        _wrong(value, expected if two_sided else "a finite number", key, subject, error)
    if bounds is not None and not _inside(result, bounds):
        _wrong(value, expected if two_sided else bounds, key, subject, error)
    return float(result)


def integer(value: Any, key: str | None = None, *, bounds: str | None = None,
            subject: str = "", optional: bool = False, error: type[ConfigError] = ConfigError
            ) -> Any:
    """A whole number (never a bool) inside ``bounds``."""
    kind(value, int, "an integer", key, subject=subject, optional=optional, error=error)
    if value is not None and bounds is not None and not _inside(value, bounds):
        _wrong(value, bounds, key, subject, error)
    return value


def boolean(value: Any, key: str | None = None, *, subject: str = "",
            optional: bool = False, error: type[ConfigError] = ConfigError) -> Any:
    return kind(value, bool, "true or false", key, subject=subject, optional=optional,
                error=error)


def choice(value: Any, key: str | None = None, *, choices: Sequence[Any], subject: str = "",
           error: type[ConfigError] = ConfigError) -> Any:
    if value not in choices:
        _wrong(value, f"one of {', '.join(map(str, choices))}", key, subject, error)
    return value


def mapping(value: Any, key: str | None = None) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        fail(f"must be a mapping, got {type(value).__name__}", key)
    return value


def known_keys(given: Iterable[Any], allowed: Sequence[str], *, where: str = "",
               noun: str = "key", error: type[ConfigError] = ConfigError) -> None:
    """An unknown key is an error naming it, its nearest valid spelling and the valid keys
    (of ``where``, e.g. ``"data"`` or ``"method 'admm'"``)."""
    of = f" of {where}" if where else ""
    for key in given:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            valid = (f"valid {noun}s{of}: {', '.join(sorted(allowed))}" if allowed
                     else f"{where or 'it'} takes no {noun}s")
            fail(f"unknown {noun} {key!r}{hint}; {valid}", str(key), error)
