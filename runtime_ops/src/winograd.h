// CsrConv's Winograd path (its `winograd` attribute, runtime_ops/README.md): a 3x3 convolution
// at unit strides and dilations, one group, computed by Winograd's minimal filtering
// F(4x4, 3x3) (Lavin and Gray, "Fast Algorithms for Convolutional Neural Networks", 2016) over
// the layer's weights made dense. Each 6x6 input tile d and 3x3 kernel g give a 4x4 output
// tile A^T [(G g G^T) . (B^T d B)] A: the 36 transformed points are 36 independent products
// U[xi] (K x C) . V[xi] (C x tiles), 2.25x fewer multiply-adds than the direct convolution.
// The rounding differs from the direct sum (the transforms scale by up to 8 and 1/24), so it
// is an opt-in choice of the lowering, whose report states the output change it measured.
// AVX-512 (16 tiles a vector) and AVX2 (8); ops.cc runs the direct path on the portable ISA.
#pragma once

#include <cstdint>

#include "kernels.h"

namespace onnxprune {

// Largest buffer, in floats, the path allocates (padded input, a task's scratch, U); a layer
// that would need more runs the direct path.
constexpr int64_t kWinoMaxFloats = int64_t{1} << 26;
// A node takes the path only with at least 1/kWinoMinDensityInverse of its dense weight
// stored (nnz * 16 >= K C 9): its transformed weights then hold at most 64 floats per stored
// nonzero.
constexpr int64_t kWinoMinDensityInverse = 16;
// Floats past the padded input the input transform may read (a group of 16 tiles reads 68
// floats of a row from its first tile on, a group of 8 on AVX2 36).
constexpr int64_t kWinoSlack = 128;
// Tiles per task: the products' register tile on AVX-512 (8 output channels x 48 tiles, 24
// accumulators; on AVX2 two tiles of 4 x 24).
constexpr int64_t kWinoTiles = 48;

// One input shape's geometry. Output tile (ty, tx) covers output rows 4 ty .. 4 ty + 3 and
// columns 4 tx .. 4 tx + 3, clipped to OH x OW, and reads rows 4 ty .. 4 ty + 5 and columns
// 4 tx .. 4 tx + 5 of the padded input Xp (X at rows pad_t.., columns pad_l.., zeros around).
struct WinoShape {
  int64_t c = 0, k = 0, kp = 0;  // input channels, output channels, K rounded up to 8
  int64_t h = 0, w = 0, oh = 0, ow = 0, pad_t = 0, pad_l = 0;
  int64_t th = 0, tw = 0;  // tile rows and columns: ceil(OH / 4), ceil(OW / 4)
  int64_t hp = 0, wp = 0;  // Xp's rows and columns: 4 th + 2, 4 tw + 2
  int64_t tt = 0;          // tiles per task: the fewest tasks of <= kWinoTiles, evened out, in 16s

  // Fills the geometry of X (C x H x W), K outputs and the pads; false where OH or OW < 1 or
  // a buffer would exceed kWinoMaxFloats. Every count is bounded before it is multiplied.
  bool Plan(int64_t c_in, int64_t k_out, int64_t h_in, int64_t w_in, int64_t pt, int64_t pl, int64_t pb, int64_t pr);
  int64_t PaddedFloats() const { return c * hp * wp + kWinoSlack; }
  // V's and M's planes (one per transformed point xi): a cache line more than their rows need,
  // so that the 36 planes of a channel, written by the input transform and read by the output
  // transform one tile group at a time, fall in 36 different L1 sets (for C or K a multiple of
  // 64 the planes of a channel would otherwise all map to one set).
  int64_t VPlane() const { return c * kWinoTiles + 16; }
  int64_t MPlane() const { return kp * kWinoTiles + 16; }
  int64_t ScratchFloats() const { return 36 * (VPlane() + MPlane()); }
  int64_t WeightFloats() const { return 36 * kp * c; }
  int64_t Tasks() const { return (th * tw + tt - 1) / tt; }
};

// U[xi] = (G g G^T)[xi] of each kernel g = w[r][c][0..9) (r < k), zero for k <= r < kp, laid
// out in blocks of 8 rows, channel by channel: U[xi][r][ch] at u[(xi kp + r - r % 8) c + 8 ch + r % 8].
void WinogradWeights(const float* w, int64_t k, int64_t c, int64_t kp, float* u);

// Xp of one image (x: C x H x W), PaddedFloats() - kWinoSlack floats; the slack is the
// caller's to zero.
void WinogradPad(const WinoShape& s, const float* x, float* xp);

// What is done to each output: bias[r] added (when set), z added (when set; the layout of
// y), then activate(.., *act) (when set).
struct WinoEnd {
  const float* bias = nullptr;
  const float* z = nullptr;
  void (*activate)(float* y, int64_t n, const Activation& act) = nullptr;
  const Activation* act = nullptr;
};

// The outputs of tiles [task * tt, ...) (t = ty * tw + tx) of one image, into y
// (K x OH x OW) with `end` applied. scratch: ScratchFloats() floats. `isa`: kAvx512 or kAvx2
// (any other runs the AVX2 steps); the caller checks the CPU has it.
void WinogradTask(const WinoShape& s, const float* xp, const float* u, int64_t task, float* scratch,
                  const WinoEnd& end, float* y, Isa isa);

}  // namespace onnxprune
