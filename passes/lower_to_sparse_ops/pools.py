"""Max pools that read a lowered node's output run in NCHW, as onnxprune's ``MaxPool``.

ONNX Runtime runs its own ``MaxPool`` in its blocked NCHWc layout: its NCHWc transformer turns
every ``MaxPool`` whose channel count is a multiple of the block (16 floats with AVX-512, 8 with
AVX2) into an NCHWc pool. Fed by a ``CsrConv`` (NCHW, and a custom op the transformer leaves
alone) such a pool runs between a ``ReorderInput`` of its whole input and a ``ReorderOutput`` of
its output: in VGG-16 lowered at the paper's densities its five pools took 0.88 ms and their
reorders 1.9 ms of ~80 (ONNX Runtime's profiler, one thread, an Intel core of lscpu family 6).
onnxprune's ``MaxPool`` (op-set 9 of ``ai.onnxprune``, runtime_ops/README.md) is the same op
computed in NCHW, so the reorders go: VGG-16 ran 1.03-1.04x faster with it (docs/BENCHMARKS.md).

A main-graph ``MaxPool`` (default domain) becomes onnxprune's, its name, input, output and
attributes kept, when

* a CSR node (``CsrConv`` or ``CsrGemm``) writes its input;
* it has no ``Indices`` output (``storage_order``, which only orders the indices, is dropped);
* its kernel is 1-D or 2-D, within the op's limits: every ``kernel_shape``, ``strides`` and
  ``dilations`` entry in [1, 65536], every pad in [0, 65536) and smaller than the kernel along
  its axis (ONNX Runtime's own rule), ``ceil_mode`` 0 or 1;
* ``auto_pad`` is absent, ``NOTSET`` or ``VALID`` (written as zero pads); a ``SAME_*`` pool
  keeps ONNX Runtime's op;
* its input's height and width are known and large enough for onnxprune's op to win: at least
  14 x 14 (196 pixels) for 2 x 2 windows at stride 2 without padding (with ``ceil_mode``, on
  even sides), which it reads in one pass over each pair of rows, and 55 x 55 (3025) for any
  other pool. ONNX Runtime's NCHWc
  pool takes 16 channels a vector, and on small maps it stays ahead even with its reorders:
  one node each, ONNX Runtime's pool with its reorders against onnxprune's (1 thread, an Intel
  core of lscpu family 6): 2 x 2 / 2 on 224 x 224 2.9x, 14 x 14 1.25x, 7 x 7 0.82x; 3 x 3 / 2
  on 112 x 112 1.7x, 55 x 55 1.5x, 56 x 56 (padded) 0.96x, 27 x 27 0.86-0.92x, 13 x 13 0.90x.

A pool that reads a dense node's output stays as it is: ONNX Runtime keeps a chain of its own
NCHWc nodes in that layout without reorders.
"""

from __future__ import annotations

from typing import Callable

import onnx_graphsurgeon as gs

from onnxprune.runtime_ops import CSR_OPS, DOMAIN

# ai.onnxprune op-set that defines MaxPool
POOL_OPSET = 9
_MAX_ATTR = 65536  # runtime_ops/README.md "Limits", as CsrConv's
# Fewest input pixels (H x W) at which onnxprune's MaxPool beats ONNX Runtime's and its reorders
# (module doc): 2 x 2 windows at stride 2 without padding, and any other pool.
PAIRS_MIN_PIXELS = 14 * 14
OTHER_MIN_PIXELS = 55 * 55


def _ints(node: gs.Node, name: str, default: list[int]) -> list[int] | None:
    v = node.attrs.get(name, default)
    if not isinstance(v, (list, tuple)) or not all(isinstance(e, int) and not isinstance(e, bool) for e in v):
        return None
    return [int(e) for e in v]


def pool_attrs(node: gs.Node) -> dict | str:
    """The attributes onnxprune's MaxPool takes for ``node`` (an ONNX MaxPool), or why it cannot."""
    if len(node.outputs) > 1:
        return "it writes Indices"
    kernel = _ints(node, "kernel_shape", [])
    if kernel is None or len(kernel) not in (1, 2):
        return "its kernel is not 1-D or 2-D"
    rank = len(kernel)
    strides, dilations = _ints(node, "strides", [1] * rank), _ints(node, "dilations", [1] * rank)
    pads = _ints(node, "pads", [0] * 2 * rank)
    auto_pad = node.attrs.get("auto_pad", "NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else str(auto_pad)
    if auto_pad not in ("NOTSET", "VALID"):
        return f"auto_pad {auto_pad}"
    if auto_pad == "VALID":
        pads = [0] * 2 * rank
    ceil_mode = node.attrs.get("ceil_mode", 0)
    if strides is None or dilations is None or pads is None or len(strides) != rank or \
            len(dilations) != rank or len(pads) != 2 * rank or ceil_mode not in (0, 1):
        return "malformed attributes"
    if not all(1 <= v <= _MAX_ATTR for v in kernel + strides + dilations):
        return f"an attribute beyond [1, {_MAX_ATTR}]"
    if not all(0 <= p < kernel[i % rank] for i, p in enumerate(pads)):
        return "a pad not smaller than its kernel"
    return {"kernel_shape": kernel, "strides": strides, "dilations": dilations, "pads": pads,
            "ceil_mode": int(ceil_mode)}


def pays(attrs: dict, dims: list | None) -> bool:
    """Whether onnxprune's MaxPool with ``attrs`` beats ONNX Runtime's on an input of ``dims``
    (None or symbolic sizes: unknown, so no)."""
    if dims is None or len(dims) != len(attrs["kernel_shape"]) + 2:
        return False
    spatial = dims[2:]
    if not all(isinstance(d, int) and d > 0 for d in spatial):
        return False
    pixels = spatial[0] * (spatial[1] if len(spatial) == 2 else 1)
    # the op's pass over row pairs: every window inside X (with ceil_mode, even sides only)
    pairs = attrs["kernel_shape"] == [2, 2] and attrs["strides"] == [2, 2] and \
        attrs["dilations"] == [1, 1] and not any(attrs["pads"]) and \
        (attrs["ceil_mode"] == 0 or all(d % 2 == 0 for d in spatial))
    return pixels >= (PAIRS_MIN_PIXELS if pairs else OTHER_MIN_PIXELS)


def nchw_pools(graph: gs.Graph, shape_of: Callable[[gs.Tensor], list | None]) -> list[str]:
    """Rewrites every eligible MaxPool of the main graph (module doc) in place, ``shape_of``
    giving a tensor's dims (None where unknown); their names (an unnamed node by its output's)."""
    done = []
    for node in graph.nodes:
        if node.op != "MaxPool" or node.domain not in (None, "", "ai.onnx") or not node.inputs:
            continue
        producers = node.inputs[0].inputs
        if len(producers) != 1 or producers[0].domain != DOMAIN or producers[0].op not in CSR_OPS:
            continue
        attrs = pool_attrs(node)
        if isinstance(attrs, str) or not pays(attrs, shape_of(node.inputs[0])):
            continue
        node.domain = DOMAIN
        node.attrs = attrs
        done.append(node.name or node.outputs[0].name)
    return done
