"""Hostile models against the native sparse ops: an ORT error, never a crash or a wrong result.

The ops index memory with their attributes and CSR arrays, so every attribute, every piece of
geometry derived from them and every CSR array is bounded before use (runtime_ops/README.md,
"Limits"). Cases known to have crashed the library run their session in a child process, so a
crash fails the test instead of killing pytest; the property-based tests run in-process and are
also run against an AddressSanitizer + UndefinedBehaviorSanitizer build of the library in CI
(runtime_ops/check_sanitized.sh).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st
from onnx import AttributeProto, TensorProto, helper, numpy_helper

from onnxprune import runtime_ops
from onnxprune.runtime_ops import csr_from_dense
from tests.test_runtime_ops import conv_layout, isa_settings
from tests.test_runtime_ops_activation import _gelu  # GELU in float64, exact in its tails

DOMAIN = runtime_ops.DOMAIN
OPSETS = [helper.make_opsetid("", 17), helper.make_opsetid(DOMAIN, 1)]
CSR_NAMES = ("values", "col_idx", "row_ptr")


def op_model(op: str, x_shape, csr, bias=None, *, csr_as_inputs: bool = False, **attrs):
    """X -> op(X, values, col_idx, row_ptr[, B]) -> Y; returns (model, feeds without X).

    The CSR arrays are constant initializers, or graph inputs (validated on every run) when
    `csr_as_inputs`.
    """
    inputs, inits, feeds = [helper.make_tensor_value_info("X", TensorProto.FLOAT, list(x_shape))], [], {}
    for name, arr in zip(CSR_NAMES, csr):
        if csr_as_inputs:
            feeds[name] = arr
            inputs.append(helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(arr.dtype),
                                                        list(arr.shape)))
        else:
            inits.append(numpy_helper.from_array(arr, name))
    names = ["X", *CSR_NAMES]
    if bias is not None:
        inits.append(numpy_helper.from_array(bias, "B"))
        names.append("B")
    node = helper.make_node(op, names, ["Y"], domain=DOMAIN)
    for key, value in attrs.items():  # typed explicitly: an empty list is a legal hostile value
        kind = None
        if isinstance(value, list):
            kind = AttributeProto.FLOATS if key == "activation_params" else AttributeProto.INTS
        node.attribute.append(helper.make_attribute(key, value, attr_type=kind))
    graph = helper.make_graph([node], "hostile", inputs, [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)],
                              initializer=inits)
    return helper.make_model(graph, opset_imports=OPSETS), feeds


# ---------------------------------------------------------------------------------------------
# Reproductions, each in a child process

_CHILD = textwrap.dedent("""
    import json, sys
    import numpy as np
    import onnxruntime as ort
    model_path, feeds_path, library = sys.argv[1:4]
    opts = ort.SessionOptions()
    opts.register_custom_ops_library(library)
    feeds = dict(np.load(feeds_path))
    try:
        sess = ort.InferenceSession(model_path, opts, providers=["CPUExecutionProvider"])
        (y,) = sess.run(None, feeds)
    except Exception as e:  # an ORT error is the expected way to refuse a model
        print(json.dumps({"error": str(e)}))
    else:
        print(json.dumps({"y": y.astype(float).tolist(), "shape": list(y.shape)}))
