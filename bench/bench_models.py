"""Whole pruned models in ONNX Runtime: dense pruned model vs `onnxprune prune --emit sparse-ops`.

Models are defined here with onnx.helper, with seeded random weights (He-normal conv, N(0, 1/K)
fully connected), and pruned by the CLI to the paper's per-layer densities (Han et al. 2015,
Tables 4 and 5) with ``--layer NAME=Q``, Q = √2·erfinv(pruned share) (for Gaussian weights the
std threshold prunes exactly that share), ``--no-remove-dead-neurons``:

* LeNet-300-100   784-300-100-10, fc1/fc2/fc3 at 8/9/26 % (sizes and timings, cheap)
* AlexNet         Caffe reference (227×227, 96-256-384-384-256 conv with groups 2 in conv2/4/5,
                  LRN, fc6-fc8 9216-4096-4096-1000): conv1 84, conv2 38, conv3 35, conv4 37,
                  conv5 37, fc6 9, fc7 9, fc8 25 %
* VGG-16          224×224, 13 conv + 3 fc: conv1_1 58 … conv5_3 36 % (Table 5), fc6 4, fc7 4,
                  fc8 23 %

and today's architectures at the densities sparse-CPU runtimes are usually shown with
(BatchNorm folded into the convolutions, as exporters do):

* ResNet-50       v1.5, torchvision layout, 224×224: every conv (the 7×7 stem and the 1×1
                  projections included) and the fc at 10 % (90 % sparse)
* BERT-base       encoder layer(s) (``--bert-layers``, default 1) on x [N, 128, 768]: the six
                  weight MatMuls per layer (Q, K, V, attention output, FFN 768→3072→768) at 10 %;
                  the attention's activation MatMuls, LayerNorm and Erf-GELU stay as they are
* MobileNetV2     1.0, 224×224: the 1×1 convs (expand, project, head) and the fc at 25 %
                  (75 % sparse); the 3×3 stem and the depthwise convs are not pruned (``--skip``)

``--suite`` runs ResNet-50, BERT-base, MobileNetV2, AlexNet and VGG-16 at batch 1, 8 and 1, 2
threads.

Per model: the ``--emit dense`` file (the reference), ``--emit portable``, ``--emit sparse-ops
--expected-batch B --threads T`` for every timed case (the default measured decision: each
layer timed dense vs CSR on this machine), and
``--emit sparse-ops`` with ``max-density`` set in a recipe (lowering for size instead of speed).
Per (batch, threads):

* end to end: dense and sparse-ops sessions in one process, same options, alternating calls,
  median; the number of timed calls adapts to the model's run time (``--case-seconds``,
  at least ``--min-repeats``) and is reported;
* per layer: every layer the ops can express, as a one-node CSR model against a one-node dense
  model from the same weights on the input shape the layer sees (``onnxprune bench``'s
  harness); a layer the cost model lowered that measures slower than dense is flagged;
* the memory-bandwidth bound at batch 1: bytes of all initializers (dense fp32 weights; CSR
  values + indices + row pointers) ÷ a streaming-read bandwidth measured right before the case
  (numpy sum over a 256 MiB array; for 2 threads two such sums on halves in two threads);
* optionally a DeepSparse column, run by ``bench/deepsparse_ref.py`` under a separate
  interpreter (``--deepsparse-python``, default .deepsparse-venv/bin/python when it exists) on the
  dense pruned model; its outputs are compared with ORT's and mismatches are flagged.

    python bench/bench_models.py --json models.json --markdown models.md
    python bench/bench_models.py --quick                    # batch 1, 1 thread, few calls
    python bench/bench_models.py --models alexnet --batch 1 --threads 1,2
    python bench/bench_models.py --suite --json suite.json --markdown suite.md
    python bench/bench_models.py --models resnet50 --batch 1 --threads 1 --keep models/
                                                            # keep the files for A/Bs
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from statistics import NormalDist

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from onnxprune.runtime.bench import (
    compare_outputs,
    one_node_pairs,
    rows_by_node,
    run_outputs,
    session_for,
    time_pair,
)
from onnxprune.cli import main as cli

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_DS_PYTHON = ".deepsparse-venv/bin/python"

# --------------------------------------------------------------------------- models


class _Builder:
    """A small graph builder with seeded random weights.

    ``self.x`` is the tensor the next node reads and every method moves it to its own output,
    so a chain is a sequence of calls; a branch (a residual, the three attention projections)
    saves ``self.x`` and sets it back.
    """

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)
        self.nodes, self.inits = [], []
        self.x = "x"

    def _param(self, name, arr, dtype=np.float32):
        self.inits.append(numpy_helper.from_array(np.asarray(arr).astype(dtype), name))
        return name

    def conv(self, name, c_in, c_out, k, stride=1, pad=0, group=1, relu=True):
        fan_in = c_in // group * k * k
        w = self.rng.standard_normal((c_out, c_in // group, k, k), dtype=np.float32)
        w *= np.float32(math.sqrt(2.0 / fan_in))
        b = 0.01 * self.rng.standard_normal(c_out)
        y = f"{name}_out"
        self.nodes.append(helper.make_node(
            "Conv", [self.x, self._param(f"{name}.weight", w), self._param(f"{name}.bias", b)],
            [y], name=name, kernel_shape=[k, k], strides=[stride, stride],
            pads=[pad] * 4, group=group))
        self.x = y
        if relu:
            self._unary("Relu", f"{name}_relu")

    def fc(self, name, k, n, relu=True, out=None):
        w = self.rng.standard_normal((n, k), dtype=np.float32) * np.float32(1 / math.sqrt(k))
        b = 0.01 * self.rng.standard_normal(n)
        y = out or f"{name}_out"
        self.nodes.append(helper.make_node(
            "Gemm", [self.x, self._param(f"{name}.weight", w), self._param(f"{name}.bias", b)],
            [y], name=name, transB=1))
        self.x = y
        if relu:
            self._unary("Relu", f"{name}_relu")

    def matmul(self, name, k, n):
        """x·W + b with W (K, N) ~ N(0, 1/K): a transformer projection (MatMul, then Add)."""
        w = self.rng.standard_normal((k, n), dtype=np.float32) * np.float32(1 / math.sqrt(k))
        b = 0.01 * self.rng.standard_normal(n)
        self.binary("MatMul", name, self._param(f"{name}.weight", w))
        self.binary("Add", f"{name}_bias", self._param(f"{name}.bias", b))

    def _unary(self, op, name, **attrs):
        y = f"{name}_out"
        self.nodes.append(helper.make_node(op, [self.x], [y], name=name, **attrs))
        self.x = y

    def binary(self, op, name, other, **attrs):
        """x ← op(x, other): a residual Add, attention's MatMuls, a constant operand."""
        y = f"{name}_out"
        self.nodes.append(helper.make_node(op, [self.x, other], [y], name=name, **attrs))
        self.x = y

    def relu6(self, name):
        self.nodes.append(helper.make_node(
            "Clip", [self.x, self._param(f"{name}.min", 0.0), self._param(f"{name}.max", 6.0)],
            [f"{name}_out"], name=name))
        self.x = f"{name}_out"

    def reshape(self, name, shape):
        """Reshape to ``shape`` (0 copies the input's dimension, -1 is inferred)."""
        self.binary("Reshape", name, self._param(f"{name}.shape", shape, np.int64))

    def gelu(self, name):
        """GELU in its exact Erf form, x·½·(1 + erf(x/√2)) (the pattern ONNX Runtime fuses)."""
        x = self.x
        self.binary("Div", f"{name}_div", self._param(f"{name}.sqrt2", math.sqrt(2.0)))
        self._unary("Erf", f"{name}_erf")
        self.binary("Add", f"{name}_add", self._param(f"{name}.one", 1.0))
        self.binary("Mul", f"{name}_mul", x)
        self.binary("Mul", f"{name}_half", self._param(f"{name}.half", 0.5))

    def layer_norm(self, name, width):
        """LayerNormalization over the last axis (opset 17), γ ≈ 1 and β ≈ 0 with some spread."""
        gamma = 1 + 0.1 * self.rng.standard_normal(width)
        beta = 0.1 * self.rng.standard_normal(width)
        self.nodes.append(helper.make_node(
            "LayerNormalization",
            [self.x, self._param(f"{name}.weight", gamma), self._param(f"{name}.bias", beta)],
            [f"{name}_out"], name=name, axis=-1, epsilon=1e-12))
        self.x = f"{name}_out"

    def pool(self, name, k, s, pad=0):
        self._unary("MaxPool", name, kernel_shape=[k, k], strides=[s, s],
                    **({"pads": [pad] * 4} if pad else {}))

    def lrn(self, name):
        self._unary("LRN", name, size=5, alpha=1e-4, beta=0.75, bias=1.0)

    def flatten(self, name):
        self._unary("Flatten", name, axis=1)

    def model(self, name, in_shape, out_dim) -> onnx.ModelProto:
        """The graph with input x [N, *in_shape] and output [N, out_dim] (or [N, *out_dim])."""
        out_shape = [out_dim] if isinstance(out_dim, int) else list(out_dim)
        g = helper.make_graph(
            self.nodes, name,
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *in_shape])],
            [helper.make_tensor_value_info(self.x, TensorProto.FLOAT, ["N", *out_shape])],
            self.inits)
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
        m.ir_version = 8
        return m


