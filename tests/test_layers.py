"""The layers of docs/architecture.md, checked over the source with `ast`: no import circle, each layer imports
only what it may, and nothing imports the repository's top-level folders by their own names.

The modules are those of mbrl/, envs/, agents/ and world_models/ under the names they install as (mbrl.envs.dream
for envs/dream.py). Every `import` and `from ... import` counts, at module level or inside a function, with
one exception for circles: imports under `if TYPE_CHECKING:` are left out of the circle check. They never run,
so they cannot break an import order or meet a half-initialised module, and they are how two modules that name
each other's types say so (world_models.jepa runs world_models.jepa_encoder, which names jepa's JEPAConfig type).
The layer rules count them too: naming a type is depending on its module.

An import of `a.b.c` (or `from a.b import c`, c a module) is an edge to `a.b.c` alone, not to the packages
`a` and `a.b` that Python initialises first: a package's __init__ importing its own submodules is no circle.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"mbrl": ROOT / "mbrl", "mbrl.envs": ROOT / "envs", "mbrl.agents": ROOT / "agents",
           "mbrl.world_models": ROOT / "world_models"}
TOP_LEVEL_FOLDERS = ("envs", "agents", "world_models", "configs", "benchmarks", "tests")
"""Folders of the repository that only exist installed as mbrl.* (or not at all): never imported by these names."""

LAYERS: list[tuple[str, tuple[str, ...], tuple[str, ...] | None]] = [
    # (modules under this prefix, the project modules they may import, third-party packages allowed (None: any))
    ("mbrl.core", ("mbrl.core",), None),
    ("mbrl.world_models", ("mbrl.world_models",), ("torch", "einops", "numpy")),
    ("mbrl.agents.planners", ("mbrl.agents.planners", "mbrl.world_models"), ("torch", "einops", "numpy")),
    ("mbrl.envs", ("mbrl.envs", "mbrl.world_models", "mbrl.core"), None),
    ("mbrl.agents", ("mbrl.agents", "mbrl.envs", "mbrl.world_models", "mbrl.core"), None),
]
"""The first matching prefix is a module's layer; modules of mbrl/ outside mbrl/core are the conductor, which may
import the whole project (and which no other layer may import: none of them lists it). mbrl.world_models does not
get mbrl.core either: it is pure PyTorch (a family can be lifted out with torch, einops and numpy alone), and none
of its modules needs the infrastructure."""


class Import(NamedTuple):
    target: str  # the module imported (absolute)
    line: int
    type_only: bool  # under `if TYPE_CHECKING:`


def module_files(folders: dict[str, Path]) -> dict[str, Path]:
    """Installed module name -> file, for every .py under each folder."""
    modules = {}
    for package, folder in folders.items():
        for path in sorted(folder.rglob("*.py")):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join([package, *parts])] = path
    return modules


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> list[Import]:
    """The imports of one module, relative ones resolved against its package."""
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[Import] = []

    def visit(node: ast.AST, type_only: bool) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                visit(child, True)
            for child in node.orelse:
                visit(child, type_only)
            return
        if isinstance(node, ast.Import):
            found.extend(Import(alias.name, node.lineno, type_only) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.append(Import(sub if sub in modules else base, node.lineno, type_only))
        for child in ast.iter_child_nodes(node):
            visit(child, type_only)

    visit(tree, False)
    return [i for i in found if i.target != "__future__"]


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def project_target(target: str, modules: dict[str, Path]) -> str | None:
    """The project module an import reaches (its longest known prefix), None for anything else."""
    parts = target.split(".")
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in modules:
            return ".".join(parts[:end])
    return None


def import_graph(modules: dict[str, Path], with_type_only: bool) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for imp in imports_of(name, path, modules):
            target = project_target(imp.target, modules)
            if target is not None and target != name and (with_type_only or not imp.type_only):
                graph[name].add(target)
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return groups


def layer_of(name: str) -> tuple[str, tuple[str, ...], tuple[str, ...] | None] | None:
    """A module's layer rule (None: the conductor)."""
    for layer in LAYERS:
        if name == layer[0] or name.startswith(layer[0] + "."):
            return layer
    return None


def _within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def breaches(modules: dict[str, Path]) -> Iterator[str]:
    """Every import that breaks a layer rule or names a top-level folder, as "module:line imports target (why)"."""
    stdlib = set(sys.stdlib_module_names)
    for name, path in modules.items():
        layer = layer_of(name)
        for imp in imports_of(name, path, modules):
            top = imp.target.split(".")[0]
            where = f"{name}:{imp.line} imports {imp.target}"
            if top in TOP_LEVEL_FOLDERS:
                yield f"{where} (a top-level folder: import it as mbrl.{top} or not at all)"
            elif layer is None or top in stdlib:
                continue
            elif top == "mbrl":
                target = project_target(imp.target, modules) or imp.target
                if not _within(target, layer[1]):
                    yield f"{where} ({layer[0]} may import only {', '.join(layer[1])})"
            elif layer[2] is not None and top not in layer[2]:
                yield f"{where} ({layer[0]} may use only {', '.join(layer[2])} besides the standard library)"


# ---- the repository ---------------------------------------------------------------------------


