"""The package's layers, read from the source: dependencies point one way.

    core  <-  passes  <-  runtime  <-  analysis | training  <-  api  <-  cli

``onnxprune.runtime_ops`` (the native ops' loader) imports nothing of onnxprune and may be
used from every layer; the package root holds ``__version__`` and the API's lazy entry points.
Every import counts, also one inside a function (a lazy import is still a dependency), and
no module imports another module's private (``_``-prefixed) name.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
# Source folder -> the package it installs as (pyproject's package-dir).
SOURCES = {"onnxprune": "onnxprune", "passes": "onnxprune.passes", "runtime_ops": "onnxprune.runtime_ops"}
LAYERS = {"core": 0, "passes": 1, "runtime": 2, "analysis": 3, "training": 3, "api": 4, "cli": 5}


def _modules() -> dict[str, pathlib.Path]:
    found = {}
    for folder, package in SOURCES.items():
        for path in (ROOT / folder).rglob("*.py"):
            rel = path.relative_to(ROOT / folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            found[".".join([package, *parts])] = path
    return found


MODULES = _modules()


def _resolve(importer: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = importer.split(".")
    base = base if is_package else base[:-1]
    base = base[:len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(name: str) -> list[tuple[str, list[str], int]]:
    """(imported module, names taken from it, line) for every onnxprune import of ``name``."""
    path = MODULES[name]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(a.name, [], node.lineno) for a in node.names if a.name.startswith("onnxprune")]
        elif isinstance(node, ast.ImportFrom):
            module = _resolve(name, path.name == "__init__.py", node)
            if not module.startswith("onnxprune"):
                continue
            for alias in node.names:  # `from pkg import submodule` imports the submodule
                sub = f"{module}.{alias.name}"
                found.append((sub, [], node.lineno) if sub in MODULES else (module, [alias.name], node.lineno))
    return found


def _layer(module: str) -> str | None:
    parts = module.split(".")
    if module == "onnxprune" or parts[1] == "runtime_ops":
        return None  # the root and the native ops' loader: usable from anywhere
    return parts[1] if parts[1] in LAYERS else "api" if parts[1] == "api" else parts[1]


def test_every_module_belongs_to_a_layer():
    stray = [m for m in MODULES if _layer(m) is not None and _layer(m) not in LAYERS]
    assert not stray, f"modules outside the layers {sorted(LAYERS)}: {stray}"


def test_dependencies_point_down_the_layers():
    wrong = []
    for importer in MODULES:
        lo = _layer(importer)
        for module, _, line in _imports(importer):
            hi = _layer(module)
            if lo is None and importer != "onnxprune" and hi is not None:
                wrong.append(f"{importer}:{line} (a base module) imports {module}")
            elif lo is not None and hi is not None and hi != lo and LAYERS[hi] >= LAYERS[lo]:
                wrong.append(f"{importer}:{line} ({lo}) imports {module} ({hi})")
    assert not wrong, "\n".join(wrong)


def test_the_root_imports_only_lazily():
    tree = ast.parse(MODULES["onnxprune"].read_text())
    top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))
           and (getattr(n, "module", "") or "").startswith("onnxprune")]
    assert not top, "onnxprune/__init__.py must not import its layers at import time"


def test_no_import_cycles():
    graph = {m: {dep for dep, _, _ in _imports(m) if dep in MODULES and dep != "onnxprune"}
             for m in MODULES if m != "onnxprune"}
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(m):
        state[m] = 1
        path.append(m)
        for dep in sorted(graph.get(m, ())):
            if dep == m:
                continue
            if state.get(dep) == 1:
                cycle = path[path.index(dep):] + [dep]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep)
        path.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_no_private_names_imported_from_another_module():
    wrong = [f"{importer}:{line} imports {n} from {module}"
             for importer in MODULES for module, names, line in _imports(importer)
             for n in names if n.startswith("_") and not n.startswith("__") and module != importer]
    assert not wrong, "\n".join(wrong)


MAX_FUNCTION_LINES = 100


def test_no_function_over_100_lines():
    long = []
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{name}.{node.name}: {lines} lines")
    assert not long, "\n".join(long)


def _long_cpp_functions(text: str) -> list[tuple[str, int]]:
    """Function bodies over the limit in C++ source written in the house style (a function's
    head ends with ``{`` on its line): braces are counted from that line to its close."""
    import re

    found, depth, start, head_depth, head = [], 0, None, 0, ""
    for i, line in enumerate(text.split("\n")):
        code = re.sub(r"//.*", "", line)
        if start is None and re.search(r"\)\s*(const\s*)?(noexcept\s*)?(override\s*)?\{\s*$", code) \
                and not re.match(r"\s*(if|for|while|switch|else|do|catch)\b", code) \
                and not re.search(r"\]\s*\(", code):  # not a lambda
            start, head_depth, head = i, depth, code.strip()
        depth += code.count("{") - code.count("}")
        if start is not None and i > start and depth <= head_depth:
            if i - start + 1 > MAX_FUNCTION_LINES:
                found.append((head, i - start + 1))
            start = None
    return found


def test_the_cpp_line_counter_sees_a_long_function():
    body = "\n".join(f"  x += {i};" for i in range(MAX_FUNCTION_LINES))
    assert _long_cpp_functions("void F(int x) {\n" + body + "\n}\n") == [("void F(int x) {", 102)]
    assert _long_cpp_functions("void G() {\n  if (a) {\n  }\n}\n") == []


def test_no_cpp_function_over_100_lines():
    long = [f"{path.name}: {head} ({n} lines)" for path in sorted((ROOT / "runtime_ops" / "src").glob("*.cc"))
            for head, n in _long_cpp_functions(path.read_text())]
    assert not long, "\n".join(long)
