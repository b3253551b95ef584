"""The layout is the architecture (docs/architecture.md): commands never import each other, a layer
imports only the layers below it, every command has a typed schema, and no file grows past 400 lines."""
from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pytest

from conftest import compose
from llama2ft import PROJECT_ROOT

PACKAGE = PROJECT_ROOT / "llama2ft"
# Which layers each layer may import (besides itself and the package root's constants); the same table
# is in docs/architecture.md. Commands (the top-level modules) may import any layer.
ALLOWED = {
    "core": set(),
    "data": {"core"},
    "model": {"core"},
    "inference": {"core", "data", "model"},
    "evaluation": {"core", "data", "model", "inference"},
    "serving": {"core", "data", "model", "inference"},
    "training": {"core", "data", "model", "inference", "evaluation"},
    "publishing": {"core", "data", "model", "inference"},
    "config": {"core", "data", "model", "inference"},
    # the studio's page over the commands: reads what every layer owns, runs the commands as subprocesses
    "ui": {"core", "data", "model", "inference", "evaluation", "serving", "training", "publishing", "config"},
}
COMMANDS = ["chat", "eval", "export", "merge", "prepare", "serve", "studio", "sweep", "train", "vocab", "web"]
MAX_LINES = 400


def unit_of(module: str, root: Path) -> str | None:
    """"layer:<name>", "command:<name>", "root" or None (not ours) for a dotted module name."""
    parts = module.split(".")
    if parts[0] != "llama2ft":
        return None
    if len(parts) == 1:
        return "root"
    if parts[1] in ALLOWED:
        return f"layer:{parts[1]}"
    if (root / f"{parts[1]}.py").is_file():
        return f"command:{parts[1]}"
    return f"unknown:{parts[1]}"


def imported_modules(path: Path, root: Path) -> list[tuple[int, str]]:
    """(line, module) of every import in a file, lazy imports inside functions and those under `if
    TYPE_CHECKING:` included; `from llama2ft.pkg import x` counts as importing llama2ft.pkg.x when x is
    a module of ours."""
    package = ".".join(("llama2ft", *path.relative_to(root).with_suffix("").parts[:-1]))
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                out.append((node.lineno, sub if module_file(sub, root) is not None else base))
    return out


def module_file(module: str, root: Path) -> Path | None:
    """The file of a dotted module name of the package at `root` (a package: its __init__.py), or None."""
    parts = module.split(".")
    if parts[0] != "llama2ft":
        return None
    path = root.joinpath(*parts[1:])
    for candidate in (path.with_suffix(".py") if len(parts) > 1 else None, path / "__init__.py"):
        if candidate is not None and candidate.is_file():
            return candidate
    return None


def violations(root: Path) -> list[str]:
    """Every import in the package at `root` that breaks the layer rules."""
    found = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        me = unit_of(".".join(("llama2ft", *rel.with_suffix("").parts)).removesuffix(".__init__"), root)
        for line, module in imported_modules(path, root):
            target = unit_of(module, root)
            if target is None or target == "root" or target == me:
                continue
            where = f"{rel}:{line} imports {module}"
            if target.startswith("unknown:"):
                found.append(f"{where}: not a layer or command of the package")
            elif target.startswith("command:"):
                found.append(f"{where}: {'a command imports another command' if me.startswith('command:') else 'a layer imports a command'}")
            elif me.startswith("layer:") and target.split(":")[1] not in ALLOWED[me.split(":")[1]]:
                found.append(f"{where}: layer {me.split(':')[1]} may not import layer {target.split(':')[1]}")
    return found


def import_graph(root: Path) -> dict[str, dict[str, int]]:
    """Each file of the package at `root` (relative path) -> the files of ours it imports, with the line
    of the first such import. Every import `imported_modules` sees counts, those under `if TYPE_CHECKING:`
    too: a circle only the type checker walks is still two modules that need each other (a design smell
    either way), and counting it keeps the rule one plain statement with no exception to argue about."""
    graph: dict[str, dict[str, int]] = {}
    for path in sorted(root.rglob("*.py")):
        edges = graph.setdefault(str(path.relative_to(root)), {})
        for line, module in imported_modules(path, root):
            target = module_file(module, root)
            if target is not None:
                edges.setdefault(str(target.relative_to(root)), line)
    return graph


