// CsrGemm's batch-1 pass over lanes of rows (CsrGemmKernel::GemvSell; runtime_ops/README.md,
// "Batch 1 in lanes of rows"). The CSR pass (kernels.h, spmv) loads x once per nonzero at the
// nonzero's column: one load at a random address each, which retire at ~1.2-1.5 a cycle however
// they are issued. Here the constant CSR is copied once into slices of 16 rows (one per
// vector lane) by 64 columns: x's 64 floats of a slice sit in four registers, and each step takes
// the next entry of each of the 16 rows, its column within the slice as one byte, x's value for
// it by two register permutations (vpermt2ps) and a blend, then one multiply-add. A slice has
// as many steps as its fullest row has entries there; the other rows' lanes are padding, marked
// in their index byte and left out of the sums (so an inf or NaN in x never reaches a row that
// does not store that column). This is the sliced-ELLPACK layout (SELL-C, Kreutzer et al.,
// 2014) with C = 16 and the slices also cut by columns, so that x's part stays in registers.
// AVX-512F only; ops.cc runs the CSR pass on other instruction sets.
#pragma once

#include <cstdint>
#include <vector>

#include "kernels.h"

namespace onnxprune {

constexpr int64_t kSellRows = 16;       // rows per group: one per lane
constexpr int64_t kSellCols = 64;       // columns per block: x's part in four registers
constexpr uint8_t kSellPad = 0x80;      // index byte of a padding lane
constexpr int64_t kSellMaxSteps = 255;  // steps one (group, block) may take (stored as a byte)

// A CSR of `rows` rows over columns [0, extent) in lanes: group g holds rows 16 g .. 16 g + 15,
// block b columns 64 b .. 64 b + 63. (g, b) takes steps[g * blocks + b] steps; step s (counted
// over the whole plan, group by group, block by block) stores 16 values (float32 or binary16,
// `value`) at values + 16 s * ValueBytes(value) and 16 index bytes at index + 16 s: lane l's
// column minus 64 b, or kSellPad where row 16 g + l has no entry left in the block.
struct SellPlan {
  int64_t rows = 0, extent = 0, groups = 0, blocks = 0;
  ValueKind value = kValueF32;
  std::vector<uint8_t> steps;       // groups * blocks
  std::vector<int64_t> group_step;  // groups + 1: group g's first step
  std::vector<unsigned char> values;
  std::vector<uint8_t> index;
  bool Empty() const { return group_step.empty(); }
};

// y[16 g + l - 16 g0] = the sum over row 16 g + l's entries of value * x[column], for the rows
// of groups g0 .. g1 - 1 that exist (< rows); x holds k >= extent floats and is read only
// below k. AVX-512F; the caller checks the CPU has it.
void SellRows(const SellPlan& p, const float* x, int64_t k, int64_t g0, int64_t g1, float* y);

}  // namespace onnxprune
