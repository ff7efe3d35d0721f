"""Resize (and the older Upsample) for the torch interpreter, computed as ONNX Runtime does.

Resizing is separable: each resized axis is resampled on its own, in order, which for
``linear`` and ``cubic`` gives the (bi/tri)linear and bicubic products ORT computes.  For an
axis of input length ``L_in`` resized to ``L_out`` with scale ``s`` (the given scale, or
``L_out / L_in`` when sizes are given), output index ``y`` reads the source coordinate

* ``half_pixel``            ``(y + ½)/s − ½``
* ``pytorch_half_pixel``    the same, but 0 when ``L_out`` = 1
* ``half_pixel_symmetric``  ``L_in/2·(1 − L_out/(s·L_in)) + (y + ½)/s − ½``
* ``align_corners``         ``y·(L_in − 1)/(L_out − 1)`` (0 when ``L_out`` = 1)
* ``asymmetric``            ``y/s``
* ``tf_half_pixel_for_nn``  ``(y + ½)/s``

``nearest`` rounds it (``nearest_mode``; Upsample and Resize-10 floor it, or ceil it when
shrinking, as ORT does) and clamps the index into ``[0, L_in − 1]``;
``linear`` clamps the coordinate into ``[0, L_in − 1]`` and blends the two neighbours;
``cubic`` blends four neighbours ``⌊x⌋−1 … ⌊x⌋+2`` with Keys' kernel of parameter
``cubic_coeff_a``, clamping their indices to the edge, or, with ``exclude_outside``,
dropping out-of-range taps and renormalising.  Output lengths are ``⌊L_in · s⌋``.
Gradients reach X through the gathers and blends.
"""

from __future__ import annotations

import math

import torch

_COORD = ("half_pixel", "pytorch_half_pixel", "half_pixel_symmetric", "align_corners", "asymmetric",
          "tf_half_pixel_for_nn")


def _values(t) -> list:
    return t.reshape(-1).tolist() if t is not None else []


def _source_coords(mode: str, out_len: int, in_len: int, scale: float) -> torch.Tensor:
    """Float64 source coordinate of each output index along one axis (module docstring)."""
    y = torch.arange(out_len, dtype=torch.float64)
    if mode == "align_corners":
        return y * ((in_len - 1) / (out_len - 1)) if out_len > 1 else torch.zeros_like(y)
    if mode == "asymmetric":
        return y / scale
    if mode == "tf_half_pixel_for_nn":
        return (y + 0.5) / scale
    if mode == "pytorch_half_pixel" and out_len <= 1:
        return torch.zeros_like(y)
    x = (y + 0.5) / scale - 0.5
    if mode == "half_pixel_symmetric":
        x = x + in_len / 2 * (1 - out_len / (scale * in_len))
    return x


def _nearest_index(x: torch.Tensor, mode: str, scale: float) -> torch.Tensor:
    if mode == "simple":  # Upsample and Resize-10 in ORT: ceil when shrinking, floor otherwise
        return torch.ceil(x) if scale < 1 else torch.floor(x)
    if mode == "floor":
        return torch.floor(x)
    if mode == "ceil":
        return torch.ceil(x)
    frac = x - torch.floor(x)
    if mode == "round_prefer_ceil":
        return torch.where(frac == 0.5, torch.ceil(x), torch.round(x))
    return torch.where(frac == 0.5, torch.floor(x), torch.round(x))  # round_prefer_floor


def _cubic_weights(t: torch.Tensor, a: float) -> torch.Tensor:
    """Keys' kernel at distances ``1+t, t, 1−t, 2−t`` of the four taps; [L, 4]."""
    d = torch.stack([1 + t, t, 1 - t, 2 - t], dim=-1).abs()
    near = ((a + 2) * d - (a + 3)) * d * d + 1
    far = ((a * d - 5 * a) * d + 8 * a) * d - 4 * a
    return torch.where(d <= 1, near, torch.where(d < 2, far, torch.zeros_like(d)))