def lenet_300_100(seed=0) -> onnx.ModelProto:
    b = _Builder(seed)
    b.fc("fc1", 784, 300)
    b.fc("fc2", 300, 100)
    b.fc("fc3", 100, 10, relu=False, out="y")
    return b.model("lenet_300_100", [784], 10)


def alexnet(seed=0) -> onnx.ModelProto:
    """Caffe's reference AlexNet (the paper's): 227×227 input, grouped conv2/4/5, LRN."""
    b = _Builder(seed)
    b.conv("conv1", 3, 96, 11, stride=4)
    b.lrn("norm1")
    b.pool("pool1", 3, 2)
    b.conv("conv2", 96, 256, 5, pad=2, group=2)
    b.lrn("norm2")
    b.pool("pool2", 3, 2)
    b.conv("conv3", 256, 384, 3, pad=1)
    b.conv("conv4", 384, 384, 3, pad=1, group=2)
    b.conv("conv5", 384, 256, 3, pad=1, group=2)
    b.pool("pool5", 3, 2)
    b.flatten("flatten")
    b.fc("fc6", 9216, 4096)
    b.fc("fc7", 4096, 4096)
    b.fc("fc8", 4096, 1000, relu=False, out="y")
    return b.model("alexnet", [3, 227, 227], 1000)


VGG_CONV = (("conv1_1", 3, 64), ("conv1_2", 64, 64), None,
            ("conv2_1", 64, 128), ("conv2_2", 128, 128), None,
            ("conv3_1", 128, 256), ("conv3_2", 256, 256), ("conv3_3", 256, 256), None,
            ("conv4_1", 256, 512), ("conv4_2", 512, 512), ("conv4_3", 512, 512), None,
            ("conv5_1", 512, 512), ("conv5_2", 512, 512), ("conv5_3", 512, 512), None)


def vgg16(seed=0) -> onnx.ModelProto:
    b = _Builder(seed)
    pools = 0
    for spec in VGG_CONV:
        if spec is None:
            pools += 1
            b.pool(f"pool{pools}", 2, 2)
        else:
            name, c_in, c_out = spec
            b.conv(name, c_in, c_out, 3, pad=1)
    b.flatten("flatten")
    b.fc("fc6", 25088, 4096)
    b.fc("fc7", 4096, 4096)
    b.fc("fc8", 4096, 1000, relu=False, out="y")
    return b.model("vgg16", [3, 224, 224], 1000)


# (width, blocks, stride of the first block) of ResNet-50's four bottleneck stages
RESNET50_STAGES = ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2))


