"""Recipes: one YAML file states the whole compression plan.

A recipe has the top-level sections ``model``, ``data``, ``train`` (dense pre-training and
the defaults every training stage inherits), ``prune`` (method, its options, ``targets``
rules and the ``train`` settings of the pruning stage), ``retrain`` (masked fine-tuning),
``quantize`` and ``eval``. Any key can be overridden from the command line with
``--set section.key=value`` where the value is parsed as YAML (``--set prune.rho=0.01``).

Errors name the key and the line of the file it came from, because a recipe is usually
edited by hand and "wrong type" without a line number is a guessing game.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError

#: every section and, for each, the keys it may hold (None: free-form mapping)
SECTIONS: dict[str, set[str] | None] = {
    "name": None,
    "seed": None,
    "model": {"name", "kwargs", "checkpoint", "input_shape"},
    "data": {
        "name", "root", "batch_size", "test_batch_size", "download", "augment",
        "limit_train", "limit_test", "options",
    },
    "train": None,  # TrainConfig keys, checked by TrainConfig.from_dict
    "prune": None,  # method, targets, train, and the method's own options
    "retrain": None,  # TrainConfig keys
    "quantize": None,
    "eval": {"batch_size"},
}

DEFAULTS: dict[str, Any] = {
    "name": "recipe",
    "seed": 0,
    "model": {"name": None, "kwargs": {}, "checkpoint": None, "input_shape": None},
    "data": {
        "name": None, "root": None, "batch_size": 128, "test_batch_size": 1000,
        "download": False, "augment": False, "limit_train": None, "limit_test": None,
        "options": {},
    },
    "train": {"epochs": 0},
    "prune": None,
    "retrain": None,
    "quantize": None,
    "eval": {},
}


#: methods of the ``quantize`` section, and the keys of its ``retrain`` that are not
#: training settings (how quantized retraining moves weights between levels)
QUANT_METHODS = ("admm", "ptq", "ste")
QUANT_RETRAIN_DEFAULTS = {"mode": "progressive", "fix_fraction": 0.3}
QUANT_RETRAIN_KEYS = set(QUANT_RETRAIN_DEFAULTS)
_QUANT_STAGE_KEYS = {"method", "bits", "scale", "levels", "layers", "rest", "train", "retrain"}
QUANT_REST = ("float32", "float16", "bfloat16")


class RecipeLoader(yaml.SafeLoader):
    """Safe YAML, except that ``1e-3`` is a float (YAML 1.2) rather than the string YAML 1.1
    makes of it: learning rates and penalties are written that way all the time."""


RecipeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def parse_yaml(text: str):
    return yaml.load(text, Loader=RecipeLoader)  # noqa: S506 (a SafeLoader subclass)


@dataclass
class Recipe:
    """A validated recipe: plain nested dicts plus where each key came from."""

    data: dict[str, Any]
    source: str = "<recipe>"
    lines: dict[tuple[str, ...], int] = field(default_factory=dict)

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)

    def where(self, *path: str) -> str:
        """``file:line`` of a key, for error messages."""
        line = self.lines.get(tuple(path))
        return f"{self.source}:{line}" if line else self.source

    def error(self, message: str, *path: str) -> ConfigError:
        key = ".".join(path)
        return ConfigError(f"{self.where(*path)}: {key}: {message}" if key else message)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.data, sort_keys=False)


def _compose_with_lines(text: str, source: str) -> tuple[Any, dict[tuple[str, ...], int]]:
    """Parse YAML and record the 1-based line of every mapping key (by its key path)."""
    try:
        node = yaml.compose(text, Loader=RecipeLoader)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from exc
    lines: dict[tuple[str, ...], int] = {}

    def walk(n: yaml.Node, path: tuple[str, ...]) -> None:
        if isinstance(n, yaml.MappingNode):
            for key_node, value_node in n.value:
                key = (*path, str(key_node.value))
                lines[key] = key_node.start_mark.line + 1
                walk(value_node, key)
        elif isinstance(n, yaml.SequenceNode):
            for i, item in enumerate(n.value):
                key = (*path, str(i))
                lines[key] = item.start_mark.line + 1
                walk(item, key)

    if node is not None:
        walk(node, ())
    return parse_yaml(text), lines


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"prune.rho=0.01"`` -> (["prune", "rho"], 0.01); the value is YAML-typed."""
    if "=" not in text:
        raise ConfigError(f"--set expects section.key=value, got {text!r}")
    key, _, raw = text.partition("=")
    path = [p for p in key.strip().split(".") if p]
    if not path:
        raise ConfigError(f"--set has an empty key: {text!r}")
    try:
        value = parse_yaml(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {key}: value {raw!r} is not valid YAML: {exc}") from exc
    return path, value


def _merge(base: Any, update: Any) -> Any:
    if isinstance(base, dict) and isinstance(update, dict):
        out = dict(base)
        for k, v in update.items():
            out[k] = _merge(base.get(k), v) if k in base else copy.deepcopy(v)
        return out
    return copy.deepcopy(update)


def load_recipe(
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    *,
    text: str | None = None,
) -> Recipe:
    """Read, override and validate a recipe (from ``path`` or from ``text``)."""
    if text is None:
        if path is None:
            raise ConfigError("load_recipe needs a path or text")
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"recipe not found: {path}")
        text = path.read_text()
        source = str(path)
    else:
        source = str(path) if path else "<recipe>"
    raw, lines = _compose_with_lines(text, source)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{source}: a recipe must be a mapping of sections, got {type(raw).__name__}"
        )
    recipe = Recipe(raw, source, lines)
    _check_sections(recipe)
    for item in overrides or []:
        key_path, value = parse_override(item)
        _apply_override(recipe.data, key_path, value, item)
    recipe.data = _merge(DEFAULTS, recipe.data)
    _check_sections(recipe)
    _check_types(recipe)
    return recipe


