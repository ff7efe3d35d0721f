"""Differential check: run a reference and a candidate model on the same inputs and compare.

Passes when every output satisfies ``|cand − ref| ≤ atol + rtol·|ref|`` elementwise (numpy's
``allclose`` rule; NaN in the same position on both sides counts as equal, NaN against a
number never passes).  On failure the report carries the smallest ``atol`` that would have
passed at the given ``rtol``: ``max(|cand − ref| − rtol·|ref|)``, or null when none would.
"""

from __future__ import annotations

import contextlib
import re
from typing import Iterator

import numpy as np
from onnx import ModelProto, TensorProto

from onnxprune.runtime.datasets import npz_array, open_npz
from onnxprune.core.errors import InvalidModelError, RuntimeFailure, UsageError, name_list
from onnxprune.core.io import dim_size
from onnxprune.core.io import serialize_for_runtime

_NP_TYPES = {
    TensorProto.FLOAT: np.float32, TensorProto.DOUBLE: np.float64, TensorProto.FLOAT16: np.float16,
    TensorProto.INT64: np.int64, TensorProto.INT32: np.int32, TensorProto.INT8: np.int8,
    TensorProto.UINT8: np.uint8, TensorProto.BOOL: np.bool_,
}


def graph_inputs(model: ModelProto):
    inits = {t.name for t in model.graph.initializer} | {
        t.values.name for t in model.graph.sparse_initializer}
    return [vi for vi in model.graph.input if vi.name not in inits]


# Random inputs beyond this many elements per input are refused (memory); pass --data instead.
MAX_RANDOM_ELEMENTS = 1 << 28


def input_shape_arg(text: str) -> tuple[str, tuple[int, ...]]:
    """``--input-shape NAME=DIMS``, DIMS like ``1x3x640x640``: (name, dims), every dim >= 1."""
    import argparse

    name, sep, dims_text = text.rpartition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(
            f"expected NAME=DIMS like images=1x3x640x640, got {text!r}")
    try:
        dims = tuple(int(d) for d in dims_text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{name}: DIMS must be integers joined by 'x' (like 1x3x640x640), got {dims_text!r}"
        ) from None
    if any(d < 1 for d in dims):
        raise argparse.ArgumentTypeError(f"{name}: every dimension must be >= 1, got {dims_text!r}")
    if int(np.prod(dims, dtype=np.float64)) > MAX_RANDOM_ELEMENTS:
        raise argparse.ArgumentTypeError(
            f"{name}: {dims_text} is more than {MAX_RANDOM_ELEMENTS} elements; pass --data")
    return name, dims


def add_input_shape_option(parser, help: str = "shape of a random input, e.g. images=1x3x640x640 "
                           "(repeatable); needed where the model leaves a dimension other than "
                           "the batch symbolic") -> None:
    """``--input-shape NAME=DIMS`` (repeatable) on a command that makes random inputs, or
    (``help``) one that only sizes symbolic inputs for shape inference (inspect, report)."""
    parser.add_argument("--input-shape", type=input_shape_arg, action="append", default=[],
                        metavar="NAME=DIMS", help=help)


def input_shapes(args) -> dict[str, tuple[int, ...]]:
    """The ``--input-shape`` values by input name; refused together with ``--data``."""
    shapes: dict[str, tuple[int, ...]] = {}
    for name, dims in args.input_shape or []:
        if shapes.get(name, dims) != dims:
            raise UsageError(f"--input-shape {name} is given twice with different shapes")
        shapes[name] = dims
    if shapes and getattr(args, "data", None):
        raise UsageError("--input-shape sets the shapes of random inputs, and --data brings "
                         "its own arrays: use one of them")
    return shapes


def _dim_label(d) -> str:
    return d.dim_param if d.HasField("dim_param") and d.dim_param else "?"


