"""What the commands write and print: atomic files, strict-JSON reports, the one check that no
output overwrites an input, and the one-line error printer.
"""

from __future__ import annotations

import errno
import json
import os
import re
import sys
import tempfile
import traceback
from onnxprune.core.console import printable
from onnxprune.core.errors import (OnnxPruneError, RuntimeFailure, UsageError)


# An error line is cut here: a message quotes paths and values from the user's files.
MAX_ERROR_CHARS = 2000
# Set to 1, as --debug: an internal error prints its traceback too (read only when one happens).
DEBUG_ENV = "ONNXPRUNE_DEBUG"


def write_atomic(path: str, data: bytes | str, *, label: str = "") -> dict:
    """Write ``data`` to ``path`` via a temporary file in the same folder (flushed, fsynced,
    renamed), so a reader never sees a partial file; returns ``{"path", "bytes", "sha256"}``.
    ``label`` starts the error message (e.g. ``"--json: "``)."""
    import hashlib

    blob = data.encode("utf-8") if isinstance(data, str) else data
    folder = os.path.dirname(os.path.abspath(path))
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=".onnxprune-", suffix=".tmp", dir=folder)
        with os.fdopen(fd, "wb") as f:
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError as e:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        raise _write_error(f"{label}cannot write {path}", e) from None
    return {"path": path, "bytes": len(blob), "sha256": hashlib.sha256(blob).hexdigest()}


# A write that fails for a reason the user chose (the path) is a usage error; one that fails for
# the machine's state (disk full, I/O error) is a runtime failure.
_PATH_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENAMETOOLONG, errno.ENOENT,
                errno.ENOTDIR, errno.EISDIR, errno.ELOOP}


def _write_error(what: str, e: OSError) -> OnnxPruneError:
    cls = UsageError if e.errno in _PATH_ERRNOS else RuntimeFailure
    return cls(f"{what}: {e.strerror or e}")


def write_json(report: dict, dest: str | None) -> None:
    """Write the report to ``dest`` atomically (``-`` = stdout).  The text is strict JSON: a
    NaN or infinite number is written as null (JSON has no word for it)."""
    if dest is None:
        return
    text = json.dumps(_strict(report), indent=2, sort_keys=False, default=json_default,
                      allow_nan=False) + "\n"
    if dest == "-":
        _write_stdout(text)
        return
    folder = os.path.dirname(os.path.abspath(dest))
    if not os.path.isdir(folder):
        raise UsageError(f"--json: folder {folder} does not exist")
    write_atomic(dest, text, label="--json: ")


def _strict(o):
    """``o`` with every non-finite float replaced by None (containers copied, rest as is)."""
    import math

    import numpy as np

    if isinstance(o, dict):
        return {k: _strict(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_strict(v) for v in o]
    if isinstance(o, (float, np.floating)) and not math.isfinite(o):
        return None
    return o


def json_default(o):
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, (set, tuple)):
        return list(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _write_stdout(text: str) -> None:
    """``--json -``: a closed stdout is refused up front (see check_paths); a full or broken one
    is a runtime failure, after which stdout is pointed at /dev/null so that the interpreter's
    own flush at exit does not print a second error."""
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except (OSError, ValueError) as e:
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)
        except (OSError, ValueError):
            pass
        why = e.strerror if isinstance(e, OSError) and e.strerror else "stdout is closed"
        raise RuntimeFailure(f"--json -: cannot write the report to stdout: {why}") from None


def same_file(a: str, b: str) -> bool:
    """One file under two names: ``os.path.samefile`` when both exist (hard links and symbolic
    links included), the same real path otherwise (a file not written yet)."""
    try:
        if os.path.exists(a) and os.path.exists(b):
            return os.path.samefile(a, b)
    except (OSError, ValueError):
        pass
    return os.path.realpath(a) == os.path.realpath(b)


def _writes_data_file(model_out: str, path: str) -> bool:
    """Whether ``path`` is a name the model writer may create or delete beside ``model_out``:
    ``<model>.data`` or ``<model>.<hex>.data`` in the same folder (io.data_file_name)."""
    a, b = os.path.realpath(model_out), os.path.realpath(path)
    if os.path.dirname(a) != os.path.dirname(b):
        return False
    return re.fullmatch(re.escape(os.path.basename(a)) + r"\.([0-9a-f]+\.)?data",
                        os.path.basename(b)) is not None