""")


def run_in_child(tmp_path, model, feeds) -> dict:
    """Runs `model` on `feeds` in a fresh interpreter: {"error": msg} or {"y": ..., "shape": ...}.

    The child inherits the environment (a sanitizer preload included) and loads the library
    the tests use; a crash or a sanitizer report fails the calling test with its stderr.
    """
    model_path, feeds_path = tmp_path / "model.onnx", tmp_path / "feeds.npz"
    model_path.write_bytes(model.SerializeToString())
    np.savez(feeds_path, **feeds)
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(model_path), str(feeds_path), runtime_ops.library_path()],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"child exited with {proc.returncode}:\n{proc.stderr[-3000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def one_nonzero_conv(kernel_shape, col: int, **attrs):
    """CsrConv with one output channel whose only nonzero (2.0) is at flattened column `col`."""
    csr = (np.array([2.0], np.float32), np.array([col], np.int16), np.array([0, 1], np.int32))
    return op_model("CsrConv", [1, 1, 1, 1], csr, np.array([0.5], np.float32), kernel_shape=kernel_shape, **attrs)


def test_wrapping_conv_geometry_is_refused_not_a_heap_overflow(tmp_path):
    # The plane size product wrapped to 0, so a tiny buffer was allocated and then filled with
    # 2^31 rows (SIGSEGV; ASan: heap-buffer-overflow).
    model, feeds = one_nonzero_conv([2, 1], 0, strides=[1, 2**33], dilations=[2**31 - 1, 1],
                                    pads=[0, 0, 2**31 - 1, 0])
    feeds["X"] = np.ones((1, 1, 1, 1), np.float32)
    out = run_in_child(tmp_path, model, feeds)
    assert "strides" in out.get("error", ""), out


def test_stride_beyond_the_limit_is_refused_not_a_wrong_value(tmp_path):
    # 2^32 x 2^32 phase planes wrapped to none: the output came back as the bias alone.
    model, feeds = one_nonzero_conv([1, 1], 0, strides=[2**32, 2**32])
    feeds["X"] = np.full((1, 1, 1, 1), 3.0, np.float32)
    out = run_in_child(tmp_path, model, feeds)
    assert "strides" in out.get("error", ""), out


def test_largest_stride_on_a_tiny_input_is_exact(tmp_path):
    # At the documented limit the result must be the convolution: 2 * 3 + 0.5.
    model, feeds = one_nonzero_conv([1, 1], 0, strides=[65536, 65536])
    feeds["X"] = np.full((1, 1, 1, 1), 3.0, np.float32)
    out = run_in_child(tmp_path, model, feeds)
    assert out.get("y") == [[[[6.5]]]], out


@pytest.mark.parametrize("csr", ["empty", "one_nonzero"])
def test_huge_channel_count_of_an_empty_input_is_refused_not_a_heap_overflow(tmp_path, csr):
    # X has no elements (0 x 0 image) but 2^61 channels; pads make a 2 x 2 output. The copies'
    # size, 4 floats per channel, stayed inside int64 (2^63 - 4), but adding the tiles'
    # overhang wrapped it negative past the 2^31 - 1 bound: a tiny buffer, then zero planes
    # written over the heap (SIGSEGV; UBSan: signed integer overflow).
    c_in = (2**63 - 1) // 4
    arrays = ((np.zeros(0, np.float32), np.zeros(0, np.int16), np.zeros(2, np.int32)) if csr == "empty" else
              (np.array([2.0], np.float32), np.array([0], np.int16), np.array([0, 1], np.int32)))
    model, feeds = op_model("CsrConv", [1, c_in, 0, 0], arrays, kernel_shape=[1, 1], pads=[1, 1, 1, 1])
    feeds["X"] = np.zeros((1, c_in, 0, 0), np.float32)
    out = run_in_child(tmp_path, model, feeds)
    assert "input copies" in out.get("error", ""), out


# ---------------------------------------------------------------------------------------------
# Property: an error exactly when a documented rule is broken, else the float64 reference

LIMIT = 65536  # largest kernel_shape / strides / dilations entry and pad (README "Limits")
INT32_MAX = 2**31 - 1
EDGES = [0, 1, 2, 3, 65535, 65536, 65537, 2**31 - 1, 2**32, 2**33, 2**62, 2**63 - 1, -1, -(2**31), -(2**63)]
PROPERTY = settings(max_examples=120, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


LIB = ctypes.CDLL(runtime_ops.library_path())


@functools.lru_cache(maxsize=1)
def cpu_isas() -> tuple[str, ...]:
    lib = ctypes.CDLL(runtime_ops.library_path())
    lib.onnxprune_ops_cpu_has.argtypes = [ctypes.c_char_p]
    return tuple(i for i in ("avx512", "avx2", "scalar") if lib.onnxprune_ops_cpu_has(i.encode()) == 1)


@contextlib.contextmanager
def isa_env(isa: str):
    """`isa`'s settings (test_runtime_ops.isa_settings) for a session or the layout probe made
    inside, restored afterwards; yields the instruction set's own name."""
    name, settings = isa_settings(isa)
    saved = {k: os.environ.get(k) for k in settings}
    os.environ.update(settings)  # read when the kernel is created
    try:
        yield name
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def run_in_process(model, feeds, isa: str, threads: int):
    """The op's output, or None when ONNX Runtime refused the model or the run with an error."""
    with isa_env(isa):
        try:
            opts = runtime_ops.session_options(threads)
            opts.log_severity_level = 4  # refusals are expected here; keep ORT's error log quiet
            sess = runtime_ops.InferenceSession(model.SerializeToString(), opts)
            return sess.run(None, feeds)[0]
        except Exception as e:  # only ONNX Runtime's own errors count as a refusal
            assert type(e).__module__.startswith("onnxruntime"), repr(e)
            return None


