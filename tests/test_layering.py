"""The package's layering, enforced: imports go one way and nothing imports in a cycle.

Every ``import`` of ``tb_bn_plugin`` code counts, wherever it stands (module
level or inside a function) and however it is spelt (``from ... import``,
``import ...``, ``importlib.import_module("...")``). The public API's lazy
table in ``tb_bn_plugin/__init__.py`` is the one place that may name every
layer.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "tb_bn_plugin"

# Layer of each top-level module or subpackage.
LAYER_OF = {
    "formatting": "base",
    "numerics": "base",
    "metadata": "contract",
    "series": "contract",
    "records": "contract",
    "summary": "contract",
    "graph": "graph",
    "diagnostics": "diagnostics",
    "reading": "reading",
    "training": "training",
    "plugin": "plugin",
    "cli": "cli",
}
_BELOW_ALL = {"base", "contract"}
# What each layer may import besides itself.
ALLOWED = {
    "base": {"base"},
    "contract": {"base"},
    "graph": _BELOW_ALL,
    "diagnostics": _BELOW_ALL | {"graph"},
    "reading": _BELOW_ALL | {"graph"},
    "training": _BELOW_ALL | {"graph", "diagnostics"},
    "plugin": _BELOW_ALL | {"graph", "diagnostics", "reading"},
    "cli": _BELOW_ALL | {"graph", "diagnostics", "reading"},
}
# Within the two lowest layers, a fixed order: what each module may import of its own layer.
WITHIN_LAYER = {
    "formatting": set(),
    "numerics": {"formatting"},
    "metadata": set(),
    "series": {"metadata"},
    "records": {"metadata", "series"},
    "summary": {"metadata", "series", "records"},
}


def module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, pathlib.Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imported(path: pathlib.Path, name: str, known: set[str]) -> set[str]:
    """The package modules ``path`` imports (resolved to modules, not attributes)."""
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def add(target: str) -> None:
        if not target.startswith("tb_bn_plugin"):
            return
        while target not in known and "." in target:
            target = target.rpartition(".")[0]
        found.add(target)

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")
                base = ".".join(parent[: len(parent) - node.level + 1] + ([base] if base else []))
            for alias in node.names:
                full = f"{base}.{alias.name}"
                add(full if full in known else base)
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
        ):
            add(node.args[0].value)
    found.discard(name)
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imported(path, name, set(mods)) for name, path in mods.items()}


def unit(module: str) -> str | None:
    """``numerics``, ``metadata``, ``training``...: the top-level part below ``tb_bn_plugin``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def test_every_module_belongs_to_a_layer():
    unknown = sorted({unit(m) for m in modules()} - set(LAYER_OF) - {None})
    assert not unknown, f"modules outside the layering (add them to LAYER_OF): {unknown}"


def test_imports_go_one_way():
    bad = []
    for module, targets in graph().items():
        source = unit(module)
        if source is None:  # the public API's lazy table
            continue
        for target in targets:
            into = unit(target)
            if into is None:
                bad.append(
                    f"{module} -> {target} (the package root is the public API, not a library)"
                )
                continue
            if into == source:
                continue
            layer, target_layer = LAYER_OF[source], LAYER_OF[into]
            if layer == target_layer and layer in _BELOW_ALL:
                ok = into in WITHIN_LAYER[source]
            else:
                ok = target_layer in ALLOWED[layer]
            if not ok:
                bad.append(f"{module} ({layer}) -> {target} ({target_layer})")
    assert not bad, "imports against the layering:\n" + "\n".join(sorted(bad))


def test_no_import_cycles():
    edges = graph()
    # A package's __init__ may import its own modules (re-exports): not a cycle of logic.
    edges = {
        m: {t for t in ts if not (modules()[m].name == "__init__.py" and t.startswith(m + "."))}
        for m, ts in edges.items()
    }
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize("package", sorted(p.parent.name for p in PACKAGE.glob("*/__init__.py")))
def test_every_subpackage_says_what_it_owns_and_may_import(package):
    doc = ast.get_docstring(ast.parse((PACKAGE / package / "__init__.py").read_text())) or ""
    assert "may import" in " ".join(doc.split()).lower(), (
        f"tb_bn_plugin/{package}/__init__.py must say what it may import"
    )


def test_the_layering_test_fails_on_a_violation(tmp_path):
    """The checks above can fail: an upward import is caught."""
    fake = tmp_path / "tb_bn_plugin"
    (fake / "numerics").mkdir(parents=True)
    (fake / "training").mkdir()
    for path in (
        fake / "__init__.py",
        fake / "numerics" / "__init__.py",
        fake / "training" / "__init__.py",
    ):
        path.write_text('"""May import nothing."""\n')
    (fake / "training" / "probe.py").write_text("X = 1\n")
    (fake / "numerics" / "gap.py").write_text(
        "def f():\n    from tb_bn_plugin.training import probe\n    return probe\n"
    )
    real = globals()["PACKAGE"]
    globals()["PACKAGE"] = fake
    try:
        with pytest.raises(AssertionError, match="numerics.gap"):
            test_imports_go_one_way()
        (fake / "training" / "probe.py").write_text("from tb_bn_plugin.numerics import gap\n")
        with pytest.raises(AssertionError, match="import cycles"):
            test_no_import_cycles()
    finally:
        globals()["PACKAGE"] = real