def _taps(n, x: torch.Tensor, in_len: int, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(indices [L, k], weights [L, k]) that make up each output position along an axis."""
    mode = n.attrs.get("mode", "nearest")
    if mode == "nearest":
        legacy = n.op_type == "Upsample" or n.opset < 11
        idx = _nearest_index(x, "simple" if legacy else n.attrs.get("nearest_mode", "round_prefer_floor"), scale)
        return idx.clamp(0, in_len - 1).long().unsqueeze(1), torch.ones(len(x), 1, dtype=torch.float64)
    if mode in ("linear", "bilinear"):
        x = x.clamp(0, in_len - 1)
        i0 = torch.floor(x)
        w1 = x - i0
        idx = torch.stack([i0, (i0 + 1).clamp(max=in_len - 1)], dim=1).long()
        return idx, torch.stack([1 - w1, w1], dim=1)
    i0 = torch.floor(x)
    idx = torch.stack([i0 - 1, i0, i0 + 1, i0 + 2], dim=1)
    w = _cubic_weights(x - i0, float(n.attrs.get("cubic_coeff_a", -0.75)))
    if n.attrs.get("exclude_outside", 0):
        w = torch.where((idx < 0) | (idx > in_len - 1), torch.zeros_like(w), w)
        w = w / w.sum(dim=1, keepdim=True)
    return idx.clamp(0, in_len - 1).long(), w


def _resample_axis(n, data: torch.Tensor, axis: int, out_len: int, scale: float) -> torch.Tensor:
    in_len = data.shape[axis]
    coord = n.attrs.get("coordinate_transformation_mode", "half_pixel" if n.opset >= 11 else "asymmetric")
    idx, w = _taps(n, _source_coords(coord, out_len, in_len, scale), in_len, scale)
    idx, w = idx.to(data.device), w.to(device=data.device, dtype=data.dtype)
    picked = torch.index_select(data, axis, idx.reshape(-1))  # [.., L_out·k, ..]
    shape = list(data.shape)
    shape[axis:axis + 1] = [out_len, idx.shape[1]]
    picked = picked.reshape(shape)
    wshape = [1] * len(shape)
    wshape[axis:axis + 2] = [out_len, idx.shape[1]]
    return (picked * w.reshape(wshape)).sum(dim=axis + 1)


def _targets(n, ins, x) -> list[tuple[int, int, float]]:
    """(axis, output length, scale) of every axis the node resizes."""
    rank = x.dim()
    if n.op_type == "Upsample" or n.opset < 11:
        scales = _values(ins[1]) if n.opset >= 9 else list(n.attrs["scales"])
        sizes = []
    else:
        scales = _values(ins[2]) if len(ins) > 2 else []
        sizes = [int(v) for v in _values(ins[3])] if len(ins) > 3 else []
    axes = [a + rank if a < 0 else a for a in n.attrs.get("axes", range(rank))]
    out = []
    for k, a in enumerate(axes):
        if sizes:
            length = sizes[k]
            scale = length / x.shape[a]
        else:
            scale = float(scales[k])
            length = int(math.floor(x.shape[a] * scale + 1e-9)) if scale != 1.0 else x.shape[a]
        if length != x.shape[a] or scale != 1.0:
            out.append((a, length, scale))
    return out


def op_resize(n, ins, ctx):
    """Resize / Upsample (module docstring)."""
    x = ins[0]
    for axis, length, scale in _targets(n, ins, x):
        x = _resample_axis(n, x, axis, length, scale)
    return x


def check_resize(n) -> str | None:
    coord = n.attrs.get("coordinate_transformation_mode", "half_pixel")
    if coord not in _COORD:
        return f"coordinate_transformation_mode {coord!r} is not supported"
    if n.attrs.get("mode", "nearest") not in ("nearest", "linear", "cubic", "bilinear"):
        return f"mode {n.attrs['mode']!r} is not supported"
    if n.attrs.get("antialias", 0):
        return "antialias is not supported"
    if n.attrs.get("keep_aspect_ratio_policy", "stretch") != "stretch":
        return f"keep_aspect_ratio_policy {n.attrs['keep_aspect_ratio_policy']!r} is not supported"
    return None


OPS = {"Resize": op_resize, "Upsample": op_resize}
CHECKS = {"Resize": check_resize, "Upsample": check_resize}