def _input_dims(vi, batch: int, given: tuple[int, ...] | None, strict: bool,
                bound: dict[str, int] | None = None) -> list[int]:
    """The shape of one random input: ``given`` (checked against the model's fixed dims), else
    the model's dims with each symbolic dim named in ``bound`` at that size (a symbol another
    input's --input-shape gave: the batch N of a waveform and of its lengths) and a symbolic
    leading dim as ``batch``.  Any other symbolic dim is refused when ``strict`` (a detector
    with symbolic height and width must not run on 2x2 images)."""
    dims = list(vi.type.tensor_type.shape.dim)
    declared = [dim_size(d) for d in dims]
    if given is None and bound:
        declared = [bound.get(d.dim_param, m) if m is None and d.dim_param else m
                    for d, m in zip(dims, declared)]
    if given is not None:
        if vi.type.tensor_type.HasField("shape") and len(given) != len(dims):
            raise UsageError(f"--input-shape {vi.name}: {len(given)} dims given, the model's input "
                             f"has {len(dims)} ({_shape_text(dims)})")
        clash = [i for i, (g, m) in enumerate(zip(given, declared)) if m is not None and g != m]
        if clash:
            raise UsageError(f"--input-shape {vi.name}: dim {clash[0]} is {given[clash[0]]}, "
                             f"the model fixes it at {declared[clash[0]]} ({_shape_text(dims)})")
        return list(given)
    unknown = [i for i, m in enumerate(declared) if m is None and i > 0]
    if strict and unknown:
        raise _SymbolicDims([(vi, declared, unknown)], batch)
    return [m if m is not None else batch for m in declared]


class _SymbolicDims(UsageError):
    """Inputs with symbolic dims that random inputs cannot guess: (input, dims as far as
    known, the positions unknown) each. ``random_inputs`` gathers every input's into one."""

    def __init__(self, items: list, batch: int):
        self.items = items
        self.batch = batch
        super().__init__(self.text())

    def text(self) -> str:
        parts, flags = [], []
        for vi, declared, unknown in self.items:
            dims = list(vi.type.tensor_type.shape.dim)
            parts.append((vi.name, ", ".join(_dim_label(dims[i]) for i in unknown), _shape_text(dims)))
            # A named dim shows its name (H, W) for the user to replace; an unnamed one D1, D2…
            example = "x".join(str(m) if m is not None else (str(self.batch) if i == 0 else
                               dims[i].dim_param.upper() if dims[i].dim_param else f"D{i}")
                               for i, m in enumerate(declared))
            flags.append(f"--input-shape {vi.name}={example}")
        if len(parts) == 1:
            name, names, shape = parts[0]
            return (f"input {name!r} has symbolic dimension(s) {names} (shape {shape}) that random "
                    f"inputs cannot guess; give its shape with {flags[0]}")
        listed = ", ".join(f"{name!r} ({names}; shape {shape})" for name, names, shape in parts)
        return (f"inputs {listed} have symbolic dimension(s) that random inputs cannot guess; "
                "give their shapes with " + " ".join(flags))


def bound_symbols(model: ModelProto, shapes: dict[str, tuple[int, ...]]) -> dict[str, int]:
    """The sizes ``shapes`` (--input-shape, checked) give the model's named symbolic dims: an
    input given as 1x48000 binds its [N, T]'s N to 1 and T to 48000 for every other input
    that names them. A name given two sizes binds nothing: some exporters write one
    placeholder ("?") for every unknown dim."""
    sizes: dict[str, set[int]] = {}
    for vi in graph_inputs(model):
        given = shapes.get(vi.name)
        if given is None:
            continue
        for d, g in zip(vi.type.tensor_type.shape.dim, given):
            if dim_size(d) is None and d.dim_param:
                sizes.setdefault(d.dim_param, set()).add(g)
    return {k: next(iter(v)) for k, v in sizes.items() if len(v) == 1}


def _dims_text(dims) -> str:
    return "x".join(str(d) for d in dims)


def _shape_text(dims) -> str:
    return "[" + ", ".join(str(dim_size(d)) if dim_size(d) else _dim_label(d) for d in dims) + "]"


