// What one core can do for a sparse-times-dense loop: the rates behind the ceilings that
// bench/core_rates.py prints (docs/BENCHMARKS.md). Built and run by that script; prints one
// JSON object. Each figure is a stand-alone loop on this core, 1 thread:
//   chain_ns       one dependent FMA (latency): clock = latency_cycles / chain_ns
//   regs           FMAs on 12 independent register accumulators (the FMA units alone)
//   l1_load        FMAs each reading one aligned vector from a 16 KB buffer (L1)
//   tile_l1/_l2    the CSR tile loop of runtime_ops (one broadcast weight and one int32 offset
//                  per nonzero, V vectors multiplied at the offset into V accumulators) over a
//                  window of 32 KB (L1) or 1 MB (L2), random nonzero offsets, V = 4, 8, 12
// Rates in lane-FMA/s (vector FMAs x lanes), so AVX2 and AVX-512 compare directly.
#include <immintrin.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

namespace {

double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Runs f(reps) with reps doubled until one call takes >= 0.2 s; returns seconds per rep.
template <class F>
double Time(F f) {
  long reps = 1;
  for (;;) {
    const double t = Now();
    f(reps);
    const double dt = Now() - t;
    if (dt >= 0.2) return dt / static_cast<double>(reps);
    reps *= 2;
  }
}

volatile float g_sink = 0.f;

#define AVX512 __attribute__((target("avx512f,fma"), noipa))
#define AVX2 __attribute__((target("avx2,fma"), noipa))
#define AVX512_INLINE __attribute__((target("avx512f,fma"), always_inline)) inline
#define AVX2_INLINE __attribute__((target("avx2,fma"), always_inline)) inline

// One ISA's loops. Vec/kLanes and the intrinsics differ; the loops are the same.
#define DEFINE_LOOPS(NS, ATTR, Vec, kLanesValue, Set1, Load, Fma, Add, Sum)                              \
  namespace NS {                                                                                          \
  constexpr int kLanes = kLanesValue;                                                                     \
  ATTR float Chain(long n) {                                                                              \
    Vec a = Set1(1.f);                                                                                    \
    const Vec b = Set1(0.999f), c = Set1(0.001f);                                                         \
    for (long i = 0; i < n; ++i) {                                                                        \
      a = Fma(a, b, c);                                                                                   \
      a = Fma(a, b, c);                                                                                   \
      a = Fma(a, b, c);                                                                                   \
      a = Fma(a, b, c);                                                                                   \
    }                                                                                                     \
    return Sum(a);                                                                                        \
  }                                                                                                       \
  ATTR float Regs(long n, const float* seed) {                                                            \
    const Vec b = Set1(0.999f), c = Set1(0.001f);                                                         \
    Vec a0 = Set1(seed[0]), a1 = Set1(seed[1]), a2 = Set1(seed[2]), a3 = Set1(seed[3]);                   \
    Vec a4 = Set1(seed[4]), a5 = Set1(seed[5]), a6 = Set1(seed[6]), a7 = Set1(seed[7]);                   \
    Vec a8 = Set1(seed[8]), a9 = Set1(seed[9]), a10 = Set1(seed[10]), a11 = Set1(seed[11]);               \
    for (long i = 0; i < n; ++i) {                                                                        \
      a0 = Fma(a0, b, c); a1 = Fma(a1, b, c); a2 = Fma(a2, b, c); a3 = Fma(a3, b, c);                     \
      a4 = Fma(a4, b, c); a5 = Fma(a5, b, c); a6 = Fma(a6, b, c); a7 = Fma(a7, b, c);                     \
      a8 = Fma(a8, b, c); a9 = Fma(a9, b, c); a10 = Fma(a10, b, c); a11 = Fma(a11, b, c);                 \
    }                                                                                                     \
    return Sum(Add(Add(Add(Add(a0, a1), Add(a2, a3)), Add(Add(a4, a5), Add(a6, a7))),                     \
                   Add(Add(a8, a9), Add(a10, a11))));                                                     \
  }                                                                                                       \
  /* 12 FMAs per step, each reading its own vector of a 16 KB buffer */                                   \
  ATTR float L1Load(long n, const float* buf, const float* seed) {                                        \
    const Vec b = Set1(0.999f);                                                                           \
    Vec a0 = Set1(seed[0]), a1 = Set1(seed[1]), a2 = Set1(seed[2]), a3 = Set1(seed[3]);                   \
    Vec a4 = Set1(seed[4]), a5 = Set1(seed[5]), a6 = Set1(seed[6]), a7 = Set1(seed[7]);                   \
    Vec a8 = Set1(seed[8]), a9 = Set1(seed[9]), a10 = Set1(seed[10]), a11 = Set1(seed[11]);               \
    for (long i = 0; i < n; ++i) {                                                                        \
      const float* q = buf + ((i & 15) * 16 * kLanes);                                                    \
      a0 = Fma(Load(q), b, a0); a1 = Fma(Load(q + kLanes), b, a1);                                        \
      a2 = Fma(Load(q + 2 * kLanes), b, a2); a3 = Fma(Load(q + 3 * kLanes), b, a3);                       \
      a4 = Fma(Load(q + 4 * kLanes), b, a4); a5 = Fma(Load(q + 5 * kLanes), b, a5);                       \
      a6 = Fma(Load(q + 6 * kLanes), b, a6); a7 = Fma(Load(q + 7 * kLanes), b, a7);                       \
      a8 = Fma(Load(q + 8 * kLanes), b, a8); a9 = Fma(Load(q + 9 * kLanes), b, a9);                       \
      a10 = Fma(Load(q + 10 * kLanes), b, a10); a11 = Fma(Load(q + 11 * kLanes), b, a11);                 \
    }                                                                                                     \
    return Sum(Add(Add(Add(Add(a0, a1), Add(a2, a3)), Add(Add(a4, a5), Add(a6, a7))),                     \
                   Add(Add(a8, a9), Add(a10, a11))));                                                     \
  }                                                                                                       \
  /* The tile loop: V accumulators, one broadcast and one offset per nonzero. */                          \
  template <int V>                                                                                        \
  ATTR float Tile(const float* w, const int32_t* off, long nnz, const float* q) {                         \
    Vec a[V];                                                                                             \
    for (int v = 0; v < V; ++v) a[v] = Set1(0.f);                                                         \
    for (long j = 0; j < nnz; ++j) {                                                                      \
      const float* s = q + off[j];                                                                        \
      const Vec wj = Set1(w[j]);                                                                          \
      for (int v = 0; v < V; ++v) a[v] = Fma(wj, Load(s + v * kLanes), a[v]);                             \
    }                                                                                                     \
    Vec t = a[0];                                                                                         \
    for (int v = 1; v < V; ++v) t = Add(t, a[v]);                                                         \
    return Sum(t);                                                                                        \
  }                                                                                                       \
  }

AVX512_INLINE __m512 Set1_512(float x) { return _mm512_set1_ps(x); }
AVX512_INLINE __m512 Load_512(const float* p) { return _mm512_load_ps(p); }
AVX512_INLINE __m512 Fma_512(__m512 a, __m512 b, __m512 c) { return _mm512_fmadd_ps(a, b, c); }
AVX512_INLINE __m512 Add_512(__m512 a, __m512 b) { return _mm512_add_ps(a, b); }
AVX512_INLINE float Sum_512(__m512 a) { return _mm512_reduce_add_ps(a); }
AVX2_INLINE __m256 Set1_256(float x) { return _mm256_set1_ps(x); }
AVX2_INLINE __m256 Load_256(const float* p) { return _mm256_load_ps(p); }
AVX2_INLINE __m256 Fma_256(__m256 a, __m256 b, __m256 c) { return _mm256_fmadd_ps(a, b, c); }
AVX2_INLINE __m256 Add_256(__m256 a, __m256 b) { return _mm256_add_ps(a, b); }
AVX2_INLINE float Sum_256(__m256 a) {
  alignas(32) float t[8];
  _mm256_store_ps(t, a);
  return t[0] + t[1] + t[2] + t[3] + t[4] + t[5] + t[6] + t[7];
}

DEFINE_LOOPS(avx512, AVX512, __m512, 16, Set1_512, Load_512, Fma_512, Add_512, Sum_512)
DEFINE_LOOPS(avx2, AVX2, __m256, 8, Set1_256, Load_256, Fma_256, Add_256, Sum_256)

// A window of `bytes` and `nnz` nonzeros at random vector-aligned offsets that leave room for
// V vectors (aligned loads, no line split: the layout runtime_ops gives its copies).
struct Window {
  std::vector<float, std::allocator<float>> storage;
  float* q = nullptr;
  std::vector<float> w;
  std::vector<int32_t> off;
};

Window MakeWindow(size_t bytes, int lanes, int vectors, long nnz, unsigned seed) {
  Window win;
  const size_t floats = bytes / sizeof(float);
  win.storage.assign(floats + 64, 0.5f);
  win.q = reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(win.storage.data()) + 63) & ~uintptr_t{63});
  std::mt19937 g(seed);
  const size_t slots = (floats - static_cast<size_t>(vectors) * lanes) / lanes;
  std::uniform_int_distribution<size_t> pick(0, slots - 1);
  for (long j = 0; j < nnz; ++j) {
    win.off.push_back(static_cast<int32_t>(pick(g) * lanes));
    win.w.push_back(0.001f * static_cast<float>(j % 7));
  }
  return win;
}

