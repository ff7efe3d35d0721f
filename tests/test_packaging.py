"""Packaging and tooling promises: what pyproject declares, and ``--debug`` on an internal error.

An internal error (a bug, not an :class:`OnnxPruneError`) prints one ``onnxprune: error:`` line
and exits 1; ``--debug`` (before or after the command) or ``ONNXPRUNE_DEBUG=1`` adds the
traceback above that line, so a bug report can carry it.
"""

from __future__ import annotations

import ast
import sys
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from onnxprune.cli import app as cli
from onnxprune.cli.output import DEBUG_ENV
from onnxprune.core.errors import EXIT_RUNTIME

ROOT = Path(__file__).resolve().parent.parent


def _project() -> dict:
    """pyproject's [project] table (tomllib is Python >= 3.11; the package supports 3.10)."""
    tomllib = pytest.importorskip("tomllib")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _boom(args, console):
    raise RuntimeError("boom in a command")


def _run(monkeypatch, capsys, argv):
    monkeypatch.setattr(cli, "cmd_inspect", _boom)
    code = cli.main(argv)
    return code, capsys.readouterr().err


def test_internal_error_is_one_line_without_debug(monkeypatch, capsys):
    monkeypatch.delenv(DEBUG_ENV, raising=False)
    code, err = _run(monkeypatch, capsys, ["inspect", "model.onnx"])
    assert code == EXIT_RUNTIME
    assert err.splitlines() == ["onnxprune: error: internal error: RuntimeError: boom in a command"]


@pytest.mark.parametrize("argv", [["--debug", "inspect", "model.onnx"], ["inspect", "model.onnx", "--debug"]])
def test_debug_flag_prints_the_traceback(monkeypatch, capsys, argv):
    monkeypatch.delenv(DEBUG_ENV, raising=False)
    code, err = _run(monkeypatch, capsys, argv)
    lines = err.splitlines()
    assert code == EXIT_RUNTIME
    assert lines[0] == "Traceback (most recent call last):"
    assert any("_boom" in line for line in lines)  # the frame that raised
    assert lines[-1] == "onnxprune: error: internal error: RuntimeError: boom in a command"


def test_debug_environment_variable_prints_the_traceback(monkeypatch, capsys):
    monkeypatch.setenv(DEBUG_ENV, "1")
    code, err = _run(monkeypatch, capsys, ["inspect", "model.onnx"])
    assert code == EXIT_RUNTIME
    assert "Traceback (most recent call last):" in err
    assert err.splitlines()[-1] == "onnxprune: error: internal error: RuntimeError: boom in a command"


def test_help_documents_debug(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = capsys.readouterr().out
    assert "--debug" in out and DEBUG_ENV in out


def test_user_errors_stay_one_line_with_debug(capsys):
    """--debug is about bugs: a missing input is still the plain one-line error."""
    code = cli.main(["--debug", "inspect", "no-such-model.onnx"])
    err = capsys.readouterr().err
    assert code not in (0, EXIT_RUNTIME)
    assert "internal error" not in err and "Traceback" not in err and len(err.splitlines()) == 1


# --------------------------------------------------------------------------- pyproject


def _requirements(extra: str | None) -> list[Requirement]:
    project = _project()
    specs = project["dependencies"] if extra is None else project["optional-dependencies"][extra]
    return [Requirement(s) for s in specs]


@pytest.mark.parametrize("extra", ["torch", "demo"])
def test_torch_extra_is_a_range_not_a_pin(extra):
    """A user's torch (e.g. the CPU build) must satisfy the extra, not be replaced by a pin."""
    (req,) = [r for r in _requirements(extra) if r.name == "torch"]
    operators = {s.operator for s in req.specifier}
    assert not operators & {"==", "==="}, req
    assert ">=" in operators, req
    versions = ["2.13.0", "2.13.0+cpu", "2.12.1"]
    assert all(req.specifier.contains(v) for v in versions), req


def _declared_names() -> set[str]:
    reqs = _requirements(None) + [r for extra in _project()["optional-dependencies"]
                                  for r in _requirements(extra)]
    return {r.name.lower().replace("_", "-") for r in reqs}


def _imported_top_level() -> set[str]:
    names = set()
    for folder in ("onnxprune", "passes", "runtime_ops"):
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    names.update(a.name.split(".")[0] for a in node.names)
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n != "onnxprune"}


def test_every_imported_package_is_declared():
    """Each third-party module the package imports comes from a distribution that pyproject
    lists, in the dependencies or in the extra of the feature that imports it."""
    by_module = metadata.packages_distributions()
    declared = _declared_names()
    missing = {}
    for module in sorted(_imported_top_level()):
        dists = {d.lower().replace("_", "-") for d in by_module.get(module, [])}
        assert dists, f"{module} is imported but not installed in the test environment"
        if not dists & declared:
            missing[module] = sorted(dists)
    assert not missing, f"imported but not declared in pyproject: {missing}"


def test_every_package_folder_is_in_the_wheel():
    """Each folder with an ``__init__.py`` under the package roots is listed in
    ``[tool.setuptools] packages`` (a missing one installs editable but breaks ``pip install .``:
    ``onnxprune.api`` once did, and every command failed with ModuleNotFoundError)."""
    tomllib = pytest.importorskip("tomllib")
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(tool["packages"])
    roots = {name: ROOT / folder for name, folder in tool["package-dir"].items()}
    found = set()
    for name, folder in roots.items():
        for init in folder.rglob("__init__.py"):
            rel = init.parent.relative_to(folder).parts
            if any(part.startswith((".", "__")) or part in ("build", "src") for part in rel):
                continue
            found.add(".".join((name, *rel)))
    assert found - listed == set(), f"not in pyproject's packages: {sorted(found - listed)}"