def _strongly_connected(graph: dict[str, dict[str, int]]) -> dict[str, int]:
    """Each node -> the number of its strongly connected component (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    component: dict[str, int] = {}
    stack: list[str] = []
    for root_node in sorted(graph):
        if root_node in index:
            continue
        work = [(root_node, iter(sorted(graph[root_node])))]
        index[root_node] = low[root_node] = len(index)
        stack.append(root_node)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    number = len(set(component.values()))
                    while True:
                        member = stack.pop()
                        component[member] = number
                        if member == node:
                            break
            elif child not in index:
                index[child] = low[child] = len(index)
                stack.append(child)
                work.append((child, iter(sorted(graph.get(child, {})))))
            elif child not in component:
                low[node] = min(low[node], index[child])
    return component


def circles(root: Path) -> list[str]:
    """Every import circle between modules of the package at `root` (inside one folder too), each as its
    chain: `a.py:LINE -> b.py:LINE -> a.py` (LINE: where that module imports the next)."""
    graph = import_graph(root)
    component = _strongly_connected(graph)
    found = []
    for start in sorted(graph):
        # simple paths back to `start` through later nodes of its component: each circle once, from its first module
        todo = [[start]]
        while todo:
            path = todo.pop()
            for nxt in sorted(graph[path[-1]], reverse=True):
                if nxt == start:
                    chain = [f"{a}:{graph[a][b]}" for a, b in zip(path, [*path[1:], start])]
                    found.append(" -> ".join([*chain, start]))
                elif nxt > start and nxt not in path and component[nxt] == component[start]:
                    todo.append([*path, nxt])
    return sorted(found)


def test_the_package_follows_the_layer_rules():
    assert violations(PACKAGE) == []


def test_the_rules_catch_planted_violations(tmp_path):
    copy = tmp_path / "llama2ft"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    with (copy / "data" / "rows.py").open("a") as f:
        f.write("\n\ndef _late():\n    from llama2ft.training.recipe import run_training  # a lower layer reaching up\n")
    with (copy / "train.py").open("a") as f:
        f.write("\nfrom llama2ft import chat  # a command importing a command\n")
    with (copy / "core" / "text.py").open("a") as f:
        f.write("\nimport llama2ft.merge\n")
    found = violations(copy)
    assert len(found) == 3, found
    assert any("data/rows.py" in v and "layer data may not import layer training" in v for v in found)
    assert any("train.py" in v and "a command imports another command" in v for v in found)
    assert any("core/text.py" in v and "a layer imports a command" in v for v in found)


def test_the_package_has_no_import_circles():
    found = circles(PACKAGE)
    assert not found, "import circles (each module imports the next):\n" + "\n".join(found)


def test_the_circle_check_catches_planted_circles(tmp_path):
    copy = tmp_path / "llama2ft"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    already = set(circles(copy))
    plant = {  # three modules of one folder, the last one importing lazily, in `from package import module` form
        "core/_a.py": "from llama2ft.core._b import B\n",
        "core/_b.py": "B = 1\nimport llama2ft.core._c\n",
        "core/_c.py": "def late():\n    from llama2ft.core import _a\n",
        # two modules that only need each other for the type checker
        "model/_d.py": "from typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n    from llama2ft.model._e import E\n",
        "model/_e.py": "from llama2ft.model._d import TYPE_CHECKING\n",
    }
    for rel, text in plant.items():
        (copy / rel).write_text(text, encoding="utf-8")
    assert set(circles(copy)) - already == {"core/_a.py:1 -> core/_b.py:2 -> core/_c.py:2 -> core/_a.py",
                                            "model/_d.py:4 -> model/_e.py:1 -> model/_d.py"}


def test_the_top_level_holds_only_commands_and_layers():
    modules = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__")
    layers = sorted(p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").is_file())
    assert modules == COMMANDS
    assert layers == sorted(ALLOWED)
    assert all(ast.get_docstring(ast.parse((PACKAGE / layer / "__init__.py").read_text())) for layer in layers)


def test_no_file_over_400_lines():
    files = [p for folder in ("llama2ft", "tests", "bench", "scripts") for p in (PROJECT_ROOT / folder).rglob("*.py")]
    long = {str(p.relative_to(PROJECT_ROOT)): n for p in files
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert long == {}


# ---------------------------------------------------------------- typed schemas
@pytest.mark.parametrize("command", ["train", "prepare", "chat", "web", "serve", "eval", "studio"])
def test_every_config_group_command_rejects_unknown_keys_and_wrong_types(command):
    from hydra.errors import ConfigCompositionException
    from omegaconf.errors import ValidationError

    compose([], config_name=command)  # the defaults compose
    with pytest.raises(ConfigCompositionException, match="no_such_key"):
        compose(["no_such_key=1"], config_name=command)
    typed = {"train": "trainer.max_steps=many", "prepare": "trainer.max_steps=many", "studio": "port=many"}.get(
        command, "max_new_tokens=many")
    with pytest.raises(ConfigCompositionException) as info:
        compose([typed], config_name=command)
    assert isinstance(info.value.__cause__, ValidationError), info.value.__cause__


@pytest.mark.parametrize("command, typed", [("merge", "verify=perhaps"), ("export", "overwrite=perhaps"),
                                            ("vocab", "vocab_size=big")])
def test_store_served_commands_reject_unknown_keys_and_wrong_types(command, typed):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from hydra.errors import ConfigCompositionException
    from omegaconf.errors import ValidationError

    from llama2ft.config.hydra_app import register_schemas, stored_app_config

    register_schemas()
    name = stored_app_config(command)
    with initialize_config_module(config_module="llama2ft", version_base="1.3"):
        assert hydra_compose(config_name=name)  # the defaults compose
        with pytest.raises(ConfigCompositionException, match="no_such_key"):
            hydra_compose(config_name=name, overrides=["no_such_key=1"])
        with pytest.raises(ConfigCompositionException) as info:
            hydra_compose(config_name=name, overrides=[typed])
        assert isinstance(info.value.__cause__, ValidationError), info.value.__cause__