template <class TileFn>
double TileRate(TileFn tile, size_t bytes, int lanes, int vectors, unsigned seed) {
  const long nnz = 4096;  // ~ one output channel's nonzeros over a window
  const Window win = MakeWindow(bytes, lanes, vectors, nnz, seed);
  const double s = Time([&](long reps) {
    for (long r = 0; r < reps; ++r) g_sink = g_sink + tile(win.w.data(), win.off.data(), nnz, win.q);
  });
  return static_cast<double>(nnz) * vectors * lanes / s;
}

}  // namespace

int main() {
  __builtin_cpu_init();
  const bool has512 = __builtin_cpu_supports("avx512f");
  const bool has2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (!has512 && !has2) {
    std::printf("{\"error\": \"neither AVX-512 nor AVX2 with FMA on this CPU\"}\n");
    return 0;
  }
  const int lanes = has512 ? 16 : 8;
  float* buf = static_cast<float*>(std::aligned_alloc(64, 16384));
  for (int i = 0; i < 4096; ++i) buf[i] = 1e-3f * static_cast<float>(i % 97);
  const float seed[12] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12};
  const long n = 1 << 20;
  const double chain = Time([&](long reps) {
    for (long r = 0; r < reps; ++r) g_sink = g_sink + (has512 ? avx512::Chain(n) : avx2::Chain(n));
  }) / (4.0 * n);
  const double regs = Time([&](long reps) {
    for (long r = 0; r < reps; ++r) g_sink = g_sink + (has512 ? avx512::Regs(n, seed) : avx2::Regs(n, seed));
  });
  const double l1 = Time([&](long reps) {
    for (long r = 0; r < reps; ++r)
      g_sink = g_sink + (has512 ? avx512::L1Load(n, buf, seed) : avx2::L1Load(n, buf, seed));
  });
  std::printf("{\"isa\": \"%s\", \"lanes\": %d, \"chain_ns\": %.4f, \"regs\": %.4g, \"l1_load\": %.4g",
              has512 ? "avx512" : "avx2", lanes, chain * 1e9, 12.0 * n * lanes / regs, 12.0 * n * lanes / l1);
  const struct {
    const char* name;
    size_t bytes;
  } windows[] = {{"l1", 32 * 1024}, {"l2", 1024 * 1024}};
  for (const auto& win : windows) {
    for (int v : {4, 8, 12}) {
      double rate = 0.0;
      if (has512) {
        rate = v == 4    ? TileRate(avx512::Tile<4>, win.bytes, lanes, v, 1)
               : v == 8  ? TileRate(avx512::Tile<8>, win.bytes, lanes, v, 1)
                         : TileRate(avx512::Tile<12>, win.bytes, lanes, v, 1);
      } else {
        rate = v == 4    ? TileRate(avx2::Tile<4>, win.bytes, lanes, v, 1)
               : v == 8  ? TileRate(avx2::Tile<8>, win.bytes, lanes, v, 1)
                         : TileRate(avx2::Tile<12>, win.bytes, lanes, v, 1);
      }
      std::printf(", \"tile_%s_v%d\": %.4g", win.name, v, rate);
    }
  }
  std::printf("}\n");
  std::free(buf);
  return 0;
}
