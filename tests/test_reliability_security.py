"""Nothing leaves the machine, nothing runs that the user did not ask for.

* prune, inspect and check run in a child process under an audit hook (``sys.addaudithook``,
  installed before onnxprune is imported) that records every socket, subprocess, exec, spawn
  and fork event, and a ``socket.socket`` that raises: none may happen;
* the package's source never deserialises code-carrying data: no ``pickle``/``marshal``/
  ``shelve``/``dill``/``joblib`` loads, no ``torch.load`` without ``weights_only=True``, no
  ``eval``/``exec``/``compile``, no ``yaml.load`` without a safe loader (nor ``unsafe_load``/
  ``full_load``), no ``np.load(..., allow_pickle=True)``.  Checked on the syntax tree, not
  with a regular expression, so comments and strings do not count and aliases do.
"""

import ast
import json
import os
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import onnx

from tests.conftest import save_external
from tests.models import cnn

ROOT = pathlib.Path(__file__).resolve().parent.parent
SOURCE_DIRS = ("onnxprune", "passes", "runtime_ops")

_AUDITED = textwrap.dedent("""
    import json, sys
    events = []
    WATCH = ("socket.", "subprocess.", "os.system", "os.exec", "os.posix_spawn", "os.spawn",
             "os.fork", "os.forkpty", "urllib.", "http.", "ftplib.", "smtplib.", "webbrowser.")
    def hook(event, args):
        if event.startswith(WATCH):
            events.append([event, repr(args)[:200]])
    sys.addaudithook(hook)
    import socket
    class NoSocket(socket.socket):
        def __init__(self, *a, **k):
            raise OSError("network access attempted")
    socket.socket = NoSocket
    from onnxprune.cli import main
    plan = json.loads(sys.argv[1])
    codes = [main(argv) for argv in plan]
    print(json.dumps({"codes": codes, "events": events}))
""")


def test_no_network_and_no_subprocess(tmp_path):
    src_dir = tmp_path / "in"
    src_dir.mkdir()
    src = src_dir / "cnn.onnx"
    save_external(cnn(), str(src))
    out = tmp_path / "out.onnx"
    data = tmp_path / "inputs.npz"
    np.savez(data, x=np.ones((2, 3, 12, 12), np.float32))
    plan = [
        ["prune", str(src), "-o", str(out), "-q", "--json", str(tmp_path / "r.json")],
        ["inspect", str(out), "-q", "--json", str(tmp_path / "i.json")],
        ["check", str(src), str(out), "-q", "--atol", "100"],
        ["check", str(src), str(out), "-q", "--atol", "100", "--data", str(data)],
    ]
    r = subprocess.run([sys.executable, "-c", _AUDITED, json.dumps(plan)], capture_output=True,
                       text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert result["codes"] == [0, 0, 0, 0], r.stderr
    assert result["events"] == [], result["events"]
    onnx.checker.check_model(str(out))


# --------------------------------------------------------------------------- source scan


def _dotted(node) -> str:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    return ".".join(reversed(parts))


def _kw(call, name):
    return next((k.value for k in call.keywords if k.arg == name), None)


def _is_true(value) -> bool:
    return isinstance(value, ast.Constant) and value.value is True


def _aliases(tree) -> dict[str, str]:
    """Local name -> module path for ``import x as y`` and ``from x import y``."""
    names = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                names[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module:
            for a in node.names:
                names[a.asname or a.name] = f"{node.module}.{a.name}"
    return names


UNSAFE_LOADERS = {"pickle.load", "pickle.loads", "pickle.Unpickler", "_pickle.load",
                  "_pickle.loads", "cPickle.load", "marshal.load", "marshal.loads", "shelve.open",
                  "dill.load", "dill.loads", "joblib.load", "yaml.unsafe_load", "yaml.full_load",
                  "yaml.unsafe_load_all", "yaml.full_load_all", "torch.serialization.load",
                  "numpy.lib.format.read_array"}
SAFE_YAML_LOADERS = {"SafeLoader", "CSafeLoader", "BaseLoader", "CBaseLoader"}


def violations_in(source: str, filename: str = "<source>") -> list[str]:
    tree = ast.parse(source, filename)
    aliases = _aliases(tree)
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        head, _, rest = name.partition(".")
        full = aliases.get(head, head) + ("." + rest if rest else "")
        full = full.replace("numpy.", "np.") if full.startswith("numpy.") else full
        where = f"{filename}:{node.lineno}"
        if isinstance(node.func, ast.Name) and name in ("eval", "exec", "compile", "__import__") \
                and head not in aliases:
            found.append(f"{where}: {name}()")
        elif full in UNSAFE_LOADERS or full.replace("np.", "numpy.") in UNSAFE_LOADERS:
            found.append(f"{where}: {full}()")
        elif full in ("torch.load",):
            if not _is_true(_kw(node, "weights_only")):
                found.append(f"{where}: torch.load without weights_only=True")
        elif full in ("yaml.load", "yaml.load_all"):
            loader = _kw(node, "Loader") or (node.args[1] if len(node.args) > 1 else None)
            if loader is None or _dotted(loader).rsplit(".", 1)[-1] not in SAFE_YAML_LOADERS:
                found.append(f"{where}: {full} without a safe loader")
        elif full in ("np.load",):
            if _is_true(_kw(node, "allow_pickle")):
                found.append(f"{where}: np.load(allow_pickle=True)")
    return found


def test_scanner_catches_the_patterns():
    bad = textwrap.dedent("""
        import pickle, yaml, torch
        import numpy as np
        from pickle import loads as L
        pickle.load(f); L(b); eval(s); exec(s); yaml.load(t); yaml.load(t, Loader=yaml.Loader)
        yaml.unsafe_load(t); torch.load(p); torch.load(p, weights_only=False)
        np.load(p, allow_pickle=True)
    """)
    assert len(violations_in(bad)) == 10
    good = textwrap.dedent("""
        import yaml, torch
        import numpy as np
        yaml.safe_load(t); yaml.load(t, Loader=yaml.SafeLoader); torch.load(p, weights_only=True)
        np.load(p, allow_pickle=False); np.load(p); model.eval(); Net().eval()
        # pickle.load(f) in a comment, "eval(x)" in a string
    """)
    assert violations_in(good) == []


def test_package_source_has_no_unsafe_deserialisation():
    files = [p for d in SOURCE_DIRS for p in sorted((ROOT / d).rglob("*.py"))]
    assert len(files) > 10
    found = []
    for path in files:
        found += violations_in(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT)))
    assert found == [], "\n".join(found)


def test_recipe_python_tags_never_construct_objects(tmp_path, capsys):
    """A recipe's !!python tags are refused before anything is built (exit 2, no side effect)."""
    from onnxprune.cli import main

    marker = tmp_path / "pwned"
    model = tmp_path / "m.onnx"
    onnx.save(cnn(), model)
    for tag in (f"!!python/object/apply:os.system ['touch {marker}']",
                f"passes:\n  - !!python/object/new:pathlib.Path ['{marker}']",
                "emit: !!python/name:os.system"):
        recipe = tmp_path / "r.yaml"
        recipe.write_text(tag)
        assert main(["prune", str(model), "-o", str(tmp_path / "o.onnx"), "--recipe",
                     str(recipe)]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not marker.exists() and not os.path.exists(tmp_path / "o.onnx")
