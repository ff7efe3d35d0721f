// A dense 3x3 convolution by Winograd F(4x4, 3x3) on this core: how fast a fast-algorithm path
// for the denser 3x3 layers (unit stride, pads 1) would run here, against ONNX Runtime's direct
// dense convolution and the CSR layer (docs/BENCHMARKS.md). Built and run by
// bench/winograd_probe.py; prints one JSON object. Not a kernel of the library: AVX-512F only,
// H and W multiples of 4, no cache blocking in the products.
//   usage: winograd_probe C K H   (C input and K output channels, an H x H map)
// Steps, each timed alone too: the input transform (each channel's 6x6 tiles gathered 16 tiles
// at a time from the padded input, B^T d B in registers), 36 products U[xi] (K x C) . V[xi]
// (C x tiles) in 8 x 48 register tiles, the output transform (A^T m A in registers). The
// weight transform runs once, outside the timing. The result is checked against a float64
// direct convolution on every 8th output channel: rel_err = max |error| / max |output|.
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

namespace {

// F(4x4, 3x3) with points 0, +-1, +-2 (Lavin and Gray, 2016): B^T, G and A^T.
const float kG[6][3] = {{1.f / 4, 0, 0},           {-1.f / 6, -1.f / 6, -1.f / 6}, {-1.f / 6, 1.f / 6, -1.f / 6},
                        {1.f / 24, 1.f / 12, 1.f / 6}, {1.f / 24, -1.f / 12, 1.f / 6}, {0, 0, 1}};

struct Layer {
  int c, k, h, hp, tw, nt, tp;  // channels in/out, map, padded map, tiles a row, tiles, tiles rounded to 16
};

float* Floats(size_t n) { return static_cast<float*>(aligned_alloc(64, ((n * 4 + 63) / 64) * 64)); }

// r = B^T d for the six values d0..d5 (one column or row of a tile), 16 tiles at a time.
ONNXPRUNE_PROBE_TARGET inline void InputRow(const __m512 d[6], __m512 r[6]) {
  const __m512 four = _mm512_set1_ps(4), m4 = _mm512_set1_ps(-4), m5 = _mm512_set1_ps(-5), two = _mm512_set1_ps(2);
  r[0] = _mm512_fmadd_ps(four, d[0], _mm512_fmadd_ps(m5, d[2], d[4]));
  const __m512 a = _mm512_fmadd_ps(m4, d[2], d[4]), b = _mm512_fmadd_ps(m4, d[1], d[3]);
  r[1] = _mm512_add_ps(a, b);
  r[2] = _mm512_sub_ps(a, b);
  const __m512 p = _mm512_sub_ps(d[4], d[2]), q = _mm512_mul_ps(two, _mm512_sub_ps(d[3], d[1]));
  r[3] = _mm512_add_ps(p, q);
  r[4] = _mm512_sub_ps(p, q);
  r[5] = _mm512_fmadd_ps(four, d[1], _mm512_fmadd_ps(m5, d[3], d[5]));
}

// r = A^T m for the six values m0..m5, four outputs.
ONNXPRUNE_PROBE_TARGET inline void OutputRow(const __m512 m[6], __m512 r[4]) {
  const __m512 a = _mm512_add_ps(m[1], m[2]), b = _mm512_sub_ps(m[1], m[2]);
  const __m512 c = _mm512_add_ps(m[3], m[4]), d = _mm512_sub_ps(m[3], m[4]);
  r[0] = _mm512_add_ps(_mm512_add_ps(m[0], a), c);
  r[1] = _mm512_fmadd_ps(_mm512_set1_ps(2), d, b);
  r[2] = _mm512_fmadd_ps(_mm512_set1_ps(4), c, a);
  r[3] = _mm512_add_ps(_mm512_fmadd_ps(_mm512_set1_ps(8), d, b), m[5]);
}

// V[xi][c][t] for every channel: tile t's 6x6 input at (4 ty, 4 tx) of the padded map.
ONNXPRUNE_PROBE_TARGET void InputTransform(const Layer& L, const float* xp, float* v) {
  const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  for (int t0 = 0; t0 < L.tp; t0 += 16) {
    alignas(64) int at[16];
    for (int l = 0; l < 16; ++l) {
      const int t = std::min(t0 + l, L.nt - 1);
      at[l] = (t / L.tw) * 4 * L.hp + (t % L.tw) * 4;
    }
    const __m512i base = _mm512_load_si512(at);
    const __mmask16 live = _mm512_cmplt_epi32_mask(_mm512_add_epi32(_mm512_set1_epi32(t0), lane), _mm512_set1_epi32(L.nt));
    for (int c = 0; c < L.c; ++c) {
      const float* xc = xp + static_cast<size_t>(c) * L.hp * L.hp;
      __m512 e[6][6];
      for (int j = 0; j < 6; ++j) {
        __m512 d[6];
        for (int i = 0; i < 6; ++i)
          d[i] = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), live, _mm512_add_epi32(base, _mm512_set1_epi32(i * L.hp + j)),
                                          xc, 4);
        __m512 r[6];
        InputRow(d, r);
        for (int i = 0; i < 6; ++i) e[i][j] = r[i];
      }
      for (int i = 0; i < 6; ++i) {
        __m512 r[6];
        InputRow(e[i], r);
        for (int j = 0; j < 6; ++j) _mm512_store_ps(v + (static_cast<size_t>(i * 6 + j) * L.c + c) * L.tp + t0, r[j]);
      }
    }
  }
}