def resnet50(seed=0, width=64, image=224) -> onnx.ModelProto:
    """ResNet-50 v1.5 in torchvision's layout with BatchNorm folded (conv with bias).

    Stem 7×7/2 conv (``width`` channels) + 3×3/2 max-pool; bottleneck blocks 1×1 → 3×3 → 1×1
    (×4 expansion) with the stride on the 3×3 and a 1×1/stride projection (``.downsample``) on
    the first block of each stage; ReLU after the residual Add; global average pool; fc → 1000.
    ``width`` 64 and ``image`` 224 are the real network; smaller values keep the topology.
    """
    b = _Builder(seed)
    b.conv("conv1", 3, width, 7, stride=2, pad=3)
    b.pool("maxpool", 3, 2, pad=1)
    c_in = width
    for stage, (w, blocks, first_stride) in enumerate(RESNET50_STAGES, 1):
        w = w * width // 64
        for i in range(blocks):
            p, stride = f"layer{stage}.{i}", first_stride if i == 0 else 1
            identity = b.x
            b.conv(f"{p}.conv1", c_in, w, 1)
            b.conv(f"{p}.conv2", w, w, 3, stride=stride, pad=1)
            b.conv(f"{p}.conv3", w, 4 * w, 1, relu=False)
            if i == 0:  # the shortcut changes width (and size): a 1×1/stride projection
                branch, b.x = b.x, identity
                b.conv(f"{p}.downsample", c_in, 4 * w, 1, stride=stride, relu=False)
                identity, b.x = b.x, branch
            b.binary("Add", f"{p}.add", identity)
            b._unary("Relu", f"{p}.relu")
            c_in = 4 * w
    b._unary("GlobalAveragePool", "avgpool")
    b.flatten("flatten")
    b.fc("fc", c_in, 1000, relu=False, out="y")
    return b.model("resnet50", [3, image, image], 1000)


def bert_base(seed=0, layers=1, hidden=768, heads=12, ffn=3072, seq=128) -> onnx.ModelProto:
    """BERT-base encoder layers (post-norm) on an embedded sequence x [N, seq, hidden].

    Per layer: Q, K, V = x·W + b (MatMul with a constant [hidden, hidden] weight, then Add);
    heads split by Reshape [0, -1, heads, d] and Transpose (K to [N, h, d, seq]);
    softmax(Q·Kᵀ / √d)·V with the two activation MatMuls; heads merged; the output projection;
    h = LayerNorm(x + attention); y = LayerNorm(h + W₂·GELU(W₁·h)) with W₁ hidden → ffn and
    W₂ ffn → hidden, GELU in Erf form.  Six weight MatMuls per layer, all prunable; the two
    attention MatMuls have no weight.  Defaults are BERT-base (768, 12 heads, 3072, sequence 128).
    """
    b = _Builder(seed)
    d = hidden // heads
    for i in range(layers):
        p = f"layer{i}"
        x = b.x
        split = {}
        for t, perm in (("query", [0, 2, 1, 3]), ("key", [0, 2, 3, 1]), ("value", [0, 2, 1, 3])):
            b.x = x
            b.matmul(f"{p}.attention.{t}", hidden, hidden)
            b.reshape(f"{p}.attention.{t}_split", [0, -1, heads, d])
            b._unary("Transpose", f"{p}.attention.{t}_heads", perm=perm)
            split[t] = b.x
        b.x = split["query"]
        b.binary("MatMul", f"{p}.attention.scores", split["key"])
        b.binary("Mul", f"{p}.attention.scale", b._param(f"{p}.attention.scale", 1 / math.sqrt(d)))
        b._unary("Softmax", f"{p}.attention.softmax", axis=-1)
        b.binary("MatMul", f"{p}.attention.context", split["value"])
        b._unary("Transpose", f"{p}.attention.merge", perm=[0, 2, 1, 3])
        b.reshape(f"{p}.attention.merged", [0, -1, hidden])
        b.matmul(f"{p}.attention.output", hidden, hidden)
        b.binary("Add", f"{p}.attention.residual", x)
        b.layer_norm(f"{p}.attention.norm", hidden)
        h = b.x
        b.matmul(f"{p}.ffn.fc1", hidden, ffn)
        b.gelu(f"{p}.ffn.gelu")
        b.matmul(f"{p}.ffn.fc2", ffn, hidden)
        b.binary("Add", f"{p}.ffn.residual", h)
        b.layer_norm(f"{p}.ffn.norm", hidden)
    return b.model("bert_base", [seq, hidden], [seq, hidden])