def checked_input_shapes(model: ModelProto, shapes: dict[str, tuple[int, ...]] | None
                         ) -> dict[str, tuple[int, ...]]:
    """``shapes`` (``--input-shape``) checked against the model's inputs: each names a graph
    input, has its rank and agrees with its fixed dims (UsageError otherwise)."""
    inputs = graph_inputs(model)
    shapes = dict(shapes or {})
    stray = [n for n in shapes if n not in {vi.name for vi in inputs}]
    if stray:
        raise UsageError(f"--input-shape {stray[0]}: the model has no such input; inputs: "
                         f"{name_list([vi.name for vi in inputs])}")
    for vi in inputs:
        if vi.name in shapes:
            _input_dims(vi, 1, shapes[vi.name], False)
    return shapes


# Byte alignment of the arrays timing feeds to ONNX Runtime: its own tensors start on 64 bytes,
# a large numpy array 16 bytes past one (glibc's mapped chunks), and a kernel reading its
# input in place (onnxprune's 1x1 convolutions) ran 0.69-0.78x as fast on such an input (one
# node, an Intel core of lscpu family 6): a layer timed alone on numpy's array would be judged
# slower than it runs inside the model.
FEED_ALIGNMENT = 64


def aligned(a: np.ndarray) -> np.ndarray:
    """``a``'s values in a C-ordered array starting on FEED_ALIGNMENT bytes (``a`` itself
    where it already is one, or holds objects)."""
    a = np.asarray(a)
    if a.dtype.hasobject or (a.flags.c_contiguous and a.ctypes.data % FEED_ALIGNMENT == 0):
        return a  # object arrays (strings) hold pointers: nothing to align
    raw = np.empty(a.nbytes + FEED_ALIGNMENT, np.uint8)
    start = -raw.ctypes.data % FEED_ALIGNMENT
    out = raw[start:start + a.nbytes].view(a.dtype).reshape(a.shape)
    out[...] = a
    return out


def random_inputs(model: ModelProto, batch: int = 2, seed: int = 0,
                  shapes: dict[str, tuple[int, ...]] | None = None,
                  strict: bool = False) -> dict[str, np.ndarray]:
    """Seeded inputs for every graph input.  ``shapes`` gives inputs their full shape (names
    must be graph inputs); otherwise a symbolic leading dim takes ``batch``, and so does any
    other symbolic dim unless ``strict``, which refuses it (UsageError naming the input).
    Each array starts on FEED_ALIGNMENT bytes, as ONNX Runtime's own tensors do."""
    inputs = graph_inputs(model)
    shapes = checked_input_shapes(model, shapes)
    bound = bound_symbols(model, shapes)
    rng = np.random.default_rng(seed)
    bounds = _index_bounds(model)
    # every input's shape first, so that one error names every input a shape is missing for
    all_dims, missing = {}, []
    for vi in inputs:
        try:
            all_dims[vi.name] = _input_dims(vi, batch, shapes.get(vi.name), strict, bound)
        except _SymbolicDims as e:
            missing += e.items
    if missing:
        raise _SymbolicDims(missing, batch)
    feeds = {}
    for vi in inputs:
        tt = vi.type.tensor_type
        dtype = _NP_TYPES.get(tt.elem_type)
        if dtype is None:
            raise UsageError(f"input {vi.name!r}: element type {tt.elem_type} has no random "
                             "generator; pass --data")
        dims = all_dims[vi.name]
        if float(np.prod(dims, dtype=np.float64)) > MAX_RANDOM_ELEMENTS:
            raise UsageError(f"input {vi.name!r}: a random input of shape {_dims_text(dims)} is "
                             f"more than {MAX_RANDOM_ELEMENTS} elements; use a smaller --batch "
                             "or --input-shape, or pass --data")
        if np.issubdtype(dtype, np.floating):
            feeds[vi.name] = rng.standard_normal(dims).astype(dtype)
        elif dtype is np.bool_:
            feeds[vi.name] = rng.integers(0, 2, dims).astype(np.bool_)
        else:
            feeds[vi.name] = rng.integers(0, max(1, min(10, bounds.get(vi.name, 10))), dims).astype(dtype)
    return {k: aligned(v) for k, v in feeds.items()}


# Ops that hand an index tensor on with its values unchanged: an integer graph input reaching a
# Gather's indices through them indexes that Gather's table.
_INDEX_MOVES = frozenset({"Cast", "Unsqueeze", "Squeeze", "Reshape", "Flatten", "Identity", "Expand", "Transpose"})


