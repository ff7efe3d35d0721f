// Sparse x dense inner loops, one implementation per instruction set, chosen at run time.
//
// All matrices are CSR by output row: row r holds the weights feeding output feature/channel r,
// `col` are input indices (int16 or int32), `row_ptr[r]..row_ptr[r+1]` delimit row r.
// The loops trust their inputs: the caller (ops.cc) validates them before any of these run,
// namely row_ptr non-decreasing from 0 to nnz, every column index in [0, k) (or [0, K) of the
// panel), k <= INT32_MAX, and every conv offset plus the tile's reach inside the zero-padded
// buffer it indexes.
#pragma once

#include <cstdint>

namespace onnxprune {

enum class Isa : int { kScalar = 0, kAvx2 = 1, kAvx512 = 2 };

const char* IsaName(Isa isa);
bool CpuHas(Isa isa);
Isa BestIsa();

// Width, in floats, that packed batch panels are padded to; every spmm `mb` is a multiple.
constexpr int kPanelQuantum = 16;
// Output tile of conv_tile: 4 output rows x 16 output columns. Small enough that the input
// window it reads (for a 3x3 kernel, 6 x 18 floats per channel) stays in L1 while every output
// channel is computed over it.
constexpr int kConvTileRows = 4;
constexpr int kConvTileCols = 16;

// Batch-1 column blocking: when x has more than 1.5 blocks of columns it no longer fits L1
// beside the streamed CSR arrays, and rows are swept in groups, one column block at a time.
// 5120 floats is 20 KB of a 32 KB L1D; blocks are then evened out (9216 columns: 2 x 4608,
// 25088: 5 x 5018). Smaller blocks cost more per-row block switches than they save.
constexpr int64_t kSpmvBlockCols = 5120;
// Rows per group: their CSR data (16 x ~1000 nonzeros x 6 B for the widest layers) stays in
// L2 across the group's block passes.
//
// The 32 streams this creates (16 rows x values + indices) do not cost DRAM bandwidth: in a
// single-thread C++ measurement with the caches flushed before each pass (int16 indices, 35 MB
// AlexNet FC stack and 24.7 MB VGG fc6), row-by-row loops with software prefetch of 0.5-64 KB
// ahead (into L1 or L2, one or two levels), 4-8 accumulators, 32-64 nonzeros per step, or
// AVX-512 gathers streamed 13-16 GB/s, the same as this path on AlexNet within the noise, and
// were 20-30% slower on fc6, where x (100 KB) no longer fits L1. What limits a batch-1 pass is
// the loop: each nonzero needs one load of x at a random address, and those retire at about
// 1.2-1.5 per cycle on this core however they are issued, so even with the CSR arrays in L2
// the loop reads them at only ~26 GB/s (~18 GB/s for fc6-shaped rows, block switches included).
// A plain sequential read of the same arrays reaches 22-29 GB/s from DRAM. With compute and
// DRAM time about equal and overlapping only in part, ~14 GB/s is what one core sustains.
constexpr int kSpmvGroupRows = 16;

struct Kernels {
  // y[r - r0] = sum_j values[j] * x[col[j]] over row r, for r in [r0, r1); x has k entries,
  // k <= INT32_MAX (the column blocking compares indices with int32 block bounds).
  void (*spmv_i16)(const float* values, const int16_t* col, const int32_t* row_ptr, const float* x, int64_t k,
                   int64_t r0, int64_t r1, float* y);
  void (*spmv_i32)(const float* values, const int32_t* col, const int32_t* row_ptr, const float* x, int64_t k,
                   int64_t r0, int64_t r1, float* y);
  // out[(r - r0) * mb + m] = sum_j values[j] * xt[col[j] * mb + m] for m < mb, r in [r0, r1).
  // xt is a K x mb panel of the (transposed) batch, 64-byte aligned, mb in {16, 32, 48, 64}.
  void (*spmm_i16)(const float* values, const int16_t* col, const int32_t* row_ptr, const float* xt, int mb,
                   int64_t r0, int64_t r1, float* out);
  void (*spmm_i32)(const float* values, const int32_t* col, const int32_t* row_ptr, const float* xt, int mb,
                   int64_t r0, int64_t r1, float* out);
  // out[u * kConvTileCols + i] = sum_j w[j] * q[off[j] + u * row_stride + i]
  // for u < kConvTileRows, i < kConvTileCols.
  void (*conv_tile)(const float* w, const int32_t* off, int64_t nnz, const float* q, int64_t row_stride, float* out);
};

const Kernels& KernelsFor(Isa isa);

}  // namespace onnxprune
