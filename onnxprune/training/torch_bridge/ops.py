"""ONNX op type → torch function: the table the interpreter in :mod:`.module` runs.

Each entry takes ``(node, inputs, ctx)`` — a parsed :class:`Node`, the input tensors in
ONNX order (``None`` for an omitted optional input) and the running module (for
``training``, per-node Dropout ratio overrides and frozen BatchNormalization nodes) — and
returns one tensor or a tuple of tensors in ONNX output order.  ``CHECKS`` holds static
checks for op features the table does not implement; they run when the module is built, so
an unsupported model is rejected before any training starts.

Numerical conventions:

* every floating-point tensor is computed in float32 (fp16/bf16/fp64 models are trained
  in fp32 and cast back on write-back); a ``Cast`` to a float type yields float32;
* integer tensors used for shapes stay on the CPU, so shape arithmetic never syncs a GPU;
* pads follow ONNX's ``[x1_begin, x2_begin, …, x1_end, x2_end]`` layout; asymmetric or
  over-large pads are applied with an explicit ``F.pad`` before a pad-free torch call,
  symmetric ones are passed to torch so its ``ceil_mode`` rule sees the true input size;
* ``Softmax``/``LogSoftmax`` before opset 13 coerce the input to 2-D at ``axis``;
* ``BatchNormalization`` in training mode normalises with batch statistics and updates
  ``running = momentum·running + (1−momentum)·batch`` (ONNX momentum; torch's is 1−that),
  with torch's unbiased batch variance in the running update;
* ``Dropout`` is active exactly when the module is in training mode (the graph's
  ``training_mode`` input is ignored: the trainer decides).
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import torch
import torch.nn.functional as F
from onnx import TensorProto

from onnxprune.training.torch_bridge import ops_control as _control
from onnxprune.training.torch_bridge import ops_resize as _resize
from onnxprune.training.torch_bridge import ops_rnn as _rnn


@dataclasses.dataclass
class Node:
    name: str
    op_type: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict
    opset: int


# ONNX element type → torch dtype used for computing (floats all compute in float32).
_DTYPES = {
    TensorProto.FLOAT: torch.float32,
    TensorProto.FLOAT16: torch.float32,
    TensorProto.BFLOAT16: torch.float32,
    TensorProto.DOUBLE: torch.float32,
    TensorProto.INT64: torch.int64,
    TensorProto.INT32: torch.int32,
    TensorProto.INT16: torch.int16,
    TensorProto.INT8: torch.int8,
    TensorProto.UINT8: torch.uint8,
    TensorProto.BOOL: torch.bool,
}


def compute_dtype(elem_type: int):
    return _DTYPES.get(elem_type)


def _ints(t) -> list[int]:
    return [int(v) for v in t.reshape(-1).tolist()]


def _scalar(t) -> float:
    return float(t.reshape(-1)[0])


def _same_device(a, b):
    """Move the CPU operand of a mixed-device pair next to the other one."""
    if a.device != b.device:
        if a.device.type == "cpu":
            a = a.to(b.device)
        else:
            b = b.to(a.device)
    return a, b


def _binary(fn):
    def op(n, ins, ctx):
        a, b = _same_device(ins[0], ins[1])
        return fn(a, b)

    return op


def _div(a, b):
    if a.is_floating_point() or b.is_floating_point():
        return a / b
    return torch.div(a, b, rounding_mode="trunc")  # C-style integer division, as ORT does


def _unary(fn):
    return lambda n, ins, ctx: fn(ins[0])


def _variadic(fn):
    def op(n, ins, ctx):
        xs = [x for x in ins if x is not None]
        dev = next((x.device for x in xs if x.device.type != "cpu"), xs[0].device)
        return functools.reduce(fn, [x.to(dev) for x in xs])

    return op


# --- padding helpers ---------------------------------------------------------------------

def _torch_pad_list(begins, ends):
    """ONNX per-axis begin/end pads (outermost first) → F.pad's innermost-first pairs."""
    out = []
    for b, e in zip(reversed(begins), reversed(ends)):
        out += [b, e]
    return out