def _index_bounds(model: ModelProto) -> dict[str, int]:
    """Per graph input that gives a Gather of a stored table its indices (directly or through
    ``_INDEX_MOVES``): the smallest such table's size along the gathered axis. BERT's
    token_type_ids look up a table of 2 rows, and random integers in [0, 10) failed there."""
    g = model.graph
    sizes = {t.name: list(t.dims) for t in g.initializer}
    for n in g.node:
        if n.op_type == "Constant" and n.output:
            for a in n.attribute:
                if a.name == "value" and a.HasField("t"):
                    sizes[n.output[0]] = list(a.t.dims)
    producer = {o: n for n in g.node for o in n.output}
    inputs = {vi.name for vi in g.input}
    bounds: dict[str, int] = {}
    for n in g.node:
        if n.op_type != "Gather" or len(n.input) < 2 or n.input[0] not in sizes:
            continue
        dims = sizes[n.input[0]]
        axis = next((a.i for a in n.attribute if a.name == "axis"), 0)
        if not -len(dims) <= axis < len(dims):
            continue
        t = n.input[1]
        for _ in range(8):
            if t in inputs:
                bounds[t] = min(bounds.get(t, dims[axis]), dims[axis])
                break
            p = producer.get(t)
            if p is None or p.op_type not in _INDEX_MOVES or not p.input:
                break
            t = p.input[0]
    return bounds


@contextlib.contextmanager
def random_feeds_hint(feeds: dict[str, np.ndarray] | None) -> Iterator[None]:
    """Runs the block; a ``RuntimeFailure`` in it, when ``feeds`` came from
    :func:`random_inputs` (None: they did not), also says which inputs drew random integers,
    which a model may need real values of (silero's sample rate takes another branch on 7)."""
    try:
        yield
    except RuntimeFailure as e:
        ints = [n for n, a in (feeds or {}).items() if np.issubdtype(np.asarray(a).dtype, np.integer)]
        if not ints:
            raise
        raise RuntimeFailure(f"{e} (on random inputs: {name_list([repr(n) for n in ints])} drew "
                             "integers in [0, 10), or below the size of the table one indexes; a "
                             "model that needs real values there, such as a sample rate or token "
                             "ids, takes them with --data)") from None


def load_inputs(path: str, model: ModelProto) -> dict[str, np.ndarray]:
    """Inputs from an .npz: keys named after the graph inputs, or ``x`` for a one-input model."""
    with open_npz(path) as z:
        data = {k: npz_array(z, k, path) for k in z.files}
    names = [vi.name for vi in graph_inputs(model)]
    if len(names) == 1 and names[0] not in data:
        key = "x" if "x" in data else (next(iter(data)) if len(data) == 1 else None)
        if key is None:
            wanted = f"{names[0]!r} or 'x'" if names[0] != "x" else "'x'"
            raise UsageError(f"{path}: has no array named {wanted}")
        data = {names[0]: data[key]}  # checked below like any other, named as in the file
        keys = {names[0]: key}
    else:
        keys = {}
    missing = [n for n in names if n not in data]
    if missing:
        raise UsageError(f"{path}: missing input array(s) {', '.join(missing)}")
    for vi in graph_inputs(model):
        _check_array(path, vi, data[vi.name], keys.get(vi.name, vi.name))
    _check_shared_dims(path, graph_inputs(model), data, keys)
    return {n: data[n] for n in names}


def _check_shared_dims(path: str, inputs, data: dict, keys: dict) -> None:
    """UsageError when two inputs' arrays give the leading dimension the model names alike
    (the same ``dim_param``, e.g. a batch N) two sizes, which ONNX Runtime fails on further in.
    Only leading dims of different inputs, and only names that are identifiers: exporters
    write ``?`` for any unknown size (Paddle's [-1, 3, ?, ?] is not a square)."""
    seen: dict[str, tuple[int, str]] = {}
    for vi in inputs:
        arr = data[vi.name]
        tt = vi.type.tensor_type
        d = tt.shape.dim[0] if tt.HasField("shape") and tt.shape.dim else None
        if d is None or dim_size(d) is not None or not d.dim_param.isidentifier() or arr.ndim == 0:
            continue
        size, first = seen.setdefault(d.dim_param, (int(arr.shape[0]), vi.name))
        if size != arr.shape[0]:
            raise UsageError(f"{path}: arrays {keys.get(first, first)!r} and "
                             f"{keys.get(vi.name, vi.name)!r} give the model's dimension "
                             f"{d.dim_param!r} sizes {size} and {arr.shape[0]}")