// M[xi][k][t] = sum_c U[xi][k][c] V[xi][c][t], K a multiple of 8, tiles in 16s (1-3 vectors).
ONNXPRUNE_PROBE_TARGET void Products(const Layer& L, const float* u, const float* v, float* m) {
  for (int xi = 0; xi < 36; ++xi) {
    const float* ux = u + static_cast<size_t>(xi) * L.k * L.c;
    const float* vx = v + static_cast<size_t>(xi) * L.c * L.tp;
    float* mx = m + static_cast<size_t>(xi) * L.k * L.tp;
    for (int t0 = 0; t0 < L.tp; t0 += 48) {
      const int nv = std::min(3, (L.tp - t0) / 16);
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

ONNXPRUNE_PROBE_TARGET void OutputTransform(const Layer& L, const float* m, float* y) {
  for (int k = 0; k < L.k; ++k) {
    for (int t0 = 0; t0 < L.tp; t0 += 16) {
      __m512 mm[6][6], e[4][6];
      for (int i = 0; i < 6; ++i)
        for (int j = 0; j < 6; ++j) mm[i][j] = _mm512_load_ps(m + (static_cast<size_t>(i * 6 + j) * L.k + k) * L.tp + t0);
      for (int j = 0; j < 6; ++j) {  // e = A^T m, column by column
        const __m512 a = _mm512_add_ps(mm[1][j], mm[2][j]), b = _mm512_sub_ps(mm[1][j], mm[2][j]);
        const __m512 c = _mm512_add_ps(mm[3][j], mm[4][j]), d = _mm512_sub_ps(mm[3][j], mm[4][j]);
        e[0][j] = _mm512_add_ps(_mm512_add_ps(mm[0][j], a), c);
        e[1][j] = _mm512_fmadd_ps(_mm512_set1_ps(2), d, b);
        e[2][j] = _mm512_fmadd_ps(_mm512_set1_ps(4), c, a);
        e[3][j] = _mm512_add_ps(_mm512_fmadd_ps(_mm512_set1_ps(8), d, b), mm[5][j]);
      }
      alignas(64) float out[4][4][16];
      for (int i = 0; i < 4; ++i) {
        __m512 r[4];
        OutputRow(e[i], r);
        for (int j = 0; j < 4; ++j) _mm512_store_ps(out[i][j], r[j]);
      }
      for (int l = 0; l < 16 && t0 + l < L.nt; ++l) {
        const int t = t0 + l;
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
  L.tp = (L.nt + 15) / 16 * 16;
  std::mt19937 rng(1);
  std::normal_distribution<float> nd;
  std::vector<float> x(static_cast<size_t>(L.c) * L.h * L.h), w(static_cast<size_t>(L.k) * L.c * 9);
  for (auto& e : x) e = nd(rng);
  for (auto& e : w) e = nd(rng) / std::sqrt(9.f * L.c);
  float* xp = Floats(static_cast<size_t>(L.c) * L.hp * L.hp);
  float* v = Floats(static_cast<size_t>(36) * L.c * L.tp);
  float* u = Floats(static_cast<size_t>(36) * L.k * L.c);
  float* m = Floats(static_cast<size_t>(36) * L.k * L.tp);
  float* y = Floats(static_cast<size_t>(L.k) * L.h * L.h);
  WeightTransform(L, w, u);
  const auto run = [&] {
    Pad(L, x, xp);
    InputTransform(L, xp, v);
    Products(L, u, v, m);
    OutputTransform(L, m, y);
  };
  run();
  const double rel_err = RelativeError(L, x, w, y);
  std::vector<double> ms;
  for (int r = 0; r < 60; ++r) ms.push_back(BestMs(run, 1));
  std::sort(ms.begin(), ms.end());
  const double input_ms = BestMs([&] { InputTransform(L, xp, v); }, 20);
  const double products_ms = BestMs([&] { Products(L, u, v, m); }, 20);
  const double output_ms = BestMs([&] { OutputTransform(L, m, y); }, 20);
  std::printf("{\"median_ms\": %.4f, \"input_ms\": %.4f, \"products_ms\": %.4f, \"products_lane_fma_per_s\": %.4g, "
              "\"output_ms\": %.4f, \"rel_err\": %.3g}\n",
              ms[ms.size() / 2], input_ms, products_ms, 36.0 * L.k * L.c * L.tp / (products_ms * 1e-3), output_ms, rel_err);
  return 0;
}