def _spatial_pads(n, x, kernel, strides, dilations):
    """Begin/end pads for the spatial axes, resolving auto_pad like ONNX Runtime."""
    nd = len(kernel)
    auto = n.attrs.get("auto_pad", "NOTSET")
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        begins, ends = [], []
        for i in range(nd):
            size = x.shape[2 + i]
            eff = (kernel[i] - 1) * dilations[i] + 1
            out = -(-size // strides[i])
            total = max(0, (out - 1) * strides[i] + eff - size)
            small, big = total // 2, total - total // 2
            begins.append(small if auto == "SAME_UPPER" else big)
            ends.append(big if auto == "SAME_UPPER" else small)
        return begins, ends
    if auto == "VALID":
        return [0] * nd, [0] * nd
    pads = list(n.attrs.get("pads", [0] * (2 * nd)))
    return pads[:nd], pads[nd:]


def _pad_or_native(x, begins, ends, kernel, dilations, value):
    """Return (x, torch padding): symmetric small pads go to torch, the rest are applied here."""
    limit_ok = all(b <= ((k - 1) * d + 1) // 2 for b, k, d in zip(begins, kernel, dilations))
    if begins == ends and limit_ok:
        return x, begins
    if any(begins) or any(ends):
        x = F.pad(x, _torch_pad_list(begins, ends), value=value)
    return x, [0] * len(kernel)


# --- layers --------------------------------------------------------------------------------

def op_gemm(n, ins, ctx):
    a, b = ins[0], ins[1]
    c = ins[2] if len(ins) > 2 else None
    if n.attrs.get("transA", 0):
        a = a.t()
    if n.attrs.get("transB", 0):
        b = b.t()
    y = a @ b
    alpha = n.attrs.get("alpha", 1.0)
    if alpha != 1.0:
        y = y * alpha
    if c is not None:
        beta = n.attrs.get("beta", 1.0)
        y, c = _same_device(y, c)
        y = y + (c * beta if beta != 1.0 else c)
    return y


_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONVT = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}
_MAXPOOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
_AVGPOOL = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}


def _conv_inputs(n, ins):
    """(x, w, bias or None, kernel shape, strides, dilations) of a Conv / ConvTranspose node."""
    x, w = ins[0], ins[1]
    kernel = list(w.shape[2:])
    nd = len(kernel)
    return (x, w, ins[2] if len(ins) > 2 else None, kernel,
            list(n.attrs.get("strides", [1] * nd)), list(n.attrs.get("dilations", [1] * nd)))


def op_conv(n, ins, ctx):
    x, w, b, kernel, strides, dil = _conv_inputs(n, ins)
    nd = len(kernel)
    begins, ends = _spatial_pads(n, x, kernel, strides, dil)
    pad = begins
    if begins != ends:  # torch convs take symmetric padding only
        x, pad = F.pad(x, _torch_pad_list(begins, ends)), [0] * nd
    return _CONV[nd](x, w, b, stride=strides, padding=pad, dilation=dil, groups=n.attrs.get("group", 1))


def op_conv_transpose(n, ins, ctx):
    x, w, b, kernel, strides, dil = _conv_inputs(n, ins)
    nd = len(kernel)
    out_pad = list(n.attrs.get("output_padding", [0] * nd))
    group = n.attrs.get("group", 1)
    auto = n.attrs.get("auto_pad", "NOTSET")
    out_shape = n.attrs.get("output_shape")
    if out_shape is not None and len(out_shape) > nd:  # may include N and C
        out_shape = out_shape[-nd:]
    # Full (unpadded) transposed conv, then crop pads / extend by output_padding: F.pad with
    # negative amounts crops, positive ones append zeros (which is what output_padding adds
    # beyond the full result).
    full = _CONVT[nd](x, w, None, stride=strides, padding=0, dilation=dil, groups=group)
    begins, ends = [], []
    for i in range(nd):
        size = x.shape[2 + i]
        eff = (kernel[i] - 1) * dil[i] + 1
        if out_shape is not None or auto in ("SAME_UPPER", "SAME_LOWER"):
            target = out_shape[i] if out_shape is not None else size * strides[i]
            total = strides[i] * (size - 1) + out_pad[i] + eff - target
            if auto == "SAME_UPPER":
                pb, pe = total // 2, total - total // 2
            else:
                pb, pe = total - total // 2, total // 2
        elif auto == "VALID":
            pb = pe = 0
        else:
            pads = list(n.attrs.get("pads", [0] * (2 * nd)))
            pb, pe = pads[i], pads[nd + i]
        begins.append(-pb)
        ends.append(out_pad[i] - pe)
    y = F.pad(full, _torch_pad_list(begins, ends))
    if b is not None:
        y = y + b.reshape(1, -1, *([1] * nd))
    return y