def check_feeds(model: ModelProto, feeds: dict[str, np.ndarray], what: str) -> None:
    """UsageError unless ``feeds`` fit ``model``'s inputs (element type, rank, fixed dims):
    the candidate of a check runs on the reference's inputs, and one of another signature
    made ONNX Runtime fail (exit 1, "Invalid rank for input: x") without saying which model."""
    for vi in graph_inputs(model):
        if vi.name in feeds:
            _check_array(f"the {what} takes other inputs than the reference", vi,
                         np.asarray(feeds[vi.name]), vi.name)


def _check_array(path: str, vi, arr: np.ndarray, key: str) -> None:
    """UsageError unless ``arr`` (the file's array ``key``) fits graph input ``vi``: its
    element type, its rank and every fixed dimension, and at least one row (ONNX Runtime would
    fail on any of these, and the data, not the run, is what is wrong)."""
    tt = vi.type.tensor_type
    name = repr(key) if key == vi.name else f"{key!r} (for input {vi.name!r})"
    want = _NP_TYPES.get(tt.elem_type)
    if want is not None and arr.dtype != np.dtype(want):
        raise UsageError(f"{path}: array {name} holds {arr.dtype}, the model's input takes "
                         f"{np.dtype(want)}")
    if not tt.HasField("shape"):
        return
    dims = list(tt.shape.dim)
    if arr.ndim != len(dims):
        raise UsageError(f"{path}: array {name} has {arr.ndim} dims {tuple(arr.shape)}, the "
                         f"model's input has {len(dims)} ({_shape_text(dims)})")
    for i, d in enumerate(dims):
        size = dim_size(d)
        if size is not None and arr.shape[i] != size:
            raise UsageError(f"{path}: array {name}: dim {i} is {arr.shape[i]}, the model "
                             f"fixes it at {size} ({_shape_text(dims)})")
    if arr.size == 0:
        raise UsageError(f"{path}: array {name} has no rows (shape {tuple(arr.shape)})")


# ONNX Runtime's own log goes to stderr in colour; its errors reach us as exceptions anyway,
# so the session logs only fatal events and the CLI's one-line error stays one line.
ORT_LOG_FATAL = 4

_ORT_PREFIX = re.compile(r"^\[ONNXRuntimeError\]\s*:\s*\d+\s*:\s*[A-Z_]+\s*:\s*")
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def ort_message(exc: BaseException) -> str:
    """ONNX Runtime's exception as one plain line: the first line, without colour codes and
    without the ``[ONNXRuntimeError] : N : NAME :`` prefix."""
    text = _ANSI.sub("", str(exc)).strip()
    line = text.splitlines()[0].strip() if text else ""
    return _ORT_PREFIX.sub("", line) or type(exc).__name__


def make_session(model: "ModelProto | bytes", threads: int | None = 1, providers=None,
                 error: type = InvalidModelError, inter_op_threads: int | None = None,
                 spinning: bool = True):
    """An ONNX Runtime session for ``model``, the one way onnxprune opens one (telemetry off,
    see ``runtime_ops.disable_telemetry``; fatal-only logging).  onnxprune's CSR ops are
    registered when a ModelProto imports their domain, and always for serialized bytes.
    A model ORT refuses raises ``error`` with ORT's message.

    ``spinning=False`` stops the intra-op workers from spinning after each run. Timings that
    alternate two sessions need it: the spinning workers of the session that just ran take
    the cores from the other one (two 2-thread sessions on 2 cores: each call ~30% slower,
    docs/BENCHMARKS.md)."""
    from onnxprune import runtime_ops

    ort = runtime_ops.import_onnxruntime()
    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = threads
    if inter_op_threads:
        so.inter_op_num_threads = inter_op_threads
    if not spinning:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.log_severity_level = ORT_LOG_FATAL
    if isinstance(model, ModelProto):
        custom = any(op.domain == runtime_ops.DOMAIN for op in model.opset_import)
        blob = serialize_for_runtime(model)
    else:
        custom, blob = True, model
    try:
        return runtime_ops.InferenceSession(blob, so, providers=providers, custom_ops=custom)
    except Exception as e:
        raise error(f"ONNX Runtime cannot load the model: {ort_message(e)}") from None


