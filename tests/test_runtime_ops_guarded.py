"""CsrConv over random small geometries with X and Z placed right before an inaccessible page.

ONNX Runtime hands the kernels the numpy buffers as they are, so with each input ending at a
PROT_NONE page (and one before it) any read past X or Z faults instead of reading a
neighbour's floats: the masked tails of the gathers and of the partial tiles' Z loads, the
in-place 1x1 tiles moved back to end at the plane's end, the narrow copies' offset tables.
Random 1x1 and 3x3 layers, strides 1-2 (half of them 2x2 with narrow rows), random pads,
planes of 1 to 300 output positions, batch 1-3, groups and depthwise layers (through each of
their paths), densities 5-100%, activations fused or not, Z or not, every copy layout, both
settings of the entries pass and several rows per tile task, on every ISA the CPU has and 1 and 2 threads, against the
float64 reference.
"""

from __future__ import annotations

import ctypes
import sys

import numpy as np
import pytest
from onnx import helper

from tests import test_runtime_ops as base
from tests.test_runtime_ops import close, conv_reference, session
from tests.test_runtime_ops_residual import residual_model

lib, isa, threads = base.lib, base.isa, base.threads

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mmap/mprotect through libc")

PAGE = 4096
CASES = 60  # per (chunk, ISA, threads)


class GuardedBuffers:
    """Float32 arrays copied to the end of fresh mappings, an inaccessible page on each side."""

    def __init__(self):
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.libc.mmap.restype = ctypes.c_void_p
        self.libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                                   ctypes.c_long]
        self.libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        self.libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        self.maps = []

    def place(self, a: np.ndarray) -> np.ndarray:
        a = np.ascontiguousarray(a, np.float32)
        pages = (max(a.nbytes, 4) + PAGE - 1) // PAGE
        total = (pages + 2) * PAGE
        start = self.libc.mmap(None, total, 3, 0x22, -1, 0)  # read/write, private anonymous
        assert start not in (None, ctypes.c_void_p(-1).value), "mmap failed"
        assert self.libc.mprotect(start, PAGE, 0) == 0
        assert self.libc.mprotect(start + (pages + 1) * PAGE, PAGE, 0) == 0
        floats = (ctypes.c_float * a.size).from_address(start + (pages + 1) * PAGE - a.nbytes)
        out = np.frombuffer(floats, np.float32).reshape(a.shape)
        out[...] = a
        self.maps.append((start, total, floats))
        return out

    def free(self):
        while self.maps:
            start, total, _ = self.maps.pop()
            self.libc.munmap(start, total)


ACTS = {None: (None, lambda v: v), "Relu": (None, lambda v: np.maximum(v, 0.0)),
        "Clip": ((-0.5, 1.5), lambda v: np.clip(v, -0.5, 1.5)),
        "LeakyRelu": ((0.1,), lambda v: np.where(v < 0, 0.1 * v, v))}


