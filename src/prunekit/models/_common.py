"""Argument checks shared by the zoo's constructors.

Model options often arrive from a YAML recipe, so a wrong type or a mismatched shape must
surface as a :class:`~prunekit.errors.ConfigError` naming the model and the option, not as a
shape error deep inside the first forward pass.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..errors import ConfigError

#: Inputs up to this height/width get the small-image stem (no stride-2 stem, no max pool)
#: unless ``small_input`` is given: at 32x32 an ImageNet stem would shrink the map to 1x1.
SMALL_INPUT_MAX_SIDE = 64


def positive_int(model: str, option: str, value: object) -> int:
    """``value`` as an int >= 1, or a ConfigError naming ``model`` and ``option``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{model}: {option} must be a positive integer, got {value!r}")
    return value


def positive_float(model: str, option: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ConfigError(f"{model}: {option} must be a positive number, got {value!r}")
    return float(value)


def boolean(model: str, option: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{model}: {option} must be true or false, got {value!r}")
    return value


def choice(model: str, option: str, value: object, allowed: Sequence[str]) -> str:
    if value not in allowed:
        raise ConfigError(f"{model}: {option} must be one of {list(allowed)}, got {value!r}")
    return str(value)


def shape_tuple(model: str, option: str, value: object, rank: int) -> tuple[int, ...]:
    """A shape given as a list or tuple of ``rank`` positive ints (YAML gives lists)."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != rank:
        raise ConfigError(f"{model}: {option} must be {rank} positive integers, got {value!r}")
    return tuple(positive_int(model, option, v) for v in value)


def image_shape(
    model: str,
    in_channels: int | None,
    input_shape: Sequence[int] | None,
    default: tuple[int, int, int],
) -> tuple[int, int, int]:
    """The ``(C, H, W)`` a model is built for.

    ``input_shape`` wins; ``in_channels`` alone replaces the channel count of ``default``.
    Giving both with different channel counts is a mistake worth reporting.
    """
    if input_shape is None:
        c = default[0] if in_channels is None else positive_int(model, "in_channels", in_channels)
        return (c, default[1], default[2])
    shape = shape_tuple(model, "input_shape", input_shape, 3)
    if in_channels is not None and positive_int(model, "in_channels", in_channels) != shape[0]:
        raise ConfigError(
            f"{model}: in_channels={in_channels} contradicts input_shape={list(shape)}"
        )
    return shape  # type: ignore[return-value]


def small_stem(model: str, small_input: bool | None, shape: tuple[int, int, int]) -> bool:
    """Whether to use the small-image stem: as asked, else decided by the input size."""
    if small_input is not None:
        return boolean(model, "small_input", small_input)
    return max(shape[1], shape[2]) <= SMALL_INPUT_MAX_SIDE


def check_input(model: str, x: Tensor, expected: Sequence[int | None], hint: str) -> None:
    """Raise a ConfigError when ``x`` (batched) does not have the per-sample shape
    ``expected`` the model was built for (``None`` matches any size); ``hint`` says which
    option fixes it. Skipped while tracing, where sizes are traced values, not ints."""
    if torch.jit.is_tracing():
        return
    ok = x.dim() == len(expected) + 1 and all(
        e is None or e == s for e, s in zip(expected, x.shape[1:], strict=True)
    )
    if not ok:
        dims = ", ".join("any" if e is None else str(e) for e in expected)
        raise ConfigError(
            f"{model} was built for inputs of shape [batch, {dims}], got {list(x.shape)}; {hint}"
        )
