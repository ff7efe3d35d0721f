"""When does a CSR kernel beat ONNX Runtime's dense op?  A roofline-style cost model.

Pure functions of a layer's shape, density, expected batch and thread count; no graph, no I/O.
``LowerToSparseOps`` asks :func:`estimate` per layer and lowers where the predicted speed-up
``t_dense / t_csr`` is at least ``MIN_SPEEDUP``.

Fully connected layer, weight ``N × K`` (N outputs), ``nnz`` nonzeros, batch rows ``M``,
``p = 1 + 0.85·(threads − 1)`` (a second core adds ~0.85 of one: 26–29 GB/s against 15):

    t_dense(M = 1) = node_d + 4NK / BW_gemv            BW_gemv: 85 GB/s when the model's dense
                                                       weights fit half the L3, else 20 GB/s
    t_dense(M > 1) = node_d + max(4NK / BW_gemm, NKM / R_gemm) / p
    t_csr(M = 1)   = node_c + (nnz·max(g(K), b/BW_dram) + N·c_row) / p
                     g(K): gathered multiply-add, 0.40 ns while x (4K bytes) fits L1, 0.52 ns
                     beyond; b = 4 + index bytes, BW_dram = 15 GB/s once the CSR arrays of the
                     model exceed half the L3 (else the gather is the limit)
    t_csr(M > 1)   = node_c + (nnz·⌈M/16⌉·c_panel(64K) + N·M·c_out) / p
                     the batch is packed in 16-lane panels (M < 16 wastes 1 − M/16);
                     c_panel depends on the panel's bytes 64K: ≤64 KiB 0.55 ns, ≤1 MiB
                     1.05 ns, beyond 1.10 ns per nonzero per panel

2-D convolution, ``C_out × (C_in/g·kH·kW)`` flattened weight, output map ``OH × OW``:

    t_dense = node_d + C_out·K·OH·OW·M / (R_conv·p)        R_conv = 55 G MAC/s (NCHWc), 35 for 1×1
    t_csr   = node_c + (nnz·P / R_csrconv + C_out·P·c_out + C_in·OH·OW·M·c_in) / p
              R_csrconv = 25 G MAC/s, c_out = 0.45 ns, c_in = 1.0 ns
    P = M · (OH·OW rounded up to the kernel's tile, 64, 128 or 192 positions, the one with
    the least padded work) — the tiles of consecutive output positions; c_out is the tile's
    stores and per-row work, c_in the input's copy into phase planes. C_in = K / (kH·kW)
    (``kernel_area``; 9 when K is a multiple of 9, else 1, when not given).

The rates were fitted to the 1-thread measurements in docs/BENCHMARKS.md ("Native sparse
kernels", AMD EPYC Zen 4, 2 vCPUs, onnxruntime 1.32; the absolute times are in that
benchmark's --json output and copied into ``CALIBRATION`` below).  The fit is deliberately
conservative where the data are noisy: on those points every layer the kernel speeds up by
≥ 1.5× is lowered and none it slows down below 0.85× is (``tests`` checks this).

Invariants: the predicted CSR time is non-decreasing in nnz (so the speed-up is monotone in
density, and a break-even density is well defined); a layer with nnz = N·K never reaches
``MIN_SPEEDUP`` at any batch or thread count.
"""

from __future__ import annotations

import dataclasses
import math

MIN_SPEEDUP = 1.2  # margin over break-even: the VM's timings vary by up to ~1.5× run to run


@dataclasses.dataclass(frozen=True)
class Machine:
    """Rates and cache sizes of the machine class the model was calibrated on."""

    l1_bytes: int = 32 << 10
    l3_bytes: int = 32 << 20
    thread_gain: float = 0.85            # share of a core each extra thread adds
    # ORT dense
    node_dense_s: float = 0.3e-6         # a built-in node's dispatch
    gemv_bw_cache: float = 85e9          # batch-1 Gemm, weight resident in L3
    gemv_bw_dram: float = 20e9           # batch-1 Gemm, weight streamed from DRAM
    gemm_bw_dram: float = 14e9           # batch > 1: packing B reads the weight more slowly
    gemm_rate: float = 50e9              # multiply-adds/s at batch >= 8
    conv_rate: float = 55e9
    conv_1x1_rate: float = 35e9          # a 1x1 convolution (a plain GEMM in ORT)
    # onnxprune CSR kernels
    node_csr_s: float = 0.5e-6           # a native custom op's dispatch
    csr_gather_l1_s: float = 0.40e-9     # per nonzero, batch 1, x fits L1
    csr_gather_s: float = 0.52e-9        # per nonzero, batch 1, x beyond L1
    csr_row_s: float = 3e-9              # per output row, batch 1 (row pointer, reduction)
    dram_bw: float = 15e9                # one core streaming the CSR arrays
    # ≤ 1 MiB re-fitted (0.90 → 1.05 ns) to whole-model per-layer timings at batch 8
    # (bench/bench_models.py, 4096-wide panels: 0.86-1.18 ns per nonzero), where 0.90 ns
    # lowered the AlexNet / VGG-16 fc8 (1000×4096 @ 23-25%) that measured 0.85-1.18× of dense.
    csr_panels: tuple = ((64 << 10, 0.55e-9), (1 << 20, 1.05e-9), (None, 1.10e-9))
    csr_out_s: float = 2.0e-9            # per output element, batch > 1 (unpacking panels)
    # CsrConv tiles (2026-12-02, fitted to CALIBRATION's conv rows)
    csr_conv_rate: float = 25e9          # multiply-adds per second over padded positions
    csr_conv_out_s: float = 0.45e-9      # per output channel and padded position
    csr_conv_in_s: float = 1.0e-9        # per input element (the phase-plane copy)