def input_files(info) -> list[str]:
    """The files a loaded model was read from: the .onnx and its external-data files."""
    return [info.path, *info.data_files]


def check_paths(reads, writes, *, models=(), replaceable=(), in_place: bool = False,
                new_folder: str | None = None) -> None:
    """Refuse (exit 2), before any output is written, a command whose outputs would overwrite
    one of its inputs or each other.  The one check every command runs.

    ``reads``: every file the command reads (models with their data files, recipe, data sets,
    teacher, baseline, history); ``writes``: (option, path) pairs for every file it writes
    (``-`` is stdout); ``models``: written model paths, which also write and may delete
    ``<model>[.<hex>].data`` beside them; ``replaceable``: the input model's files, which a
    model output may replace when ``in_place`` (``prune --in-place``).  Each written file's
    folder must exist and be writable, and its name must fit the file system; ``new_folder``
    is an output folder the command creates just before writing (its parent must be writable).
    Only a report may go to stdout: ``-o -`` is refused.
    """
    reads = [r for r in reads if r]
    writes = [(opt, w) for opt, w in writes if w]
    models = [m for m in models if m]
    replaceable = [r for r in replaceable if r]
    for i, (opt, w) in enumerate(writes):
        if w == "-":
            if opt in ("-o", "--junit"):
                raise UsageError(f"{opt} -: outputs are files; give a path (only --json takes -)")
            if sys.stdout is None:
                raise UsageError(f"{opt} -: stdout is closed")
            continue
        is_model = any(w == m for m in models)
        _check_writable(opt, w, is_model, new_folder)
        for r in reads:
            if not (same_file(w, r) or (is_model and _writes_data_file(w, r))):
                continue
            may_replace = is_model and any(same_file(r, x) for x in replaceable)
            if may_replace and in_place:
                continue
            hint = " or pass --in-place" if may_replace else ""
            raise UsageError(f"refusing to overwrite the input {r} with {opt} {w}; "
                             f"choose another path{hint}")
        for opt2, w2 in writes[i + 1:]:
            if w2 != "-" and (same_file(w, w2) or (is_model and _writes_data_file(w, w2))):
                raise UsageError(f"{opt} {w} and {opt2} {w2} are the same file; choose another")


def _check_writable(opt: str, path: str, is_model: bool, new_folder: str | None = None) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    if new_folder is not None and folder == os.path.abspath(new_folder) and \
            not os.path.exists(folder):
        folder = os.path.dirname(folder)  # created later, inside this one
    if not os.path.isdir(folder):
        raise UsageError(f"{opt}: folder {folder} does not exist")
    if os.path.isdir(path):
        raise UsageError(f"{opt}: {path} is a folder")
    if path.endswith(("/", os.sep)):  # only a folder can be named so, and none is there
        raise UsageError(f"{opt}: {path} ends with a separator; give a file name")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UsageError(f"{opt}: folder {folder} is not writable")
    try:
        name_max = os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        name_max = 255
    # A model's data file is <name>.<16 hex>.data: that name must fit too.
    extra = len(".0123456789abcdef.data") if is_model else 0
    if len(os.fsencode(os.path.basename(path))) + extra > name_max:
        raise UsageError(f"{opt}: file name too long (at most {name_max - extra} bytes)")


def print_error(message: str) -> None:
    """The one place an error line is printed: ``onnxprune: error: ...`` on stderr, control
    characters escaped (a path with a newline stays on one line, a name cannot send terminal
    escapes) and the length capped."""
    print(f"onnxprune: error: {printable(message, MAX_ERROR_CHARS)}", file=sys.stderr)


def print_internal_error(exc: BaseException, debug: bool = False) -> None:
    """A bug (any exception that is not an :class:`OnnxPruneError`): the one error line, preceded
    by its traceback when ``debug`` (``--debug``) or ``ONNXPRUNE_DEBUG=1`` asks for it. The
    environment variable covers failures before the flag is parsed."""
    if debug or os.environ.get(DEBUG_ENV) == "1":
        traceback.print_exception(exc, file=sys.stderr)
    print_error(f"internal error: {type(exc).__name__}: {exc}")