def op_batchnorm(n, ins, ctx):
    x, scale, bias, mean, var = ins[:5]
    train = ctx.training and n.name not in ctx.frozen_bn
    momentum = n.attrs.get("momentum", 0.9)
    eps = n.attrs.get("epsilon", 1e-5)
    if train and x.shape[0] * int(np.prod(x.shape[2:])) < 2:
        raise ValueError("BatchNormalization needs more than one value per channel in training")
    # F.batch_norm updates mean/var in place in training mode: they are the module's buffers.
    y = F.batch_norm(x, mean, var, scale, bias, training=train, momentum=1.0 - momentum, eps=eps)
    if len(n.outputs) > 1:  # training-mode graphs also output the (updated) running statistics
        return y, mean, var
    return y


def op_dropout(n, ins, ctx):
    x = ins[0]
    if n.opset < 12:
        ratio = n.attrs.get("ratio", 0.5)
    else:
        ratio = _scalar(ins[1]) if len(ins) > 1 and ins[1] is not None else 0.5
    ratio = ctx.dropout_ratio.get(n.name, ratio)
    want_mask = len(n.outputs) > 1 and n.outputs[1]
    active = ctx.training and ratio > 0
    if not want_mask:
        return F.dropout(x, ratio, training=active)
    if not active:
        return x, torch.ones_like(x, dtype=torch.bool)
    mask = torch.rand_like(x) >= ratio
    return x * mask / (1.0 - ratio), mask


def _softmax(fn):
    def op(n, ins, ctx):
        x = ins[0]
        if n.opset >= 13:
            return fn(x, dim=n.attrs.get("axis", -1))
        axis = n.attrs.get("axis", 1)
        axis = axis + x.dim() if axis < 0 else axis
        shape = x.shape
        lead = int(np.prod(shape[:axis]))
        return fn(x.reshape(lead, -1), dim=1).reshape(shape)

    return op


def op_maxpool(n, ins, ctx):
    x = ins[0]
    kernel = list(n.attrs["kernel_shape"])
    nd = len(kernel)
    strides = list(n.attrs.get("strides", [1] * nd))
    dil = list(n.attrs.get("dilations", [1] * nd))
    begins, ends = _spatial_pads(n, x, kernel, strides, dil)
    x, pad = _pad_or_native(x, begins, ends, kernel, dil, float("-inf"))
    return _MAXPOOL[nd](x, kernel, strides, pad, dil, ceil_mode=bool(n.attrs.get("ceil_mode", 0)))


def op_avgpool(n, ins, ctx):
    x = ins[0]
    kernel = list(n.attrs["kernel_shape"])
    nd = len(kernel)
    strides = list(n.attrs.get("strides", [1] * nd))
    ceil = bool(n.attrs.get("ceil_mode", 0))
    include = bool(n.attrs.get("count_include_pad", 0))
    begins, ends = _spatial_pads(n, x, kernel, strides, [1] * nd)
    pool = _AVGPOOL[nd]
    xp, pad = _pad_or_native(x, begins, ends, kernel, [1] * nd, 0.0)
    if xp is x or not (any(begins) or any(ends)) or include:
        return pool(xp, kernel, strides, pad, ceil_mode=ceil, count_include_pad=include)
    # Pads applied by hand and excluded from the divisor: the ratio of two pools with the
    # same window has torch's divisor cancel, leaving sum(x) / count(real elements).
    ones = F.pad(torch.ones_like(x[:, :1]), _torch_pad_list(begins, ends))
    return pool(xp, kernel, strides, 0, ceil_mode=ceil) / pool(ones, kernel, strides, 0, ceil_mode=ceil)


