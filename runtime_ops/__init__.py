"""Native sparse kernels for ONNX Runtime: the ``ai.onnxprune`` custom-op domain.

The ops (``CsrGemm``, ``CsrConv``; contracts in ``runtime_ops/README.md``) live in a C++
shared library built by ``pip install``. ONNX Runtime loads it through
``SessionOptions.register_custom_ops_library(library_path())`` — the same call exists in
ORT's C, C++, C# and Java bindings, so a lowered model runs from any of them.

Invariant: ``DOMAIN`` here and the domain string compiled into the library are the same
(a test checks it).
"""

from __future__ import annotations

import glob
import os
import weakref
from typing import TYPE_CHECKING, Sequence

from .csr import csr_from_dense, dense_from_csr

if TYPE_CHECKING:  # onnxruntime is imported lazily: importing this package must stay cheap
    import onnxruntime

__all__ = [
    "DOMAIN",
    "InferenceSession",
    "csr_from_dense",
    "dense_from_csr",
    "library_path",
    "session_options",
]

DOMAIN = "ai.onnxprune"

_LIBRARY_STEM = "_onnxprune_ops"

# Options objects that already have the library registered: ORT refuses a second
# registration of the same domain on one options object.
_REGISTERED: "weakref.WeakSet[onnxruntime.SessionOptions]" = weakref.WeakSet()


def library_path() -> str:
    """Absolute path of the custom-op library shipped in this package.

    Raises FileNotFoundError (with a hint) when the package was installed without building it.
    """
    here = os.path.dirname(os.path.abspath(__file__))
    candidates = sorted(glob.glob(os.path.join(here, _LIBRARY_STEM + "*.so")))
    candidates += sorted(glob.glob(os.path.join(here, _LIBRARY_STEM + "*.pyd")))
    candidates += sorted(glob.glob(os.path.join(here, _LIBRARY_STEM + "*.dylib")))
    if not candidates:
        raise FileNotFoundError(
            f"onnxprune's native sparse-op library ({_LIBRARY_STEM}*) is not in {here}; "
            "reinstall with `pip install .` (needs a C++17 compiler)"
        )
    return candidates[0]


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
    import onnxruntime as ort

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
) -> "onnxruntime.InferenceSession":
    """An ``onnxruntime.InferenceSession`` that can run models using the ``ai.onnxprune`` ops.

    ``sess_options`` is used as given, with the library registered on it unless
    :func:`session_options` already did.
    """
    import onnxruntime as ort

    opts = session_options(base=sess_options) if sess_options is not None else session_options()
    if isinstance(path_or_bytes, os.PathLike):
        path_or_bytes = os.fspath(path_or_bytes)
    return ort.InferenceSession(
        path_or_bytes, sess_options=opts, providers=list(providers) if providers else ["CPUExecutionProvider"]
    )