def random_case(rng):
    k = int(rng.choice([1, 3]))
    s = [int(rng.integers(1, 3)), int(rng.integers(1, 3))]
    if rng.random() < 0.5:  # stride-2 both ways, output rows <= 16: narrow copies
        s = [2, 2]
    if k == 1:
        pads = [0, 0, 0, 0] if rng.random() < 0.7 else [int(v) for v in rng.integers(0, 2, 4)]
    else:
        pads = [int(v) for v in rng.integers(0, 3, 4)]
    while True:
        oh_t = int(rng.integers(1, 21))
        ow_t = int(rng.integers(1, 41))
        if oh_t * ow_t <= 300:
            break
    h = max(1, (oh_t - 1) * s[0] + k - pads[0] - pads[2])
    w = max(1, (ow_t - 1) * s[1] + k - pads[1] - pads[3])
    oh = (h + pads[0] + pads[2] - k) // s[0] + 1
    ow = (w + pads[1] + pads[3] - k) // s[1] + 1
    if oh < 1 or ow < 1:
        return None
    nb = int(rng.integers(1, 4))
    c_in = int(rng.choice([1, 2, 3, 8, 17, 40, 96, 200]))
    c_out = int(rng.choice([1, 3, 16, 63, 64, 65, 130]))
    group = 2 if (c_in % 2 == 0 and c_out % 2 == 0 and rng.random() < 0.15) else 1
    if rng.random() < 0.2:  # depthwise: one input and one output channel per group
        c_in = c_out = group = int(rng.choice([1, 3, 16, 17, 40]))
    density = float(rng.choice([0.05, 0.2, 0.5, 1.0]))
    act = list(ACTS)[int(rng.integers(0, 4))] if rng.random() < 0.9 else None
    copies = str(rng.choice(["", "shifted", "phase"]))
    depthwise = str(rng.choice(["", "blocks", "direct", "bands"]))
    bias = rng.random() < 0.7
    return dict(k=k, s=s, pads=pads, h=h, w=w, nb=nb, c_in=c_in, c_out=c_out, group=group, density=density,
                act=act, copies=copies, depthwise=depthwise, bias=bias)



def _with_activation(model, act, params):
    """conv_model's CsrConv node with a fused activation."""
    for node in model.graph.node:
        if node.op_type == "CsrConv":
            node.attribute.append(helper.make_attribute("activation", act))
            if params is not None:
                node.attribute.append(helper.make_attribute("activation_params", [float(v) for v in params]))
    return model


@pytest.mark.parametrize("chunk", range(4))
def test_guarded_random_convolutions_match_the_reference(chunk, isa, threads, monkeypatch):
    rng = np.random.default_rng(1000 * chunk + 7 * threads + {"avx512": 1, "avx2": 2, "scalar": 3}[isa])
    buffers = GuardedBuffers()
    done = 0
    try:
        while done < CASES:
            c = random_case(rng)
            if c is None:
                continue
            monkeypatch.setenv("ONNXPRUNE_CONV_COPIES", c["copies"])
            monkeypatch.setenv("ONNXPRUNE_CONV_DEPTHWISE", c["depthwise"])
            monkeypatch.setenv("ONNXPRUNE_TOUCH_ENTRIES", str(rng.choice(["", "0", "1"])))
            monkeypatch.setenv("ONNXPRUNE_TASK_ROWS", str(rng.choice(["", "1", "5", "64", "512", "1024"])))
            cg = c["c_in"] // c["group"]
            w4 = rng.standard_normal((c["c_out"], cg, c["k"], c["k"])).astype(np.float32)
            w4[rng.random(w4.shape) >= c["density"]] = 0.0
            b = rng.standard_normal(c["c_out"]).astype(np.float32) if c["bias"] else None
            x = rng.standard_normal((c["nb"], c["c_in"], c["h"], c["w"])).astype(np.float32)
            conv = conv_reference(x, w4, b, c["s"], c["pads"], [1, 1], c["group"])
            use_z = rng.random() < 0.85
            z = (rng.standard_normal(conv.shape) * 3).astype(np.float32)
            params, f = ACTS[c["act"]]
            want = f(conv + z) if use_z else f(conv)
            xg, zg = buffers.place(x), buffers.place(z)
            if use_z:
                model = residual_model(w4, b, strides=c["s"], pads=c["pads"], group=c["group"],
                                       activation=c["act"], params=params)
                (y,) = session(model, threads).run(None, {"X": xg, "Z": zg})
            else:
                model = base.conv_model(w4, b, strides=c["s"], pads=c["pads"], dilations=[1, 1], group=c["group"])
                if c["act"] is not None:
                    model = _with_activation(model, c["act"], params)
                y = session(model, threads).run(None, {"X": xg})[1]
            close(y, want, cg * c["k"] * c["k"])
            buffers.free()
            done += 1
    finally:
        buffers.free()