def op_lrn(n, ins, ctx):
    x = ins[0]
    size = n.attrs["size"]
    alpha, beta, bias = n.attrs.get("alpha", 1e-4), n.attrs.get("beta", 0.75), n.attrs.get("bias", 1.0)
    N, C = x.shape[:2]
    sq = (x * x).reshape(N, 1, C, -1)
    front, back = (size - 1) // 2, size - 1 - (size - 1) // 2  # ONNX window [c-⌊(s-1)/2⌋, c+⌈(s-1)/2⌉]
    sq = F.pad(sq, (0, 0, front, back))
    ssum = F.avg_pool2d(sq, (size, 1), stride=1) * size
    return x / (bias + alpha / size * ssum.reshape(x.shape)) ** beta


def _global_pool(fn):
    return lambda n, ins, ctx: fn(ins[0], dim=tuple(range(2, ins[0].dim())), keepdim=True)


# --- shape ops -----------------------------------------------------------------------------

def op_flatten(n, ins, ctx):
    x = ins[0]
    axis = n.attrs.get("axis", 1)
    axis = axis + x.dim() if axis < 0 else axis
    return x.reshape(int(np.prod(x.shape[:axis])), int(np.prod(x.shape[axis:])))


def op_reshape(n, ins, ctx):
    x = ins[0]
    shape = _ints(ins[1]) if n.opset >= 5 else list(n.attrs["shape"])
    if not n.attrs.get("allowzero", 0):
        shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    return x.reshape(shape)


def op_transpose(n, ins, ctx):
    x = ins[0]
    perm = n.attrs.get("perm", list(reversed(range(x.dim()))))
    return x.permute(*perm)


def op_concat(n, ins, ctx):
    xs = [x for x in ins if x is not None]
    dev = next((x.device for x in xs if x.device.type != "cpu"), xs[0].device)
    return torch.cat([x.to(dev) for x in xs], dim=n.attrs["axis"])


def op_shape(n, ins, ctx):
    shape = list(ins[0].shape)
    start = n.attrs.get("start", 0)
    end = n.attrs.get("end", len(shape))
    return torch.tensor(shape[start:end], dtype=torch.int64)


def op_size(n, ins, ctx):
    return torch.tensor(ins[0].numel(), dtype=torch.int64)


def op_gather(n, ins, ctx):
    data, idx = ins[0], ins[1]
    axis = n.attrs.get("axis", 0)
    axis = axis + data.dim() if axis < 0 else axis
    idx = idx.to(device=data.device, dtype=torch.int64)
    idx = torch.where(idx < 0, idx + data.shape[axis], idx)
    out = torch.index_select(data, axis, idx.reshape(-1))
    return out.reshape(tuple(data.shape[:axis]) + tuple(idx.shape) + tuple(data.shape[axis + 1:]))


def _axes(n, ins, since):
    """Axes given as an attribute before opset ``since`` and as input 1 from it on."""
    if n.opset >= since:
        return _ints(ins[1]) if len(ins) > 1 and ins[1] is not None else None
    axes = n.attrs.get("axes")
    return list(axes) if axes is not None else None


def op_unsqueeze(n, ins, ctx):
    x = ins[0]
    axes = _axes(n, ins, 13)
    rank = x.dim() + len(axes)
    for a in sorted(a + rank if a < 0 else a for a in axes):
        x = x.unsqueeze(a)
    return x


def op_squeeze(n, ins, ctx):
    x = ins[0]
    axes = _axes(n, ins, 13)
    if axes is None:
        return x.squeeze()
    for a in sorted((a + x.dim() if a < 0 else a for a in axes), reverse=True):
        x = x.squeeze(a)
    return x


def op_cast(n, ins, ctx):
    return ins[0].to(compute_dtype(n.attrs["to"]))