def csr_max_col(csr) -> int | None:
    """max column index when the CSR arrays obey the storage rules (README), else None."""
    v, c, p = csr
    if v.dtype != np.float32 or c.dtype not in (np.int16, np.int32) or p.dtype != np.int32:
        return None
    if v.ndim != 1 or c.ndim != 1 or p.ndim != 1 or len(c) != len(v) or len(p) < 1:
        return None
    if p[0] != 0 or np.any(np.diff(p.astype(np.int64)) < 0) or p[-1] != len(v) or np.any(c < 0):
        return None
    return int(c.max()) if len(c) else -1


def dense64(csr, k: int) -> np.ndarray:
    """The CSR matrix as a float64 (N, k) array; repeated columns in a row add up."""
    v, c, p = csr
    w = np.zeros((len(p) - 1, k))
    np.add.at(w, (np.repeat(np.arange(len(p) - 1), np.diff(p)), c.astype(np.int64)), v.astype(np.float64))
    return w


@st.composite
def hostile_csr(draw, rng, rows: int, k: int, broken: bool):
    """CSR of a random (rows, k) matrix; when `broken`, one array mutated, maybe consistently."""
    w = rng.standard_normal((rows, k)).astype(np.float32)
    w[rng.random((rows, k)) < 0.5] = 0.0
    dtype = draw(st.sampled_from([None, np.int32])) if k <= 32767 else np.int32
    v, c, p = csr_from_dense(w, dtype)
    if not broken:
        return v, c, p
    kind = draw(st.sampled_from(["row_ptr_value", "row_ptr_length", "col_value", "col_length", "values_length",
                                 "col_int64", "row_ptr_int64"]))
    if kind == "row_ptr_value":
        p = p.copy()
        p[draw(st.integers(0, len(p) - 1))] = draw(st.sampled_from([-1, 1, len(v) + 1, INT32_MAX, -(2**31)]))
    elif kind == "row_ptr_length":
        p = np.append(p, p[-1]) if draw(st.booleans()) or len(p) == 1 else p[:-1]
    elif kind == "col_value" and len(c):
        info = np.iinfo(c.dtype)
        c = c.copy()
        c[draw(st.integers(0, len(c) - 1))] = draw(st.sampled_from([-1, info.min, info.max, k, k + 1, 0]))
    elif kind == "col_length":
        c = np.append(c, c[:1]).astype(c.dtype) if draw(st.booleans()) or not len(c) else c[:-1]
    elif kind == "values_length":
        v = np.append(v, np.float32(1.0)) if draw(st.booleans()) or not len(v) else v[:-1]
    elif kind == "col_int64":
        c = c.astype(np.int64)
    elif kind == "row_ptr_int64":
        p = p.astype(np.int64)
    return v, c, p


# --- CsrConv ---

def conv_extent(size, pad0, pad1, k, d, s):
    span = size + pad0 + pad1 - (k - 1) * d - 1
    return None if span < 0 else span // s + 1


# activation -> (number of activation_params, float64 function of (y, params or None))
ACTIVATIONS = {
    "Relu": (0, lambda y, p: np.where(y < 0, 0.0, y)),
    "LeakyRelu": (1, lambda y, p: np.where(y < 0, (p or [0.01])[0] * y, y)),
    "Clip": (2, lambda y, p: np.clip(y, *(p or [-np.inf, np.inf]))),
    "HardSigmoid": (2, lambda y, p: np.clip((p or [0.2, 0.5])[0] * y + (p or [0.2, 0.5])[1], 0, 1)),
    "HardSwish": (0, lambda y, p: y * np.clip(y / 6 + 0.5, 0, 1)),
    "Sigmoid": (0, lambda y, p: 1 / (1 + np.exp(-y))),
    "Swish": (0, lambda y, p: y / (1 + np.exp(-y))),
    "Gelu": (0, lambda y, p: _gelu(y)),
}


def activation_ok(attrs) -> bool:
    """Whether activation attributes obey README "CsrConv" (absent is fine; CsrGemm's too)."""
    act, params = attrs.get("activation"), attrs.get("activation_params")
    if act is None:
        return params is None
    # a present list must hold exactly the activation's floats: an empty one is refused too
    if act not in ACTIVATIONS or (params is not None and (len(params) == 0 or len(params) != ACTIVATIONS[act][0])):
        return False
    if params is None:
        return True
    if act == "Clip":
        return not np.isnan(params).any() and params[0] <= params[1]
    return bool(np.isfinite(params).all())


