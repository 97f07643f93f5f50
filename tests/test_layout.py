"""The house rules of the library's layout (docs/architecture.md), checked on every test run:

* no module over 500 lines, no function over 80 lines (its docstring not counted);
* no module imports a private (`_name`) name from another `mlm` module;
* imports of `mlm` modules sit at the top of a file (a package `__init__`'s lazy `__getattr__`
  and `if TYPE_CHECKING:` blocks aside), so the dependency graph is what the imports say;
* the arrows point one way: the layers listed below import only from lower layers.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from helpers import REPO

PACKAGE = REPO / "mlm"
MAX_FILE_LINES = 500
MAX_FUNCTION_LINES = 80

# Lower layers must not import higher ones (entry points are the top; nothing imports them).
LAYERS = [
    {"errors"},
    {"schema", "storage", "padding", "masking"},
    {"ops"},
    {"tokenizer", "model"},
    {"config", "collate", "data", "runtime", "optim"},
    {"checkpoint", "loop", "reporting", "tasks"},
    {"scoring", "hf", "finetune", "warmstart"},
    {"train", "evaluate", "probe", "fill_mask", "export_hf", "prepare", "plot", "benchmark"},
]


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def top_package(name: str) -> str:
    """mlm.data.readers -> data; mlm.train -> train."""
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else ""


def docstring_lines(node: ast.AST) -> int:
    body = getattr(node, "body", [])
    if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant) \
            and isinstance(body[0].value.value, str):
        return body[0].end_lineno - body[0].lineno + 1
    return 0


def mlm_imports(tree: ast.AST) -> list[tuple[ast.AST, str, list[str]]]:
    """(node, module, imported names) for every import of an mlm module."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and (node.module == "mlm" or node.module.startswith("mlm.")):
            found.append((node, node.module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "mlm" or alias.name.startswith("mlm."):
                    found.append((node, alias.name, []))
    return found


def type_checking_nodes(tree: ast.AST) -> set[int]:
    """Nodes under `if TYPE_CHECKING:` (imports for annotations only, never executed)."""
    return {id(n) for stmt in ast.walk(tree) if isinstance(stmt, ast.If)
            and getattr(stmt.test, "id", getattr(stmt.test, "attr", None)) == "TYPE_CHECKING"
            for n in ast.walk(stmt)}


def breaches(path: Path) -> list[str]:
    source = path.read_text(encoding="utf-8")
    tree = ast.parse(source)
    where = path.relative_to(REPO) if path.is_relative_to(REPO) else path
    out = []
    lines = source.count("\n") + (not source.endswith("\n"))
    if lines > MAX_FILE_LINES:
        out.append(f"{where}: {lines} lines (> {MAX_FILE_LINES})")
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1 - docstring_lines(node)
            if length > MAX_FUNCTION_LINES:
                out.append(f"{where}:{node.lineno} {node.name}: {length} lines (> {MAX_FUNCTION_LINES})")
    allowed_local = set()
    for node in ast.walk(tree):
        lazy = isinstance(node, ast.FunctionDef) and node.name == "__getattr__" and path.name == "__init__.py"
        if lazy:
            allowed_local |= {id(n) for n in ast.walk(node)}
    top_level = {id(n) for n in tree.body} | {id(n) for stmt in tree.body if isinstance(stmt, ast.If)
                                               for n in ast.walk(stmt)}
    for node, module, names in mlm_imports(tree):
        if id(node) not in top_level and id(node) not in allowed_local:
            out.append(f"{where}:{node.lineno} imports {module} inside a function")
        for name in names:
            if name.startswith("_") and not name.startswith("__"):
                out.append(f"{where}:{node.lineno} imports private {name} from {module}")
    return out


def layer_of(package: str) -> int | None:
    return next((i for i, layer in enumerate(LAYERS) if package in layer), None)


def test_every_module_keeps_the_house_rules():
    found = [line for path in modules() for line in breaches(path)]
    assert not found, "\n".join(found)


def test_every_module_belongs_to_a_layer():
    unplaced = sorted({top_package(module_name(p)) for p in modules()} - {""} - set().union(*LAYERS))
    assert not unplaced, f"add these to LAYERS in tests/test_layout.py and docs/architecture.md: {unplaced}"


def test_imports_point_down_the_layers():
    upward = []
    for path in modules():
        own = top_package(module_name(path))
        own_layer = layer_of(own)
        tree = ast.parse(path.read_text(encoding="utf-8"))
        annotations_only = type_checking_nodes(tree)
        for node, module, _ in mlm_imports(tree):
            target = top_package(module) if module != "mlm" else ""
            if id(node) in annotations_only:
                continue
            target_layer = layer_of(target)
            if own_layer is None or target_layer is None or target == own:
                continue
            if target_layer >= own_layer:
                upward.append(f"{path.relative_to(REPO)}:{node.lineno} ({own}, layer {own_layer}) imports "
                              f"{module} (layer {target_layer})")
    assert not upward, "\n".join(upward)


@pytest.mark.parametrize("source, expected", [
    ("def f():\n    from mlm.config import load_config\n", "inside a function"),
    ("from mlm.config import _private\n", "imports private _private"),
    ("def f():\n" + "    x = 1\n" * 81, "82 lines (> 80)"),
])
def test_the_checker_catches_each_breach(tmp_path, source, expected):
    path = tmp_path / "probe.py"
    path.write_text(source, encoding="utf-8")
    assert any(expected in line for line in breaches(path))