def op_pad(n, ins, ctx):
    x = ins[0]
    mode = n.attrs.get("mode", "constant")
    if n.opset >= 11:
        pads = _ints(ins[1])
        value = _scalar(ins[2]) if len(ins) > 2 and ins[2] is not None and ins[2].numel() else 0.0
        axes = _ints(ins[3]) if len(ins) > 3 and ins[3] is not None else list(range(x.dim()))
    else:
        pads = list(n.attrs["pads"])
        value = n.attrs.get("value", 0.0)
        axes = list(range(x.dim()))
    k = len(axes)
    begins, ends = [0] * x.dim(), [0] * x.dim()
    for i, a in enumerate(axes):
        a = a + x.dim() if a < 0 else a
        begins[a], ends[a] = pads[i], pads[k + i]
    if mode == "constant":
        return F.pad(x, _torch_pad_list(begins, ends), value=value)
    for a in range(x.dim()):
        if begins[a] or ends[a]:
            x = torch.index_select(x, a, _pad_index(x.shape[a], begins[a], ends[a], mode).to(x.device))
    return x


def _pad_index(length: int, begin: int, end: int, mode: str) -> torch.Tensor:
    """Source index of each position of an axis padded by ``begin``/``end`` (negative: crop):
    ``edge`` repeats the border, ``reflect`` mirrors about it without repeating it."""
    i = torch.arange(-begin, length + end)
    if mode == "edge":
        return i.clamp(0, length - 1)
    if length == 1:
        return torch.zeros_like(i)
    period = 2 * (length - 1)
    i = torch.remainder(i, period)
    return torch.where(i >= length, period - i, i)


def _reduce(fn, axes_input_since):
    def op(n, ins, ctx):
        x = ins[0]
        axes = _axes(n, ins, axes_input_since)
        keep = bool(n.attrs.get("keepdims", 1))
        if not axes:
            if n.attrs.get("noop_with_empty_axes", 0):
                return x
            axes = list(range(x.dim()))
        return fn(x, dim=tuple(axes), keepdim=keep)

    return op


def op_slice(n, ins, ctx):
    x = ins[0]
    if n.opset >= 10:
        starts, ends = _ints(ins[1]), _ints(ins[2])
        axes = _ints(ins[3]) if len(ins) > 3 and ins[3] is not None else list(range(len(starts)))
        steps = _ints(ins[4]) if len(ins) > 4 and ins[4] is not None else [1] * len(starts)
    else:
        starts, ends = list(n.attrs["starts"]), list(n.attrs["ends"])
        axes = list(n.attrs.get("axes", range(len(starts))))
        steps = [1] * len(starts)
    for s, e, a, st in zip(starts, ends, axes, steps):
        a = a + x.dim() if a < 0 else a
        dim = x.shape[a]
        s = s + dim if s < 0 else s
        e = e + dim if e < 0 else e
        if st > 0:
            s, e = min(max(s, 0), dim), min(max(e, 0), dim)
        else:
            s, e = min(max(s, 0), dim - 1), min(max(e, -1), dim - 1)
        if st == 1:
            x = x.narrow(a, s, max(0, e - s))
        else:
            idx = torch.arange(s, e, st, device=x.device)
            x = torch.index_select(x, a, idx)
    return x


def op_clip(n, ins, ctx):
    x = ins[0]
    if n.opset < 11:
        lo, hi = n.attrs.get("min"), n.attrs.get("max")
    else:
        lo = _scalar(ins[1]) if len(ins) > 1 and ins[1] is not None else None
        hi = _scalar(ins[2]) if len(ins) > 2 and ins[2] is not None else None
    return torch.clamp(x, lo, hi)


def op_constant_of_shape(n, ins, ctx):
    shape = _ints(ins[0])
    value = n.attrs.get("value")
    if value is None:
        return torch.zeros(shape, dtype=torch.float32)
    v = np.asarray(value).reshape(-1)[0]
    dtype = torch.float32 if v.dtype.kind == "f" else torch.bool if v.dtype.kind == "b" else torch.int64
    return torch.full(shape, v.item(), dtype=dtype)


def op_expand(n, ins, ctx):
    x = ins[0]
    return x.expand(torch.broadcast_shapes(x.shape, tuple(_ints(ins[1]))))


def op_where(n, ins, ctx):
    c, a, b = ins
    dev = next((t.device for t in ins if t.device.type != "cpu"), c.device)
    return torch.where(c.to(dev), a.to(dev), b.to(dev))


def op_gelu(n, ins, ctx):
    return F.gelu(ins[0], approximate=n.attrs.get("approximate", "none"))


