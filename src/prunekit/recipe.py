"""Recipes: one YAML file states the whole compression plan.

A recipe has the top-level sections ``model``, ``data``, ``train`` (dense pre-training and
the defaults every training stage inherits), ``prune`` (method, its options, ``targets``
rules and the ``train`` settings of the pruning stage), ``retrain`` (masked fine-tuning) and
``quantize``, plus ``name``, ``seed`` and ``version``. Any key can be overridden from the
command line with ``--set section.key=value`` where the value is parsed as YAML
(``--set prune.rho=0.01``; a number indexes a list: ``--set prune.targets.0.sparsity=0.8``).

The recipe becomes a :class:`~prunekit.plan.Plan` (typed, versioned configs that check every
value); this module reads the YAML, applies the overrides and turns the key path a check
reports into ``file:line: key: message`` (or ``--set key=value: key: message`` for a value
given on the command line), because a recipe is usually edited by hand and "wrong type"
without a line number is a guessing game.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError
from .plan import (  # noqa: F401  (re-exported: the recipe's vocabulary)
    QUANT_METHODS,
    QUANT_REST,
    QUANT_RETRAIN_DEFAULTS,
    QUANT_RETRAIN_KEYS,
    Plan,
)


class RecipeLoader(yaml.SafeLoader):
    """Safe YAML, except that ``1e-3`` is a float (YAML 1.2) rather than the string YAML 1.1
    makes of it: learning rates and penalties are written that way all the time."""


RecipeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def parse_yaml(text: str):
    """Safe YAML, refusing a value that contains itself (``a: &x [*x]``): a recipe is a tree,
    and walking a cycle would never end."""
    value = yaml.load(text, Loader=RecipeLoader)  # noqa: S506 (a SafeLoader subclass)
    _refuse_cycles(value, [])
    return value


def _refuse_cycles(value: Any, inside: list[int]) -> None:
    if not isinstance(value, dict | list):
        return
    if id(value) in inside:
        raise yaml.YAMLError("an anchor (&name) is used inside its own value (*name)")
    inside.append(id(value))
    for item in value.values() if isinstance(value, dict) else value:
        _refuse_cycles(item, inside)
    inside.pop()


@dataclass
class Recipe:
    """A checked recipe: its :class:`~prunekit.plan.Plan`, the plan as plain nested dicts
    (``recipe["prune"]["targets"]``) and where each key came from."""

    data: dict[str, Any]
    source: str = "<recipe>"
    lines: dict[tuple[str, ...], int] = field(default_factory=dict)
    #: keys given on the command line: path -> the ``--set`` text that gave them
    overrides: dict[tuple[str, ...], str] = field(default_factory=dict)
    plan: Plan | None = None

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)

    def where(self, *path: str) -> str:
        """``file:line`` of a key (of its nearest enclosing key that has a line), or the
        ``--set`` option that gave it."""
        path = tuple(path)
        for end in range(len(path), 0, -1):
            prefix = path[:end]
            given = [text for key, text in self.overrides.items() if key[:end] == prefix]
            if given:
                return f"--set {given[-1]}"
            if prefix in self.lines:
                return f"{self.source}:{self.lines[prefix]}"
        return self.source

    def error(self, message: str, *path: str) -> ConfigError:
        key = ".".join(path)
        exc = ConfigError(f"{self.where(*path)}: {key}: {message}" if key else message,
                          key=path)
        exc.located = True
        return exc

    def locate(self, exc: ConfigError, *prefix: str) -> ConfigError:
        """``exc`` with the file, line and key of ``prefix + exc.key`` in its message (of the
        same class: a TargetError stays one); an error that already has them is kept."""
        if exc.located:
            return exc
        path = (*prefix, *exc.key)
        key = ".".join(path)
        where = self.where(*path)
        text = f"{where}: {key}: {exc.message}" if key else f"{where}: {exc.message}"
        located = type(exc)(text, key=path)
        located.located = True
        return located

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
                if key in lines:  # YAML keeps the last silently; the user meant one of them
                    exc = ConfigError(f"{source}:{lines[key]}: {'.'.join(key)}: duplicate key "
                                      f"(again on line {key_node.start_mark.line + 1})", key=key)
                    exc.located = True
                    raise exc
                lines[key] = key_node.start_mark.line + 1
                walk(value_node, key)
        elif isinstance(n, yaml.SequenceNode):
            for i, item in enumerate(n.value):
                key = (*path, str(i))
                lines[key] = item.start_mark.line + 1
                walk(item, key)

    try:
        value = parse_yaml(text)
    except yaml.YAMLError as exc:  # a python/object tag (safe YAML builds no objects), a cycle
        raise ConfigError(f"{source}: not valid YAML: {exc}") from None
    if node is not None:
        walk(node, ())
    return value, lines


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
    for item in overrides or []:
        key_path, value = parse_override(item)
        _apply_override(recipe.data, key_path, value, item)
        recipe.overrides[tuple(key_path)] = item
    try:
        recipe.plan = Plan.from_dict(recipe.data)
    except ConfigError as exc:
        raise recipe.locate(exc) from None
    recipe.data = recipe.plan.to_dict()
    return recipe


def _apply_override(data: dict, path: list[str], value: Any, text: str) -> None:
    """Set ``data[path]``; a number indexes a list (``prune.targets.0.sparsity=0.8``)."""
    node: Any = data
    for depth, key in enumerate(path):
        last = depth == len(path) - 1
        if isinstance(node, list):
            if not key.isdigit() or int(key) >= len(node):
                raise ConfigError(f"--set {text}: {'.'.join(path[:depth])} is a list of "
                                  f"{len(node)}; {key!r} is not an index of it")
            key = int(key)
        elif not isinstance(node, dict):
            raise ConfigError(f"--set {text}: {'.'.join(path[:depth])} is not a mapping")
        elif not last and node.get(key) is None:
            node[key] = {}
        if last:
            node[key] = value
        else:
            node = node[key]
