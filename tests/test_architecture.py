"""The documented layers are the enforced ones, and the package has no import cycle, counting
imports inside functions (import-linter's own check runs in `make test`)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import networkx as nx
import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]


def _contract_layers() -> list[str]:
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    [layers] = [c for c in cfg["contracts"] if c["type"] == "layers"]
    return list(layers["layers"])


def test_documented_layers_are_the_contract() -> None:
    text = (ROOT / "docs" / "architecture.md").read_text()
    block = text.split("<!-- layers:")[1].split("<!-- /layers -->")[0]
    documented = re.findall(r"^\| `(packager\.[a-z_]+)` \|", block, flags=re.M)
    assert documented == _contract_layers()
    # and every layer is a real package or module of the source tree
    for layer in documented:
        where = ROOT / Path(*layer.split("."))
        assert (where / "__init__.py").is_file() or where.with_suffix(".py").is_file(), layer


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[0] == "targets":
        parts.insert(0, "packager")
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_no_import_cycle_counting_function_level_imports() -> None:
    files = [p for p in (ROOT / "packager").rglob("*.py") if not p.is_symlink()]
    files = [p for p in files if "targets" not in p.relative_to(ROOT).parts[1:2]]
    files += list((ROOT / "targets").rglob("*.py"))
    modules = {_module_name(p): p for p in files}
    graph = nx.DiGraph()
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*parts, base] if base else parts)
                found = [base] + [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            for target in found:
                if target in modules and target != name:
                    graph.add_edge(name, target)
    assert len(graph) > 60  # the walk saw the package
    cycles = list(nx.simple_cycles(graph))
    # a parent package importing its own child is no cycle unless the child imports it back
    assert cycles == [], cycles[:5]


def test_targets_and_templates_install_as_packager_subpackages() -> None:
    import packager.targets
    import packager.templates

    assert Path(packager.targets.__file__).resolve().parent == ROOT / "targets"
    assert Path(packager.templates.__file__).resolve().parent == ROOT / "templates"
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "package-dir" not in pyproject["tool"]["setuptools"]


@pytest.mark.parametrize("module", ["packager.builder.search", "packager.hospital.site"])
def test_no_private_name_crosses_a_module(module: str) -> None:
    """search composes the public stages (and site acceptance the public build parts): no
    `from x import _private` and no `x._private` on another module."""
    path = ROOT / Path(*module.split(".")).with_suffix(".py")
    tree = ast.parse(path.read_text())
    private = [
        a.name
        for n in ast.walk(tree)
        if isinstance(n, ast.ImportFrom) and (n.module or "").startswith("packager")
        for a in n.names
        if a.name.startswith("_") and not a.name.startswith("__")
    ]
    imported = {
        a.asname or a.name
        for n in ast.walk(tree)
        if isinstance(n, ast.ImportFrom) and (n.module or "").startswith("packager")
        for a in n.names
    }
    attrs = [
        f"{n.value.id}.{n.attr}"
        for n in ast.walk(tree)
        if isinstance(n, ast.Attribute)
        and isinstance(n.value, ast.Name)
        and n.value.id in imported
        and n.attr.startswith("_")
    ]
    assert private == [] and attrs == []