MACHINE = Machine()


@dataclasses.dataclass(frozen=True)
class Estimate:
    dense_s: float
    sparse_s: float

    @property
    def speedup(self) -> float:
        return self.dense_s / self.sparse_s


def _parallel(threads: int, m: Machine) -> float:
    return 1.0 + m.thread_gain * (max(int(threads), 1) - 1)


def _conv_positions(oh: int, ow: int) -> int:
    """Output positions CsrConv computes for an OH × OW map, as its tiles cover them (ops.cc
    ChooseTiles, 16 lanes): full tiles of 4, 8 or 12 vectors and a last tile of the narrowest
    width that holds the rest; the pair with the least work, each tile's positions weighted by
    1 + 2/V."""
    n = oh * ow
    best = None
    for v in (12, 8, 4):
        t = 16 * v
        full = max(1, math.ceil(n / t)) - 1
        rest = n - full * t
        tv = min((u for u in (4, 8, 12) if u <= v and 16 * u >= rest), default=v)
        cost = full * t * (1 + 2 / v) + 16 * tv * (1 + 2 / tv)
        if best is None or cost < best[0]:
            best = (cost, full * t + 16 * tv)
    return best[1]


def estimate(kind: str, rows: int, cols: int, nnz: int, *, batch: int = 1, threads: int = 1,
             out_hw: tuple[int, int] | None = None, kernel_area: int | None = None,
             index_bytes: int = 2, value_bytes: int = 4,
             dense_working_set: int | None = None, csr_working_set: int | None = None,
             machine: Machine = MACHINE) -> Estimate:
    """Predicted seconds per call of the dense op and of the CSR op for one layer.

    ``kind`` is "fc" (Gemm/MatMul; ``batch`` counts rows of X, i.e. batch × any leading dims)
    or "conv" (``out_hw`` required).  ``rows`` = outputs N, ``cols`` = row width K.  The
    working sets (bytes of all dense weights / all CSR arrays the model reads per call) decide
    what stays in cache; they default to this layer's own.
    """
    if kind not in ("fc", "conv"):
        raise ValueError(f"kind must be 'fc' or 'conv', got {kind!r}")
    if rows < 1 or cols < 1 or batch < 1 or threads < 1:
        raise ValueError("rows, cols, batch and threads must be >= 1")
    if not 0 <= nnz <= rows * cols:
        raise ValueError(f"nnz={nnz} outside [0, {rows * cols}]")
    m = machine
    p = _parallel(threads, m)
    params = rows * cols
    if kind == "conv":
        if out_hw is None:
            raise ValueError("a convolution needs its output size (out_hw)")
        oh, ow = (int(out_hw[0]), int(out_hw[1]))
        if oh < 1 or ow < 1:
            raise ValueError(f"bad output size {out_hw}")
        area = kernel_area if kernel_area else (9 if cols % 9 == 0 else 1)
        pixels = oh * ow * batch
        rate = m.conv_1x1_rate if area == 1 else m.conv_rate
        dense = m.node_dense_s + params * pixels / (rate * p)
        positions = _conv_positions(oh, ow) * batch
        sparse = m.node_csr_s + (nnz * positions / m.csr_conv_rate + rows * positions * m.csr_conv_out_s
                                 + max(cols // area, 1) * pixels * m.csr_conv_in_s) / p
        return Estimate(dense, sparse)

    dense_bytes = 4 * params
    dws = dense_bytes if dense_working_set is None else max(dense_working_set, dense_bytes)
    bytes_per_nz = value_bytes + index_bytes
    csr_bytes = nnz * bytes_per_nz + 4 * (rows + 1)
    cws = csr_bytes if csr_working_set is None else max(csr_working_set, csr_bytes)
    resident_dense = dws <= m.l3_bytes // 2
    resident_csr = cws <= m.l3_bytes // 2
    if batch == 1:
        bw = m.gemv_bw_cache if resident_dense else m.gemv_bw_dram
        dense = m.node_dense_s + dense_bytes / (bw * p)
        gather = m.csr_gather_l1_s if 4 * cols <= m.l1_bytes else m.csr_gather_s
        per_nz = gather if resident_csr else max(gather, bytes_per_nz / m.dram_bw)
        sparse = m.node_csr_s + (nnz * per_nz + rows * m.csr_row_s) / p
        return Estimate(dense, sparse)
    macs = params * batch
    stream = 0.0 if resident_dense else dense_bytes / m.gemm_bw_dram
    dense = m.node_dense_s + max(stream, macs / m.gemm_rate) / p
    panel_bytes = 4 * 16 * cols
    per_panel = next(s for limit, s in m.csr_panels if limit is None or panel_bytes <= limit)
    panels = math.ceil(batch / 16)
    sparse = m.node_csr_s + (nnz * panels * per_panel + rows * batch * m.csr_out_s) / p
    return Estimate(dense, sparse)


def break_even_density(kind: str, rows: int, cols: int, *, min_speedup: float = MIN_SPEEDUP,
                       **kw) -> float:
    """The largest density at which ``estimate`` still predicts ``min_speedup`` (0 if none).

    Bisection on nnz: the CSR time is non-decreasing in nnz, the dense time does not depend on it.
    """
    total = rows * cols
    if estimate(kind, rows, cols, 0, **kw).speedup < min_speedup:
        return 0.0
    lo, hi = 0, total
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if estimate(kind, rows, cols, mid, **kw).speedup >= min_speedup:
            lo = mid
        else:
            hi = mid - 1
    return lo / total


# 1-thread measurements the rates above were fitted to: (kind, N, K, density, batch,
# out_hw, dense ms, CSR ms) from `python bench/bench_kernels.py --sweep --json` (2026-11-25).
# Each was a one-node session, so both times include ~8 µs of session.run overhead.
RUN_OVERHEAD_S = 8e-6
CALIBRATION: tuple[tuple, ...] = (
    ("fc", 1024, 1024, 0.02, 1, None, 0.0581, 0.0194),
    ("fc", 1024, 1024, 0.05, 1, None, 0.0587, 0.0321),
    ("fc", 1024, 1024, 0.10, 1, None, 0.0588, 0.0511),
    ("fc", 1024, 1024, 0.20, 1, None, 0.0585, 0.0914),
    ("fc", 1024, 1024, 0.35, 1, None, 0.0752, 0.2206),
    ("fc", 1024, 1024, 0.50, 1, None, 0.0584, 0.2035),
    ("fc", 1024, 1024, 0.02, 8, None, 0.1592, 0.0311),
    ("fc", 1024, 1024, 0.05, 8, None, 0.1596, 0.0490),
    ("fc", 1024, 1024, 0.10, 8, None, 0.1596, 0.0761),
    ("fc", 1024, 1024, 0.20, 8, None, 0.1598, 0.1313),
    ("fc", 1024, 1024, 0.35, 8, None, 0.1885, 0.2324),
    ("fc", 1024, 1024, 0.50, 8, None, 0.1595, 0.3841),
    ("fc", 1024, 1024, 0.02, 64, None, 1.3314, 0.2810),
    ("fc", 1024, 1024, 0.05, 64, None, 1.3317, 0.3512),
    ("fc", 1024, 1024, 0.10, 64, None, 1.3262, 0.4648),
    ("fc", 1024, 1024, 0.20, 64, None, 1.3427, 0.7242),
    ("fc", 1024, 1024, 0.35, 64, None, 1.3551, 1.1179),
    ("fc", 1024, 1024, 0.50, 64, None, 1.3643, 1.4999),
    ("fc", 4096, 4096, 0.02, 1, None, 2.6560, 0.1579),
    ("fc", 4096, 4096, 0.05, 1, None, 3.1634, 0.3369),
    ("fc", 4096, 4096, 0.10, 1, None, 3.2975, 1.0361),
    ("fc", 4096, 4096, 0.20, 1, None, 3.4135, 1.3091),
    ("fc", 4096, 4096, 0.35, 1, None, 3.1919, 2.3942),
    ("fc", 4096, 4096, 0.50, 1, None, 2.6284, 3.2436),
    ("fc", 4096, 4096, 0.02, 8, None, 4.8307, 0.2632),
    ("fc", 4096, 4096, 0.05, 8, None, 4.6392, 0.6033),
    ("fc", 4096, 4096, 0.10, 8, None, 4.9924, 1.2940),
    ("fc", 4096, 4096, 0.20, 8, None, 5.2074, 3.2722),
    ("fc", 4096, 4096, 0.35, 8, None, 4.8607, 6.0183),
    ("fc", 4096, 4096, 0.50, 8, None, 4.6219, 9.6376),
    ("fc", 4096, 4096, 0.02, 64, None, 23.8446, 1.5630),
    ("fc", 4096, 4096, 0.05, 64, None, 23.3612, 3.1596),
    ("fc", 4096, 4096, 0.10, 64, None, 23.8822, 5.9786),
    ("fc", 4096, 4096, 0.20, 64, None, 26.1019, 13.2057),
    ("fc", 4096, 4096, 0.35, 64, None, 23.0790, 20.3338),
    ("fc", 4096, 4096, 0.50, 64, None, 30.6377, 33.2313),
    ("fc", 4096, 25088, 0.02, 1, None, 20.9863, 1.1616),
    ("fc", 4096, 25088, 0.05, 1, None, 24.2368, 3.4674),
    ("fc", 4096, 25088, 0.10, 1, None, 20.6159, 4.7005),
    ("fc", 4096, 25088, 0.20, 1, None, 23.0267, 10.9580),
    ("fc", 4096, 25088, 0.35, 1, None, 32.0157, 30.7932),
    ("fc", 4096, 25088, 0.50, 1, None, 21.7758, 20.9121),
    ("fc", 4096, 25088, 0.02, 8, None, 28.2621, 3.0552),
    ("fc", 4096, 25088, 0.05, 8, None, 28.1480, 5.4031),
    ("fc", 4096, 25088, 0.10, 8, None, 28.2710, 10.5920),
    ("fc", 4096, 25088, 0.20, 8, None, 29.2855, 21.1314),
    ("fc", 4096, 25088, 0.35, 8, None, 31.0022, 40.7443),
    ("fc", 4096, 25088, 0.50, 8, None, 27.7765, 52.4838),
    ("fc", 4096, 25088, 0.02, 64, None, 134.0739, 13.6214),
    ("fc", 4096, 25088, 0.05, 64, None, 129.2211, 25.9417),
    ("fc", 4096, 25088, 0.10, 64, None, 128.5872, 46.2517),
    ("fc", 4096, 25088, 0.20, 64, None, 131.0456, 91.6618),
    ("fc", 4096, 25088, 0.35, 64, None, 132.7065, 171.2698),
    ("fc", 4096, 25088, 0.50, 64, None, 130.5990, 217.1379),
    # conv: `python bench/bench_kernels.py`-style pairs (one-node Conv vs CsrConv, alternating
    # calls, medians), 2026-12-02, the tiled CsrConv, AMD EPYC family 25 (Zen 4), 1 thread.
    ("conv", 64, 576, 0.10, 1, (56, 56), 2.5625, 1.1205),
    ("conv", 64, 576, 0.30, 1, (56, 56), 2.6632, 2.0575),
    ("conv", 64, 576, 0.50, 1, (56, 56), 2.6113, 2.9682),
    ("conv", 64, 576, 0.10, 8, (56, 56), 21.0303, 7.0819),
    ("conv", 64, 576, 0.30, 8, (56, 56), 21.0235, 14.3403),
    ("conv", 256, 2304, 0.10, 1, (14, 14), 2.5970, 1.0734),
    ("conv", 256, 2304, 0.30, 1, (14, 14), 2.6516, 2.3253),
    ("conv", 256, 2304, 0.30, 8, (14, 14), 19.6801, 15.0964),
    ("conv", 128, 1152, 0.10, 1, (28, 28), 2.4558, 1.0163),
    ("conv", 128, 1152, 0.30, 1, (28, 28), 2.5294, 2.1357),
    ("conv", 512, 4608, 0.10, 1, (7, 7), 2.9984, 1.0629),
    ("conv", 512, 4608, 0.30, 1, (7, 7), 2.9795, 2.2588),
    ("conv", 256, 64, 0.10, 1, (56, 56), 1.6580, 0.9883),
    ("conv", 256, 64, 0.30, 1, (56, 56), 1.5423, 1.1955),
    ("conv", 64, 256, 0.10, 1, (56, 56), 1.7247, 1.0811),
    ("conv", 64, 256, 0.30, 1, (56, 56), 1.9376, 1.7838),
    ("conv", 256, 1024, 0.10, 1, (14, 14), 1.1833, 0.7794),
)