def as_2d(x_shape, attrs):
    """A 1-D case (kernel_shape [k], X (N, C, L); op-set 4) as the 2-D one it computes: X
    (N, C, 1, L) and a 1 x k kernel; a 2-D case as it is. None when the attribute lists do not
    all have the kernel's rank (1 or 2) or X is not of rank 2 more (README "CsrConv", "Limits")."""
    ks = attrs.get("kernel_shape")
    rank = len(ks) if ks is not None and len(ks) in (1, 2) else None
    if rank is None or len(x_shape) != rank + 2:
        return None
    st_, di = attrs.get("strides", [1] * rank), attrs.get("dilations", [1] * rank)
    pa = attrs.get("pads", [0] * 2 * rank)
    if len(st_) != rank or len(di) != rank or len(pa) != 2 * rank:
        return None
    if rank == 2:
        return tuple(x_shape), attrs
    wide = {**attrs, "kernel_shape": [1, *ks], "strides": [1, *st_], "dilations": [1, *di],
            "pads": [0, pa[0], 0, pa[1]]}
    return (x_shape[0], x_shape[1], 1, x_shape[2]), wide


def conv_output_shape(x_shape, attrs, csr, bias, isa="scalar") -> tuple | None:
    """Y's shape when CsrConv must accept the case, None when it must refuse it: every rule in
    README "CsrConv" and "Limits"."""
    if not activation_ok(attrs):
        return None
    widened = as_2d(x_shape, attrs)
    if widened is None:
        return None
    one_d = len(x_shape) == 3
    x_shape, attrs = widened
    ks, st_, di = attrs.get("kernel_shape"), attrs.get("strides", [1, 1]), attrs.get("dilations", [1, 1])
    pa, group = attrs.get("pads", [0, 0, 0, 0]), attrs.get("group", 1)

    def within(v, n, lo):
        return v is not None and len(v) == n and all(lo <= e <= LIMIT for e in v)

    if not (within(ks, 2, 1) and within(st_, 2, 1) and within(di, 2, 1) and within(pa, 4, 0)) or group < 1:
        return None
    # README "Limits": winograd 0 or 1, and 1 only on a 2-D 3x3 kernel, unit strides and
    # dilations, one group
    wino = attrs.get("winograd", 0)
    if wino not in (0, 1) or (wino == 1 and (one_d or list(ks) != [3, 3] or list(st_) != [1, 1] or
                                             list(di) != [1, 1] or group != 1)):
        return None
    max_col = csr_max_col(csr)
    nb, c_in, h, w = x_shape
    c_out = len(csr[2]) - 1
    if not width_ok(attrs, (c_in // max(group, 1)) * ks[0] * ks[1]):
        return None
    if max_col is None or c_in % group or c_out % group or max_col >= (c_in // group) * ks[0] * ks[1]:
        return None
    oh, ow = (conv_extent(x_shape[2 + a], pa[a], pa[a + 2], ks[a], di[a], st_[a]) for a in (0, 1))
    if oh is None or ow is None or oh * ow > INT32_MAX:
        return None
    if bias is not None and bias.shape != (c_out,):
        return None
    if nb and c_out and not copies_fit(isa, x_shape, attrs, oh, ow, c_out, len(csr[0])):
        return None
    return (nb, c_out, ow) if one_d else (nb, c_out, oh, ow)


def copies_fit(isa, x_shape, attrs, oh, ow, c_out, nnz) -> bool:
    """README "Limits": the input copies plus the tiles' slack, R · Kc · C_in · ceil(Hp / sH') ·
    Wq + OH · Wq + 448 rounded up to 16, within 2^31 - 1 floats, for the layout the kernel
    takes (phase or shifted copies; the gate's choice, asked of the library only where the two
    layouts' sizes disagree)."""
    nb, c_in, h, w = x_shape
    (kh, kw), (dh, dw) = attrs["kernel_shape"], attrs.get("dilations", [1, 1])
    st_, pa = attrs.get("strides", [1, 1]), attrs.get("pads", [0, 0, 0, 0])
    sh, sw = (1 if oh == 1 else st_[0]), (1 if ow == 1 else st_[1])  # one output: the stride never moves
    rows = len({(i * dh) % sh for i in range(kh)})
    hq = -(-(h + pa[0] + pa[2]) // sh)

    def fits(kc, wq):
        total = rows * kc * c_in * hq * wq + oh * wq + 448
        return -(-total // 16) * 16 <= INT32_MAX

    phase = fits(len({(j * dw) % sw for j in range(kw)}), -(-(w + pa[1] + pa[3]) // sw))
    quantum = {"avx512": 16, "avx2": 8}.get(isa, 1)  # ops.cc RowQuantum: the shifted rows' rounding
    shifted = fits(kw, -(-ow // quantum) * quantum)
    if phase == shifted:
        return phase
    layout = conv_layout(LIB, isa, [kh, kw, *st_, dh, dw, *pa, attrs.get("group", 1)], x_shape, c_out, nnz)
    return shifted if layout == 2 else phase


def conv_reference_csr(x, csr, bias, attrs) -> np.ndarray:
    """Float64 ONNX Conv straight from the CSR arrays: one strided window per nonzero."""
    if x.ndim == 3:  # 1-D: the 2-D convolution of a 1 x k kernel over a height of 1
        x4, wide = as_2d(x.shape, attrs)
        return conv_reference_csr(x.reshape(x4), csr, bias, wide)[:, :, 0, :]
    (kh, kw), (sh, sw) = attrs["kernel_shape"], attrs.get("strides", [1, 1])
    (dh, dw), pads, group = attrs.get("dilations", [1, 1]), attrs.get("pads", [0, 0, 0, 0]), attrs.get("group", 1)
    v, c, p = csr
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    oh, ow = (xp.shape[2] - (kh - 1) * dh - 1) // sh + 1, (xp.shape[3] - (kw - 1) * dw - 1) // sw + 1
    c_out = len(p) - 1
    y = np.zeros((x.shape[0], c_out, oh, ow))
    cg, og = x.shape[1] // group, max(c_out // group, 1)
    for r in range(c_out):
        for j in range(p[r], p[r + 1]):
            col = int(c[j])
            ch, i, jj = col // (kh * kw), (col // kw) % kh, col % kw
            window = xp[:, (r // og) * cg + ch, i * dh: i * dh + sh * (oh - 1) + 1: sh,
                        jj * dw: jj * dw + sw * (ow - 1) + 1: sw]
            y[:, r] += float(v[j]) * window
    if bias is not None:
        y += bias.astype(np.float64)[None, :, None, None]
    return y


def attr_list(n: int, sane, broken: bool):
    if not broken:
        return st.lists(sane, min_size=n, max_size=n)
    any_int = st.one_of(st.integers(0, 3), st.sampled_from(EDGES))
    return st.one_of(st.lists(any_int, min_size=n, max_size=n), st.lists(any_int, max_size=5))


@st.composite
def activation_attrs(draw, broken: bool) -> dict:
    """Activation attributes: none, a valid set, or (when ``broken``) a malformed one."""
    if not broken:
        act = draw(st.sampled_from([None, None, *ACTIVATIONS]))
        if act is None:
            return {}
        n = ACTIVATIONS[act][0]
        if n == 0 or draw(st.booleans()):
            return {"activation": act}
        params = sorted(draw(st.lists(st.floats(-8, 8, width=32), min_size=n, max_size=n)))
        return {"activation": act, "activation_params": params}
    name = draw(st.sampled_from([*ACTIVATIONS, "Mish", "", "relu", "gelu"]))
    params = draw(st.lists(st.sampled_from([0.0, 1.0, -2.0, float("nan"), float("inf"), float("-inf")]), max_size=3))
    return {"activation": name, "activation_params": params} if draw(st.booleans()) else {"activation_params": params}


def width_ok(attrs, k: int) -> bool:
    """``columns``, when present: in [1, 2^31 - 1] and the K that X gives (README "Limits")."""
    columns = attrs.get("columns")
    return columns is None or (1 <= columns <= INT32_MAX and columns == k)


@st.composite
def recorded_width(draw, k: int) -> dict:
    """The ``columns`` attribute: absent half the time, else K, a near miss or a hostile int."""
    choice = draw(st.sampled_from(["absent", "absent", "k", "k", "other"]))
    if choice == "absent" or not -(2**63) < k < 2**63 - 1:  # a hostile kernel_shape: K leaves int64
        return {}
    return {"columns": k if choice == "k" else draw(st.sampled_from([k - 1, k + 1, *EDGES]))}


@st.composite
def conv_cases(draw):
    broken = draw(st.sets(st.sampled_from(["attrs", "group", "csr", "columns", "bias", "activation", "rank"]),
                          max_size=2))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    # `winograd`: absent mostly; 1 on a layer the Winograd path takes a sixth of the time (3x3,
    # unit strides and dilations, one group), else 0, 1 or a value outside {0, 1} on any layer
    wino = draw(st.sampled_from(["absent", "absent", "absent", "path", "0", "1", "bad"]))
    rank = 2 if wino == "path" else draw(st.sampled_from([1, 2, 2]))  # 1-D convolutions (op-set 4) a third of the time
    kernel = st.just(3) if wino == "path" else st.sampled_from([1, 1, 2, 3])
    attrs = {"kernel_shape": draw(attr_list(rank, kernel, "attrs" in broken))}
    for name, n, sane in (("strides", rank, st.just(1) if wino == "path" else st.sampled_from([1, 1, 2, 3, LIMIT])),
                          ("dilations", rank, st.just(1) if wino == "path" else st.sampled_from([1, 1, 2, LIMIT])),
                          ("pads", 2 * rank, st.sampled_from([0, 0, 1, 2, LIMIT]))):
        if draw(st.integers(0, 3)):  # absent a quarter of the time: the default applies
            attrs[name] = draw(attr_list(n, sane, "attrs" in broken))
    if wino != "absent":
        attrs["winograd"] = {"path": 1, "0": 0, "1": 1}.get(wino) if wino != "bad" else \
            draw(st.sampled_from([2, -1, 2**62]))
    group = draw(st.sampled_from([0, -1, 3, 2**62]) if "group" in broken else
                 st.just(1) if wino == "path" else st.sampled_from([1, 1, 2]))
    if group != 1 or draw(st.booleans()):
        attrs["group"] = group
    # Zero sizes are drawn, but rarely: an empty side leaves no nonzero to check against the
    # reference, and with each size zero a quarter of the time few valid cases had one.
    x_rank = (3 if rank == 2 else 4) if "rank" in broken else rank + 2  # X of the other rank
    x_shape = [draw(st.sampled_from([0, 1, 1, 2])), draw(st.sampled_from([0, 1, 2, 2, 4, 4])),
               *(draw(st.integers(0, 6 if x_rank == 4 else 12)) for _ in range(x_rank - 2))]
    c_out = draw(st.sampled_from([0, 1, 2, 2, 4, 4]))
    ks = attrs["kernel_shape"]
    area = int(np.prod(ks)) if len(ks) in (1, 2) else 0
    k_cols = (x_shape[1] // max(group, 1)) * area if 0 < area <= 9 else 4
    if "columns" in broken:  # a weight shaped for another kernel or channel count
        k_cols = draw(st.integers(1, 12))
    csr = draw(hostile_csr(rng, c_out, k_cols, "csr" in broken))
    bias = None
    if draw(st.booleans()):
        bias = rng.standard_normal(draw(st.sampled_from([c_out + 1, 0])) if "bias" in broken else c_out)
        bias = bias.astype(np.float32)
    x = rng.standard_normal(x_shape).astype(np.float32)
    attrs.update(draw(activation_attrs("activation" in broken)))
    attrs.update(draw(recorded_width(x_shape[1] // max(group, 1) * area if group >= 1 else 1)))
    return x, attrs, csr, bias


def refused_or_shaped(y, shape) -> bool:
    """The oracle's first half: a case the rules forbid (``shape`` None) must be refused (``y``
    None), any other must run and give ``shape``.  True when ``y`` is left to compare."""
    if shape is None:
        assert y is None, "an invalid case was accepted"
        return False
    assert y is not None, "a valid case was refused"
    assert y.shape == shape
    return True


def with_residual(model, feeds: dict, z: np.ndarray) -> None:
    """The residual Z (CsrConv's from op-set 5, CsrGemm's from 6) as a graph input fed `z`, after
    an empty bias slot when there is no bias."""
    node = model.graph.node[0]
    if len(node.input) < 5:
        node.input.append("")
    node.input.append("Z")
    model.graph.input.append(helper.make_tensor_value_info("Z", TensorProto.FLOAT, list(z.shape)))
    feeds["Z"] = z


def residual_case(shape, residual: str, seed: int, fallback: list) -> tuple:
    """(Y's shape or None, Z or None) for a drawn ``residual``: none, Z of Y's exact shape, or Z
    of another shape (one dim off by one, or a rank off by one), which must be refused: Z
    takes no broadcasting."""
    if residual == "none":
        return shape, None
    z_shape = list(shape) if shape is not None else list(fallback)
    if residual == "other shape":
        rng = np.random.default_rng(seed)
        if z_shape and rng.random() < 0.8:
            i = int(rng.integers(len(z_shape)))
            z_shape[i] += 1 if z_shape[i] == 0 else int(rng.choice([-1, 1]))  # never the same shape
        else:
            z_shape = z_shape[:-1] if len(z_shape) > 1 else [*z_shape, 1]
        shape = None
    assume(int(np.prod(z_shape)) <= 2**22)
    return shape, np.random.default_rng(seed).standard_normal(z_shape).astype(np.float32)


@PROPERTY
@given(case=conv_cases(), csr_as_inputs=st.booleans(),
       isa=st.sampled_from(["avx512", "avx512-narrow", "avx2", "scalar"]),
       threads=st.sampled_from([1, 2]), residual=st.sampled_from(["none", "none", "exact", "other shape"]),
       seed=st.integers(0, 2**16))
def test_csr_conv_refuses_or_matches_the_reference(case, csr_as_inputs, isa, threads, residual, seed):
    assume(isa.removesuffix("-narrow") in cpu_isas())
    x, attrs, csr, bias = case
    with isa_env(isa) as name:  # the layout probe plans as that session will
        shape = conv_output_shape(x.shape, attrs, csr, bias, name)
    shape, z = residual_case(shape, residual, seed, [1, 1, 1, 1])
    if shape is not None:  # legal but huge (65536 pads on a 1x1 input): too big to check here
        x4, wide = as_2d(x.shape, attrs)
        pads = wide.get("pads", [0, 0, 0, 0])
        padded = x4[0] * x4[1] * (x4[2] + pads[0] + pads[2]) * (x4[3] + pads[1] + pads[3])
        assume(max(np.prod(shape), padded) <= 2**22)
    event("valid" if shape is not None else "refused")
    event(f"{x.ndim - 2}-D: {'valid' if shape is not None else 'refused'}")
    event(f"activation {attrs.get('activation', 'none')}: {'valid' if shape is not None else 'refused'}")
    event(f"residual {residual}")
    event(f"winograd {attrs.get('winograd', 'absent')}: {'valid' if shape is not None else 'refused'}")
    model, feeds = op_model("CsrConv", x.shape, csr, bias, csr_as_inputs=csr_as_inputs, **attrs)
    feeds["X"] = x
    if z is not None:
        with_residual(model, feeds, z)
    y = run_in_process(model, feeds, isa, threads)
    if not refused_or_shaped(y, shape):
        return
    ref = conv_reference_csr(x, csr, bias, attrs)
    if z is not None:
        ref = ref + z.astype(np.float64)
    if "activation" in attrs:
        with np.errstate(over="ignore"):
            ref = ACTIVATIONS[attrs["activation"]][1](ref, attrs.get("activation_params"))
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4)


# --- CsrGemm ---

def gemm_output_shape(x_shape, attrs, csr, c_shape) -> tuple | None:
    """Y's shape when CsrGemm must accept the case, None when it must refuse it (README "CsrGemm")."""
    if not activation_ok(attrs):
        return None
    matmul, trans_a, beta = attrs.get("matmul", 0), attrs.get("transA", 0), attrs.get("beta", 1.0)
    if matmul not in (0, 1, 2) or trans_a not in (0, 1) or (matmul and trans_a):
        return None
    n = len(csr[2]) - 1
    if matmul:
        if len(x_shape) < 1:
            return None
        m_dims, k, out = x_shape[:-1], x_shape[-1], (*x_shape[:-1], n)
        if matmul == 2:  # op-set 7: Y transposed, (N, M)
            out = (n, int(np.prod(m_dims, dtype=np.int64)))
    else:
        if len(x_shape) != 2:
            return None
        m_dims, k = ((x_shape[1],), x_shape[0]) if trans_a else ((x_shape[0],), x_shape[1])
        out = (*m_dims, n)
    max_col = csr_max_col(csr)
    if max_col is None or max_col >= k or not width_ok(attrs, k):
        return None
    if c_shape is not None and beta != 0.0:
        if len(c_shape) > len(out) or (c_shape[-1] if c_shape else 1) not in (1, n):
            return None
        lead = c_shape[:-1]
        if matmul and any(d != 1 for d in lead):
            return None
        if not matmul and lead and lead[0] not in (1, out[0]):
            return None
    return tuple(out)


def gemm_reference(x, csr, c, attrs, out_shape, z=None) -> np.ndarray:
    matmul, trans_a = attrs.get("matmul", 0), attrs.get("transA", 0)
    alpha, beta = attrs.get("alpha", 1.0), attrs.get("beta", 1.0)
    a = x.astype(np.float64)
    a = a.T if trans_a else a.reshape(int(np.prod(x.shape[:-1])), x.shape[-1]) if matmul else a
    y = alpha * a @ dense64(csr, a.shape[1]).T
    if matmul == 2:  # the bias over the features, then Y transposed
        if c is not None and beta != 0.0:
            y = y + beta * np.broadcast_to(c.astype(np.float64).reshape(-1), (y.shape[0], out_shape[0]))
        y = y.T.reshape(out_shape)
    else:
        y = y.reshape(out_shape)
        if c is not None and beta != 0.0:
            y = y + beta * np.broadcast_to(c.astype(np.float64), out_shape)
    if z is not None:
        y = y + z.astype(np.float64)
    if "activation" in attrs:
        with np.errstate(over="ignore", invalid="ignore"):
            y = ACTIVATIONS[attrs["activation"]][1](y, attrs.get("activation_params"))
    return y


@st.composite
def gemm_cases(draw):
    broken = draw(st.sets(st.sampled_from(["attrs", "rank", "csr", "columns", "bias", "activation"]), max_size=2))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if "attrs" in broken:
        attrs = {"matmul": draw(st.sampled_from([0, 1, 2, -1, 2**40])), "transA": draw(st.sampled_from([0, 1, 2, -1]))}
    else:
        attrs = {"matmul": draw(st.sampled_from([0, 1, 2]))}  # 2: op-set 7's transposed Y
        attrs["transA"] = 0 if attrs["matmul"] else draw(st.sampled_from([0, 1]))
    attrs["alpha"], attrs["beta"] = draw(st.sampled_from([1.0, 0.5, -2.0])), draw(st.sampled_from([1.0, 0.0, 3.0]))
    attrs.update(draw(activation_attrs("activation" in broken)))  # op-set 3
    dim = st.integers(0, 5)
    if "rank" in broken:
        x_shape = draw(st.lists(dim, max_size=4))
    elif attrs["matmul"] in (1, 2):
        x_shape = draw(st.lists(dim, min_size=1, max_size=3))
    else:
        x_shape = draw(st.lists(dim, min_size=2, max_size=2))
    k = (x_shape[0] if attrs["transA"] == 1 else x_shape[-1]) if x_shape else 1
    n = draw(st.integers(0, 5))
    width = draw(st.integers(1, 8)) if "columns" in broken else k
    csr = draw(hostile_csr(rng, n, width, "csr" in broken))
    m = (x_shape[1] if attrs["transA"] == 1 else x_shape[0]) if len(x_shape) == 2 else 1
    c_shape = None
    if draw(st.booleans()):
        dims = [0, 1, 2, n, m, n + 1] if "bias" in broken else [1, n, m]
        c_shape = tuple(draw(st.lists(st.sampled_from(dims), max_size=3 if "bias" in broken else 2)))
    c = None if c_shape is None else rng.standard_normal(c_shape).astype(np.float32)
    attrs.update(draw(recorded_width(k)))
    return rng.standard_normal(x_shape).astype(np.float32), attrs, csr, c


@PROPERTY
@given(case=gemm_cases(), csr_as_inputs=st.booleans(), isa=st.sampled_from(["avx512", "avx2", "scalar"]),
       threads=st.sampled_from([1, 2]), residual=st.sampled_from(["none", "none", "exact", "other shape"]),
       seed=st.integers(0, 2**16))
def test_csr_gemm_refuses_or_matches_the_reference(case, csr_as_inputs, isa, threads, residual, seed):
    assume(isa in cpu_isas())
    x, attrs, csr, c = case
    shape = gemm_output_shape(x.shape, attrs, csr, None if c is None else c.shape)
    shape, z = residual_case(shape, residual, seed, [1, 1])
    event("valid" if shape is not None else "refused")
    event(f"residual {residual}")
    model, feeds = op_model("CsrGemm", x.shape, csr, c, csr_as_inputs=csr_as_inputs, **attrs)
    feeds["X"] = x
    if z is not None:
        with_residual(model, feeds, z)
    y = run_in_process(model, feeds, isa, threads)
    if not refused_or_shaped(y, shape):
        return
    np.testing.assert_allclose(y, gemm_reference(x, csr, c, attrs, shape, z), rtol=1e-4, atol=1e-4)
