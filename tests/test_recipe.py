"""Recipe loading: overrides, defaults, and errors that name the key and the line."""

from __future__ import annotations

from pathlib import Path

import pytest

from prunekit.errors import ConfigError
from prunekit.recipe import load_recipe, parse_override

BASE = """\
name: t
model:
  name: lenet5
data:
  name: synthetic
  batch_size: 32
train:
  epochs: 1
prune:
  method: admm
  rho: 0.001
  targets:
    - layers: "fc*"
      sparsity: 0.5
"""


def test_defaults_filled_and_values_kept():
    r = load_recipe(text=BASE)
    assert r["data"]["batch_size"] == 32
    assert r["data"]["test_batch_size"] == 1000  # default
    assert r["prune"]["rho"] == 0.001
    assert r["retrain"] is None


def test_override_is_yaml_typed_and_nested():
    r = load_recipe(text=BASE, overrides=["prune.rho=0.01", "data.name=mnist",
                                          "data.root=/tmp/x", "train.epochs=3"])
    assert r["prune"]["rho"] == pytest.approx(0.01)
    assert r["data"]["name"] == "mnist" and r["data"]["root"] == "/tmp/x"
    assert r["train"]["epochs"] == 3


def test_override_can_remove_a_section():
    assert load_recipe(text=BASE, overrides=["prune=null"])["prune"] is None


def test_parse_override_errors():
    with pytest.raises(ConfigError, match="section.key=value"):
        parse_override("prune.rho")
    assert parse_override("a.b=[1, 2]") == (["a", "b"], [1, 2])


def test_unknown_section_names_line():
    with pytest.raises(ConfigError, match=r"r\.yaml:15: prnue: unknown section"):
        load_recipe(text=BASE + "prnue: {}\n", path="r.yaml")


def test_unknown_key_names_section_key_and_line():
    text = BASE.replace("  batch_size: 32", "  batch_sise: 32")
    with pytest.raises(ConfigError, match=r"r\.yaml:6: data\.batch_sise: unknown key"):
        load_recipe(text=text, path="r.yaml")


def test_wrong_type_names_key_and_line():
    text = BASE.replace("batch_size: 32", "batch_size: many")
    with pytest.raises(ConfigError, match=r"r\.yaml:6: data\.batch_size: expected an integer"):
        load_recipe(text=text, path="r.yaml")


def test_missing_required_keys():
    with pytest.raises(ConfigError, match="model.name: is required"):
        load_recipe(text="data:\n  name: synthetic\n")
    with pytest.raises(ConfigError, match="prune.targets"):
        load_recipe(text=BASE.split("  targets:")[0])


def test_override_of_unknown_section():
    with pytest.raises(ConfigError, match="unknown section 'trian'"):
        load_recipe(text=BASE, overrides=["trian.epochs=2"])


def test_invalid_yaml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_recipe(text="model: [unclosed\n")
    with pytest.raises(ConfigError, match="recipe not found"):
        load_recipe(tmp_path / "nope.yaml")


def test_shipped_recipes_load():
    from pathlib import Path

    recipes = sorted((Path(__file__).parent.parent / "recipes").glob("*.yaml"))
    assert recipes, "no recipes shipped"
    for path in recipes:
        r = load_recipe(path)
        assert r["model"]["name"] and r["data"]["name"]


def test_exponent_numbers_are_floats_in_files_and_overrides():
    r = load_recipe(text=BASE.replace("rho: 0.001", "rho: 1e-3"), overrides=["prune.rho_max=2e-5"])
    assert r["prune"]["rho"] == pytest.approx(1e-3) and isinstance(r["prune"]["rho"], float)
    assert r["prune"]["rho_max"] == pytest.approx(2e-5) and isinstance(r["prune"]["rho_max"], float)
    assert load_recipe(text=BASE, overrides=["name=1e5x"])["name"] == "1e5x"  # not a number


@pytest.mark.parametrize(("override", "key"), [
    ("prune.targets.0.scheme=blok", "prune.targets.0.scheme: rule 0: unknown scheme 'blok'"),
    ("prune.targets.0.sparsty=0.5", "prune.targets.0.sparsty: rule 0:"),
    ("prune.targets.1.block=[0, 16]", "prune.targets.1.block: rule 1: block must be"),
])
def test_a_rule_mistake_given_by_set_is_reported_against_the_set(override, key):
    """The key named is the one at fault (not the rule's first option), so the location is
    the ``--set`` that gave it, not a line of the file."""
    with pytest.raises(ConfigError) as caught:
        load_recipe(Path(__file__).parent.parent / "recipes" / "lenet5-fashion-blkrew.yaml",
                    [override])
    assert str(caught.value).startswith(f"--set {override}: {key}")