def op_prelu(n, ins, ctx):
    x, slope = _same_device(ins[0], ins[1])
    return torch.where(x < 0, x * slope, x)


def op_hardsigmoid(n, ins, ctx):
    a, b = n.attrs.get("alpha", 0.2), n.attrs.get("beta", 0.5)
    return torch.clamp(ins[0] * a + b, 0.0, 1.0)


def op_selu(n, ins, ctx):
    a = n.attrs.get("alpha", 1.67326319217681884765625)
    g = n.attrs.get("gamma", 1.05070102214813232421875)
    x = ins[0]
    return g * torch.where(x > 0, x, a * (torch.exp(x) - 1))



# --- ops for detectors, sequence models and transformers -------------------------------------

def op_split(n, ins, ctx):
    """Split: sizes from the ``split`` input (opset ≥ 13) or attribute, else ``num_outputs``
    (opset 18) or the output count — equal parts of ⌈L/k⌉ with a smaller last one."""
    x = ins[0]
    axis = n.attrs.get("axis", 0)
    split = _ints(ins[1]) if n.opset >= 13 and len(ins) > 1 and ins[1] is not None else n.attrs.get("split")
    if not split:
        k = n.attrs.get("num_outputs", len(n.outputs))
        size = -(-x.shape[axis] // k)
        split = [min(size, x.shape[axis] - size * i) for i in range(k)]
    return tuple(torch.split(x, list(split), dim=axis))


def op_range(n, ins, ctx):
    """Range: ``max(⌈(limit − start)/delta⌉, 0)`` values start, start + delta, …"""
    start, limit, delta = (t.reshape(-1)[0].item() for t in ins[:3])
    count = max(int(np.ceil((limit - start) / delta)), 0)
    dtype = ins[0].dtype
    return (start + delta * torch.arange(count, dtype=torch.float64)).to(dtype)


def op_layernorm(n, ins, ctx):
    """LayerNormalization over axes ``axis``…end: ``(x − mean)/√(var + ε)·scale + bias`` with the
    biased variance; optional Mean / InvStdDev outputs keep the reduced axes as size 1."""
    x, scale = ins[0], ins[1]
    bias = ins[2] if len(ins) > 2 else None
    axis = n.attrs.get("axis", -1)
    axis = axis + x.dim() if axis < 0 else axis
    dims = tuple(range(axis, x.dim()))
    mean = x.mean(dim=dims, keepdim=True)
    inv_std = torch.rsqrt(((x - mean) ** 2).mean(dim=dims, keepdim=True) + n.attrs.get("epsilon", 1e-5))
    y = (x - mean) * inv_std * scale
    y = y + bias if bias is not None else y
    return (y, mean, inv_std)[:len(n.outputs)] if len(n.outputs) > 1 else y


def op_tile(n, ins, ctx):
    return ins[0].repeat(*_ints(ins[1]))


def op_einsum(n, ins, ctx):
    xs = [x for x in ins if x is not None]
    dev = next((x.device for x in xs if x.device.type != "cpu"), xs[0].device)
    return torch.einsum(n.attrs["equation"].replace(" ", ""), *[x.to(dev) for x in xs])


def _arg(fn):
    def op(n, ins, ctx):
        x = ins[0]
        axis, keep = n.attrs.get("axis", 0), bool(n.attrs.get("keepdims", 1))
        if n.attrs.get("select_last_index", 0):  # last occurrence = first one of the flipped axis
            return x.shape[axis] - 1 - fn(x.flip(axis), dim=axis, keepdim=keep)
        return fn(x, dim=axis, keepdim=keep)

    return op


def op_cumsum(n, ins, ctx):
    x, axis = ins[0], int(ins[1].reshape(-1)[0])
    if n.attrs.get("reverse", 0):
        x = x.flip(axis)
    y = torch.cumsum(x, dim=axis)
    if n.attrs.get("exclusive", 0):
        y = y - x
    return y.flip(axis) if n.attrs.get("reverse", 0) else y


def op_topk(n, ins, ctx):
    k = int(ins[1].reshape(-1)[0]) if n.opset >= 10 else n.attrs["k"]
    largest = bool(n.attrs.get("largest", 1))
    values, idx = torch.topk(ins[0], k, dim=n.attrs.get("axis", -1), largest=largest, sorted=True)
    return values, idx


def op_gather_elements(n, ins, ctx):
    data, idx = ins[0], ins[1].to(device=ins[0].device, dtype=torch.int64)
    axis = n.attrs.get("axis", 0)
    return torch.gather(data, axis, torch.where(idx < 0, idx + data.shape[axis], idx))


def op_scatter_nd(n, ins, ctx):
    """ScatterND (reduction none): copy of data with ``data[indices[i]] = updates[i]``."""
    data, upd = _same_device(ins[0], ins[2])  # data may be a CPU-made ConstantOfShape
    idx = ins[1].to(device=data.device, dtype=torch.int64)
    k = idx.shape[-1]
    flat_idx = idx.reshape(-1, k)
    flat_idx = torch.where(flat_idx < 0, flat_idx + torch.tensor(data.shape[:k], device=data.device), flat_idx)
    out = data.clone()
    out[tuple(flat_idx.t())] = upd.reshape(flat_idx.shape[0], *data.shape[k:]).to(out.dtype)
    return out


def op_instance_norm(n, ins, ctx):
    x, scale, bias = ins[:3]
    return F.instance_norm(x, weight=scale, bias=bias, eps=n.attrs.get("epsilon", 1e-5))


def op_trilu(n, ins, ctx):
    k = int(ins[1].reshape(-1)[0]) if len(ins) > 1 and ins[1] is not None else 0
    return torch.triu(ins[0], k) if n.attrs.get("upper", 1) else torch.tril(ins[0], k)


def op_mod(n, ins, ctx):
    a, b = _same_device(ins[0], ins[1])
    return torch.fmod(a, b) if n.attrs.get("fmod", 0) else torch.remainder(a, b)


OPS = {
    "Gemm": op_gemm,
    "MatMul": _binary(torch.matmul),
    "Add": _binary(torch.add),
    "Sub": _binary(torch.sub),
    "Mul": _binary(torch.mul),
    "Div": _binary(_div),
    "Pow": _binary(torch.pow),
    "Conv": op_conv,
    "ConvTranspose": op_conv_transpose,
    "BatchNormalization": op_batchnorm,
    "Dropout": op_dropout,
    "Relu": _unary(torch.relu),
    "LeakyRelu": lambda n, ins, ctx: F.leaky_relu(ins[0], n.attrs.get("alpha", 0.01)),
    "PRelu": op_prelu,
    "Elu": lambda n, ins, ctx: F.elu(ins[0], n.attrs.get("alpha", 1.0)),
    "Selu": op_selu,
    "Sigmoid": _unary(torch.sigmoid),
    "HardSigmoid": op_hardsigmoid,
    "HardSwish": _unary(F.hardswish),
    "Tanh": _unary(torch.tanh),
    "Softplus": _unary(F.softplus),
    "Softsign": _unary(F.softsign),
    "Gelu": op_gelu,
    "Softmax": _softmax(torch.softmax),
    "LogSoftmax": _softmax(torch.log_softmax),
    "Abs": _unary(torch.abs),
    "Neg": _unary(torch.neg),
    "Exp": _unary(torch.exp),
    "Log": _unary(torch.log),
    "Sqrt": _unary(torch.sqrt),
    "Reciprocal": _unary(torch.reciprocal),
    "Floor": _unary(torch.floor),
    "Ceil": _unary(torch.ceil),
    "Erf": _unary(torch.erf),
    "Clip": op_clip,
    "Sum": _variadic(torch.add),
    "Max": _variadic(torch.maximum),
    "Min": _variadic(torch.minimum),
    "Mean": lambda n, ins, ctx: _variadic(torch.add)(n, ins, ctx) / len([x for x in ins if x is not None]),
    "MaxPool": op_maxpool,
    "AveragePool": op_avgpool,
    "GlobalAveragePool": _global_pool(torch.mean),
    "GlobalMaxPool": _global_pool(torch.amax),
    "LRN": op_lrn,
    "Flatten": op_flatten,
    "Reshape": op_reshape,
    "Transpose": op_transpose,
    "Concat": op_concat,
    "Identity": lambda n, ins, ctx: ins[0],
    "Shape": op_shape,
    "Size": op_size,
    "Gather": op_gather,
    "Unsqueeze": op_unsqueeze,
    "Squeeze": op_squeeze,
    "Cast": op_cast,
    "Pad": op_pad,
    "ReduceMean": _reduce(torch.mean, 18),
    "ReduceSum": _reduce(torch.sum, 13),
    "ReduceMax": _reduce(torch.amax, 18),
    "ReduceMin": _reduce(torch.amin, 18),
    "Slice": op_slice,
    "ConstantOfShape": op_constant_of_shape,
    "Expand": op_expand,
    "Where": op_where,
    "Equal": _binary(torch.eq),
    "Less": _binary(torch.lt),
    "Greater": _binary(torch.gt),
    "Not": _unary(torch.logical_not),
    "LessOrEqual": _binary(torch.le),
    "GreaterOrEqual": _binary(torch.ge),
    "And": _binary(torch.logical_and),
    "Or": _binary(torch.logical_or),
    "Xor": _binary(torch.logical_xor),
    "Mod": op_mod,
    "Sign": _unary(torch.sign),
    "Round": _unary(torch.round),  # half to even, in torch as in ONNX
    "Sin": _unary(torch.sin),
    "Cos": _unary(torch.cos),
    "IsNaN": _unary(torch.isnan),
    "Split": op_split,
    "Range": op_range,
    "LayerNormalization": op_layernorm,
    "InstanceNormalization": op_instance_norm,
    "Tile": op_tile,
    "Einsum": op_einsum,
    "ArgMax": _arg(torch.argmax),
    "ArgMin": _arg(torch.argmin),
    "CumSum": op_cumsum,
    "TopK": op_topk,
    "GatherElements": op_gather_elements,
    "ScatterND": op_scatter_nd,
    "Trilu": op_trilu,
    "ReduceSumSquare": _reduce(lambda x, dim, keepdim: torch.sum(x * x, dim=dim, keepdim=keepdim), 18),
    "ReduceL2": _reduce(lambda x, dim, keepdim: torch.sqrt(torch.sum(x * x, dim=dim, keepdim=keepdim)), 18),
    "ReduceL1": _reduce(lambda x, dim, keepdim: torch.sum(x.abs(), dim=dim, keepdim=keepdim), 18),
    **_rnn.OPS,
    **_resize.OPS,
}
OPS["If"] = _control.if_op(OPS)


# --- static checks: features the table does not implement -------------------------------

def _check_maxpool(n):
    if len(n.outputs) > 1 and n.outputs[1]:
        return "the Indices output is not supported"
    return None


def _check_avgpool(n):
    if any(d != 1 for d in n.attrs.get("dilations", [])):
        return "dilations are not supported"
    return None


def _check_cast(n):
    if compute_dtype(n.attrs.get("to", 0)) is None:
        return f"cast to element type {n.attrs.get('to')} is not supported"
    return None


def _check_pad(n):
    if n.attrs.get("mode", "constant") not in ("constant", "reflect", "edge"):
        return f"mode {n.attrs['mode']!r} is not supported"
    return None


def _check_gelu(n):
    if n.attrs.get("approximate", "none") not in ("none", "tanh"):
        return f"approximate={n.attrs['approximate']!r} is not supported"
    return None


def _check_conv(n):
    k = n.attrs.get("kernel_shape")
    if k is not None and not 1 <= len(k) <= 3:
        return f"{len(k)}-D kernels are not supported (1-D to 3-D are)"
    return None


def _check_reshape(n):
    if n.opset < 5 and "shape" not in n.attrs:
        return "missing shape attribute"
    return None


CHECKS = {
    "MaxPool": _check_maxpool,
    "AveragePool": _check_avgpool,
    "Cast": _check_cast,
    "Pad": _check_pad,
    "Gelu": _check_gelu,
    "Conv": _check_conv,
    "ConvTranspose": _check_conv,
    "Reshape": _check_reshape,
    "ScatterND": lambda n: (f"reduction {n.attrs['reduction']!r} is not supported"
                            if n.attrs.get("reduction", "none") != "none" else None),
    **_rnn.CHECKS,
    **_resize.CHECKS,
}