def _apply_override(data: dict, path: list[str], value: Any, text: str) -> None:
    if path[0] not in SECTIONS:
        raise ConfigError(
            f"--set {text}: unknown section {path[0]!r}; sections: {', '.join(SECTIONS)}"
        )
    node = data
    for key in path[:-1]:
        if node.get(key) is None:
            node[key] = {}
        if not isinstance(node[key], dict):
            raise ConfigError(f"--set {text}: {key!r} is not a mapping")
        node = node[key]
    node[path[-1]] = value


def _check_sections(recipe: Recipe) -> None:
    for section, value in recipe.data.items():
        if section not in SECTIONS:
            raise recipe.error(
                f"unknown section; valid sections: {', '.join(SECTIONS)}", section
            )
        allowed = SECTIONS[section]
        if allowed is None or value is None:
            continue
        if not isinstance(value, dict):
            raise recipe.error(f"must be a mapping, got {type(value).__name__}", section)
        for key in value:
            if key not in allowed:
                raise recipe.error(
                    f"unknown key; valid keys of {section}: {', '.join(sorted(allowed))}",
                    section, str(key),
                )


def _expect(recipe: Recipe, value: Any, types: tuple[type, ...], what: str, *path: str) -> None:
    if value is None:
        return
    if isinstance(value, bool) and bool not in types:
        ok = False
    else:
        ok = isinstance(value, types)
    if not ok:
        raise recipe.error(f"expected {what}, got {value!r}", *path)


def _check_types(recipe: Recipe) -> None:
    d = recipe.data
    _expect(recipe, d["seed"], (int,), "an integer", "seed")
    for key in ("model", "data", "train", "eval"):
        if not isinstance(d[key], dict):
            raise recipe.error(f"must be a mapping, got {type(d[key]).__name__}", key)
    if not d["model"].get("name"):
        raise recipe.error("is required (a zoo name or 'module:function')", "model", "name")
    _expect(recipe, d["model"]["name"], (str,), "a string", "model", "name")
    _expect(recipe, d["model"]["kwargs"], (dict,), "a mapping", "model", "kwargs")
    _expect(recipe, d["model"]["checkpoint"], (str,), "a path", "model", "checkpoint")
    if not d["data"].get("name"):
        raise recipe.error(
            "is required (e.g. fashion_mnist, mnist, cifar10, synthetic)", "data", "name"
        )
    _expect(recipe, d["data"]["name"], (str,), "a string", "data", "name")
    _expect(recipe, d["data"]["root"], (str,), "a directory path", "data", "root")
    for key in ("batch_size", "test_batch_size", "limit_train", "limit_test"):
        _expect(recipe, d["data"][key], (int,), "an integer", "data", key)
        if d["data"][key] is not None and d["data"][key] <= 0:
            raise recipe.error(f"must be positive, got {d['data'][key]}", "data", key)
    for key in ("download", "augment"):
        _expect(recipe, d["data"][key], (bool,), "true or false", "data", key)
    for section in ("prune", "retrain", "quantize"):
        if d[section] is not None and not isinstance(d[section], dict):
            raise recipe.error(f"must be a mapping, got {type(d[section]).__name__}", section)
    prune = d["prune"]
    if prune is not None:
        if not prune.get("method"):
            raise recipe.error("is required (e.g. admm, reweighted, gradual)", "prune", "method")
        targets = prune.get("targets")
        if not isinstance(targets, list) or not targets:
            raise recipe.error("must be a non-empty list of target rules", "prune", "targets")
        for i, rule in enumerate(targets):
            if not isinstance(rule, dict):
                raise recipe.error(f"must be a mapping, got {rule!r}", "prune", "targets", str(i))
        _expect(recipe, prune.get("train"), (dict,), "a mapping", "prune", "train")
    _check_quantize(recipe)


def _check_quantize(recipe: Recipe) -> None:
    """The ``quantize`` section: a known method, only keys something reads, a valid
    retraining mode (the values of bits/scale/levels are checked against the model when
    the plan is resolved, before any training)."""
    q = recipe.data["quantize"]
    if not q:
        return
    from .constraints import QUANT_MODES  # noqa: PLC0415  (torch only when quantizing)
    from .methods import options  # noqa: PLC0415

    method = q.get("method", "admm")
    if method not in QUANT_METHODS:
        raise recipe.error(f"must be one of {', '.join(QUANT_METHODS)}, got {method!r}",
                           "quantize", "method")
    valid = _QUANT_STAGE_KEYS | set(options(method))
    for key in q:
        if key not in valid:
            raise recipe.error(f"unknown key; valid keys of quantize with method {method!r}: "
                               f"{', '.join(sorted(valid))}", "quantize", str(key))
    for key in ("train", "retrain"):
        _expect(recipe, q.get(key), (dict,), "a mapping", "quantize", key)
    if q.get("rest", "float32") not in QUANT_REST:
        raise recipe.error(f"must be one of {', '.join(QUANT_REST)}, got {q['rest']!r}",
                           "quantize", "rest")
    retrain = {**QUANT_RETRAIN_DEFAULTS, **(q.get("retrain") or {})}
    mode = retrain["mode"]
    if mode not in QUANT_MODES:
        raise recipe.error(f"must be one of {', '.join(QUANT_MODES)}, got {mode!r}",
                           "quantize", "retrain", "mode")
    fraction = retrain["fix_fraction"]
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) \
            or not 0 < fraction <= 1:
        raise recipe.error(f"must be a fraction in (0, 1], got {fraction!r}",
                           "quantize", "retrain", "fix_fraction")
