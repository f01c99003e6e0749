"""The layering of the package: no module imports a room listed below its own.

The order is written once, in docs/architecture.md (the table between the ``layers``
markers); this test parses it and every module's imports (lazy ones inside functions too),
so the picture in the docs and the code cannot drift apart.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "prunekit"


def layer_of_room() -> dict[str, int]:
    text = (ROOT / "docs" / "architecture.md").read_text()
    table = text.split("<!-- layers: begin -->")[1].split("<!-- layers: end -->")[0]
    layers: dict[str, int] = {}
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 2 and cells[0].isdigit():
            for room in re.findall(r"`([\w]+)`", cells[1]):
                layers[room] = int(cells[0])
    return layers


def room(module: str) -> str | None:
    """``prunekit.targets.resolve`` -> ``targets``; the package root -> None."""
    parts = module.split(".")
    if parts[0] != "prunekit" or len(parts) < 2:
        return None
    return parts[1]


def imports(path: Path, top: Path = PACKAGE.parent) -> list[tuple[str, int]]:
    """Every module ``path`` (inside the folder ``top``) imports, absolute or relative
    (resolved against its package), with its line."""
    parts = list(path.relative_to(top).with_suffix("").parts)
    package = parts[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
                names = ([target] if node.module
                         else [f"{target}.{alias.name}" for alias in node.names])
            else:
                names = [node.module or ""]
            found += [(name, node.lineno) for name in names]
        elif isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
    return found


def test_every_room_is_in_the_layer_table():
    layers = layer_of_room()
    rooms = {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir()
             if (p.suffix == ".py" and p.stem != "__init__") or (p / "__init__.py").is_file()}
    assert rooms - set(layers) == set(), "add these rooms to docs/architecture.md's table"


def test_no_module_imports_a_room_above_it():
    layers = layer_of_room()
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        own = room(".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts))
        if own is None:
            continue
        for name, line in imports(path):
            other = room(name)
            if other is None or other == own or other not in layers:
                continue  # the package root, itself, or a name such as __version__
            if layers[other] > layers[own]:
                upward.append(f"{path.relative_to(ROOT)}:{line}: {own} (layer {layers[own]}) "
                              f"imports {other} (layer {layers[other]})")
    assert not upward, "\n".join(upward)


def test_the_check_resolves_relative_and_lazy_imports(tmp_path):
    module = tmp_path / "prunekit" / "schemes" / "fake.py"
    module.parent.mkdir(parents=True)
    module.write_text("from ..errors import ConfigError\n"
                      "from . import base\n"
                      "def late():\n"
                      "    from ..runtime.compile import compile\n")
    found = imports(module, tmp_path)
    assert found == [("prunekit.errors", 1), ("prunekit.schemes.base", 2),
                     ("prunekit.runtime.compile", 4)]
    assert [room(name) for name, _ in found] == ["errors", "schemes", "runtime"]
    assert room("prunekit") is None
