"""The shared value checks: one wording for every config, the key carried for the recipe."""

from __future__ import annotations

import math

import pytest

from prunekit import validate
from prunekit.errors import ConfigError, TargetError


@pytest.mark.parametrize("value,bounds,message", [
    ("x", None, "rho must be a number, got 'x'"),
    (True, None, "rho must be a number, got True"),
    (math.inf, "> 0", "rho must be a finite number, got inf"),
    (0, "> 0", "rho must be > 0, got 0"),
    (-0.5, ">= 0", "rho must be >= 0, got -0.5"),
    (1.0, "[0, 1)", "rho must be a number in [0, 1), got 1.0"),
    (math.nan, "[0, 1)", "rho must be a number in [0, 1), got nan"),
    (0, "(0, 1]", "rho must be a number in (0, 1], got 0"),
    (None, "> 0", "rho must be a number, got None"),
])
def test_a_bad_number_names_the_value_and_what_it_must_be(value, bounds, message):
    with pytest.raises(ConfigError) as caught:
        validate.number(value, "rho", bounds=bounds, subject="rho")
    assert caught.value.message == message and caught.value.key == ("rho",)


@pytest.mark.parametrize("value,bounds", [(0.0, "[0, 1)"), (1, "(0, 1]"), (1, "[0, 1]"),
                                          (1e-9, "> 0"), (0, ">= 0"), ("1e-3", "> 0")])
def test_numbers_inside_their_bounds_come_back_as_floats(value, bounds):
    assert validate.number(value, bounds=bounds, text=True) == float(value)


def test_without_a_subject_the_key_path_names_the_value():
    with pytest.raises(ConfigError, match=r"^expected an integer, got 'x'$"):
        validate.integer("x", "batch_size", bounds="> 0")
    with pytest.raises(ConfigError, match=r"^must be > 0, got 0$"):
        validate.integer(0, "batch_size", bounds="> 0")
    assert validate.integer(None, "batch_size", optional=True) is None
    with pytest.raises(ConfigError, match=r"^must be one of a, b, got 'c'$"):
        validate.choice("c", "x", choices=("a", "b"))


def test_unknown_keys_suggest_the_nearest_and_list_the_valid_ones():
    with pytest.raises(ConfigError) as caught:
        validate.known_keys({"rho": 1, "rhoo": 2}, ["rho", "eps"], where="method 'x'",
                            noun="option")
    assert caught.value.message == ("unknown option 'rhoo' (did you mean 'rho'?); valid "
                                    "options of method 'x': eps, rho")
    assert caught.value.key == ("rhoo",)
    with pytest.raises(TargetError, match=r"^unknown option 'lam'; method 'm' takes no options$"):
        validate.known_keys({"lam": 1}, [], where="method 'm'", noun="option",
                            error=TargetError)