# (expansion t, output channels c, blocks n, stride of the first block s): MobileNetV2 Table 2
MOBILENETV2_BLOCKS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                      (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


def _divisible8(v: float) -> int:
    """torchvision's _make_divisible(v, 8): nearest multiple of 8, never 10% below v."""
    r = max(8, int(v + 4) // 8 * 8)
    return r + 8 if r < 0.9 * v else r


def mobilenetv2(seed=0, width=1.0, image=224) -> onnx.ModelProto:
    """MobileNetV2 (torchvision layout, BatchNorm folded): 3×3/2 stem (``stem``), inverted
    residuals (``blockI.expand`` 1×1 → ``blockI.dw`` 3×3 depthwise → ``blockI.project`` 1×1,
    linear; a residual Add where stride 1 keeps the width), ``head`` 1×1 → 1280, global average
    pool, fc → 1000; ReLU6 as Clip(0, 6).  ``width`` is the width multiplier (1.0 = the real
    network, channels rounded to multiples of 8).
    """
    b = _Builder(seed)
    c_in = _divisible8(32 * width)
    b.conv("stem", 3, c_in, 3, stride=2, pad=1, relu=False)
    b.relu6("stem_relu6")
    i = 0
    for t, c, n, s in MOBILENETV2_BLOCKS:
        c_out = _divisible8(c * width)
        for j in range(n):
            p, stride, hidden = f"block{i}", s if j == 0 else 1, c_in * t
            x = b.x
            if t != 1:
                b.conv(f"{p}.expand", c_in, hidden, 1, relu=False)
                b.relu6(f"{p}.expand_relu6")
            b.conv(f"{p}.dw", hidden, hidden, 3, stride=stride, pad=1, group=hidden, relu=False)
            b.relu6(f"{p}.dw_relu6")
            b.conv(f"{p}.project", hidden, c_out, 1, relu=False)
            if stride == 1 and c_in == c_out:
                b.binary("Add", f"{p}.add", x)
            c_in, i = c_out, i + 1
    last = _divisible8(1280 * max(1.0, width))
    b.conv("head", c_in, last, 1, relu=False)
    b.relu6("head_relu6")
    b._unary("GlobalAveragePool", "avgpool")
    b.flatten("flatten")
    b.fc("fc", last, 1000, relu=False, out="y")
    return b.model("mobilenetv2", [3, image, image], 1000)


# % of weights remaining per layer (Han et al. 2015, Tables 1, 4, 5)
MODELS = {
    "lenet-300-100": (lenet_300_100, {"fc1": 8, "fc2": 9, "fc3": 26}),
    "alexnet": (alexnet, {"conv1": 84, "conv2": 38, "conv3": 35, "conv4": 37, "conv5": 37,
                          "fc6": 9, "fc7": 9, "fc8": 25}),
    "vgg16": (vgg16, {"conv1_1": 58, "conv1_2": 22, "conv2_1": 34, "conv2_2": 36,
                      "conv3_1": 53, "conv3_2": 24, "conv3_3": 42, "conv4_1": 32, "conv4_2": 27,
                      "conv4_3": 34, "conv5_1": 35, "conv5_2": 29, "conv5_3": 36,
                      "fc6": 4, "fc7": 4, "fc8": 23}),
    # today's architectures at the densities sparse-CPU runtimes are shown with (globs; the
    # last match wins; 100 = not pruned, passed as --skip)
    "resnet50": (resnet50, {"*": 10}),
    "bert-base": (bert_base, {"*": 10}),
    "mobilenetv2": (mobilenetv2, {"*": 25, "stem": 100, "*.dw": 100}),
}

# --suite: today's architectures beside the paper's two ImageNet networks
SUITE = {"models": "resnet50,bert-base,mobilenetv2,alexnet,vgg16", "batch": "1,8",
         "threads": "1,2"}

# Lowering for size: CSR with int16 indices takes 6 B per nonzero against 4 B per dense weight,
# so it is smaller below 2/3 density (int32 indices: below 1/2).  0.6 covers every paper layer.
SIZE_MAX_DENSITY = 0.6


def quality_for_keep(keep: float) -> float:
    """q with P(|w| < q·σ) = 1 − keep for Gaussian w."""
    return NormalDist().inv_cdf(1 - keep / 2)


# --------------------------------------------------------------------------- pruning


def split_keep(keep: dict) -> tuple[dict, list]:
    """(glob → % kept for the pruned layers, globs of layers left unpruned: 100 % kept)."""
    return {n: k for n, k in keep.items() if k < 100}, [n for n, k in keep.items() if k >= 100]


def prune(src: str, out: str, keep: dict, emit: str, extra=(), recipe: str | None = None) -> dict:
    report = out + ".json"
    args = ["prune", src, "-o", out, "--emit", emit, "-q", "--json", report]
    if recipe is None:
        pruned, skip = split_keep(keep)
        args += ["--no-remove-dead-neurons"]
        args += [f"--layer={n}={quality_for_keep(k / 100):.6f}" for n, k in pruned.items()]
        args += [f"--skip={n}" for n in skip]
    else:
        args += ["--recipe", recipe]
    code = cli([*args, *extra])
    if code != 0:
        raise SystemExit(f"prune --emit {emit} failed with exit code {code}")
    with open(report) as f:
        return json.load(f)


def size_recipe(path: str, keep: dict) -> str:
    """A recipe: the same per-layer pruning, then lowering every layer at ≤ SIZE_MAX_DENSITY."""
    pruned, skip = split_keep(keep)
    layers = "".join(f"          \"{n}\": {quality_for_keep(k / 100):.6f}\n"
                     for n, k in pruned.items())
    skips = f"        skip: [{', '.join(json.dumps(n) for n in skip)}]\n" if skip else ""
    with open(path, "w") as f:
        f.write("version: 1\npasses:\n  - threshold-by-std:\n" + skips + "        layers:\n" +
                layers +
                f"  - lower-to-sparse-ops:\n      max-density: {SIZE_MAX_DENSITY}\n"
                "emit: sparse-ops\n")
    return path


def initializer_bytes(model: onnx.ModelProto) -> int:
    """Bytes of every initializer (the weights a batch-1 pass has to read once)."""
    total = 0
    for t in model.graph.initializer:
        n = int(np.prod(t.dims)) if len(t.dims) else 1
        total += n * helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
    return total


# --------------------------------------------------------------------------- bandwidth


_BW_ARRAY: np.ndarray | None = None


def stream_bandwidth(threads: int = 1, repeats: int = 7) -> dict:
    """Streaming read bandwidth (GB/s): numpy sum over 256 MiB of float32, median and best.

    For 2+ threads the array is split into that many parts summed in parallel threads
    (numpy releases the interpreter lock inside the reduction).
    """
    global _BW_ARRAY
    if _BW_ARRAY is None:
        _BW_ARRAY = np.ones((256 << 20) // 4, dtype=np.float32)
    a = _BW_ARRAY
    parts = np.array_split(a, threads)
    times = []
    with ThreadPoolExecutor(threads) as ex:
        list(ex.map(np.sum, parts))
        for _ in range(repeats):
            t0 = time.perf_counter()
            list(ex.map(np.sum, parts))
            times.append(time.perf_counter() - t0)
    return {"threads": threads, "median_gbs": round(a.nbytes / statistics.median(times) / 1e9, 2),
            "best_gbs": round(a.nbytes / min(times) / 1e9, 2), "bytes": a.nbytes,
            "repeats": repeats}


# --------------------------------------------------------------------------- timing


def adaptive_pair(d_sess, s_sess, feeds, max_repeats, min_repeats, seconds, warmup=1):
    """time_pair with the number of calls chosen from one timed warm-up of each session."""
    t0 = time.perf_counter()
    for _ in range(warmup):
        run_outputs(d_sess, feeds)
        run_outputs(s_sess, feeds)
    per_pair = (time.perf_counter() - t0) / warmup
    repeats = max(min_repeats, min(max_repeats, int(seconds / max(per_pair, 1e-6))))
    dense_ms, sparse_ms = time_pair(d_sess, s_sess, feeds, feeds, repeats, 1)
    return dense_ms, sparse_ms, repeats


def layer_timings(dense_model, feeds, batch, threads, decided, args) -> list[dict]:
    """Every expressible layer alone: one-node CSR model vs one-node dense model."""
    from onnxprune.runtime.bench import lower_model

    # each layer alone, as the dense model shapes its input: without transposed chains, whose
    # nodes read or write their tensors with the last two axes swapped
    forced, _ = lower_model(dense_model, batch=batch, threads=threads, force=["*"],
                            **{"transposed-chains": False})
    opset = next((o.version for o in dense_model.opset_import if o.domain in ("", "ai.onnx")), 17)
    rows = []
    for node, inits, x_shape, x, d_sess, s_sess in one_node_pairs(
            forced, dense_model, feeds, threads, opset, args.seed):
        dense_ms, sparse_ms, reps = adaptive_pair(d_sess, s_sess, x, args.layer_repeats,
                                                  args.min_repeats, args.layer_seconds)
        row = decided.get(node.name, {})
        first = None
        if row.get("lowered") and dense_ms < sparse_ms:
            # a lowered layer that lost: time it again, three times as long, before flagging it
            first = {"dense_ms": round(dense_ms, 4), "sparse_ms": round(sparse_ms, 4),
                     "repeats": reps}
            dense_ms, sparse_ms, reps = adaptive_pair(
                d_sess, s_sess, x, 3 * args.layer_repeats, 3 * args.min_repeats,
                3 * args.layer_seconds)
        del d_sess, s_sess
        csr_bytes = sum(int(np.prod(inits[n].dims)) *
                        helper.tensor_dtype_to_np_dtype(inits[n].data_type).itemsize
                        for n in node.input[1:4])
        gc.collect()
        rows.append({"name": node.name, "op": row.get("op"), "input_shape": list(x_shape),
                     "density": row.get("density"), "lowered": bool(row.get("lowered")),
                     "estimated_speedup": row.get("estimated_speedup"),
                     "dense_bytes": row.get("dense_bytes"), "csr_bytes": csr_bytes,
                     "dense_ms": round(dense_ms, 4), "sparse_ms": round(sparse_ms, 4),
                     "ratio": round(dense_ms / sparse_ms, 3), "repeats": reps,
                     **({"first_timing": first} if first else {})})
        flag = ""
        if rows[-1]["lowered"] and dense_ms < sparse_ms:
            flag = "  <-- LOWERED BUT SLOWER"
        if first:
            flag += f" (re-timed; first {first['dense_ms'] / first['sparse_ms']:.2f}x)"
        print(f"    {node.name:8s} {row.get('density', 0) or 0:6.1%} "
              f"est {row.get('estimated_speedup') or 0:6.2f}x  dense {dense_ms:9.3f} ms  "
              f"csr {sparse_ms:9.3f} ms  {dense_ms / sparse_ms:5.2f}x  "
              f"{'lowered' if row.get('lowered') else 'dense  '} (n={reps}){flag}", flush=True)
    return rows


# --------------------------------------------------------------------------- DeepSparse


def deepsparse_python(path: str | None) -> str | None:
    if path == "none":
        return None
    path = path or os.environ.get("ONNXPRUNE_DEEPSPARSE_PYTHON") or DEFAULT_DS_PYTHON
    if not os.path.isfile(path):
        return None
    try:
        probe = subprocess.run([path, "-c", "import deepsparse; print(deepsparse.__version__)"],
                               capture_output=True, text=True, check=False)
    except OSError:  # not executable, or not a program at all
        return None
    return path if probe.returncode == 0 else None


def run_deepsparse(py: str, model_path: str, feeds: dict, ref: list[np.ndarray], threads: int,
                   repeats: int, tmp: str, timeout: int) -> dict:
    """Time the dense pruned model in DeepSparse (separate interpreter) and check its outputs."""
    x_path = os.path.join(tmp, "ds_in.npz")
    out_path = os.path.join(tmp, "ds_out.npz")
    np.savez(x_path, *[feeds[k] for k in feeds])
    cmd = [py, os.path.join(HERE, "deepsparse_ref.py"), model_path, x_path, out_path,
           "--threads", str(threads), "--repeats", str(repeats)]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"status": "timeout", "timeout_s": timeout}
    if p.returncode != 0:
        tail = (p.stderr or p.stdout).strip().splitlines()[-3:]
        return {"status": "failed", "error": " | ".join(tail)}
    info = json.loads(p.stdout.strip().splitlines()[-1])
    with np.load(out_path) as z:
        outs = [z[k] for k in sorted(z.files, key=lambda s: int(s.split("_")[1]))]
    check = compare_outputs(ref, outs)
    info.update(status="ok" if check["passed"] else "MISMATCH",
                max_abs_error=check["max_abs_error"], atol=check["atol"])
    return info


# --------------------------------------------------------------------------- main


def machine() -> dict:
    info = {"python": platform.python_version(), "date": datetime.date.today().isoformat()}
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        for line in lscpu.splitlines():
            key, _, value = line.partition(":")
            if key in ("Model name", "CPU(s)", "CPU family", "L1d cache", "L2 cache", "L3 cache"):
                info[key] = value.strip()
        info["load_average"] = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        pass
    import onnxruntime

    info.update(onnxruntime=onnxruntime.__version__, onnx=onnx.__version__, numpy=np.__version__)
    return info


def builder_options(name: str, args) -> dict:
    """Keyword arguments of the model's builder set from the command line."""
    return {"layers": args.bert_layers} if name == "bert-base" else {}


def discard(args, path: str) -> None:
    """Removes a model file once it has been timed (a VGG-16 file is 550 MB), unless --keep."""
    if not args.keep:
        os.remove(path)


def bench_model(name: str, args, ds_py: str | None, tmp: str) -> dict:
    build, keep = MODELS[name]
    src = os.path.join(tmp, f"{name}.onnx")
    options = builder_options(name, args)
    onnx.save(build(**options), src)
    out = {"keep_percent": keep, "builder_options": options, "sizes": {}, "cases": []}
    paths = {e: os.path.join(tmp, f"{name}.{e}.onnx") for e in ("dense", "portable", "size")}
    t0 = time.perf_counter()
    rep = prune(src, paths["dense"], keep, "dense")
    prune(src, paths["portable"], keep, "portable")
    srep = prune(src, paths["size"], keep, "sparse-ops",
                 recipe=size_recipe(os.path.join(tmp, f"{name}.size.yaml"), keep))
    out["prune_seconds_3_files"] = round(time.perf_counter() - t0, 1)
    out["densities"] = {r["name"]: round(r["density"], 4) for r in rep["layers"]}
    out["params"] = rep["total"]["params"]
    out["nonzero"] = rep["total"]["nonzero"]
    out["sizes"]["dense"] = os.path.getsize(paths["dense"])
    out["sizes"]["portable"] = os.path.getsize(paths["portable"])
    out["sizes"][f"sparse-ops, max-density {SIZE_MAX_DENSITY} (size)"] = \
        os.path.getsize(paths["size"])
    out["size_lowered"] = srep["sparse_ops"]["lowered"]
    print(f"{name}: {out['params'] / 1e6:.2f} M params, {out['nonzero'] / 1e6:.2f} M nonzero; "
          + ", ".join(f"{k} {v / 1e6:.2f} MB" for k, v in out["sizes"].items()), flush=True)
    discard(args, paths["portable"])
    if name not in args.time_models:
        discard(args, paths["size"])
        return out

    dense_model = onnx.load(paths["dense"])
    dense_bytes = paths["dense"]  # ORT reads the file itself: one copy fewer of a big model
    dense_w_bytes = initializer_bytes(dense_model)
    for batch in args.batches:
        feeds = {"x": np.random.default_rng(1).standard_normal(
            (batch, *[d.dim_value for d in dense_model.graph.input[0].type.tensor_type.shape.dim
                      ][1:]), dtype=np.float32)}
        for threads in args.threads:
            path = os.path.join(tmp, f"{name}.sparse-b{batch}-t{threads}.onnx")
            s = prune(src, path, keep, "sparse-ops",
                      ["--expected-batch", str(batch), "--threads", str(threads)]
                      + (["--winograd"] if args.winograd else []))
            sp = s["sparse_ops"]
            out["sizes"][f"sparse-ops (batch {batch}, threads {threads})"] = os.path.getsize(path)
            sparse_w_bytes = initializer_bytes(onnx.load(path))
            d_sess = session_for(dense_bytes, threads)
            s_sess = session_for(path, threads)
            ref = run_outputs(d_sess, feeds)
            check = compare_outputs(ref, run_outputs(s_sess, feeds))
            bw = stream_bandwidth(threads) if batch == 1 else None
            load = round(os.getloadavg()[0], 2)
            dense_ms, sparse_ms, reps = adaptive_pair(d_sess, s_sess, feeds, args.repeats,
                                                      args.min_repeats, args.case_seconds)
            del d_sess, s_sess
            decided = rows_by_node(sp["layers"])
            case = {"batch": batch, "threads": threads, "repeats": reps, "load_1min": load,
                    "dense_ms": round(dense_ms, 3), "sparse_ms": round(sparse_ms, 3),
                    "ratio": round(dense_ms / sparse_ms, 3), "lowered": sp["lowered"],
                    "layers_total": len(sp["layers"]),
                    "winograd": [r["name"] for r in sp["layers"] if r["lowered"] and r.get("winograd")],
                    "not_lowered": {r["name"]: r["reason"] for r in sp["layers"]
                                    if not r["lowered"]},
                    "estimated": {r["name"]: r["estimated_speedup"] for r in sp["layers"]
                                  if r["lowered"]},
                    "batch_stream": _stream_record((s.get("lowering") or {}).get("batch_stream")),
                    "max_abs_error": check["max_abs_error"],
                    "max_rel_error": relative_error(check), "passed": check["passed"],
                    "weight_bytes": {"dense": dense_w_bytes, "sparse_ops": sparse_w_bytes}}
            if bw is not None:
                gbs = bw["median_gbs"]
                case["bandwidth"] = bw
                case["bound_ms"] = {"dense": round(dense_w_bytes / (gbs * 1e9) * 1e3, 3),
                                    "sparse_ops": round(sparse_w_bytes / (gbs * 1e9) * 1e3, 3)}
            print(f"  batch {batch} threads {threads}: dense {dense_ms:9.3f} ms  sparse-ops "
                  f"{sparse_ms:9.3f} ms  {dense_ms / sparse_ms:5.2f}x  (n={reps}, load {load})  "
                  f"lowered {len(sp['lowered'])}/{len(sp['layers'])}: "
                  f"{','.join(sp['lowered']) or '-'}  "
                  + (f"winograd {','.join(case['winograd'])}  " if case["winograd"] else "")
                  + (f"streamed {case['batch_stream']['nodes']} nodes ({case['batch_stream']['gain']:.2f}x)  "
                     if (case["batch_stream"] or {}).get("kept") else "")
                  + f"{'ok' if check['passed'] else 'MISMATCH'} "
                  f"(max rel. error {case['max_rel_error']:.1e})"
                  + (f"  bound {case['bound_ms']['dense']:.2f}/{case['bound_ms']['sparse_ops']:.2f}"
                     f" ms at {bw['median_gbs']} GB/s" if bw else ""), flush=True)
            if ds_py is not None and name in args.ds_models:
                case["deepsparse"] = run_deepsparse(ds_py, paths["dense"], feeds, ref, threads,
                                                    reps, tmp, args.ds_timeout)
                print(f"    deepsparse: {case['deepsparse']}", flush=True)
            if not args.no_layers:
                case["layers"] = layer_timings(dense_model, feeds, batch, threads, decided, args)
                case["lowered_but_slower"] = [r["name"] for r in case["layers"]
                                              if r["lowered"] and r["ratio"] < 1.0]
            out["cases"].append(case)
            gc.collect()
            discard(args, path)
    # what lowering for size costs in speed: the size file at the first (batch, threads)
    batch, threads = args.batches[0], args.threads[0]
    feeds = {"x": np.random.default_rng(1).standard_normal(
        (batch, *[d.dim_value for d in dense_model.graph.input[0].type.tensor_type.shape.dim][1:]),
        dtype=np.float32)}
    z_sess = session_for(paths["size"], threads)
    d_sess = session_for(dense_bytes, threads)
    check = compare_outputs(run_outputs(d_sess, feeds), run_outputs(z_sess, feeds))
    dense_ms, size_ms, reps = adaptive_pair(d_sess, z_sess, feeds, args.repeats, args.min_repeats,
                                            args.case_seconds)
    del d_sess, z_sess
    discard(args, paths["size"])
    out["size_case"] = {"batch": batch, "threads": threads, "repeats": reps,
                        "dense_ms": round(dense_ms, 3), "sparse_ms": round(size_ms, 3),
                        "ratio": round(dense_ms / size_ms, 3), "passed": check["passed"],
                        "max_abs_error": check["max_abs_error"]}
    print(f"  size-lowered, batch {batch} threads {threads}: dense {dense_ms:9.3f} ms  "
          f"sparse-ops {size_ms:9.3f} ms  {dense_ms / size_ms:5.2f}x  (n={reps})  "
          f"{'ok' if check['passed'] else 'MISMATCH'}", flush=True)
    return out


def _stream_record(b: dict | None) -> dict | None:
    """The lowering's ``batch_stream`` without its per-prefix timings: whether a prefix runs
    image by image, how many nodes, up to which tensor, and how much faster it timed."""
    if not b:
        return None
    return {"kept": b["kept"], "nodes": b["nodes"], "frontier": b["frontier"], "gain": b["gain"],
            "prefixes_timed": len(b["timed"])}


def relative_error(check: dict) -> float:
    """Largest |dense − lowered| over the largest |dense| output (0 for an all-zero output)."""
    return check["max_abs_error"] / check["output_scale"] if check["output_scale"] else 0.0


def machine_header(results: dict) -> list[str]:
    """Markdown lines naming the machine, the date and the versions behind the numbers."""
    m = results["machine"]
    load = m.get("load_average")
    return [f"Machine: {m.get('Model name', '?')}, CPU family {m.get('CPU family', '?')}, "
            f"{m.get('CPU(s)', '?')} CPUs, L1d {m.get('L1d cache', '?')}, "
            f"L2 {m.get('L2 cache', '?')}, L3 {m.get('L3 cache', '?')}; date {m.get('date')}; "
            f"ONNX Runtime {m.get('onnxruntime')}, onnx {m.get('onnx')}, "
            f"numpy {m.get('numpy')}, Python {m.get('python')}; "
            f"DeepSparse {results.get('deepsparse') or 'not run'}"
            + (f"; load average at start {load}" if load else "") + ".\n",
            f"Command: `{results.get('command', '?')}`\n"]


def _lowered_cell(c: dict) -> str:
    """'k/n' layers lowered, with their names when there are few."""
    names = c["lowered"]
    total = c.get("layers_total")
    count = f"{len(names)}/{total}" if total is not None else str(len(names))
    stream = c.get("batch_stream") or {}
    streamed = f", first {stream['nodes']} nodes image by image" if stream.get("kept") else ""
    return (f"{count}: {', '.join(names)}" if 0 < len(names) <= 4 else count) + streamed


def markdown(results: dict) -> str:
    lines = machine_header(results) if "machine" in results else []
    for name, m in results["models"].items():
        lines.append(f"### {name}\n")
        if m.get("builder_options"):
            lines.append(f"Built with {m['builder_options']}.\n")
        if m["cases"]:
            ds = any("deepsparse" in c for c in m["cases"])
            head = ("| batch | threads | lowered | ORT dense (ms) | sparse-ops (ms) | speed-up | "
                    "bound dense / sparse-ops (ms) | calls |"
                    + (" DeepSparse (ms) | DeepSparse speed-up |" if ds else ""))
            lines += [head, "|" + "---|" * (head.count("|") - 1)]
            for c in m["cases"]:
                b = c.get("bound_ms")
                bound = f"{b['dense']:.2f} / {b['sparse_ops']:.2f} @ " \
                        f"{c['bandwidth']['median_gbs']} GB/s" if b else "–"
                row = (f"| {c['batch']} | {c['threads']} | {_lowered_cell(c)} | "
                       f"{c['dense_ms']:.3f} | {c['sparse_ms']:.3f} | {c['ratio']:.2f}× | "
                       f"{bound} | {c['repeats']} |")
                if ds:
                    d = c.get("deepsparse", {})
                    row += (f" {d['median_ms']:.3f} ({d['status']}) | "
                            f"{c['dense_ms'] / d['median_ms']:.2f}× |" if d.get("median_ms")
                            else f" {d.get('status', '–')} | – |")
                lines.append(row)
            lines.append("")
            for c in m["cases"]:
                by_reason: dict[str, list[str]] = {}
                for n, why in c.get("not_lowered", {}).items():
                    by_reason.setdefault(why or "?", []).append(n)
                if by_reason:
                    lines.append(f"Kept dense at batch {c['batch']}, {c['threads']} thread(s): "
                                 + "; ".join(f"{', '.join(ns)} ({why})"
                                             for why, ns in by_reason.items()) + "\n")
            for c in m["cases"]:
                if not c.get("layers"):
                    continue
                bw = c.get("bandwidth", {}).get("median_gbs")
                lines.append(f"Per layer, batch {c['batch']}, {c['threads']} thread(s):\n")
                lines += ["| layer | density | est. | lowered | dense (ms) | CSR (ms) | ratio |"
                          + (" bound dense / CSR (ms) |" if bw else ""),
                          "|---|---|---|---|---|---|---|" + ("---|" if bw else "")]
                for r in c["layers"]:
                    row = (f"| {r['name']} | {r['density']:.1%} | "
                           f"{r['estimated_speedup'] or 0:.2f}× | "
                           f"{'yes' if r['lowered'] else 'no'} | {r['dense_ms']:.3f} | "
                           f"{r['sparse_ms']:.3f} | {r['ratio']:.2f}× |")
                    if bw:
                        row += (f" {r['dense_bytes'] / (bw * 1e6):.3f} / "
                                f"{r['csr_bytes'] / (bw * 1e6):.3f} |")
                    lines.append(row)
                lines.append("")
        z = m.get("size_case")
        if z:
            lines.append(f"Lowered for size (every layer at ≤ {SIZE_MAX_DENSITY:.0%} density), "
                         f"batch {z['batch']}, {z['threads']} thread(s): dense "
                         f"{z['dense_ms']:.3f} ms, sparse-ops {z['sparse_ms']:.3f} ms, "
                         f"{z['ratio']:.2f}× ({z['repeats']} calls)\n")
        lines.append("| file | size | dense ÷ size |")
        lines.append("|---|---|---|")
        dense = m["sizes"]["dense"]
        for k, v in m["sizes"].items():
            lines.append(f"| {k} | {v / 1e6:.3f} MB | {dense / v:.2f}× |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="lenet-300-100,alexnet,vgg16",
                    help="models whose sizes are reported")
    ap.add_argument("--time-models", default=None,
                    help="models that are also timed (default: all of --models)")
    ap.add_argument("--batch", default="1,8")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--repeats", type=int, default=30, help="most timed calls per case")
    ap.add_argument("--min-repeats", type=int, default=3)
    ap.add_argument("--case-seconds", type=float, default=20.0,
                    help="time budget for the timed calls of one end-to-end case")
    ap.add_argument("--layer-repeats", type=int, default=20)
    ap.add_argument("--layer-seconds", type=float, default=3.0)
    ap.add_argument("--no-layers", action="store_true", help="skip the per-layer timings")
    ap.add_argument("--winograd", action="store_true",
                    help="lower the timed cases with prune --winograd (3x3 layers take the Winograd "
                         "path where it timed faster than the direct one)")
    ap.add_argument("--deepsparse-python", metavar="PATH",
                    help=f"interpreter with deepsparse installed (default {DEFAULT_DS_PYTHON} "
                         "when present; 'none' to skip)")
    ap.add_argument("--deepsparse-models", default=",".join(MODELS))
    ap.add_argument("--ds-timeout", type=int, default=900)
    ap.add_argument("--quick", action="store_true",
                    help="batch 1, 1 thread, few calls (a smoke run of every step)")
    ap.add_argument("--suite", action="store_true",
                    help=f"models {SUITE['models']}, batch {SUITE['batch']}, threads "
                         f"{SUITE['threads']} (--quick still cuts batch, threads and calls)")
    ap.add_argument("--bert-layers", type=int, default=1, metavar="N",
                    help="encoder layers of bert-base (default 1)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", metavar="PATH")
    ap.add_argument("--markdown", metavar="PATH")
    ap.add_argument("--tmp", metavar="DIR", help="work folder (default: a temporary one)")
    ap.add_argument("--keep", metavar="DIR",
                    help="write the models into DIR and keep them (source, dense, portable, "
                         "size-lowered and each case's lowered file), e.g. for bench/ab_library.py")
    ap.add_argument("--from-json", metavar="PATH",
                    help="only write --markdown from an earlier --json result")
    args = ap.parse_args(argv)
    if args.from_json:
        with open(args.from_json) as f:
            text = markdown(json.load(f))
        if args.markdown:
            with open(args.markdown, "w") as f:
                f.write(text)
        else:
            print(text)
        return 0
    if args.suite:
        args.models, args.batch, args.threads = SUITE["models"], SUITE["batch"], SUITE["threads"]
    if args.bert_layers < 1:
        ap.error("--bert-layers must be at least 1")
    if args.quick:
        args.batch, args.threads = "1", "1"
        args.repeats, args.min_repeats, args.case_seconds = 5, 2, 3.0
        args.layer_repeats, args.layer_seconds = 5, 0.5
    names = [m for m in args.models.split(",") if m]
    unknown = [m for m in names if m not in MODELS]
    if unknown:
        ap.error(f"unknown model(s) {unknown}; choose from {list(MODELS)}")
    args.time_models = names if args.time_models is None else args.time_models.split(",")
    args.ds_models = args.deepsparse_models.split(",")
    args.batches = [int(b) for b in args.batch.split(",")]
    args.threads = [int(t) for t in args.threads.split(",")]
    ds_py = deepsparse_python(args.deepsparse_python)

    results = {"machine": machine(),
               "command": " ".join(["python bench/bench_models.py",
                                    *(sys.argv[1:] if argv is None else argv)]),
               "deepsparse": ds_py and subprocess.run(
                   [ds_py, "-c", "import deepsparse; print(deepsparse.__version__)"],
                   capture_output=True, text=True, check=False).stdout.strip(),
               "models": {}}
    if ds_py is None:
        print("deepsparse: no interpreter with deepsparse found; column skipped", flush=True)
    for folder in (args.keep, args.tmp):  # a folder named on the command line is made, not a traceback
        if folder:
            os.makedirs(folder, exist_ok=True)
    work = contextlib.nullcontext(args.keep) if args.keep else tempfile.TemporaryDirectory(dir=args.tmp)
    with work as tmp:
        for name in names:
            results["models"][name] = bench_model(name, args, ds_py, tmp)
            if args.json:  # partial results survive an interrupted run
                with open(args.json, "w") as f:
                    json.dump(results, f, indent=2)
    results["machine"]["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(markdown(results))
    slower = [(n, c["batch"], c["threads"], c.get("lowered_but_slower"))
              for n, m in results["models"].items() for c in m["cases"]
              if c.get("lowered_but_slower")]
    for n, b, t, layers in slower:
        print(f"{n} batch {b} threads {t}: lowered but slower than dense: {', '.join(layers)}")
    ok = all(c["passed"] for m in results["models"].values()
             for c in m["cases"] + ([m["size_case"]] if "size_case" in m else []))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