def run_session(sess, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """``sess.run`` with ORT's failures as a one-line ``RuntimeFailure``."""
    try:
        return sess.run(None, feeds)
    except Exception as e:
        raise RuntimeFailure(f"ONNX Runtime failed to run the model: {ort_message(e)}") from None


def run_model(model: ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """``model`` on the feeds it takes; UsageError when it needs one they lack (two models
    with different inputs cannot be compared on the same feeds)."""
    sess = make_session(model)
    expected = {i.name: i for i in sess.get_inputs()}
    lacking = [n for n in expected if n not in feeds]
    if lacking:
        raise UsageError(f"a model needs input(s) {name_list([repr(n) for n in lacking])} "
                         f"that the inputs ({name_list(list(feeds))}) do not have; the "
                         "reference and the candidate must take the same inputs")
    return run_session(sess, {k: v for k, v in feeds.items() if k in expected})


def max_relative_change(ref: list[np.ndarray], cand: list[np.ndarray]) -> float | None:
    """The largest relative change of any float output: max over outputs of
    ``max|c − r| / max|r|`` (0 when both are all zeros).  None when it is not a finite number
    (a shape differs, a non-finite value appears on one side only, or r is all zeros and c
    is not), so that a report never carries NaN or infinity."""
    worst = 0.0
    for r, c in zip(ref, cand):
        if not np.issubdtype(r.dtype, np.floating):
            continue
        if r.shape != c.shape:
            return None
        r64, c64 = r.astype(np.float64), c.astype(np.float64)
        with np.errstate(invalid="ignore", over="ignore"):
            diff = np.abs(c64 - r64)
        same = (r64 == c64) | (np.isnan(r64) & np.isnan(c64))
        diff = np.where(same, 0.0, diff)
        scale = float(np.max(np.abs(r64[np.isfinite(r64)]), initial=0.0))
        top = float(np.max(diff, initial=0.0))
        if not np.isfinite(top) or (top > 0 and scale == 0.0):
            return None
        if top > 0:
            worst = max(worst, top / scale)
    return worst


def _varies(r: np.ndarray) -> bool:
    """Whether ``r`` holds two different values (NaN beside a number counts as two)."""
    flat = r.ravel()
    if flat.size < 2:
        return False
    if r.dtype.kind in "fc":
        nan = np.isnan(flat)
        if nan.all():
            return False
        if nan.any():
            return True
    return not bool(np.all(flat == flat[0]))


def uninformative(ref: list, atol: float | None = None) -> str | None:
    """Why the reference's outputs cannot tell a candidate apart, or None when they can: no
    output varies (an integer or boolean one that does is enough: class ids), and every
    floating-point one is empty or holds one value throughout (all zeros where random integer
    lengths masked every frame, all NaN); or, given the comparison's ``atol``, no integer
    output varies and every floating-point value lies within ``atol`` of zero (a text
    detector's map on noise, ~1e-5 everywhere: a candidate that outputs zeros, or text on a
    real page, matches it). A single value is not judged, nor a model with a sequence or map
    output."""
    if any(not isinstance(r, np.ndarray) for r in ref):
        return None
    if any(_varies(r) for r in ref):
        return _near_zero(ref, atol)  # something varies: a candidate that differs can show it
    floats = [r for r in ref if r.dtype.kind == "f"]
    if not floats:
        return None
    if all(r.size == 0 for r in floats):
        return "every floating-point output is empty"
    if sum(r.size for r in floats) <= 1:
        return None
    values = set()
    for r in floats:
        flat = r.ravel()
        if flat.size:
            values.add("NaN" if np.isnan(flat[0]) else f"{float(flat[0]) + 0.0:.6g}")  # -0 reads as 0
    return "every floating-point output value is " + " or ".join(sorted(values))


def reordered_text(which: list[int] | None, whose: str) -> str:
    """"; output(s) … hold ``whose`` rows in another order …" for compare's ``reordered``,
    else "" (check's error and bench's line say it alike)."""
    if not which:
        return ""
    return (f"; output(s) {', '.join(map(str, which))} hold {whose} rows in another order "
            "(near-equal values, such as a detector's scores, ranked the other way round)")


def _same_rows(r: np.ndarray, c: np.ndarray, atol: float, rtol: float) -> bool:
    """Whether ``c`` holds ``r``'s rows (entries, for a 1-D output) in some other order, each
    within the tolerance: both sorted row by row, lexicographically, then compared."""
    if r.ndim == 0 or r.shape != c.shape or r.shape[0] < 2 or r.dtype.kind not in "iufb":
        return False
    a, b = r.reshape(r.shape[0], -1), c.reshape(c.shape[0], -1)
    if a.dtype.kind == "f" and not (np.isfinite(a).all() and np.isfinite(b).all()):
        return False
    sa, sb = a[np.lexsort(a.T[::-1])], b[np.lexsort(b.T[::-1])]
    return bool(np.allclose(sb.astype(np.float64), sa.astype(np.float64), rtol=rtol, atol=atol))


# The magnitude below which every output counts as zero for uninformative (capped by the atol
# in use): check's default atol. A larger --atol, asked for on purpose, is not taken to mean
# that outputs of 0.4 are zero.
NEAR_ZERO = 1e-4


def _near_zero(ref: list, atol: float | None) -> str | None:
    """uninformative's second reason: every float output non-empty, finite and at most
    min(``atol``, NEAR_ZERO) in magnitude, and no other output varying; else None."""
    if atol is None or any(r.dtype.kind not in "fc" and _varies(r) for r in ref):
        return None
    floats = [r for r in ref if r.dtype.kind == "f" and r.size]
    if not floats or not all(np.isfinite(r).all() for r in floats):
        return None
    top, bound = max(float(np.max(np.abs(r))) for r in floats), min(atol, NEAR_ZERO)
    if top > bound:
        return None
    return (f"every floating-point output lies within {bound:g} of zero (the largest |value| is "
            f"{top:.3g}), inside the tolerance")


def _same_value(a, b, atol: float, rtol: float) -> bool:
    """Whether two ONNX Runtime outputs that may be sequences (lists) or maps (dicts) of
    tensors or numbers match: the same structure, floating-point leaves within the tolerance
    (NaN equal to NaN), the others equal."""
    if isinstance(a, dict) or isinstance(b, dict):
        return isinstance(a, dict) and isinstance(b, dict) and a.keys() == b.keys() and \
            all(_same_value(a[k], b[k], atol, rtol) for k in a)
    if isinstance(a, (list, tuple)) or isinstance(b, (list, tuple)):
        return isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and len(a) == len(b) and \
            all(_same_value(x, y, atol, rtol) for x, y in zip(a, b))
    x, y = np.asarray(a), np.asarray(b)
    if x.shape != y.shape:
        return False
    if x.dtype.kind in "fc" and y.dtype.kind in "fc":
        return bool(np.allclose(y, x, rtol=rtol, atol=atol, equal_nan=True))
    return bool(np.array_equal(x, y))


def compare(ref: list[np.ndarray], cand: list[np.ndarray], atol: float, rtol: float) -> dict:
    """Compare outputs pairwise by ``|c − r| ≤ atol + rtol·|r|``.

    Non-finite values: NaN in the same position on both sides counts as equal (and is counted
    in ``nan_both``); NaN against a number, or an infinity against anything but the same
    infinity, is a mismatch that no tolerance fixes (``unfixable``).  ``atol_that_passes`` is
    the smallest atol that would pass at this rtol, ``max(|c − r| − rtol·|r|)`` over the
    remaining positions, or None when no finite atol would (unfixable or a shape mismatch).
    """
    if len(ref) != len(cand):
        return {"passed": False, "reason": f"the reference has {len(ref)} output(s) and the candidate {len(cand)}",
                "atol": atol, "rtol": rtol, "outputs": [], "max_abs_error": None, "atol_that_passes": None}
    rows = []
    passed = True
    needed_atol: float | None = 0.0
    for i, (r, c) in enumerate(zip(ref, cand)):
        if not isinstance(r, np.ndarray) or not isinstance(c, np.ndarray):
            ok = _same_value(r, c, atol, rtol)  # a sequence or map output, element by element
            rows.append({"index": i, "passed": ok, "max_abs_error": None})
            passed &= ok
            if not ok:
                needed_atol = None
            continue
        if r.shape != c.shape:
            rows.append({"index": i, "shape_ref": list(r.shape), "shape_candidate": list(c.shape),
                         "passed": False})
            passed = False
            needed_atol = None
            continue
        if not np.issubdtype(r.dtype, np.number):
            ok = bool(np.array_equal(r, c))
            rows.append({"index": i, "passed": ok, "max_abs_error": None})
            passed &= ok
            if not ok:
                needed_atol = None
            continue
        r64, c64 = r.astype(np.float64), c.astype(np.float64)
        nan_r, nan_c = np.isnan(r64), np.isnan(c64)
        nan_both = nan_r & nan_c
        with np.errstate(invalid="ignore"):
            same = (r64 == c64) | nan_both  # equal numbers, equal infinities, NaN in both
            diff = np.where(same, 0.0, np.abs(c64 - r64))
        finite = np.isfinite(diff)  # inf−x, NaN−x: beyond every tolerance
        unfixable = int(np.count_nonzero(~finite))
        diff = np.where(finite, diff, 0.0)
        denom = np.where(np.isfinite(r64), np.abs(r64), 0.0)
        max_abs = float(diff.max()) if diff.size else 0.0
        with np.errstate(divide="ignore", invalid="ignore"):
            rel = np.where(denom > 0, diff / np.where(denom > 0, denom, 1.0),
                           np.where(diff > 0, np.inf, 0.0))
        max_rel = float(rel.max()) if rel.size else 0.0
        need = max(float((diff - rtol * denom).max()) if diff.size else 0.0, 0.0)
        ok = unfixable == 0 and need <= atol
        if needed_atol is not None:
            needed_atol = None if unfixable else max(needed_atol, need)
        rows.append({"index": i, "shape": list(r.shape), "max_abs_error": max_abs,
                     "max_rel_error": max_rel, "passed": ok,
                     "nan_mismatch": bool(np.any(nan_r != nan_c)),
                     "nan_both": int(np.count_nonzero(nan_both)), "unfixable": unfixable})
        passed &= ok
    failed = [o for o in rows if not o["passed"] and o.get("max_abs_error") is not None]
    reordered = [o["index"] for o in failed if _same_rows(ref[o["index"]], cand[o["index"]], atol, rtol)]
    shapes = [o for o in rows if "shape_ref" in o]
    unequal = [o for o in rows if "shape_ref" not in o and o.get("max_abs_error") is None and not o["passed"]]
    errors = [o["max_abs_error"] for o in rows if o.get("max_abs_error") is not None]
    # no error to report where nothing numeric was compared and something differs
    report = {"passed": passed, "atol": atol, "rtol": rtol, "outputs": rows,
              "max_abs_error": max(errors) if errors else (None if shapes or unequal else 0.0),
              "atol_that_passes": needed_atol,
              # every output that differs holds the reference's rows, in another order: a
              # detector's top-k or NMS ranking two near-equal scores the other way round
              "reordered": reordered if failed and len(reordered) == len(failed) else None}
    if shapes:  # no error to measure there: the models do not compute the same thing
        o = shapes[0]
        report["reason"] = (f"output {o['index']} has shape {o['shape_ref']} in the reference and "
                            f"{o['shape_candidate']} in the candidate"
                            + (f" (and {len(shapes) - 1} more output(s) differ in shape)" if len(shapes) > 1 else ""))
    elif unequal:  # a non-numeric (bool, string) output compares equal or not: no error either
        report["reason"] = (f"non-numeric or sequence output(s) {', '.join(str(o['index']) for o in unequal)} "
                            "differ")
    return report