MODULES = module_files(FOLDERS)


def test_the_modules_are_found_under_their_installed_names() -> None:
    for name in ("mbrl.cli", "mbrl.session", "mbrl.loop", "mbrl.core.replay", "mbrl.envs.dream",
                 "mbrl.agents.planners.cem", "mbrl.world_models.jepa"):
        assert name in MODULES
    assert len(MODULES) > 50


def test_no_import_circle() -> None:
    assert circles(import_graph(MODULES, with_type_only=False)) == []


def test_every_layer_imports_only_what_it_may() -> None:
    assert list(breaches(MODULES)) == []


def test_each_subcommand_has_its_module_and_the_cli_only_dispatches() -> None:
    from mbrl.cli import COMMANDS, build_parser

    assert sorted(COMMANDS) == ["collect", "dream", "eval-world-model", "evaluate", "inspect", "plan", "train-agent",
                                "train-world-model"]
    for name, module in COMMANDS.items():
        assert module.__name__ == f"mbrl.commands.{name.replace('-', '_')}"
        assert callable(module.add_parser) and callable(module.run)
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert sorted(sub.choices) == sorted(COMMANDS)  # type: ignore[arg-type]


def _choices(command: str, option: str) -> list[str]:
    from mbrl.cli import build_parser

    sub = next(a for a in build_parser(command)._actions if a.dest == "command")
    parser = sub.choices[command]  # type: ignore[index]
    return list(next(a for a in parser._actions if option in a.option_strings).choices)


def test_options_read_their_registries() -> None:
    from mbrl.agents.planners import PLANNERS
    from mbrl.agents.sb3_agent import ALGOS
    from mbrl.train_world_model import STAGES

    assert _choices("plan", "--planner") == list(PLANNERS)
    assert _choices("train-agent", "--algo") == list(ALGOS)
    assert _choices("train-world-model", "--stage") == sorted(STAGES)


# ---- the checks themselves, on a made-up tree ------------------------------------------------


def test_the_checks_find_a_circle_a_layer_breach_and_a_top_level_import(tmp_path: Path) -> None:
    files = {
        "mbrl/__init__.py": "",
        "mbrl/core/__init__.py": "",
        "mbrl/core/run.py": "from mbrl.loop import train\n",  # infrastructure importing the conductor
        "mbrl/loop.py": "import mbrl.core.run\n\ndef train():\n    from mbrl.helper import x\n",
        "mbrl/helper.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from mbrl.loop import train\n"
                          "from mbrl import loop\n",  # a real circle through a function-level import
        "world_models/__init__.py": "",
        "world_models/base.py": "import gymnasium\nfrom . import blocks\n",  # gymnasium is not allowed here
        "world_models/blocks.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                  "    from mbrl.world_models.base import X\n",  # a type-only circle: allowed
        "envs/__init__.py": "",
        "envs/dream.py": "from world_models.base import WorldModel\n",  # the top-level folder's own name
    }
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    modules = module_files({"mbrl": tmp_path / "mbrl", "mbrl.envs": tmp_path / "envs",
                            "mbrl.world_models": tmp_path / "world_models"})
    assert circles(import_graph(modules, with_type_only=False)) == [["mbrl.core.run", "mbrl.helper", "mbrl.loop"]]
    assert circles(import_graph(modules, with_type_only=True)) == [
        ["mbrl.core.run", "mbrl.helper", "mbrl.loop"], ["mbrl.world_models.base", "mbrl.world_models.blocks"]]
    found = list(breaches(modules))
    assert any(b.startswith("mbrl.core.run:1 imports mbrl.loop (mbrl.core may import only mbrl.core)") for b in found)
    assert any(b.startswith("mbrl.world_models.base:1 imports gymnasium") for b in found)
    assert any(b.startswith("mbrl.envs.dream:1 imports world_models.base (a top-level folder") for b in found)
    assert len(found) == 3, found


@pytest.mark.parametrize("source, target", [
    ("from . import blocks", "pkg.sub.blocks"),
    ("from .blocks import Layer", "pkg.sub.blocks"),
    ("from .. import top", "pkg.top"),
    ("import pkg.top as t", "pkg.top"),
])
def test_relative_imports_resolve_against_the_package(tmp_path: Path, source: str, target: str) -> None:
    for rel in ("pkg/__init__.py", "pkg/top.py", "pkg/sub/__init__.py", "pkg/sub/blocks.py"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("")
    (tmp_path / "pkg/sub/user.py").write_text(source + "\n")
    modules = module_files({"pkg": tmp_path / "pkg"})
    assert import_graph(modules, with_type_only=False)["pkg.sub.user"] == {target}


def test_the_wheel_lists_every_package_of_the_source() -> None:
    """setup.cfg names its packages one by one (the folders map onto mbrl.*): a package left out would be missing
    from a non-editable install while every test of the editable one passes."""
    import configparser

    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    listed = set(setup["options"]["packages"].split())
    found = {".".join([name, *init.parent.relative_to(folder).parts])
             for name, folder in FOLDERS.items() for init in folder.rglob("__init__.py")}
    assert found <= listed, f"packages missing from setup.cfg: {sorted(found - listed)}"
