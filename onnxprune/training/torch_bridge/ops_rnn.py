"""Recurrent ops (LSTM, GRU, RNN) for the torch interpreter, as ONNX defines them.

Shapes (``layout`` 0; layout 1 swaps the first two axes of X, Y, Y_h and Y_c)::

    X [T, B, I]   W [D, G·H, I]   R [D, G·H, H]   B [D, 2·G·H]   sequence_lens [B]
    initial_h / initial_c [D, B, H]   P (LSTM peepholes) [D, 3·H]
    Y [T, D, B, H]   Y_h / Y_c [D, B, H]

with ``D`` = 2 for ``bidirectional`` (forward, then reverse) and 1 otherwise, and ``G`` gates:
LSTM (i, o, f, c) with ``C_t = f⊙C_{t−1} + i⊙g(c̃)``, ``H_t = o⊙h(C_t)`` (peepholes add
``P_i⊙C_{t−1}``, ``P_f⊙C_{t−1}``, ``P_o⊙C_t``); GRU (z, r, h) with
``H_t = (1−z)⊙h̃ + z⊙H_{t−1}`` where ``h̃`` sees ``r⊙H_{t−1}`` before the recurrent matmul, or
``r⊙(H_{t−1}Rₕᵀ + Rbₕ)`` after it when ``linear_before_reset``; RNN ``H_t = f(X_tWᵀ + H_{t−1}Rᵀ + b)``.

``sequence_lens``: a sample stops at its length — later steps leave its state unchanged and
write zeros to Y, and a reverse pass starts at its last valid step (time is reversed within
each sample's length, which is an involution, so the same index map takes Y back).
Everything is plain autograd: gradients reach X, W, R, B, the initial states and P.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

_ACTIVATIONS = {
    "Sigmoid": torch.sigmoid,
    "Tanh": torch.tanh,
    "Relu": torch.relu,
    "Softsign": F.softsign,
    "Softplus": F.softplus,
}

# op type → (gates, default activations per direction)
_SPEC = {"LSTM": (4, ["Sigmoid", "Tanh", "Tanh"]), "GRU": (3, ["Sigmoid", "Tanh"]), "RNN": (1, ["Tanh"])}


def _opt(ins, i):
    return ins[i] if len(ins) > i and ins[i] is not None else None


def _time_index(T: int, B: int, lens, reverse: bool, device) -> torch.Tensor | None:
    """[T, B] source step of each (step, sample) — reversed within each sample's length for a
    reverse pass — or None when it is the identity."""
    t = torch.arange(T, device=device).unsqueeze(1).expand(T, B)
    if not reverse:
        return None
    if lens is None:
        return (T - 1 - t).contiguous()
    lens = lens.to(device=device, dtype=torch.int64).reshape(1, B)
    return torch.where(t < lens, lens - 1 - t, t)


def _by_time(x: torch.Tensor, idx: torch.Tensor | None) -> torch.Tensor:
    """x[idx[t, b], b, :] for x of shape [T, B, K]."""
    if idx is None:
        return x
    return torch.gather(x, 0, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def _lstm_step(n, acts, xw, h, c, r, rb, p, clip):
    H = h.shape[-1]
    pre = xw + h @ r.t() + rb
    i, o, f, g = pre.split(H, dim=-1)
    if p is not None:
        pi, po, pf = p.split(H)
        i, f = i + pi * c, f + pf * c
    i, f, g = _clip(i, clip), _clip(f, clip), _clip(g, clip)
    i = acts[0](i)
    f = 1.0 - i if n.attrs.get("input_forget", 0) else acts[0](f)
    c_new = f * c + i * acts[1](g)
    if p is not None:
        o = o + po * c_new
    o = acts[0](_clip(o, clip))
    return o * acts[2](c_new), c_new


def _gru_step(n, acts, xw, h, c, r, rb, p, clip):
    H = h.shape[-1]
    xz, xr, xh = xw.split(H, dim=-1)
    rz, rr, rh = r.split(H, dim=0)
    bz, br, bh = rb.split(H, dim=-1)
    z = acts[0](_clip(xz + h @ rz.t() + bz, clip))
    rg = acts[0](_clip(xr + h @ rr.t() + br, clip))
    if n.attrs.get("linear_before_reset", 0):
        cand = xh + rg * (h @ rh.t() + bh)
    else:
        cand = xh + (rg * h) @ rh.t() + bh
    hh = acts[1](_clip(cand, clip))
    return (1.0 - z) * hh + z * h, c


def _rnn_step(n, acts, xw, h, c, r, rb, p, clip):
    return acts[0](_clip(xw + h @ r.t() + rb, clip)), c


_STEPS = {"LSTM": _lstm_step, "GRU": _gru_step, "RNN": _rnn_step}


def _clip(x, clip):
    return x if clip is None else torch.clamp(x, -clip, clip)


def _activations(n, d: int) -> list:
    """Direction ``d``'s activation functions (a list naming one direction's serves both)."""
    k = len(acts_per_dir(n))
    names = list(n.attrs.get("activations") or acts_per_dir(n))
    names = names[k * d:k * d + k] if len(names) >= k * (d + 1) else names[:k]
    return [_ACTIVATIONS[a] for a in names]


def _direction(n, ins, d, x, h, c, lens, reverse):
    """One pass over time; returns (Y [T, B, H], last H, last C)."""
    w, r = ins[1][d], ins[2][d]
    GH = w.shape[0]
    b = _opt(ins, 3)
    wb = b[d][:GH] if b is not None else torch.zeros(GH, device=x.device)
    rb = b[d][GH:] if b is not None else torch.zeros(GH, device=x.device)
    p = _opt(ins, 7) if n.op_type == "LSTM" else None
    p = p[d] if p is not None else None
    acts = _activations(n, d)
    clip = n.attrs.get("clip")
    T, B = x.shape[0], x.shape[1]
    idx = _time_index(T, B, lens, reverse, x.device)
    xw = _by_time(x, idx) @ w.t() + wb  # input projections of every step at once
    valid = None
    if lens is not None:
        valid = (torch.arange(T, device=x.device).unsqueeze(1) < lens.to(x.device).reshape(1, B)).unsqueeze(-1)
    step = _STEPS[n.op_type]
    ys = []
    for t in range(T):
        h_new, c_new = step(n, acts, xw[t], h, c, r, rb, p, clip)
        if valid is None:
            h, c = h_new, c_new
            ys.append(h_new)
        else:
            m = valid[t]
            h, c = torch.where(m, h_new, h), torch.where(m, c_new, c)
            ys.append(torch.where(m, h_new, torch.zeros_like(h_new)))
    return _by_time(torch.stack(ys), idx), h, c


def acts_per_dir(n) -> list[str]:
    """The activation names one direction uses (ONNX lists forward's, then reverse's)."""
    return _SPEC[n.op_type][1]


def op_recurrent(n, ins, ctx):
    """LSTM / GRU / RNN (see module docstring)."""
    x = ins[0]
    lens, h0 = _opt(ins, 4), _opt(ins, 5)
    c0 = _opt(ins, 6) if n.op_type == "LSTM" else None
    layout = n.attrs.get("layout", 0)
    if layout:
        x = x.transpose(0, 1)
        h0 = h0.transpose(0, 1) if h0 is not None else None
        c0 = c0.transpose(0, 1) if c0 is not None else None
    D, H, B = ins[1].shape[0], ins[2].shape[-1], x.shape[1]
    direction = n.attrs.get("direction", "forward")
    if lens is not None and lens.device != x.device:
        lens = lens.to(x.device)
    # An initial state the graph builds at run time (ConstantOfShape from the batch size, as
    # torch's exporter writes for a call without one) is made on the CPU.
    h0 = h0.to(x.device) if h0 is not None and h0.device != x.device else h0
    c0 = c0.to(x.device) if c0 is not None and c0.device != x.device else c0
    ys, hs, cs = [], [], []
    for d in range(D):
        h = h0[d] if h0 is not None else x.new_zeros(B, H)
        c = c0[d] if c0 is not None else x.new_zeros(B, H)
        reverse = direction == "reverse" or d == 1
        y, h, c = _direction(n, ins, d, x, h, c, lens, reverse)
        ys.append(y)
        hs.append(h)
        cs.append(c)
    Y, Y_h, Y_c = torch.stack(ys, dim=1), torch.stack(hs), torch.stack(cs)
    if layout:
        Y, Y_h, Y_c = Y.permute(2, 0, 1, 3), Y_h.transpose(0, 1), Y_c.transpose(0, 1)
    return (Y, Y_h, Y_c) if n.op_type == "LSTM" else (Y, Y_h)


def check_recurrent(n) -> str | None:
    """Static refusals: activations outside the table or taking alpha/beta parameters."""
    names = n.attrs.get("activations") or []
    bad = sorted({a for a in names if a not in _ACTIVATIONS})
    if bad:
        return f"activations {bad} are not supported (supported: {sorted(_ACTIVATIONS)})"
    if n.attrs.get("activation_alpha") or n.attrs.get("activation_beta"):
        return "activation_alpha/activation_beta are not supported"
    if names and len(names) not in (len(acts_per_dir(n)), 2 * len(acts_per_dir(n))):
        return f"{len(names)} activations given, expected {len(acts_per_dir(n))} per direction"
    return None


OPS = {"LSTM": op_recurrent, "GRU": op_recurrent, "RNN": op_recurrent}
CHECKS = {"LSTM": check_recurrent, "GRU": check_recurrent, "RNN": check_recurrent}
