// Sparse x dense inner loops, one implementation per instruction set, chosen at run time.
//
// All matrices are CSR by output row: row r holds the weights feeding output feature/channel r,
// `row_ptr[r]..row_ptr[r+1]` delimit row r. Values are float32 or float16 (IEEE binary16,
// widened to float32 as they are loaded; sums are float32). Column indices are int16 or int32
// (absolute), or uint8 deltas: entry j of a row sits at column d[row start] + ... + d[j], the
// running sum restarting at 0 on every row (op contract v2, runtime_ops/README.md).
// The loops trust their inputs: the caller (ops.cc) validates them before any of these run,
// namely row_ptr non-decreasing from 0 to nnz, every (decoded) column index in [0, k) (or
// [0, K) of the panel), k <= INT32_MAX, and every conv offset plus the tile's reach inside the
// zero-padded buffer it indexes.
#pragma once

#include <cstdint>
#include <cstring>

namespace onnxprune {

enum class Isa : int { kScalar = 0, kAvx2 = 1, kAvx512 = 2 };

const char* IsaName(Isa isa);
bool CpuHas(Isa isa);
Isa BestIsa();
bool CpuIsIntel();
bool CpuSplitsWideFma();

// Width, in floats, that packed batch panels are padded to; every spmm `mb` is a multiple.
constexpr int kPanelQuantum = 16;
// Convolution tiles (CsrConv): a run of conv_lanes * V consecutive output positions of one
// output channel, taken row-major over the phase plane (rows Wq floats apart), held in V vector
// accumulators while the channel's nonzeros stream past, each weight broadcast once and
// multiplied into V vectors of the input at its offset. V is one of kConvVectors, chosen per
// input shape for the least padding, the last tile possibly narrower (ops.cc ChooseTiles);
// 12 x 16 lanes with AVX-512 keeps 12 independent
// FMA chains, enough to cover the FMA latency on both 256- and 512-bit datapaths. V = 13 and
// 14 fit the planes of 14x14 maps in one tile (196 positions in 13 vectors, 14 rows of 16 in
// 14) and 56x56 ones in 14 tiles without a remainder, where 12 left a one-vector tile per
// output channel: a 1x1 layer on 14x14 ran 1.2x faster (docs/BENCHMARKS.md). Fourteen
// accumulators and the broadcast weight still fit AVX2's 16 registers.
constexpr int kConvVectorChoices = 6;
constexpr int kConvVectors[kConvVectorChoices] = {1, 4, 8, 12, 13, 14};
constexpr int kConvMaxTile = 16 * 14;  // floats in the widest tile (AVX-512, V = 14)

// Batch-1 column blocking: when x has more than 1.5 blocks of columns it no longer fits L1
// beside the streamed CSR arrays, and rows are swept in groups, one column block at a time.
// 5120 floats is 20 KB of a 32 KB L1D; blocks are then evened out (9216 columns: 2 x 4608,
// 25088: 5 x 5018). Smaller blocks cost more per-row block switches than they save.
constexpr int64_t kSpmvBlockCols = 5120;
// Rows per group: their CSR data (16 x ~1000 nonzeros x 6 B for the widest layers) stays in
// L2 across the group's block passes.
//
// Read where the CSR lies, a group's pass makes 32 streams (16 rows x values + indices) of
// short runs, one per row and block. In a single-thread C++ measurement with the caches flushed
// before each pass (int16 indices, 35 MB AlexNet FC stack and 24.7 MB VGG fc6), row-by-row
// loops with software prefetch of 0.5-64 KB ahead (into L1 or L2, one or two levels), 4-8
// accumulators, 32-64 nonzeros per step, or AVX-512 gathers streamed 13-16 GB/s, the same as
// this path on AlexNet within the noise, and were 20-30% slower on fc6, where x (100 KB) no
// longer fits L1. The constant CSR of a CsrGemm is therefore copied once in the order this
// pass takes it (ops.cc CsrGemmKernel::GemvBlocks, spmv_rows over the copy): one sequential
// stream and x's block in L1 together, fc6 1.4x faster. What limits a batch-1 pass is
// the loop: each nonzero needs one load of x at a random address, and those retire at about
// 1.2-1.5 per cycle on this core however they are issued, so even with the CSR arrays in L2
// the loop reads them at only ~26 GB/s (~18 GB/s for fc6-shaped rows, block switches included).
// A plain sequential read of the same arrays reaches 22-29 GB/s from DRAM. With compute and
// DRAM time about equal and overlapping only in part, ~14 GB/s is what one core sustains.
// On AVX-512 a constant CSR dense enough may instead run in lanes of rows (sell.h), which
// takes x from registers rather than one load per nonzero.
constexpr int kSpmvGroupRows = 16;

// How a CSR stores its column indices and its values; they index the kernel tables below.
enum IndexKind : int { kIndex16 = 0, kIndex32 = 1, kIndexDelta8 = 2 };
enum ValueKind : int { kValueF32 = 0, kValueF16 = 1 };
constexpr int kIndexKinds = 3;
constexpr int kValueKinds = 2;

// Bytes one stored column index / value takes.
constexpr int IndexBytes(IndexKind kind) { return kind == kIndex32 ? 4 : kind == kIndex16 ? 2 : 1; }
constexpr int ValueBytes(ValueKind kind) { return kind == kValueF16 ? 2 : 4; }

// The mask of the first n of 16 vector lanes (none for n <= 0, all for n >= 16), as AVX-512's
// __mmask16 takes it: the Winograd path's and lanes of rows' partial loads and stores.
inline uint16_t FirstLanes(int64_t n) {
  return n >= 16 ? uint16_t{0xFFFF} : n <= 0 ? uint16_t{0} : static_cast<uint16_t>((1u << n) - 1u);
}

// IEEE binary16 -> binary32, exact for every input (subnormals, infinities, NaN payloads); the
// portable path's conversion (the vector paths use F16C's vcvtph2ps, which gives the same bits).
inline float HalfToFloat(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu, mant = h & 0x3ffu;
  uint32_t bits = 0;
  if (exp == 0x1f) {
    bits = sign | 0x7f800000u | (mant << 13);  // inf, NaN (payload kept)
  } else if (exp != 0) {
    bits = sign | ((exp + 112) << 23) | (mant << 13);  // rebias 15 -> 127
  } else {
    const float f = static_cast<float>(mant) * 5.9604644775390625e-8f;  // mant * 2^-24, exact
    std::memcpy(&bits, &f, sizeof(bits));
    bits |= sign;
  }
  float out = 0.f;
  std::memcpy(&out, &bits, sizeof(out));
  return out;
}

// y[r - r0] = sum_j values[j] * x[col(j)] over row r, for r in [r0, r1); x has k entries,
// k <= INT32_MAX (the column blocking compares indices with int32 block bounds). `values` and
// `col` point at the element types the table slot says.
using SpmvFn = void (*)(const void* values, const void* col, const int32_t* row_ptr, const float* x, int64_t k,
                        int64_t r0, int64_t r1, float* y);
// out[(r - r0) * mb + m] = sum_j values[j] * xt[col(j) * mb + m] for m < mb, r in [r0, r1).
// xt is a K x mb panel of the (transposed) batch, 64-byte aligned, mb in {16, 32, 48, 64}.
using SpmmFn = void (*)(const void* values, const void* col, const int32_t* row_ptr, const float* xt, int mb,
                        int64_t r0, int64_t r1, float* out);

// What CsrConv applies to each finished output (its `activation` attribute, op-set 2 of the
// domain, runtime_ops/README.md): y = f(y) elementwise, the same function as the ONNX op of that name.
//   kRelu        max(0, y)
//   kLeakyRelu   y < 0 ? alpha * y : y
//   kClip        min(max(y, alpha), beta)               (alpha = min, beta = max)
//   kHardSigmoid max(0, min(1, alpha * y + beta))
//   kHardSwish   y * max(0, min(1, y / 6 + 1 / 2))
//   kSigmoid     1 / (1 + exp(-y))
//   kSilu        y / (1 + exp(-y))                      (y * Sigmoid(y), "Swish")
// A NaN stays NaN (as the ONNX ops give it); ops.cc bounds alpha and beta before any run.
enum class Act : int { kNone = 0, kRelu, kLeakyRelu, kClip, kHardSigmoid, kHardSwish, kSigmoid, kSilu, kGelu };
struct Activation {
  Act kind = Act::kNone;
  float alpha = 0.f, beta = 0.f;
};

// A conv tile's last pass finished in registers (CsrConv): the residual Z added and the
// activation applied before the tile's one store, where separate passes would load and store
// the tile twice more. The activation is a clamp to [lo, hi]: Relu is [0, inf), Clip [min, max],
// none (-inf, inf); a NaN sum stays NaN, as the separate passes give it. z, when set, is read
// for the tile's first z_lanes lanes only (those that lie in Z: a plane's last, partial tile
// has fewer; every lane unless set); the lanes past them get no Z, and the caller never copies
// them out.
struct ConvEnd {
  const float* z = nullptr;
  int64_t z_lanes = INT64_MAX;
  float lo = 0.f, hi = 0.f;
};

// One MaxPool plane's geometry for Kernels::max_pool_rows: an h x w plane, a kh x kw window at
// strides sh, sw and dilations dh, dw, padded pad_t rows above and pad_l columns left, ow
// outputs a row; a padded row buffer of `row` floats (a multiple of sw, at least pad_l + w and
// (ow - 1) sw + (kw - 1) dw + 1), read by column phases of phase() floats each, phase_stride()
// apart; `chunk` output rows' buffers at a time. ops.cc bounds them all.
struct PoolShape {
  int64_t h = 0, w = 0, kh = 1, kw = 1, sh = 1, sw = 1, dh = 1, dw = 1, pad_t = 0, pad_l = 0;
  int64_t ow = 0, row = 0, chunk = 1;
  int64_t phase() const { return row / sw; }
  int64_t phase_stride() const { return (phase() + 15) / 16 * 16; }
};
// Floats of scratch one output row takes in max_pool_rows: its row buffer and 32 more, its phases
// and 16 more (whole vectors past each end).
inline int64_t PoolRowScratch(const PoolShape& g) { return g.row + 32 + g.sw * g.phase_stride() + 16; }

struct Kernels {
  SpmvFn spmv[kValueKinds][kIndexKinds];
  SpmmFn spmm[kValueKinds][kIndexKinds];
  // Floats per vector of the conv tiles (16 AVX-512, 8 AVX2 and portable).
  int conv_lanes;
  // conv_run[v]: out[i] = (accumulate ? out[i] : init) + sum_j w[j] * q[off[j] + i] for
  // i < conv_lanes * kConvVectors[v]; with `end`, that sum s is stored as
  // min(end->hi, max(end->lo, s + (end->z ? end->z[i] : 0))) instead (ConvEnd).
  void (*conv_run[kConvVectorChoices])(const float* w, const int32_t* off, int64_t nnz, const float* q, float* out,
                                       float init, bool accumulate, const ConvEnd* end);
  // conv_rows[v]: conv_run[v] for rows r < rows of one block pass (conv_rows.inc): entries
  // pos[r] .. pos[r + 1], the tile at out + r * out_stride, init bias[r] (0 without bias), Z
  // at end->z + r * z_stride.
  void (*conv_rows[kConvVectorChoices])(const float* w, const int32_t* off, const int64_t* pos, int64_t rows,
                                        const float* q, float* out, int64_t out_stride, const float* bias,
                                        bool accumulate, const ConvEnd* end, int64_t z_stride);
  // dst[j * dst_stride + i] = src[i * src_stride + j] for i < rows, j < cols.
  void (*transpose)(const float* src, int64_t src_stride, float* dst, int64_t dst_stride, int64_t rows,
                    int64_t cols);
  // out[i] = HalfToFloat(in[i]) for i < n.
  void (*half_to_float)(const uint16_t* in, int64_t n, float* out);
  // y[i] = act(y[i]) for i < n (act.kind != kNone).
  void (*activate)(float* y, int64_t n, const Activation& act);
  // y[i] += z[i] for i < n (CsrConv's residual input Z, op-set 5).
  void (*add)(float* y, const float* z, int64_t n);
  // dst[i] = src[i * stride] for i < n (stride >= 1; CsrConv's copies of a strided layer). Reads
  // only the floats src[i * stride], i < n, and those between them.
  void (*strided)(const float* src, int64_t stride, int64_t n, float* dst);
  // dst[i] = at[i] >= 0 ? src[at[i]] : 0 for i < n: a narrow layer's copies through its
  // offset table (CsrConv FillNarrowCopies). Reads only src[at[i]] for at[i] >= 0, which the
  // caller has bounded. A vector gather on AVX-512 (measured faster on an Intel core); AVX2
  // keeps the portable loop, its gathers being slow on several AVX2-only cores (Zen 1 and 2)
  // and unmeasured here.
  void (*gather)(const float* src, const int32_t* at, int64_t n, float* dst);
  // d0[i] = src[2 * i], d1[i] = src[2 * i + 1] for i < n: the two column-phase copies of a
  // stride-2 layer's row in one pass. Reads only src[0 .. 2n).
  void (*deinterleave)(const float* src, int64_t n, float* d0, float* d1);
  // Output rows [oy0, oy1) of one channel plane of a depthwise layer (CsrConv's direct path),
  // ow columns each, read from the plane x (output rows `stride` floats apart there) where it
  // lies: for i < ow, with L = conv_lanes, step t = i / L and lane l = i % L,
  //   y[oy * ow + i] = init + sum over k < n with bit l of mask[t * n + k] set of
  //                    w[k] * x[oy * stride + i + off[k]]
  // The caller sets a bit only where that element lies inside x. In steps [full0, full1)
  // every tap's mask is all L bits and the step lies inside the row: those take plain loads.
  void (*dw_rows)(const float* x, int64_t stride, const int64_t* off, const float* w, const uint16_t* mask, int64_t n,
                  int64_t full0, int64_t full1, int64_t oy0, int64_t oy1, int64_t ow, float init, float* y);
  // A block of L = conv_lanes depthwise channels at once (CsrConv's channel-block path), held
  // interleaved: pixel (r, c) of the block's zero-padded input at p + (r * wp + c) * L, lane l
  // its channel l; output pixel (oy, ox) at out + (oy * ow + ox) * L. For every output pixel
  // and lane l, with s = p + (oy * sh * wp + ox * sw) * L,
  //   out[(oy * ow + ox) * L + l] = init[l] + sum over k < n with bit l of mask[k] set of
  //                                 wt[k * L + l] * s[off[k] + l]
  // (off[k] = (i dH wp + j dW) L for the tap at kernel row i, column j). The caller keeps every
  // element read inside p; a lane whose bit is clear is not read.
  void (*dw_block)(const float* p, int64_t wp, int64_t sh, int64_t sw, const int64_t* off, const float* wt,
                   const uint16_t* mask, int64_t n, int64_t oh, int64_t ow, const float* init, float* out);
  // dw_block's input from L = conv_lanes channel planes, `plane` floats apart, of h * w pixels:
  // lane l of pixel (r + pad_t, c + pad_l) of p (hp rows of wp pixels, L floats each) is
  // x[l * plane + r * w + c] for l < lv, every other float of p zero. Reads only the lv planes'
  // first h * w floats.
  void (*dw_block_in)(const float* x, int64_t plane, int64_t lv, int64_t h, int64_t w, int64_t pad_t, int64_t pad_l,
                      int64_t hp, int64_t wp, float* p);
  // dw_block's output (n pixels of L floats at src) back into lv channel planes `stride` floats
  // apart: y[l * stride + i] = min(hi, max(lo, src[i * L + l])) for l < lv, i < n (a NaN kept).
  void (*dw_block_out)(const float* src, int64_t n, int64_t lv, float lo, float hi, float* y, int64_t stride);
  // A depthwise channel that keeps every tap of a K x K kernel at unit dilation, padded
  // (K - 1) / 2 columns on each side, at stride ST = 1 or 2 along both axes (dw_grid[ST - 1][0]:
  // K = 3, [1]: K = 5): output rows [oy0, oy1), ow columns each, from the channel's zero-padded
  // copy p (CsrConv's grid path), 64-byte aligned. Copy row r holds input row r - pad_t as ST
  // sub-rows of `pitch` floats (a multiple of 16, at least 16 * (ceil(ow / 16) + 2)): at stride
  // 1 the row at its columns [16, 16 + W); at stride 2 its even columns at [16, 16 + ceil(W / 2))
  // of the first sub-row and its odd ones at [16, 16 + floor(W / 2)) of the second; zeros
  // elsewhere. Copy rows up to ST * (oy1 - 1) + K - 1 are read. With x(r, c) the input at copy
  // row r and column c (the padding's zeros outside X):
  //   y[oy * ow + i] = init + sum over ky, kx < K of w[ky * K + kx] * x(ST oy + ky, ST i + kx - (K - 1) / 2)
  // Null where the instruction set has none (AVX-512 only).
  void (*dw_grid[2][2])(const float* p, int64_t pitch, const float* w, int64_t oy0, int64_t oy1, int64_t ow,
                        float init, float* y);
  // `rows` rows of w floats, `stride` floats apart in src, to rows `pitch` floats apart in dst.
  void (*copy_rows)(const float* src, int64_t stride, int64_t w, int64_t rows, float* dst, int64_t pitch);
  // conv_strip_rows[v]: conv_rows[v] with each row's tile, and its Z, in rows of 16 floats vs
  // floats apart instead of contiguous: float i of the tile at out + (i / 16) * vs + i % 16
  // (CsrConv's column strips written where they lie in Y).
  void (*conv_strip_rows[kConvVectorChoices])(const float* w, const int32_t* off, const int64_t* pos, int64_t rows,
                                              const float* q, float* out, int64_t out_stride, int64_t vs,
                                              const float* bias, bool accumulate, const ConvEnd* end,
                                              int64_t z_stride);
  // Output rows [oy0, oy1) of one channel plane x of MaxPool (ops.cc MaxPoolKernel), g.ow
  // floats each from y on: with the window's taps inside x,
  //   y[(oy - oy0) * g.ow + ox] = max of -FLT_MAX and x[(oy sH - pad_t + i dH) * g.w + ox sW - pad_l + j dW]
  // (the maxima taken in an order of the ISA's, each step keeping its second operand where
  // either is NaN). buf: g.chunk * PoolRowScratch(g) floats of scratch. Reads only x's taps.
  void (*max_pool_rows)(const float* x, const PoolShape& g, int64_t oy0, int64_t oy1, float* buf, float* y);
  // MaxPool's 2 x 2 windows at stride 2 over `rows` output rows: for r < rows, i < ow,
  //   y[r * ow + i] = max of -FLT_MAX and x[(2r + u) * w + 2i + v], u, v in {0, 1}
  // (2 * ow <= w; the order of the maxima is the vector instruction's). Reads only those floats.
  void (*max_pool_2x2)(const float* x, int64_t w, int64_t rows, int64_t ow, float* y);
  // MaxPool over L = conv_lanes channels at once, interleaved as dw_block_in lays them out:
  // pixel (r, c) of the padded block at p + (r * wp + c) * L, every pixel a window reads inside
  // it (the caller sets the padding's to -FLT_MAX). For oy < oh, ox < g.ow and each lane l,
  //   out[(oy * g.ow + ox) * L + l] = max of -FLT_MAX and, over i < g.kh, j < g.kw,
  //                                  p[((oy sh + i dh) wp + ox sw + j dw) L + l]
  void (*max_pool_block)(const float* p, int64_t wp, const PoolShape& g, int64_t oh, float* out);
  // spmv's rows in order whatever k is, without its column blocking (k is not read): for a CSR
  // whose rows each touch a part of x small enough for L1 (ops.cc's batch-1 pass over block-
  // ordered rows, CsrGemmKernel::GemvBlocks).
  SpmvFn spmv_rows[kValueKinds][kIndexKinds];
};

const Kernels& KernelsFor(Isa isa);

}  // namespace onnxprune
