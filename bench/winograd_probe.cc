// A dense 3x3 convolution by Winograd F(4x4, 3x3) on this core, a plain stand-alone loop (the
// library's path, grown from it, is runtime_ops/src/winograd.cc): how fast the algorithm runs
// the denser 3x3 layers (unit stride, pads 1) here, against ONNX Runtime's direct
// dense convolution and the CSR layer (docs/BENCHMARKS.md). Built and run by
// bench/winograd_probe.py; prints one JSON object. Not a kernel of the library: AVX-512F only,
// H a multiple of 4, no blocking over channels.
//   usage: winograd_probe C K H   (C input and K output channels, an H x H map)
// Steps, each timed alone too: the input transform (each channel's 6x6 tiles read row by row,
// 16 tiles at a time, from the padded input, B^T d B in registers), 36 products U[xi] (K x C) .
// V[xi] (C x tiles) in 8 x 48 register tiles, the output transform (A^T m A in registers), over
// the tiles in chunks of 48 or all at once (whichever runs faster is reported). The weight
// transform runs once, outside the timing. The result is checked against a float64 direct
// convolution on every 8th output channel: rel_err = max |error| / max |output|.
#include <immintrin.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

#define ONNXPRUNE_PROBE_TARGET __attribute__((target("avx512f,fma")))

#include "../runtime_ops/src/winograd_rows.h"

