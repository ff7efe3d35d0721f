"""Native sparse kernels for ONNX Runtime: the ``ai.onnxprune`` custom-op domain.

The ops (``CsrGemm``, ``CsrConv``; contracts in ``runtime_ops/README.md``) live in a C++
shared library built by ``pip install``. ONNX Runtime loads it through
``SessionOptions.register_custom_ops_library(library_path())`` — the same call exists in
ORT's C, C++, C# and Java bindings, so a lowered model runs from any of them.

Every ONNX Runtime session onnxprune makes is created here (:func:`InferenceSession`), and
ONNX Runtime is imported only through :func:`import_onnxruntime`, which switches its telemetry
off first (:func:`disable_telemetry`).

Invariant: ``DOMAIN`` and ``OPSET_VERSION`` here and the domain string and newest op-set
compiled into the library are the same (a test checks it).
"""

from __future__ import annotations

import os
import sys
import weakref
from typing import TYPE_CHECKING, Sequence

from .csr import compact_csr, csr_from_dense, delta8_from_csr, dense_from_csr

if TYPE_CHECKING:  # onnxruntime is imported lazily: importing this package must stay cheap
    import onnxruntime

__all__ = [
    "CSR_OPS",
    "DOMAIN",
    "OPSET_VERSION",
    "InferenceSession",
    "compact_csr",
    "csr_from_dense",
    "delta8_from_csr",
    "dense_from_csr",
    "disable_telemetry",
    "import_onnxruntime",
    "library_path",
    "session_options",
]

DOMAIN = "ai.onnxprune"
# The domain's newest op-set (runtime_ops/README.md): 1, plus CsrConv's fused activation in 2,
# plus CsrGemm's and the Gelu activation in 3, plus 1-D CsrConv in 4, plus CsrConv's residual
# input Z in 5, plus CsrGemm's in 6, plus CsrGemm's transposed output (matmul=2) in 7, plus
# CsrGemm's batches transposed (matmul=3 and 4) in 8, plus MaxPool in 9. Lowering declares 2
# to 9 only in files that use them.
OPSET_VERSION = 9
# The domain's ops that hold a weight, as CSR arrays (its MaxPool holds none).
CSR_OPS = frozenset({"CsrGemm", "CsrConv"})

# A plain shared library, not a Python extension: one name for every Python version (setup.py).
_LIBRARY_FILE = "_onnxprune_ops.so"

# Options objects that already have the library registered: ORT refuses a second
# registration of the same domain on one options object.
_REGISTERED: "weakref.WeakSet[onnxruntime.SessionOptions]" = weakref.WeakSet()

# Read by ONNX Runtime's native library when the Python module is imported.
TELEMETRY_ENV = "ORT_DISABLE_TELEMETRY"


def disable_telemetry() -> None:
    """Keep ONNX Runtime from recording and sending telemetry (nothing leaves the machine).

    ORT's Linux wheel opens an event store under ``~/.cache/Microsoft`` when ``onnxruntime`` is
    imported and tries to upload it about 10 s later.  Only ``ORT_DISABLE_TELEMETRY=1`` read at
    that import stops both; ``onnxruntime.disable_telemetry_events()`` called after the import
    leaves the store and the upload attempts in place (measured with onnxruntime 1.32).  So
    the variable is set before the first import; if the host process imported ONNX Runtime
    earlier, its events are at least switched off.  Idempotent and cheap.
    """
    os.environ[TELEMETRY_ENV] = "1"
    ort = sys.modules.get("onnxruntime")
    if ort is not None and hasattr(ort, "disable_telemetry_events"):
        ort.disable_telemetry_events()


def import_onnxruntime():
    """The ``onnxruntime`` module, imported after :func:`disable_telemetry`."""
    disable_telemetry()
    import onnxruntime

    disable_telemetry()  # the first import has just happened: switch events off as well
    return onnxruntime


def library_path() -> str:
    """Absolute path of the custom-op library shipped in this package.

    Raises FileNotFoundError (with a hint) when the package was installed without building it.
    """
    here = os.path.dirname(os.path.abspath(__file__))
    path = os.path.join(here, _LIBRARY_FILE)  # the exact name: a stale build never shadows it
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"onnxprune's native sparse-op library ({_LIBRARY_FILE}) is not in {here}; "
            "reinstall with `pip install .` (needs a C++17 compiler)"
        )
    return path


def session_options(
    intra_op_num_threads: int | None = None,
    *,
    inter_op_num_threads: int | None = None,
    graph_optimization_level: "onnxruntime.GraphOptimizationLevel | None" = None,
    base: "onnxruntime.SessionOptions | None" = None,
) -> "onnxruntime.SessionOptions":
    """``onnxruntime.SessionOptions`` with the ``ai.onnxprune`` ops registered.

    ``base`` lets callers start from their own options (it is modified and returned).
    """
    ort = import_onnxruntime()
    opts = base if base is not None else ort.SessionOptions()
    if intra_op_num_threads is not None:
        opts.intra_op_num_threads = int(intra_op_num_threads)
    if inter_op_num_threads is not None:
        opts.inter_op_num_threads = int(inter_op_num_threads)
    if graph_optimization_level is not None:
        opts.graph_optimization_level = graph_optimization_level
    if opts not in _REGISTERED:
        opts.register_custom_ops_library(library_path())
        _REGISTERED.add(opts)
    return opts


def InferenceSession(  # noqa: N802 - mirrors onnxruntime.InferenceSession
    path_or_bytes: "str | os.PathLike[str] | bytes",
    sess_options: "onnxruntime.SessionOptions | None" = None,
    providers: Sequence[str] | None = None,
    *,
    custom_ops: bool = True,
) -> "onnxruntime.InferenceSession":
    """An ``onnxruntime.InferenceSession`` that can run models using the ``ai.onnxprune`` ops.

    ``sess_options`` is used as given, with the library registered on it unless
    :func:`session_options` already did (or ``custom_ops`` is false: a model without the
    ``ai.onnxprune`` domain then runs even where the native library was not built).
    ONNX Runtime's telemetry is off before the session exists (:func:`disable_telemetry`).
    """
    ort = import_onnxruntime()
    if custom_ops:
        opts = session_options(base=sess_options) if sess_options is not None else session_options()
    else:
        opts = sess_options if sess_options is not None else ort.SessionOptions()
    if isinstance(path_or_bytes, os.PathLike):
        path_or_bytes = os.fspath(path_or_bytes)
    return ort.InferenceSession(
        path_or_bytes, sess_options=opts, providers=list(providers) if providers else ["CPUExecutionProvider"]
    )
