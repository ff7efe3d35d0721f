// CsrConv's Winograd F(4x4, 3x3) path (winograd.h). The AVX-512 steps follow
// bench/winograd_probe.cc, which measured them on their own: the input transform reads each
// input row once and splits it into tiles in registers, the 36 products run in 8 x 48
// register tiles, the output transform writes each tile where it lies in Y. The AVX2 steps
// (namespace avx2 below) do the same 8 tiles a vector, the products in 4 x 24 tiles.
#include "winograd.h"

#include "winograd_rows.h"

#include <immintrin.h>

#include <algorithm>
#include <cstring>

namespace onnxprune {
namespace {

using winograd_rows::EveryFourth;
using winograd_rows::InputRow;
using winograd_rows::kG;
using winograd_rows::OutputRow;

// V[xi][c][t - t0] for every channel and the tiles t0 .. t1 (t = ty * tw + tx): 16 tiles
// of a tile row at a time, each of their 6 input rows read as 68 floats (4 tx0 .. 4 tx0 + 67
// of the row, inside Xp and its slack) and split into the tiles' columns in registers, stored
// under a mask of the tiles in the range.
ONNXPRUNE_WINO_TARGET void InputTransform(const WinoShape& s, const float* xp, int64_t t0, int64_t t1, float* v) {
  for (int64_t c = 0; c < s.c; ++c) {
    const float* xc = xp + c * s.hp * s.wp;
    for (int64_t ty = t0 / s.tw; ty * s.tw < t1; ++ty) {
      const int64_t first = std::max<int64_t>(0, t0 - ty * s.tw), end = std::min(s.tw, t1 - ty * s.tw);
      for (int64_t tx0 = first; tx0 < end; tx0 += 16) {
        const __mmask16 keep = FirstLanes(end - tx0);
        __m512 e[6][6];
        for (int i = 0; i < 6; ++i) {  // e[i] = row i of d B: the row read once, 68 floats
          const float* r = xc + (4 * ty + i) * s.wp + 4 * tx0;
          const __m512 a0 = _mm512_loadu_ps(r), a1 = _mm512_loadu_ps(r + 16), a2 = _mm512_loadu_ps(r + 32),
                       a3 = _mm512_loadu_ps(r + 48);
          const __m512 b0 = _mm512_loadu_ps(r + 4), b1 = _mm512_loadu_ps(r + 20), b2 = _mm512_loadu_ps(r + 36),
                       b3 = _mm512_loadu_ps(r + 52);
          __m512 d[6];
          for (int j = 0; j < 4; ++j) d[j] = EveryFourth(a0, a1, a2, a3, j);
          for (int j = 4; j < 6; ++j) d[j] = EveryFourth(b0, b1, b2, b3, j - 4);
          InputRow(d, e[i]);
        }
        const int64_t t = ty * s.tw + tx0 - t0;
        for (int j = 0; j < 6; ++j) {  // column j of B^T (d B)
          __m512 col[6], r[6];
          for (int i = 0; i < 6; ++i) col[i] = e[i][j];
          InputRow(col, r);
          for (int i = 0; i < 6; ++i) _mm512_mask_storeu_ps(v + (i * 6 + j) * s.VPlane() + c * kWinoTiles + t, keep, r[i]);
        }
      }
    }
  }
}

// M[xi][r][t0 .. t0 + 16 NV) = sum_c U[xi][r][c] V[xi][c][..] for the 8 rows r = k0 .. k0 + 7
// (u: their weights, channel by channel, 8 floats a channel): 8 NV accumulators, each V vector
// loaded once for the 8 rows and each weight broadcast once for the NV vectors.
template <int NV>
ONNXPRUNE_WINO_TARGET inline void ProductTile(int64_t c_in, const float* u, const float* v, float* m) {
  __m512 acc[8][NV];
  for (auto& row : acc)
    for (auto& a : row) a = _mm512_setzero_ps();
  for (int64_t c = 0; c < c_in; ++c) {
    __m512 x[NV];
    for (int b = 0; b < NV; ++b) x[b] = _mm512_load_ps(v + c * kWinoTiles + 16 * b);
    for (int a = 0; a < 8; ++a) {
      const __m512 w = _mm512_set1_ps(u[c * 8 + a]);
      for (int b = 0; b < NV; ++b) acc[a][b] = _mm512_fmadd_ps(w, x[b], acc[a][b]);
    }
  }
  for (int a = 0; a < 8; ++a)
    for (int b = 0; b < NV; ++b) _mm512_store_ps(m + a * kWinoTiles + 16 * b, acc[a][b]);
}

// The same for 8 tiles in 256-bit vectors: a task's last 8 or fewer tiles at half the cost of
// a 16-lane tile on cores that split 512-bit FMAs, and no more on the others.
ONNXPRUNE_WINO_TARGET inline void ProductTile8(int64_t c_in, const float* u, const float* v, float* m) {
  __m256 acc[8];
  for (auto& a : acc) a = _mm256_setzero_ps();
  for (int64_t c = 0; c < c_in; ++c) {
    const __m256 x = _mm256_load_ps(v + c * kWinoTiles);
    for (int a = 0; a < 8; ++a) acc[a] = _mm256_fmadd_ps(_mm256_set1_ps(u[c * 8 + a]), x, acc[a]);
  }
  for (int a = 0; a < 8; ++a) _mm256_store_ps(m + a * kWinoTiles, acc[a]);
}

// M[xi][r][t] = sum_c U[xi][r][c] V[xi][c][t] for r < kp and the first n8 tiles (a multiple
// of 8, <= kWinoTiles), in tiles of 8 rows x 16 NV tiles (ProductTile) and, for the last 8
// where n8 is an odd multiple of 8, 8 rows x 8 tiles (ProductTile8).
ONNXPRUNE_WINO_TARGET void Products(const WinoShape& s, const float* u, const float* v, int64_t n8, float* m) {
  const int64_t n16 = n8 / 16 * 16;
  for (int xi = 0; xi < 36; ++xi) {
    const float* ux = u + xi * s.kp * s.c;
    const float* vx = v + xi * s.VPlane();
    float* mx = m + xi * s.MPlane();
    for (int64_t k0 = 0; k0 < s.kp; k0 += 8) {
      const float* uk = ux + k0 * s.c;
      float* mk = mx + k0 * kWinoTiles;
      if (n16 == 48) {
        ProductTile<3>(s.c, uk, vx, mk);
      } else if (n16 == 32) {
        ProductTile<2>(s.c, uk, vx, mk);
      } else if (n16 == 16) {
        ProductTile<1>(s.c, uk, vx, mk);
      }
      if (n8 > n16) ProductTile8(s.c, uk, vx + n16, mk + n16);
    }
  }
}

// The 64 floats a_l, b_l, c_l, d_l (l = 0 .. 15) of four vectors, tile by tile: r[q] holds
// tiles 4q .. 4q + 3, four floats each.
ONNXPRUNE_WINO_TARGET inline void Interleave4(const __m512 o[4], __m512 r[4]) {
  const __m512 t0 = _mm512_unpacklo_ps(o[0], o[2]), t1 = _mm512_unpacklo_ps(o[1], o[3]);
  const __m512 t2 = _mm512_unpackhi_ps(o[0], o[2]), t3 = _mm512_unpackhi_ps(o[1], o[3]);
  const __m512 u0 = _mm512_unpacklo_ps(t0, t1), u1 = _mm512_unpackhi_ps(t0, t1);  // tiles 0, 4, 8, 12 / 1, 5, ..
  const __m512 u2 = _mm512_unpacklo_ps(t2, t3), u3 = _mm512_unpackhi_ps(t2, t3);
  const __m512 v0 = _mm512_shuffle_f32x4(u0, u1, 0x44), v1 = _mm512_shuffle_f32x4(u0, u1, 0xEE);
  const __m512 v2 = _mm512_shuffle_f32x4(u2, u3, 0x44), v3 = _mm512_shuffle_f32x4(u2, u3, 0xEE);
  r[0] = _mm512_shuffle_f32x4(v0, v2, 0x88);
  r[1] = _mm512_shuffle_f32x4(v0, v2, 0xDD);
  r[2] = _mm512_shuffle_f32x4(v1, v3, 0x88);
  r[3] = _mm512_shuffle_f32x4(v1, v3, 0xDD);
}

// Output channel r of the n <= 16 tiles t .. t + n - 1, their M columns at mt (16 of them
// readable): A^T m A in registers (lanes = tiles), the bias added, each of the 4 output rows
// interleaved into 64 floats, tile l's 4 at 4 l; then each run of the tiles that lies in one
// tile row is written where it lies in Y (its rows inside OH, its columns inside OW), Z added
// and the activation applied on the way.
ONNXPRUNE_WINO_TARGET void OutputTiles(const WinoShape& s, const float* mt, int64_t r, int64_t t, int64_t n,
                                       const WinoEnd& end, float* y) {
  __m512 e[4][6];
  for (int j = 0; j < 6; ++j) {
    __m512 col[6], o[4];
    for (int i = 0; i < 6; ++i) col[i] = _mm512_load_ps(mt + (i * 6 + j) * s.MPlane() + r * kWinoTiles);
    OutputRow(col, o);
    for (int i = 0; i < 4; ++i) e[i][j] = o[i];
  }
  const __m512 b = _mm512_set1_ps(end.bias ? end.bias[r] : 0.f);
  alignas(64) float stage[4][64];
  for (int i = 0; i < 4; ++i) {
    __m512 o[4], row[4];
    OutputRow(e[i], o);
    for (auto& v : o) v = _mm512_add_ps(v, b);
    Interleave4(o, row);
    for (int q = 0; q < 4; ++q) _mm512_store_ps(stage[i] + 16 * q, row[q]);
  }
  for (int64_t l0 = 0; l0 < n;) {
    const int64_t ty = (t + l0) / s.tw, tx = (t + l0) % s.tw, l1 = std::min(n, l0 + s.tw - tx);
    const int64_t rows = std::min<int64_t>(4, s.oh - 4 * ty), count = std::min(4 * (l1 - l0), s.ow - 4 * tx);
    for (int64_t i = 0; i < rows; ++i) {
      float* src = stage[i] + 4 * l0;
      const int64_t at = (r * s.oh + 4 * ty + i) * s.ow + 4 * tx;
      if (end.z)
        for (int64_t q = 0; q < count; q += 16) {
          const __mmask16 keep = FirstLanes(count - q);
          _mm512_mask_storeu_ps(src + q, keep, _mm512_add_ps(_mm512_maskz_loadu_ps(keep, src + q),
                                                             _mm512_maskz_loadu_ps(keep, end.z + at + q)));
        }
      if (end.activate) end.activate(src, count, *end.act);
      for (int64_t q = 0; q < count; q += 16) {
        const __mmask16 keep = FirstLanes(count - q);
        _mm512_mask_storeu_ps(y + at + q, keep, _mm512_maskz_loadu_ps(keep, src + q));
      }
    }
    l0 = l1;
  }
}

// Y of the tiles t0 .. t1 from M, output channel by channel, 16 tiles at a time.
ONNXPRUNE_WINO_TARGET void OutputTransform(const WinoShape& s, const float* m, int64_t t0, int64_t t1,
                                           const WinoEnd& end, float* y) {
  for (int64_t r = 0; r < s.k; ++r)
    for (int64_t g = 0; g < t1 - t0; g += 16)
      OutputTiles(s, m + g, r, t0 + g, std::min<int64_t>(16, t1 - t0 - g), end, y);
}

// The same three steps in AVX2 vectors, 8 tiles a vector (Zen 3 and other cores without
// AVX-512). Two 128-bit lanes make the tiles' columns a 4 x 4 transpose within each lane: a
// row's floats of tiles q and q + 4 share one register (loaded as two halves), so the
// transposes leave the 8 tiles in order and no step crosses the lanes.
namespace avx2 {

#define ONNXPRUNE_WINO_AVX2 __attribute__((target("avx2,fma")))
using Vec = __m256;
ONNXPRUNE_WINO_AVX2 inline Vec Set1(float a) { return _mm256_set1_ps(a); }
ONNXPRUNE_WINO_AVX2 inline Vec Add(Vec a, Vec b) { return _mm256_add_ps(a, b); }
ONNXPRUNE_WINO_AVX2 inline Vec Sub(Vec a, Vec b) { return _mm256_sub_ps(a, b); }
ONNXPRUNE_WINO_AVX2 inline Vec Mul(Vec a, Vec b) { return _mm256_mul_ps(a, b); }
ONNXPRUNE_WINO_AVX2 inline Vec Fma(Vec a, Vec b, Vec c) { return _mm256_fmadd_ps(a, b, c); }
#define ONNXPRUNE_WINO_ROW_TARGET ONNXPRUNE_WINO_AVX2
#include "winograd_transforms.inc"
#undef ONNXPRUNE_WINO_ROW_TARGET

constexpr int kLanes = 8;

// The first n of 8 lanes (none for n <= 0, all for n >= 8), as vmaskmovps takes them.
ONNXPRUNE_WINO_AVX2 inline __m256i FirstLanes8(int64_t n) {
  const int32_t k = static_cast<int32_t>(std::max<int64_t>(0, std::min<int64_t>(8, n)));
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(k), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

// Floats (tile q, tile q + 4) of a row: 4 at p and 4 at p + 16.
ONNXPRUNE_WINO_AVX2 inline Vec Pair(const float* p) { return _mm256_loadu2_m128(p + 16, p); }

// r[j] lane l = a[l % 4] float j of its lane (l / 4): the 4 x 4 transpose within each 128-bit
// lane. Its own inverse.
ONNXPRUNE_WINO_AVX2 inline void Transpose4(const Vec a[4], Vec r[4]) {
  const Vec t0 = _mm256_unpacklo_ps(a[0], a[1]), t1 = _mm256_unpackhi_ps(a[0], a[1]);
  const Vec t2 = _mm256_unpacklo_ps(a[2], a[3]), t3 = _mm256_unpackhi_ps(a[2], a[3]);
  r[0] = _mm256_shuffle_ps(t0, t2, 0x44);
  r[1] = _mm256_shuffle_ps(t0, t2, 0xEE);
  r[2] = _mm256_shuffle_ps(t1, t3, 0x44);
  r[3] = _mm256_shuffle_ps(t1, t3, 0xEE);
}

// InputTransform (above) 8 tiles at a time: each of a group's 6 input rows read as the 36
// floats 4 tx0 .. 4 tx0 + 35 (inside Xp and its slack).
ONNXPRUNE_WINO_AVX2 void InputTransform(const WinoShape& s, const float* xp, int64_t t0, int64_t t1, float* v) {
  // read once: the unaligned stores below may alias anything, so s's fields would be reloaded
  const int64_t vplane = s.VPlane();
  for (int64_t c = 0; c < s.c; ++c) {
    const float* xc = xp + c * s.hp * s.wp;
    for (int64_t ty = t0 / s.tw; ty * s.tw < t1; ++ty) {
      const int64_t first = std::max<int64_t>(0, t0 - ty * s.tw), end = std::min(s.tw, t1 - ty * s.tw);
      for (int64_t tx0 = first; tx0 < end; tx0 += kLanes) {
        const __m256i keep = FirstLanes8(end - tx0);
        Vec e[6][6];
        for (int i = 0; i < 6; ++i) {  // e[i] = row i of d B
          const float* r = xc + (4 * ty + i) * s.wp + 4 * tx0;
          const Vec a[4] = {Pair(r), Pair(r + 4), Pair(r + 8), Pair(r + 12)};
          Vec d[6];
          Transpose4(a, d);  // floats 0..3 of tiles 0..7
          // floats 4 and 5 of tile l are floats 0 and 1 of tile l + 1
          const Vec next = Pair(r + 16);
          const Vec u0 = _mm256_unpacklo_ps(a[1], a[2]), u1 = _mm256_unpacklo_ps(a[3], next);
          d[4] = _mm256_shuffle_ps(u0, u1, 0x44);
          d[5] = _mm256_shuffle_ps(u0, u1, 0xEE);
          InputRow(d, e[i]);
        }
        const int64_t t = ty * s.tw + tx0 - t0;
        // All 8 lanes stored where they lie among the task's tiles: lanes past this tile row
        // hold tiles of the next one, written after these. vmaskmovps stores only where they
        // would pass the task's last tile (the store is slow on AMD cores whatever its mask).
        const bool whole = t + kLanes <= t1 - t0;
        for (int j = 0; j < 6; ++j) {  // column j of B^T (d B)
          Vec col[6], r[6];
          for (int i = 0; i < 6; ++i) col[i] = e[i][j];
          InputRow(col, r);
          float* out = v + (j * vplane + c * kWinoTiles + t);
          for (int i = 0; i < 6; ++i, out += 6 * vplane) {
            if (whole) {
              _mm256_storeu_ps(out, r[i]);
            } else {
              _mm256_maskstore_ps(out, keep, r[i]);
            }
          }
        }
      }
    }
  }
}

// M for rows r0 .. r0 + 3 of an 8-row block of U (u: its weights, 8 floats a channel) and 8 NV
// tiles: 4 NV accumulators, each V vector loaded once for the 4 rows and each weight
// broadcast once for the NV vectors (NV = 3: 12 accumulators, 3 vectors and a weight fill
// the 16 registers). The accumulators are named, not an array: GCC 12 kept an array of them
// on the stack, storing all 12 every channel (the products ran at a third of the rate).
// NV = 1 takes all 8 rows of the block instead (OneVectorTile): 4 accumulators would be 4 FMA
// chains, fewer than the FMA units' latency hides.
template <int NV>
ONNXPRUNE_WINO_AVX2 inline void ProductTile(int64_t c_in, const float* u, int r0, const float* v, float* m) {
  const Vec zero = _mm256_setzero_ps();
  Vec a00 = zero, a01 = zero, a02 = zero, a10 = zero, a11 = zero, a12 = zero;
  Vec a20 = zero, a21 = zero, a22 = zero, a30 = zero, a31 = zero, a32 = zero;
  const float* uc = u + r0;
  for (int64_t c = 0; c < c_in; ++c, uc += 8, v += kWinoTiles) {
    const Vec x0 = _mm256_load_ps(v);
    const Vec x1 = NV > 1 ? _mm256_load_ps(v + kLanes) : zero;
    const Vec x2 = NV > 2 ? _mm256_load_ps(v + 2 * kLanes) : zero;
#define ONNXPRUNE_WINO_ROW(r)                              \
  {                                                        \
    const Vec w = _mm256_broadcast_ss(uc + (r));           \
    a##r##0 = _mm256_fmadd_ps(w, x0, a##r##0);             \
    if (NV > 1) a##r##1 = _mm256_fmadd_ps(w, x1, a##r##1); \
    if (NV > 2) a##r##2 = _mm256_fmadd_ps(w, x2, a##r##2); \
  }
    ONNXPRUNE_WINO_ROW(0)
    ONNXPRUNE_WINO_ROW(1)
    ONNXPRUNE_WINO_ROW(2)
    ONNXPRUNE_WINO_ROW(3)
#undef ONNXPRUNE_WINO_ROW
  }
  const Vec acc[4][3] = {{a00, a01, a02}, {a10, a11, a12}, {a20, a21, a22}, {a30, a31, a32}};
  for (int a = 0; a < 4; ++a)
    for (int b = 0; b < NV; ++b) _mm256_store_ps(m + (r0 + a) * kWinoTiles + kLanes * b, acc[a][b]);
}

// M for all 8 rows of a block and 8 tiles: 8 accumulators, one V vector and 8 weights a
// channel.
ONNXPRUNE_WINO_AVX2 inline void OneVectorTile(int64_t c_in, const float* u, const float* v, float* m) {
  const Vec zero = _mm256_setzero_ps();
  Vec a0 = zero, a1 = zero, a2 = zero, a3 = zero, a4 = zero, a5 = zero, a6 = zero, a7 = zero;
  for (int64_t c = 0; c < c_in; ++c, u += 8, v += kWinoTiles) {
    const Vec x = _mm256_load_ps(v);
    a0 = _mm256_fmadd_ps(_mm256_broadcast_ss(u), x, a0);
    a1 = _mm256_fmadd_ps(_mm256_broadcast_ss(u + 1), x, a1);
    a2 = _mm256_fmadd_ps(_mm256_broadcast_ss(u + 2), x, a2);
    a3 = _mm256_fmadd_ps(_mm256_broadcast_ss(u + 3), x, a3);
    a4 = _mm256_fmadd_ps(_mm256_broadcast_ss(u + 4), x, a4);
    a5 = _mm256_fmadd_ps(_mm256_broadcast_ss(u + 5), x, a5);
    a6 = _mm256_fmadd_ps(_mm256_broadcast_ss(u + 6), x, a6);
    a7 = _mm256_fmadd_ps(_mm256_broadcast_ss(u + 7), x, a7);
  }
  const Vec acc[8] = {a0, a1, a2, a3, a4, a5, a6, a7};
  for (int a = 0; a < 8; ++a) _mm256_store_ps(m + a * kWinoTiles, acc[a]);
}

// Products (above) for the first n8 tiles in tiles of 4 rows x 24 tiles, then 4 x 16 or 8 x 8.
ONNXPRUNE_WINO_AVX2 void Products(const WinoShape& s, const float* u, const float* v, int64_t n8, float* m) {
  for (int xi = 0; xi < 36; ++xi) {
    const float* ux = u + xi * s.kp * s.c;
    const float* vx = v + xi * s.VPlane();
    float* mx = m + xi * s.MPlane();
    for (int64_t k0 = 0; k0 < s.kp; k0 += 8) {
      const float* uk = ux + k0 * s.c;
      float* mk = mx + k0 * kWinoTiles;
      int64_t b = 0;
      for (; b + 24 <= n8; b += 24)
        for (int r0 = 0; r0 < 8; r0 += 4) ProductTile<3>(s.c, uk, r0, vx + b, mk + b);
      if (n8 - b == 16)
        for (int r0 = 0; r0 < 8; r0 += 4) ProductTile<2>(s.c, uk, r0, vx + b, mk + b);
      if (n8 - b == 8) OneVectorTile(s.c, uk, vx + b, mk + b);
    }
  }
}

// OutputTiles (above) for n <= 8 tiles: output row i's 4 columns of tiles q and q + 4 come out
// of the transpose in one register, written to the stage at 4 q and 4 q + 16.
ONNXPRUNE_WINO_AVX2 void OutputTiles(const WinoShape& s, const float* mt, int64_t r, int64_t t, int64_t n,
                                     const WinoEnd& end, float* y) {
  // read once: the stores below may alias anything, so s's fields would be reloaded after each
  const int64_t mplane = s.MPlane(), tw = s.tw, oh = s.oh, ow = s.ow;
  Vec e[4][6];
  for (int j = 0; j < 6; ++j) {
    Vec col[6], o[4];
    for (int i = 0; i < 6; ++i) col[i] = _mm256_load_ps(mt + (i * 6 + j) * mplane + r * kWinoTiles);
    OutputRow(col, o);
    for (int i = 0; i < 4; ++i) e[i][j] = o[i];
  }
  const Vec b = Set1(end.bias ? end.bias[r] : 0.f);
  // 32 floats a row, and 8 zeros that a row's last vector may read past them (into lanes that
  // the mask then leaves out)
  alignas(32) float stage[4][40];
  for (int i = 0; i < 4; ++i) {
    _mm256_store_ps(stage[i] + 32, _mm256_setzero_ps());
    Vec o[4], row[4];
    OutputRow(e[i], o);
    for (auto& x : o) x = _mm256_add_ps(x, b);
    Transpose4(o, row);
    for (int q = 0; q < 4; ++q) _mm256_storeu2_m128(stage[i] + 4 * q + 16, stage[i] + 4 * q, row[q]);
  }
  for (int64_t l0 = 0; l0 < n;) {
    const int64_t ty = (t + l0) / tw, tx = (t + l0) % tw, l1 = std::min(n, l0 + tw - tx);
    const int64_t rows = std::min<int64_t>(4, oh - 4 * ty), count = std::min(4 * (l1 - l0), ow - 4 * tx);
    for (int64_t i = 0; i < rows; ++i) {
      float* src = stage[i] + 4 * l0;
      const int64_t at = (r * oh + 4 * ty + i) * ow + 4 * tx;
      // whole vectors with plain loads and stores, the last part of one under a mask
      const int64_t whole = count / kLanes * kLanes;
      const __m256i keep = FirstLanes8(count - whole);
      if (end.z) {
        const float* z = end.z + at;
        for (int64_t q = 0; q < whole; q += kLanes)
          _mm256_storeu_ps(src + q, _mm256_add_ps(_mm256_loadu_ps(src + q), _mm256_loadu_ps(z + q)));
        if (whole < count)
          _mm256_maskstore_ps(src + whole, keep, _mm256_add_ps(_mm256_loadu_ps(src + whole),
                                                               _mm256_maskload_ps(z + whole, keep)));
      }
      if (end.activate) end.activate(src, count, *end.act);
      for (int64_t q = 0; q < whole; q += kLanes) _mm256_storeu_ps(y + at + q, _mm256_loadu_ps(src + q));
      if (whole < count) _mm256_maskstore_ps(y + at + whole, keep, _mm256_loadu_ps(src + whole));
    }
    l0 = l1;
  }
}

ONNXPRUNE_WINO_AVX2 void OutputTransform(const WinoShape& s, const float* m, int64_t t0, int64_t t1,
                                         const WinoEnd& end, float* y) {
  for (int64_t r = 0; r < s.k; ++r)
    for (int64_t g = 0; g < t1 - t0; g += kLanes)
      OutputTiles(s, m + g, r, t0 + g, std::min<int64_t>(kLanes, t1 - t0 - g), end, y);
}

#undef ONNXPRUNE_WINO_AVX2
}  // namespace avx2

}  // namespace

bool WinoShape::Plan(int64_t c_in, int64_t k_out, int64_t h_in, int64_t w_in, int64_t pt, int64_t pl, int64_t pb,
                     int64_t pr) {
  constexpr int64_t kDim = int64_t{1} << 24;  // every count below this before a product
  if (c_in < 1 || k_out < 1 || h_in < 1 || w_in < 1 || c_in > kDim || k_out > kDim || h_in > kDim ||
      w_in > kDim || pt < 0 || pl < 0 || pb < 0 || pr < 0 || pt > kDim || pl > kDim || pb > kDim || pr > kDim)
    return false;
  c = c_in, k = k_out, kp = (k_out + 7) / 8 * 8, h = h_in, w = w_in, pad_t = pt, pad_l = pl;
  oh = h + pt + pb - 2;
  ow = w + pl + pr - 2;
  if (oh < 1 || ow < 1) return false;
  th = (oh + 3) / 4, tw = (ow + 3) / 4;
  hp = 4 * th + 2, wp = 4 * tw + 2;
  const int64_t tasks = (th * tw + kWinoTiles - 1) / kWinoTiles;
  tt = ((th * tw + tasks - 1) / tasks + 15) / 16 * 16;
  const double limit = static_cast<double>(kWinoMaxFloats);
  return static_cast<double>(c) * static_cast<double>(hp) * static_cast<double>(wp) + kWinoSlack <= limit &&
         36.0 * (static_cast<double>(c + kp) * kWinoTiles + 32) <= limit &&
         36.0 * static_cast<double>(kp) * static_cast<double>(c) <= limit &&
         static_cast<double>(k) * static_cast<double>(oh) * static_cast<double>(ow) <= limit * 4;
}

void WinogradWeights(const float* w, int64_t k, int64_t c, int64_t kp, float* u) {
  std::memset(u, 0, static_cast<size_t>(36 * kp * c) * sizeof(float));
  for (int64_t r = 0; r < k; ++r)
    for (int64_t ch = 0; ch < c; ++ch) {
      const float* g = w + (r * c + ch) * 9;
      float t[6][3];
      for (int i = 0; i < 6; ++i)
        for (int j = 0; j < 3; ++j) t[i][j] = kG[i][0] * g[j] + kG[i][1] * g[3 + j] + kG[i][2] * g[6 + j];
      for (int i = 0; i < 6; ++i)
        for (int j = 0; j < 6; ++j)
          u[((i * 6 + j) * kp + r / 8 * 8) * c + ch * 8 + r % 8] =
              t[i][0] * kG[j][0] + t[i][1] * kG[j][1] + t[i][2] * kG[j][2];
    }
}

void WinogradPad(const WinoShape& s, const float* x, float* xp) {
  for (int64_t ch = 0; ch < s.c; ++ch) {
    float* p = xp + ch * s.hp * s.wp;
    const float* xc = x + ch * s.h * s.w;
    std::memset(p, 0, static_cast<size_t>(s.pad_t * s.wp) * sizeof(float));
    const int64_t rows = std::min(s.h, s.hp - s.pad_t), cols = std::min(s.w, s.wp - s.pad_l);
    for (int64_t r = 0; r < rows; ++r) {
      float* row = p + (s.pad_t + r) * s.wp;
      std::memset(row, 0, static_cast<size_t>(s.pad_l) * sizeof(float));
      std::memcpy(row + s.pad_l, xc + r * s.w, static_cast<size_t>(cols) * sizeof(float));
      std::memset(row + s.pad_l + cols, 0, static_cast<size_t>(s.wp - s.pad_l - cols) * sizeof(float));
    }
    std::memset(p + (s.pad_t + rows) * s.wp, 0, static_cast<size_t>((s.hp - s.pad_t - rows) * s.wp) * sizeof(float));
  }
}

void WinogradTask(const WinoShape& s, const float* xp, const float* u, int64_t task, float* scratch,
                  const WinoEnd& end, float* y, Isa isa) {
  const int64_t t0 = task * s.tt, t1 = std::min(s.th * s.tw, t0 + s.tt);
  const int64_t n = t1 - t0, n8 = (n + 7) / 8 * 8;
  float* v = scratch;
  float* m = scratch + 36 * s.VPlane();
  if (n8 > n)  // tiles the products run over but the transform does not write: zeros
    for (int64_t xi = 0; xi < 36; ++xi)
      for (int64_t ch = 0; ch < s.c; ++ch)
        std::memset(v + xi * s.VPlane() + ch * kWinoTiles + n, 0, static_cast<size_t>(n8 - n) * sizeof(float));
  if (isa == Isa::kAvx512) {
    InputTransform(s, xp, t0, t1, v);
    Products(s, u, v, n8, m);
    OutputTransform(s, m, t0, t1, end, y);
  } else {
    avx2::InputTransform(s, xp, t0, t1, v);
    avx2::Products(s, u, v, n8, m);
    avx2::OutputTransform(s, m, t0, t1, end, y);
  }
}

}  // namespace onnxprune