namespace {

using onnxprune::winograd_rows::EveryFourth;
using onnxprune::winograd_rows::InputRow;
using onnxprune::winograd_rows::kG;
using onnxprune::winograd_rows::OutputRow;

struct Layer {
  int c, k, h, hp, tw, nt;  // channels in/out, map, padded map, tiles a row, tiles
  int chunk = 0, tp = 0;    // tiles a chunk, and the floats between V's and M's rows (>= chunk, a multiple of 16)
};

float* Floats(size_t n) { return static_cast<float*>(aligned_alloc(64, ((n * 4 + 63) / 64) * 64)); }

// V[xi][c][t - t0] for every channel and the tiles t0 .. t1 (t = ty * tw + tx): tile t's 6x6
// input at (4 ty, 4 tx) of the padded map, read row by row, 16 tiles of a tile row at a time (68
// floats of each of the 6 input rows, split into columns j of the 16 tiles in registers),
// stored under a mask. Reads up to 64 floats past a row's end: xp has that slack.
ONNXPRUNE_PROBE_TARGET void InputTransform(const Layer& L, const float* xp, int t0, int t1, float* v) {
  for (int c = 0; c < L.c; ++c) {
    const float* xc = xp + static_cast<size_t>(c) * L.hp * L.hp;
    for (int ty = t0 / L.tw; ty * L.tw < t1; ++ty) {
      const int first = std::max(0, t0 - ty * L.tw), end = std::min(L.tw, t1 - ty * L.tw);
      for (int tx0 = first; tx0 < end; tx0 += 16) {
        const __mmask16 keep = static_cast<__mmask16>((1u << std::min(16, end - tx0)) - 1u);
        __m512 e[6][6];
        for (int j = 0; j < 6; ++j) {  // e = B^T d, column j of the 16 tiles
          __m512 d[6];
          for (int i = 0; i < 6; ++i) {
            const float* r = xc + static_cast<size_t>(4 * ty + i) * L.hp + 4 * tx0 + (j & 4);
            d[i] = EveryFourth(_mm512_loadu_ps(r), _mm512_loadu_ps(r + 16), _mm512_loadu_ps(r + 32),
                               _mm512_loadu_ps(r + 48), j & 3);
          }
          __m512 r[6];
          InputRow(d, r);
          for (int i = 0; i < 6; ++i) e[i][j] = r[i];
        }
        const size_t t = static_cast<size_t>(ty) * L.tw + tx0 - t0;
        for (int i = 0; i < 6; ++i) {
          __m512 r[6];
          InputRow(e[i], r);
          for (int j = 0; j < 6; ++j)
            _mm512_mask_storeu_ps(v + (static_cast<size_t>(i * 6 + j) * L.c + c) * L.tp + t, keep, r[j]);
        }
      }
    }
  }
}

// M[xi][k][t] = sum_c U[xi][k][c] V[xi][c][t] for a chunk's `tiles` tiles (rows L.tp floats
// apart), K a multiple of 8, tiles in 16s (1-3 vectors).
ONNXPRUNE_PROBE_TARGET void Products(const Layer& L, const float* u, const float* v, int tiles, float* m) {
  for (int xi = 0; xi < 36; ++xi) {
    const float* ux = u + static_cast<size_t>(xi) * L.k * L.c;
    const float* vx = v + static_cast<size_t>(xi) * L.c * L.tp;
    float* mx = m + static_cast<size_t>(xi) * L.k * L.tp;
    const int n16 = (tiles + 15) / 16 * 16;  // <= L.tp
    for (int t0 = 0; t0 < n16; t0 += 48) {
      const int nv = std::min(3, (n16 - t0) / 16);
      for (int k0 = 0; k0 < L.k; k0 += 8) {
        __m512 acc[8][3];
        for (auto& row : acc)
          for (auto& a : row) a = _mm512_setzero_ps();
        if (nv == 3) {  // the accumulators' indices known here, so they stay in registers
          for (int c = 0; c < L.c; ++c) {
            const float* vr = vx + static_cast<size_t>(c) * L.tp + t0;
            const __m512 x0 = _mm512_load_ps(vr), x1 = _mm512_load_ps(vr + 16), x2 = _mm512_load_ps(vr + 32);
            for (int a = 0; a < 8; ++a) {
              const __m512 w = _mm512_set1_ps(ux[static_cast<size_t>(k0 + a) * L.c + c]);
              acc[a][0] = _mm512_fmadd_ps(w, x0, acc[a][0]);
              acc[a][1] = _mm512_fmadd_ps(w, x1, acc[a][1]);
              acc[a][2] = _mm512_fmadd_ps(w, x2, acc[a][2]);
            }
          }
        } else {
          for (int c = 0; c < L.c; ++c) {
            const float* vr = vx + static_cast<size_t>(c) * L.tp + t0;
            for (int b = 0; b < nv; ++b) {
              const __m512 x = _mm512_load_ps(vr + 16 * b);
              for (int a = 0; a < 8; ++a)
                acc[a][b] = _mm512_fmadd_ps(_mm512_set1_ps(ux[static_cast<size_t>(k0 + a) * L.c + c]), x, acc[a][b]);
            }
          }
        }
        for (int a = 0; a < 8; ++a)
          for (int b = 0; b < nv; ++b) _mm512_store_ps(mx + static_cast<size_t>(k0 + a) * L.tp + t0 + 16 * b, acc[a][b]);
      }
    }
  }
}

// Y of the tiles t0 .. t1 from the chunk's M.
ONNXPRUNE_PROBE_TARGET void OutputTransform(const Layer& L, const float* m, int t0_tile, int t1_tile, float* y) {
  const int nt = t1_tile - t0_tile;
  for (int k = 0; k < L.k; ++k) {
    for (int t0 = 0; t0 < nt; t0 += 16) {
      __m512 e[4][6];
      for (int j = 0; j < 6; ++j) {
        __m512 col[6], r[4];
        for (int i = 0; i < 6; ++i) col[i] = _mm512_load_ps(m + (static_cast<size_t>(i * 6 + j) * L.k + k) * L.tp + t0);
        OutputRow(col, r);
        for (int i = 0; i < 4; ++i) e[i][j] = r[i];
      }
      alignas(64) float out[4][4][16];
      for (int i = 0; i < 4; ++i) {
        __m512 r[4];
        OutputRow(e[i], r);
        for (int j = 0; j < 4; ++j) _mm512_store_ps(out[i][j], r[j]);
      }
      for (int l = 0; l < 16 && t0 + l < nt; ++l) {
        const int t = t0_tile + t0 + l;
        float* yk = y + static_cast<size_t>(k) * L.h * L.h + (t / L.tw) * 4 * L.h + (t % L.tw) * 4;
        for (int i = 0; i < 4; ++i)
          for (int j = 0; j < 4; ++j) yk[i * L.h + j] = out[i][j][l];
      }
    }
  }
}

// U[xi][k][c] = (G g G^T)[xi] of each 3x3 kernel g.
void WeightTransform(const Layer& L, const std::vector<float>& w, float* u) {
  for (int k = 0; k < L.k; ++k)
    for (int c = 0; c < L.c; ++c) {
      const float* g = &w[(static_cast<size_t>(k) * L.c + c) * 9];
      float t[6][3];
      for (int i = 0; i < 6; ++i)
        for (int j = 0; j < 3; ++j) t[i][j] = kG[i][0] * g[j] + kG[i][1] * g[3 + j] + kG[i][2] * g[6 + j];
      for (int i = 0; i < 6; ++i)
        for (int j = 0; j < 6; ++j)
          u[(static_cast<size_t>(i * 6 + j) * L.k + k) * L.c + c] = t[i][0] * kG[j][0] + t[i][1] * kG[j][1] + t[i][2] * kG[j][2];
    }
}

void Pad(const Layer& L, const std::vector<float>& x, float* xp) {
  std::memset(xp, 0, static_cast<size_t>(L.c) * L.hp * L.hp * sizeof(float));
  for (int c = 0; c < L.c; ++c)
    for (int r = 0; r < L.h; ++r)
      std::memcpy(xp + (static_cast<size_t>(c) * L.hp + r + 1) * L.hp + 1, &x[(static_cast<size_t>(c) * L.h + r) * L.h],
                  static_cast<size_t>(L.h) * sizeof(float));
}

// max |y - direct float64| / max |direct| over every 8th output channel
double RelativeError(const Layer& L, const std::vector<float>& x, const std::vector<float>& w, const float* y) {
  double err = 0, top = 0;
  for (int k = 0; k < L.k; k += 8)
    for (int oy = 0; oy < L.h; ++oy)
      for (int ox = 0; ox < L.h; ++ox) {
        double s = 0;
        for (int c = 0; c < L.c; ++c)
          for (int i = 0; i < 3; ++i)
            for (int j = 0; j < 3; ++j) {
              const int iy = oy + i - 1, ix = ox + j - 1;
              if (iy >= 0 && iy < L.h && ix >= 0 && ix < L.h)
                s += static_cast<double>(w[(static_cast<size_t>(k) * L.c + c) * 9 + i * 3 + j]) *
                     x[(static_cast<size_t>(c) * L.h + iy) * L.h + ix];
            }
        err = std::max(err, std::fabs(s - y[(static_cast<size_t>(k) * L.h + oy) * L.h + ox]));
        top = std::max(top, std::fabs(s));
      }
  return top > 0 ? err / top : err;
}

template <class F>
double BestMs(F f, int reps) {
  double best = 1e30;
  for (int r = 0; r < reps; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    f();
    best = std::min(best, std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  return best;
}

struct Timing {
  double median_ms = 0, input_ms = 0, products_ms = 0, products_rate = 0, output_ms = 0, rel_err = 0;
  int chunk = 0;
};

// One call of the layer, chunk by chunk (L.chunk tiles, V and M rows L.tp floats apart): its
// error against float64, the median of 60 calls, and each step's share averaged over 20 more.
Timing Measure(const Layer& L, const std::vector<float>& x, const std::vector<float>& w, float* xp, const float* u,
               float* v, float* m, float* y) {
  Timing r;
  r.chunk = L.chunk;
  const auto run = [&](bool timed) {
    Pad(L, x, xp);
    for (int c0 = 0; c0 < L.nt; c0 += L.chunk) {
      const int c1 = std::min(L.nt, c0 + L.chunk);
      const auto t0 = std::chrono::steady_clock::now();
      InputTransform(L, xp, c0, c1, v);
      const auto t1 = std::chrono::steady_clock::now();
      Products(L, u, v, c1 - c0, m);
      const auto t2 = std::chrono::steady_clock::now();
      OutputTransform(L, m, c0, c1, y);
      if (timed) {
        const auto t3 = std::chrono::steady_clock::now();
        r.input_ms += std::chrono::duration<double, std::milli>(t1 - t0).count();
        r.products_ms += std::chrono::duration<double, std::milli>(t2 - t1).count();
        r.output_ms += std::chrono::duration<double, std::milli>(t3 - t2).count();
      }
    }
  };
  run(false);
  r.rel_err = RelativeError(L, x, w, y);
  std::vector<double> ms;
  for (int i = 0; i < 60; ++i) ms.push_back(BestMs([&] { run(false); }, 1));
  std::sort(ms.begin(), ms.end());
  r.median_ms = ms[ms.size() / 2];
  constexpr int kStepRuns = 20;
  for (int i = 0; i < kStepRuns; ++i) run(true);
  r.input_ms /= kStepRuns;
  r.products_ms /= kStepRuns;
  r.output_ms /= kStepRuns;
  double multiplied = 0;  // tiles the products ran over a call, rounded to 16 a chunk
  for (int c0 = 0; c0 < L.nt; c0 += L.chunk) multiplied += (std::min(L.chunk, L.nt - c0) + 15) / 16 * 16;
  r.products_rate = 36.0 * L.k * L.c * multiplied / (r.products_ms * 1e-3);
  return r;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 4) {
    std::fprintf(stderr, "usage: winograd_probe C K H\n");
    return 2;
  }
  if (!__builtin_cpu_supports("avx512f")) {
    std::printf("{\"error\": \"needs AVX-512F\"}\n");
    return 3;
  }
  Layer L;
  L.c = std::atoi(argv[1]);
  L.k = std::atoi(argv[2]);
  L.h = std::atoi(argv[3]);
  if (L.c < 1 || L.k < 8 || L.k % 8 != 0 || L.h < 4 || L.h % 4 != 0 || L.c > 4096 || L.k > 4096 || L.h > 512) {
    std::fprintf(stderr, "winograd_probe: need 1 <= C <= 4096, K a multiple of 8 up to 4096, H a multiple of 4 up to 512\n");
    return 2;
  }
  L.hp = L.h + 2;
  L.tw = L.h / 4;
  L.nt = L.tw * L.tw;
  const int all = (L.nt + 15) / 16 * 16;
  std::mt19937 rng(1);
  std::normal_distribution<float> nd;
  std::vector<float> x(static_cast<size_t>(L.c) * L.h * L.h), w(static_cast<size_t>(L.k) * L.c * 9);
  for (auto& e : x) e = nd(rng);
  for (auto& e : w) e = nd(rng) / std::sqrt(9.f * L.c);
  float* xp = Floats(static_cast<size_t>(L.c) * L.hp * L.hp + 64);  // + InputTransform's slack
  std::memset(xp, 0, (static_cast<size_t>(L.c) * L.hp * L.hp + 64) * sizeof(float));
  float* v = Floats(static_cast<size_t>(36) * L.c * all);
  std::memset(v, 0, static_cast<size_t>(36) * L.c * all * sizeof(float));  // tiles past a chunk's end stay 0
  float* u = Floats(static_cast<size_t>(36) * L.k * L.c);
  float* m = Floats(static_cast<size_t>(36) * L.k * all);
  float* y = Floats(static_cast<size_t>(L.k) * L.h * L.h);
  WeightTransform(L, w, u);
  // Two orders, the faster reported: every tile at once (U read once; V and M as large as the
  // map), and chunks of 48 tiles (the products' register tile; a chunk's V and M stay in the
  // caches, U is read once a chunk).
  Timing best;
  best.median_ms = 1e30;
  for (const int chunk : {all, 48}) {
    if (chunk == 48 && all <= 48) continue;
    L.chunk = chunk;
    L.tp = chunk;
    const Timing t = Measure(L, x, w, xp, u, v, m, y);
    if (t.median_ms < best.median_ms) best = t;
  }
  std::printf("{\"median_ms\": %.4f, \"input_ms\": %.4f, \"products_ms\": %.4f, \"products_lane_fma_per_s\": %.4g, "
              "\"output_ms\": %.4f, \"rel_err\": %.3g, \"tiles_per_chunk\": %d}\n",
              best.median_ms, best.input_ms, best.products_ms, best.products_rate, best.output_ms, best.rel_err,
              best.chunk);
  return 0;
}
