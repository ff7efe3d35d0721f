// ONNX Runtime custom-op library for the `ai.onnxprune` domain: CsrGemm and CsrConv.
//
// The library talks to ORT only through the C API table handed to RegisterCustomOps (see
// ort_abi.h), so it loads into any ORT >= 1.17 from any language binding and never links
// libonnxruntime. The op contracts are documented in runtime_ops/README.md.
//
// Safety: the CSR arrays index memory, so they are validated before any kernel reads through
// them (row_ptr starts at 0, never decreases, ends at nnz; every column index lies in [0, K)).
// Constant CSR initializers are validated once when the kernel is created, which also makes a
// malformed model fail at session creation, and their index arrays are then read from the
// kernel's own copy (ValidatedCsr); anything else is validated on every run.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <limits>
#include <memory>
#include <mutex>
#include <new>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "kernels.h"
#include "ort_abi.h"
#include "sell.h"
#include "winograd.h"

#if defined(__linux__)
#include <sys/mman.h>
#include <unistd.h>
#endif

#define ONNXPRUNE_EXPORT extern "C" __attribute__((visibility("default")))

namespace onnxprune {
namespace {

// The custom-op domain. runtime_ops/__init__.py defines the same string as DOMAIN and a test
// checks the two agree.
constexpr const char* kDomain = "ai.onnxprune";
// Newest op-set of the domain this build implements (runtime_ops/README.md; OPSET_VERSION in
// runtime_ops/__init__.py, a test checks they agree).
constexpr int kOpsetVersion = 9;

const ortabi::Api* g_api = nullptr;

// --- errors ---------------------------------------------------------------------------------

// A failure reported by ORT itself; its status is handed back to ORT unchanged.
struct OrtFailure {
  ortabi::Status* status;
};

// A failure detected here, turned into an ORT status at the C boundary.
struct OpError : std::exception {
  ortabi::ErrorCode code;
  std::string message;
  OpError(ortabi::ErrorCode c, std::string m) : code(c), message(std::move(m)) {}
  const char* what() const noexcept override { return message.c_str(); }
};

template <class... Args>
[[noreturn]] void Fail(ortabi::ErrorCode code, const Args&... parts) {
  std::ostringstream os;
  (os << ... << parts);
  throw OpError(code, os.str());
}

// a * b, failing (never wrapping) when it leaves int64. Sizes derived from shapes and
// attributes go through this: a wrapped size allocates a small buffer and indexes far past it.
int64_t CheckedMul(int64_t a, int64_t b, const char* what) {
  int64_t r = 0;
  if (__builtin_mul_overflow(a, b, &r)) Fail(ortabi::kInvalidArgument, what, " overflows 64-bit arithmetic");
  return r;
}

void Check(ortabi::Status* status) {
  if (status != nullptr) throw OrtFailure{status};
}

// Runs `body` and converts whatever it throws into an ORT status, because no C++ exception may
// cross into ORT.
template <class F>
ortabi::Status* Guard(const char* where, F&& body) noexcept {
  try {
    body();
    return nullptr;
  } catch (const OrtFailure& e) {
    return e.status;
  } catch (const OpError& e) {
    return g_api->CreateStatus(e.code, (std::string(where) + ": " + e.message).c_str());
  } catch (const std::bad_alloc&) {
    return g_api->CreateStatus(ortabi::kFail, (std::string(where) + ": out of memory").c_str());
  } catch (const std::exception& e) {
    return g_api->CreateStatus(ortabi::kFail, (std::string(where) + ": " + e.what()).c_str());
  } catch (...) {
    return g_api->CreateStatus(ortabi::kFail, (std::string(where) + ": unknown error").c_str());
  }
}

std::string ShapeStr(const std::vector<int64_t>& s) {
  std::ostringstream os;
  os << '(';
  for (size_t i = 0; i < s.size(); ++i) os << (i ? ", " : "") << s[i];
  if (s.size() == 1) os << ',';
  os << ')';
  return os.str();
}

// --- tensors and attributes -----------------------------------------------------------------

struct Tensor {
  ortabi::ElementType type = ortabi::kUndefined;
  std::vector<int64_t> shape;
  int64_t numel = 0;
  void* data = nullptr;

  template <class T>
  const T* as() const {
    return static_cast<const T*>(data);
  }
};

Tensor Inspect(const ortabi::Value* value) {
  Tensor t;
  ortabi::TensorTypeAndShapeInfo* info = nullptr;
  Check(g_api->GetTensorTypeAndShape(value, &info));
  std::unique_ptr<ortabi::TensorTypeAndShapeInfo, void (*)(ortabi::TensorTypeAndShapeInfo*) noexcept> owner(
      info, g_api->ReleaseTensorTypeAndShapeInfo);
  Check(g_api->GetTensorElementType(info, &t.type));
  size_t rank = 0;
  Check(g_api->GetDimensionsCount(info, &rank));
  t.shape.resize(rank);
  if (rank) Check(g_api->GetDimensions(info, t.shape.data(), rank));
  t.numel = 1;
  for (int64_t d : t.shape) t.numel = CheckedMul(t.numel, d, "tensor element count");
  // ORT owns the buffer; the cast only matches the C signature, inputs are never written.
  Check(g_api->GetTensorMutableData(const_cast<ortabi::Value*>(value), &t.data));
  return t;
}

// Whether the node carries attribute `name`, of any type. The typed readers below fail both
// for an absent attribute and for one of another type; only absence may mean "use the
// default", so a failed read is followed by this probe (an int, a float, or the ints-array size
// query, which succeeds for an attribute of any type in ORT 1.17+) before the default is taken.
bool HasAttr(const ortabi::KernelInfo* info, const char* name) {
  const auto ok = [](ortabi::Status* st) {
    if (st == nullptr) return true;
    g_api->ReleaseStatus(st);
    return false;
  };
  int64_t i = 0;
  float f = 0.f;
  size_t size = 0;
  return ok(g_api->KernelInfoGetAttribute_int64(info, name, &i)) ||
         ok(g_api->KernelInfoGetAttribute_float(info, name, &f)) ||
         ok(g_api->KernelInfoGetAttributeArray_int64(info, name, nullptr, &size));
}

// An optional attribute: `fallback` when the node does not carry it, an error when it carries
// it with another type (read as absent, it would silently change what the op computes).
int64_t AttrInt(const ortabi::KernelInfo* info, const char* name, int64_t fallback) {
  int64_t v = 0;
  if (ortabi::Status* st = g_api->KernelInfoGetAttribute_int64(info, name, &v)) {
    g_api->ReleaseStatus(st);
    if (HasAttr(info, name)) Fail(ortabi::kInvalidArgument, "attribute ", name, " must be an int");
    return fallback;
  }
  return v;
}

float AttrFloat(const ortabi::KernelInfo* info, const char* name, float fallback) {
  float v = 0.f;
  if (ortabi::Status* st = g_api->KernelInfoGetAttribute_float(info, name, &v)) {
    g_api->ReleaseStatus(st);
    if (HasAttr(info, name)) Fail(ortabi::kInvalidArgument, "attribute ", name, " must be a float");
    return fallback;
  }
  return v;
}

// An ints attribute of another type reads as an empty list (or fails, then is refused), which
// the callers' length checks refuse.
std::vector<int64_t> AttrInts(const ortabi::KernelInfo* info, const char* name, std::vector<int64_t> fallback) {
  size_t size = 0;
  if (ortabi::Status* st = g_api->KernelInfoGetAttributeArray_int64(info, name, nullptr, &size)) {
    g_api->ReleaseStatus(st);
    if (HasAttr(info, name)) Fail(ortabi::kInvalidArgument, "attribute ", name, " must be a list of ints");
    return fallback;
  }
  std::vector<int64_t> v(size);
  if (size) Check(g_api->KernelInfoGetAttributeArray_int64(info, name, v.data(), &size));
  return v;
}

// The fused activation of CsrConv (op-set 2) and CsrGemm (op-set 3; runtime_ops/README.md):
// the `activation` string names one of a fixed set, `activation_params` holds its floats (all
// of them, or none for the ONNX op's defaults). Anything else, a name longer than any known
// one included, is refused here, before any run.
Activation ReadActivation(const ortabi::KernelInfo* info) {
  struct Known {
    const char* name;
    Act kind;
    size_t params;
    float alpha, beta;  // the ONNX op's defaults
  };
  static const Known kKnown[] = {
      {"Relu", Act::kRelu, 0, 0.f, 0.f},
      {"LeakyRelu", Act::kLeakyRelu, 1, 0.01f, 0.f},
      {"Clip", Act::kClip, 2, std::numeric_limits<float>::lowest(), std::numeric_limits<float>::max()},
      {"HardSigmoid", Act::kHardSigmoid, 2, 0.2f, 0.5f},
      {"HardSwish", Act::kHardSwish, 0, 0.f, 0.f},
      {"Sigmoid", Act::kSigmoid, 0, 0.f, 0.f},
      {"Swish", Act::kSilu, 0, 0.f, 0.f},
      {"Gelu", Act::kGelu, 0, 0.f, 0.f},
  };
  constexpr size_t kLongest = 16;
  size_t size = 0;
  if (ortabi::Status* st = g_api->KernelInfoGetAttribute_string(info, "activation", nullptr, &size)) {
    g_api->ReleaseStatus(st);
    if (HasAttr(info, "activation")) Fail(ortabi::kInvalidArgument, "attribute activation must be a string");
    if (HasAttr(info, "activation_params"))
      Fail(ortabi::kInvalidArgument, "attribute activation_params is given without an activation");
    return {};
  }
  // `size` counts the terminating NUL. The name is compared byte for byte over its full length
  // (a NUL inside it, "Relu\0Sigmoid", is no known name) and only printable ASCII of it goes
  // into an error message.
  std::string name;
  if (size >= 1 && size <= kLongest + 1) {
    std::vector<char> buf(size + 1, '\0');
    Check(g_api->KernelInfoGetAttribute_string(info, "activation", buf.data(), &size));
    name.assign(buf.data(), std::min(size, buf.size()) - 1);
  }
  const Known* known = nullptr;
  for (const Known& k : kKnown)
    if (name == k.name) known = &k;
  if (known == nullptr) {
    std::string shown = size > kLongest + 1 ? "(a name over 16 characters)" : "'";
    if (size <= kLongest + 1) {
      for (const char ch : name) shown += (ch >= 0x20 && ch < 0x7f) ? ch : '?';
      shown += "'";
    }
    Fail(ortabi::kInvalidArgument, "activation ", shown,
         " is not one of Relu, LeakyRelu, Clip, HardSigmoid, HardSwish, Sigmoid, Swish, Gelu");
  }
  // Read with a buffer, never a size query alone: ORT answers that one for a list of another
  // type too. It also reads an attribute of another type (an ints list, a single float, a
  // tensor) as an empty list of floats, so a present attribute must read as a non-empty one:
  // the lowering never writes an empty list, and the defaults are asked for by leaving it out.
  float params[4] = {};
  size_t count = 4;
  if (ortabi::Status* st = g_api->KernelInfoGetAttributeArray_float(info, "activation_params", params, &count)) {
    g_api->ReleaseStatus(st);
    count = HasAttr(info, "activation_params") ? 5 : 0;  // a longer list, or one of another type
  } else if (count == 0 && HasAttr(info, "activation_params")) {
    count = 5;
  }
  if (count != 0 && count != known->params) {
    if (known->params == 0) Fail(ortabi::kInvalidArgument, "activation ", name, " takes no activation_params");
    Fail(ortabi::kInvalidArgument, "activation_params of ", name, " must be a list of ", known->params,
         " floats, or absent for the defaults");
  }
  Activation act{known->kind, known->alpha, known->beta};
  if (count >= 1) act.alpha = params[0];
  if (count >= 2) act.beta = params[1];
  const bool finite = std::isfinite(act.alpha) && std::isfinite(act.beta);
  if (known->kind == Act::kClip ? (std::isnan(act.alpha) || std::isnan(act.beta) || act.alpha > act.beta)
                                : !finite)
    Fail(ortabi::kInvalidArgument, "activation_params of ", name,
         known->kind == Act::kClip ? " must be [min, max] with min <= max" : " must be finite");
  return act;
}

const ortabi::Value* Input(const ortabi::KernelContext* ctx, size_t count, size_t index) {
  if (index >= count) return nullptr;
  const ortabi::Value* v = nullptr;
  Check(g_api->KernelContext_GetInput(ctx, index, &v));
  return v;
}

// The ISA named `name` (IsaName's spelling); false for any other name.
bool IsaByName(const char* name, Isa* out) {
  for (Isa isa : {Isa::kAvx512, Isa::kAvx2, Isa::kScalar}) {
    if (std::strcmp(name, IsaName(isa)) == 0) {
      *out = isa;
      return true;
    }
  }
  return false;
}

Isa ChooseIsa() {
  const char* forced = std::getenv("ONNXPRUNE_KERNEL_ISA");
  if (forced == nullptr || *forced == '\0') return BestIsa();
  Isa isa = Isa::kScalar;
  if (!IsaByName(forced, &isa))
    Fail(ortabi::kInvalidArgument, "ONNXPRUNE_KERNEL_ISA=", forced, " is not one of avx512, avx2, scalar");
  if (!CpuHas(isa)) Fail(ortabi::kFail, "ONNXPRUNE_KERNEL_ISA=", forced, " but this CPU lacks it");
  return isa;
}

// --- parallelism ----------------------------------------------------------------------------

// Splits `total` tasks over the session's intra-op thread pool, so intra_op_num_threads is
// honoured and no second pool competes for the cores. Without a context (a loop inside a task
// of another), the tasks run in turn on the calling thread.
template <class F>
void ParallelFor(const ortabi::KernelContext* ctx, size_t total, const F& body) {
  if (total == 0) return;
  if (total == 1 || ctx == nullptr) {
    for (size_t t = 0; t < total; ++t) body(t);
    return;
  }
  struct Shared {
    const F* body;
    std::atomic<bool> failed{false};
  } shared{&body};
  auto trampoline = [](void* data, size_t i) {
    auto* s = static_cast<Shared*>(data);
    try {
      (*s->body)(i);
    } catch (...) {
      s->failed.store(true);
    }
  };
  Check(g_api->KernelContext_ParallelFor(ctx, trampoline, total, 0, &shared));
  if (shared.failed.load()) Fail(ortabi::kFail, "a parallel task failed");
}

// Input X of CsrConv and MaxPool: float32 (N, C, H, W), or (N, C, L) where x_rank is 3 (a 1-D
// kernel), returned as (N, C, 1, L); `count` gets the node's input count.
Tensor ReadNchw(const ortabi::KernelContext* ctx, size_t x_rank, size_t* count) {
  Check(g_api->KernelContext_GetInputCount(ctx, count));
  const ortabi::Value* xv = Input(ctx, *count, 0);
  if (xv == nullptr) Fail(ortabi::kInvalidArgument, "input X is missing");
  Tensor x = Inspect(xv);
  if (x.type != ortabi::kFloat || x.shape.size() != x_rank)
    Fail(ortabi::kInvalidArgument, x_rank == 4 ? "X must be a 4-D float32 NCHW tensor" :
         "X must be a 3-D float32 (N, C, L) tensor for a 1-D kernel_shape", ", got shape ", ShapeStr(x.shape));
  if (x_rank == 3) x.shape.insert(x.shape.begin() + 2, 1);  // (N, C, 1, L)
  return x;
}

// Output rows (channels, features) per tile task: CsrConv's tiles and CsrGemm's tiled product.
// A task's rows pass over each block of input planes in turn, so more rows per task means more
// uses of a block while it is in L1 (and a larger partial-sum buffer, kept in L2), but fewer
// tasks for the pool to balance: kTileTaskRows where the session's pool has several threads,
// kSingleThreadTaskRows where it has one. On an Intel core (lscpu family 6 model 207, 1 thread,
// one process, one session per setting): BERT-base's encoder layer at 10% 1.076-1.080x faster
// with 384-1024 rows per task than with 64, VGG-16 at the paper's densities 1.065-1.074x with
// 256-1024, ResNet-50 at 90% 1.01x; with 2 threads 768-row tasks (one for a 768-row layer) ran
// BERT 0.75x. CsrGemm takes 1024 on one thread: at batch 8 (1024 rows of 13-vector tiles, whose
// K blocks hold ~7 nonzeros of a row, so a task's partial sums pass often) the BERT-base layer
// ran 1.04x faster than with 512 (its FFN alone 1.055x; 1536 rows 1.07x, 3072 1.03x), at batch 1
// 1.01x; CsrConv keeps 512 (ResNet-50 0.99x, VGG-16 0.98x with 1024).
constexpr int64_t kTileTaskRows = 64;
constexpr int64_t kSingleThreadTaskRows = 512;
constexpr int64_t kGemmSingleThreadTaskRows = 1024;
// the most of either, and of ONNXPRUNE_TASK_ROWS
constexpr int64_t kMaxTaskRows = std::max(kSingleThreadTaskRows, kGemmSingleThreadTaskRows);

// Whether a kernel's parallel loops have only ever run on the calling thread. ORT's custom-op
// API does not say how many threads the session's intra-op pool has: a pool of one runs every
// task on the caller, a larger one hands some of a loop's tasks to its other threads. After
// kCallsToTrust loops of two tasks or more that all ran on the caller (with kTileTaskRows-row
// tasks, enough for a second thread to take some) the kernel takes its session for
// single-threaded; one task seen on another thread settles it the other way, for good. A guess
// made wrongly (two callers at once, or a pool whose idle threads woke too late) corrects
// itself because the larger tasks never leave a loop of more than kTileTaskRows rows with a
// single task (Split): its next loops still show the other threads.
// ONNXPRUNE_TASK_ROWS=n (1 <= n <= kMaxTaskRows; read when a session creates its
// kernels) fixes the rows per task instead: for tests that must run ragged and single-task
// splits whatever the pool, and for A/B timing.
class PoolSeen {
 public:
  static constexpr int kCallsToTrust = 3;

  explicit PoolSeen(int64_t single_rows = kSingleThreadTaskRows) : single_(single_rows) {
    const char* forced = std::getenv("ONNXPRUNE_TASK_ROWS");
    if (forced == nullptr || *forced == '\0') return;
    char* end = nullptr;
    const long long v = std::strtoll(forced, &end, 10);
    if (*end != '\0' || v < 1 || v > kMaxTaskRows)
      Fail(ortabi::kInvalidArgument, "ONNXPRUNE_TASK_ROWS=", forced, " is not an integer in [1, ", kMaxTaskRows,
           "]");
    forced_ = v;
  }

  // The rows per task asked for now (a plan made for another value is remade).
  int64_t TaskRows() const {
    if (forced_ > 0) return forced_;
    const bool single = !helped_.load(std::memory_order_relaxed) &&
                        alone_.load(std::memory_order_relaxed) >= kCallsToTrust;
    return single ? single_ : kTileTaskRows;
  }

  // The rows per task of loops that run on one thread whatever the pool (a forced value as is).
  int64_t SerialTaskRows() const { return forced_ > 0 ? forced_ : single_; }

  // The rows per task a plan for `rows` output rows over `tiles` tiles takes when TaskRows()
  // asks for `asked`: at most half the rows (rounded up to kTileTaskRows) where one tile would
  // otherwise make a single task of more than kTileTaskRows rows. A forced value is taken as is.
  int64_t Split(int64_t asked, int64_t rows, int64_t tiles) const {
    if (forced_ > 0 || asked <= kTileTaskRows || tiles > 1 || rows <= kTileTaskRows) return asked;
    const int64_t half = ((rows + 1) / 2 + kTileTaskRows - 1) / kTileTaskRows * kTileTaskRows;
    return std::min(asked, half);
  }

  // ParallelFor, noting whether any task ran on another thread than the caller.
  template <class F>
  void ParallelFor(const ortabi::KernelContext* ctx, size_t total, const F& body) const {
    if (total < 2) {
      onnxprune::ParallelFor(ctx, total, body);
      return;
    }
    const std::thread::id caller = std::this_thread::get_id();
    std::atomic<bool> helped{false};
    onnxprune::ParallelFor(ctx, total, [&](size_t t) {
      if (std::this_thread::get_id() != caller) helped.store(true, std::memory_order_relaxed);
      body(t);
    });
    if (helped.load()) {
      helped_.store(true, std::memory_order_relaxed);
    } else if (alone_.load(std::memory_order_relaxed) < kCallsToTrust) {
      alone_.fetch_add(1, std::memory_order_relaxed);
    }
  }

 private:
  int64_t single_;  // rows per task on one thread: kSingleThreadTaskRows, or CsrGemm's
  int64_t forced_ = 0;
  mutable std::atomic<bool> helped_{false};
  mutable std::atomic<int> alone_{0};
};

// Splits rows [0, rows) into `parts` ranges of similar cost, the cost of a row being its
// nonzeros plus a fixed per-row overhead (reduction and write-back).
template <class P>  // int32_t (a CSR's row_ptr) or int64_t (SellPlan::group_step)
std::vector<int64_t> SplitRows(const P* row_ptr, int64_t rows, int64_t parts, int64_t row_overhead) {
  std::vector<int64_t> bounds(parts + 1, rows);
  bounds[0] = 0;
  const double total = static_cast<double>(row_ptr[rows]) + static_cast<double>(row_overhead) * rows;
  int64_t r = 0;
  for (int64_t p = 1; p < parts; ++p) {
    const double target = total * p / parts;
    // Cost up to row r is row_ptr[r] + overhead * r, non-decreasing in r.
    int64_t lo = r, hi = rows;
    while (lo < hi) {
      const int64_t mid = (lo + hi) / 2;
      if (row_ptr[mid] + static_cast<double>(row_overhead) * mid < target)
        lo = mid + 1;
      else
        hi = mid;
    }
    r = lo;
    bounds[p] = r;
  }
  return bounds;
}

int64_t PartsFor(double work, int64_t max_parts) {
  // ~100k multiply-adds per task keeps task overhead (a few microseconds) in the noise while
  // giving the pool enough pieces to balance.
  constexpr double kGrain = 100000.0;
  const double parts = std::floor(work / kGrain);
  return std::max<int64_t>(1, std::min<int64_t>(max_parts, static_cast<int64_t>(parts)));
}

struct AlignedDeleter {
  void operator()(float* p) const { std::free(p); }
};
using AlignedBuffer = std::unique_ptr<float[], AlignedDeleter>;

AlignedBuffer AllocFloats(size_t count) {
  const size_t bytes = ((std::max<size_t>(count, 1) * sizeof(float)) + 63) / 64 * 64;
  void* p = std::aligned_alloc(64, bytes);
  if (p == nullptr) throw std::bad_alloc();
  return AlignedBuffer(static_cast<float*>(p));
}

// A call's packed input (CsrGemm's planes and panels, CsrConv's copies): one buffer per calling
// thread, kept from call to call and node to node up to kKeptPackBytes, so that each product
// packs into memory the caches already hold rather than into a fresh allocation. Larger packs
// are allocated per call. Only a node's Compute takes it, once, for the whole call (its tasks
// read it; none takes it again), and a pack writes every float its tiles read, as it had to
// with malloc's memory. On an Intel core (lscpu family 6 model 207), with BERT-base's fc2
// reading X^T in place: the encoder layer 1.050x faster than both allocated per call,
// ResNet-50 1.016x (bench/ab_library.py, one process).
struct PackBuffer {
  AlignedBuffer owned;
  float* data = nullptr;
  float* get() const { return data; }
};

// At least `count` floats of a buffer kept by its owner (a thread_local of the caller), grown,
// never shrunk.
struct GrownBuffer {
  AlignedBuffer buf;
  size_t capacity = 0;
  float* Get(size_t count) {
    if (count > capacity) {
      buf = AllocFloats(count);
      capacity = count;
    }
    return buf.get();
  }
};

constexpr size_t kKeptPackBytes = size_t{8} << 20;
PackBuffer CallPack(size_t count) {
  PackBuffer b;
  if (count > kKeptPackBytes / sizeof(float)) {
    b.owned = AllocFloats(count);
    b.data = b.owned.get();
    return b;
  }
  thread_local GrownBuffer kept;
  b.data = kept.Get(count);
  return b;
}

// A tile task's partial-sum buffer: one per thread, kept from task to task and call to call
// (grown, never shrunk; at most kMaxTaskRows x kConvMaxTile floats today), where a fresh
// allocation per task had cost ResNet-50 about 1.5% in malloc and free. A task takes it whole
// and never across a call that could take it again (no task body runs inside another).
float* TaskScratch(size_t count) {
  thread_local GrownBuffer scratch;
  return scratch.Get(count);
}

// --- CSR ------------------------------------------------------------------------------------

struct Csr {
  const void* values = nullptr;  // float32 or float16 (value)
  const void* col = nullptr;     // int16, int32 or uint8 deltas (index)
  ValueKind value = kValueF32;
  IndexKind index = kIndex32;
  const int32_t* row_ptr = nullptr;
  int64_t rows = 0;
  int64_t nnz = 0;
  int64_t max_col = -1;  // filled in by validation
};

// Checks shapes and dtypes of the three CSR inputs; indices are checked by Validate.
// The element types say the encoding (op contract v2): float16 values, uint8 (delta) indices.
Csr DescribeCsr(const Tensor& values, const Tensor& col, const Tensor& row_ptr) {
  if ((values.type != ortabi::kFloat && values.type != ortabi::kFloat16) || values.shape.size() != 1)
    Fail(ortabi::kInvalidArgument, "values must be a 1-D float or float16 tensor, got shape ", ShapeStr(values.shape),
         " (element type ", values.type, ")");
  if (col.type != ortabi::kInt16 && col.type != ortabi::kInt32 && col.type != ortabi::kUint8)
    Fail(ortabi::kInvalidArgument, "col_idx must be int16 or int32 (columns) or uint8 (column deltas) (element type ", col.type, ")");
  if (col.shape.size() != 1 || col.numel != values.numel)
    Fail(ortabi::kInvalidArgument, "col_idx must be 1-D with as many entries as values (", values.numel,
         "), got shape ", ShapeStr(col.shape));
  if (row_ptr.type != ortabi::kInt32 || row_ptr.shape.size() != 1 || row_ptr.numel < 1)
    Fail(ortabi::kInvalidArgument, "row_ptr must be a non-empty 1-D int32 tensor, got shape ",
         ShapeStr(row_ptr.shape));
  if (values.numel > INT32_MAX) Fail(ortabi::kInvalidArgument, "more than 2^31-1 nonzeros");
  Csr c;
  c.values = values.data;
  c.col = col.data;
  c.value = values.type == ortabi::kFloat16 ? kValueF16 : kValueF32;
  c.index = col.type == ortabi::kInt16 ? kIndex16 : col.type == ortabi::kInt32 ? kIndex32 : kIndexDelta8;
  c.row_ptr = row_ptr.as<int32_t>();
  c.rows = row_ptr.numel - 1;
  c.nnz = values.numel;
  return c;
}

template <class I>
int64_t MaxColumn(const I* col, int64_t nnz) {
  int64_t lo = 0, hi = -1;
  for (int64_t j = 0; j < nnz; ++j) {
    const int64_t c = col[j];
    lo = std::min(lo, c);
    hi = std::max(hi, c);
  }
  if (lo < 0) Fail(ortabi::kInvalidArgument, "col_idx contains a negative index (", lo, ")");
  return hi;
}

// Largest decoded column of uint8 deltas: a row's columns are the running sums of its deltas
// (from 0 at each row start), non-decreasing, so the row's largest is the sum of all its
// deltas. Needs the validated row_ptr. Kernels keep decoded columns in int32 lanes, so the
// sum is bounded by 2^31 - 1 (it can reach 255 x nnz).
int64_t MaxDeltaColumn(const uint8_t* d, const int32_t* row_ptr, int64_t rows) {
  int64_t hi = -1;
  for (int64_t r = 0; r < rows; ++r) {
    if (row_ptr[r] == row_ptr[r + 1]) continue;
    int64_t sum = 0;
    for (int64_t j = row_ptr[r]; j < row_ptr[r + 1]; ++j) sum += d[j];
    if (sum > INT32_MAX - 1)
      Fail(ortabi::kInvalidArgument, "col_idx deltas of row ", r, " reach column ", sum, ", past 2^31 - 2");
    hi = std::max(hi, sum);
  }
  return hi;
}

void Validate(Csr& c) {
  const int32_t* rp = c.row_ptr;
  if (rp[0] != 0) Fail(ortabi::kInvalidArgument, "row_ptr[0] must be 0, got ", rp[0]);
  for (int64_t r = 0; r < c.rows; ++r)
    if (rp[r + 1] < rp[r])
      Fail(ortabi::kInvalidArgument, "row_ptr must be non-decreasing; row_ptr[", r + 1, "] = ", rp[r + 1],
           " < row_ptr[", r, "] = ", rp[r]);
  if (rp[c.rows] != c.nnz)
    Fail(ortabi::kInvalidArgument, "row_ptr[-1] = ", rp[c.rows], " must equal the number of nonzeros ", c.nnz);
  switch (c.index) {
    case kIndex16: c.max_col = MaxColumn(static_cast<const int16_t*>(c.col), c.nnz); break;
    case kIndex32: c.max_col = MaxColumn(static_cast<const int32_t*>(c.col), c.nnz); break;
    default: c.max_col = MaxDeltaColumn(static_cast<const uint8_t*>(c.col), rp, c.rows); break;
  }
}

// The constant CSR initializers seen at kernel creation, with the kernel's own validated copy
// of their index arrays: runs feeding the same buffers skip the O(nnz) scan and index through
// the copy. ORT maps external initializers straight from the model's data file, so the buffers
// it hands in can change after they were validated (the file rewritten in place under a live
// session); the indices that address memory are therefore never read from there again. The
// values are read in place by the paths that take the CSR as it is (batch-1 rows, panels,
// depthwise layers): changed weights give other numbers, never a stray access. The tiled paths
// (CsrConv's tiles, CsrGemm's tiled product) keep a float32 copy of the weights in their plan
// (TaskOrder), made when a run brings a new input shape: they see the weights of that run. The
// batch-1 pass over a wide X (CsrGemmKernel::GemvBlocks) keeps its block-ordered copy of values
// and columns from its first run for the kernel's life: it sees the weights of that run.
struct ValidatedCsr {
  bool known = false;
  const void* values = nullptr;  // ORT's buffers, to recognise the constant inputs
  const void* col = nullptr;
  const void* row_ptr = nullptr;
  ValueKind value = kValueF32;
  IndexKind index = kIndex32;
  int64_t nnz = 0, rows = 0, max_col = -1;
  std::vector<int32_t> own_col;  // col_idx bytes (int16, int32 or uint8 entries), validated
  std::vector<int32_t> own_row_ptr;

  // Copies the index arrays of `c`, points `c` at the copies and validates them there.
  void Keep(Csr* c) {
    known = true;
    values = c->values;
    col = c->col;
    row_ptr = c->row_ptr;
    value = c->value;
    index = c->index;
    nnz = c->nnz;
    rows = c->rows;
    const size_t col_bytes = static_cast<size_t>(nnz) * IndexBytes(index);
    own_col.assign((col_bytes + sizeof(int32_t) - 1) / sizeof(int32_t), 0);
    if (col_bytes) std::memcpy(own_col.data(), col, col_bytes);
    own_row_ptr.assign(c->row_ptr, c->row_ptr + rows + 1);
    c->col = own_col.data();
    c->row_ptr = own_row_ptr.data();
    Validate(*c);
    max_col = c->max_col;
  }
  bool Matches(const Csr& c) const {
    return known && values == c.values && col == c.col && row_ptr == c.row_ptr && value == c.value &&
           index == c.index && nnz == c.nnz && rows == c.rows;
  }
  // Whether `c` reads this kernel's validated copies (ReadCsr found the constant arrays): what
  // a kernel may keep per-shape plans for.
  bool Holds(const Csr& c) const { return known && c.col == static_cast<const void*>(own_col.data()); }
  // `c` (which Matches) reading the validated copies.
  void Use(Csr* c) const {
    c->col = own_col.data();
    c->row_ptr = own_row_ptr.data();
    c->max_col = max_col;
  }
};

// Best effort: ask Linux to back the 2 MiB-aligned interior of a large constant array with
// transparent huge pages, in place (MADV_COLLAPSE, Linux >= 6.1; the contents do not change and
// nothing outside the array is touched). A batch-1 pass streams each CSR array once per call;
// with 4 KiB pages that is a TLB miss every 4 KiB and a hardware-prefetch restart at every page
// boundary, and a single-thread measurement of the AlexNet FC stack from DRAM ran 15-20%
// faster on huge pages. Where THP is off, the kernel is older or no huge page is free, the
// calls fail and nothing changes. ONNXPRUNE_HUGEPAGES=0 turns the hint off (for comparisons).
void PreferHugePages(const void* data, size_t bytes) {
#if defined(__linux__)
  constexpr uintptr_t kHuge = uintptr_t{2} << 20;
  const char* env = std::getenv("ONNXPRUNE_HUGEPAGES");
  if (env != nullptr && std::strcmp(env, "0") == 0) return;
  const uintptr_t p = reinterpret_cast<uintptr_t>(data);
  const uintptr_t begin = (p + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t end = (p + bytes) & ~(kHuge - 1);
  if (end <= begin) return;
  void* start = reinterpret_cast<void*>(begin);
  madvise(start, end - begin, MADV_HUGEPAGE);
  constexpr int kMadvCollapse = 25;  // <linux/mman.h>, not in every libc's headers yet
  madvise(start, end - begin, kMadvCollapse);
#else
  (void)data;
  (void)bytes;
#endif
}

// The optional `columns` attribute of both ops: the CSR matrix's width K, as the lowering
// records it (runtime_ops/README.md), -1 when absent. Bounded here; checked against a constant
// CSR's largest column at kernel creation and against the K that X gives on every run.
int64_t ReadColumns(const ortabi::KernelInfo* info, const ValidatedCsr& constant) {
  const int64_t columns = AttrInt(info, "columns", -1);
  if (columns == -1 && !HasAttr(info, "columns")) return -1;
  if (columns < 1 || columns > INT32_MAX)
    Fail(ortabi::kInvalidArgument, "attribute columns must be an int in [1, 2^31-1], got ", columns);
  if (constant.known && constant.max_col >= columns)
    Fail(ortabi::kInvalidArgument, "col_idx refers to column ", constant.max_col, " but attribute columns is ", columns);
  return columns;
}

// A run's K against the `columns` attribute (-1: absent, nothing to check).
void CheckColumns(int64_t columns, int64_t k, const char* what) {
  if (columns >= 0 && k != columns)
    Fail(ortabi::kInvalidArgument, "X gives ", k, " ", what, " but attribute columns is ", columns);
}

// Inputs 1..3 are the CSR arrays in both ops.
ValidatedCsr ValidateConstantCsr(const ortabi::KernelInfo* info) {
  ValidatedCsr cache;
  const ortabi::Value* v[3] = {nullptr, nullptr, nullptr};
  for (size_t i = 0; i < 3; ++i) {
    int is_constant = 0;
    Check(g_api->KernelInfoGetConstantInput_tensor(info, i + 1, &is_constant, &v[i]));
    if (!is_constant || v[i] == nullptr) return cache;
  }
  Csr c = DescribeCsr(Inspect(v[0]), Inspect(v[1]), Inspect(v[2]));
  cache.Keep(&c);
  PreferHugePages(c.values, static_cast<size_t>(c.nnz) * ValueBytes(c.value));
  PreferHugePages(c.col, static_cast<size_t>(c.nnz) * IndexBytes(c.index));
  return cache;
}

Csr ReadCsr(const ortabi::KernelContext* ctx, size_t count, const ValidatedCsr& cache) {
  const ortabi::Value* v[3];
  for (size_t i = 0; i < 3; ++i) {
    v[i] = Input(ctx, count, i + 1);
    if (v[i] == nullptr) Fail(ortabi::kInvalidArgument, "input ", i + 1, " (CSR array) is missing");
  }
  Csr c = DescribeCsr(Inspect(v[0]), Inspect(v[1]), Inspect(v[2]));
  if (cache.Matches(c))
    cache.Use(&c);
  else
    Validate(c);
  return c;
}

// The L1 data cache (level 1) or L2 (level 2) of a core, read from the CPU at run time
// (sysconf), `fallback` when it cannot be read or lies outside [lo, hi] bytes.
int64_t CacheBytes(int level, int64_t fallback, int64_t lo, int64_t hi) {
#if defined(__linux__) && defined(_SC_LEVEL1_DCACHE_SIZE) && defined(_SC_LEVEL2_CACHE_SIZE)
  const long s = sysconf(level == 1 ? _SC_LEVEL1_DCACHE_SIZE : _SC_LEVEL2_CACHE_SIZE);
  if (s >= lo && s <= hi) return static_cast<int64_t>(s);
#else
  (void)level, (void)lo, (void)hi;
#endif
  return fallback;
}

// L1 data cache and L2 per core (32 KiB and 1 MiB when unknown).
int64_t L1DataBytes() {
  static const int64_t bytes = CacheBytes(1, 32 << 10, 8 << 10, 1 << 20);
  return bytes;
}
int64_t L2Bytes() {
  static const int64_t bytes = CacheBytes(2, 1 << 20, 64 << 10, 1 << 26);
  return bytes;
}

// Tile width for `positions` consecutive outputs on tiles of conv_lanes * kConvVectors[v]
// floats: the V with the least padded work, ceil(positions / T) * T weighted by 1 + 2 / V for
// the per-nonzero broadcast and offset load, plus extra(T) where the caller counts more per
// multiply-add (ties to the wider tile). Returns T, sets *vi.
template <class Extra>
int64_t ChooseTile(int lanes, int64_t positions, int* vi, Extra extra) {
  double best = 0.0;
  int64_t tile = 0;
  for (int v = kConvVectorChoices - 1; v >= 0; --v) {
    const int64_t t = static_cast<int64_t>(lanes) * kConvVectors[v];
    const double cost =
        static_cast<double>((positions + t - 1) / t * t) * (1.0 + 2.0 / kConvVectors[v] + extra(t));
    if (v == kConvVectorChoices - 1 || cost < best) {
      best = cost;
      *vi = v;
      tile = t;
    }
  }
  return tile;
}
int64_t ChooseTile(int lanes, int64_t positions, int* vi) {
  return ChooseTile(lanes, positions, vi, [](int64_t) { return 0.0; });
}

// CsrConv's tiles over `positions` consecutive outputs: full tiles of T = lanes * V floats and
// a last tile of T' = lanes * V' <= T floats, the pair (V, V') with the least work, each tile's
// positions weighted by 1 + 2 / V for its per-nonzero broadcast and offset load (ties to the
// wider tiles). A map of 13 x 15 positions (AlexNet's 3x3 layers) took 4 tiles of 64 floats,
// 66% of them useful, with one width for all; 2 x 96 + 32 is 87%. Sets *vi, *tail_vi, *tail.
int64_t ChooseTiles(int lanes, int64_t positions, int* vi, int* tail_vi, int64_t* tail) {
  const auto weight = [](int v) { return 1.0 + 2.0 / kConvVectors[v]; };
  double best = 0.0;
  int64_t tile = 0;
  for (int v = kConvVectorChoices - 1; v >= 0; --v) {
    const int64_t t = static_cast<int64_t>(lanes) * kConvVectors[v];
    const int64_t full = std::max<int64_t>(1, (positions + t - 1) / t) - 1;  // tiles before the last
    const int64_t rest = positions - full * t;                                 // the last one's share, <= t
    int tv = v;  // the narrowest width that still covers `rest` in one tile
    for (int u = v - 1; u >= 0 && static_cast<int64_t>(lanes) * kConvVectors[u] >= rest; --u) tv = u;
    const int64_t tt = static_cast<int64_t>(lanes) * kConvVectors[tv];
    const double cost = static_cast<double>(full * t) * weight(v) + static_cast<double>(tt) * weight(tv);
    if (v == kConvVectorChoices - 1 || cost < best) {
      best = cost;
      *vi = v;
      *tail_vi = tv;
      *tail = tt;
      tile = t;
    }
  }
  return tile;
}

// Row length CsrConv gives its column-shifted input copies (ShiftedCopies): output
// widths are rounded up to it, so every offset into the copies and every tile start are
// multiples of the vector width (8 floats for AVX2, 16 for AVX-512) and no tile load splits a
// cache line. (With 8-float rows half of the AVX-512 tile's 64-byte loads split one.) The
// portable path keeps the exact width (1): it has no vector loads to align, and tests then
// cover unrounded rows too.
int64_t RowQuantum(Isa isa) { return isa == Isa::kScalar ? 1 : isa == Isa::kAvx512 ? 16 : 8; }

// Whether CsrConv reads kW column-shifted copies of its input (aligned loads, kW copies to
// write, kW times the input window per channel in L1) or one copy per column phase (loads at
// any alignment, the window of one). A Zen 1 class core (AVX2, 1 thread, against the
// phase copies, same process): 3x3 layers at 30-50% density ran 1.05-1.12x faster shifted,
// 5x5 at 38% 1.03x, the 7x7/2 stem at 50% 1.06x; at 10% density the copies cost more than
// the alignment saves (0.85-0.98x: 28x28 maps pay 14% of their time writing them), and so they
// do where the copies outgrow the caches (VGG-16's 64 channels of 224x224 at 22%, 39 MB of
// copies: 0.70x; 512 of 28x28 at 27%, 6.4 MB: 0.90x; at 2.5 MB or less every case measured at
// 20% or more gained, 13x13 maps 1.12-1.20x): the copies may take at most kShiftedCopyL2s
// times the L2 (4 MiB on that core; sysconf's L3 there is the whole package's 64 MiB, not the
// 8 MiB a core shares, so the L3 is no guide). The AVX-512 tile takes the same gate with
// 16-float rows: on an Intel core with two 512-bit FMA units (lscpu family 6, docs/BENCHMARKS.md)
// the gated layers ran 1.04-1.29x faster shifted than phase (AlexNet's 13x13 layers
// 1.18-1.26x, VGG-16's conv1_1 1.29x, the 7x7/2 stem 1.27x), and the layers it leaves on phase
// copies measured slower shifted (256 channels of 56x56 at 24%, 0.84x; 128 of 112x112, 0.97x).
// Before, with 8-float rows, shifted copies had measured slower inside a model on a Zen 4
// core; the gate with 16-float rows is unmeasured there. The portable path takes the same
// gate, so tests cover both layouts.
// kW <= kMaxShiftedColumns also keeps the copies within that many times the input.
// Shifted rows are the output width rounded up to RowQuantum, phase rows the padded input
// width (over the stride): on narrow maps the rounding is more work than alignment saves, so
// the shifted rows may be at most kShiftedMaxWiden times as long (`widen`). Measured, same
// process, one-node 3x3 layers at 30%: 4x4 maps (8 against 6 columns) ran 0.82x of dense
// shifted against 0.99x phase, 5x5 (8 against 7) 0.84x against 0.88x, 2x2 0.53x against
// 0.61x, and magika's 5x1 kernel on a 512 x 1 map (8 columns against 1) 0.30x against 2.10x;
// 13x13 (16 against 15) and 6x6 (8 against 8) ran level. The limit sits above 64 / 58, the
// 16-float rows of a 56x56 map against its padded 58 columns: on a Zen 5 class core (lscpu
// family 26, AVX-512, where every unaligned 64-byte load splits a cache line) 3x3 layers on
// 56x56 ran 1.08-1.11x faster shifted than phase (64 channels at 30% and 50%, 128 at 30%);
// with 8-float rows (AVX2) such a map is not widened at all.
// `cells` is C_out * C_in/group * kH * kW, `bytes` what the shifted copies would take.
// ONNXPRUNE_CONV_COPIES=shifted|phase (read when a session creates its kernels) overrides the
// gate, for tests that must run both layouts whatever the gate picks, and for A/B timing;
// kW <= kMaxShiftedColumns still bounds the shifted copies' size.
enum class Copies { kGate, kShifted, kPhase };
constexpr double kShiftedMinDensity = 0.2;
// On a core that splits 512-bit operations, for the AVX-512 session's plans (ChooseNarrowTiles),
// the gate takes shifted copies at any density: 64 channels of 56x56 at 2-10% ran 1.00-1.04x
// faster shifted than on phase copies, 128 of 28x28 at 10% 1.03x, 64 of 112x112 and 224x224
// at 10-15% 1.12-1.13x, 512 of 7x7 at 10% 1.16x, 256 of 14x14 at 10% 0.97x (one node, 1
// thread, the three sessions in turn, lscpu family 25 model 17).
constexpr double kNarrowShiftedMinDensity = 0.0;
constexpr int64_t kMaxShiftedColumns = 16;
constexpr int64_t kShiftedCopyL2s = 8;
constexpr double kShiftedMaxWiden = 1.125;
bool ShiftedCopies(Copies forced, int64_t nnz, double cells, int64_t kw, double bytes, double widen,
                   double min_density) {
  if (forced != Copies::kGate) return forced == Copies::kShifted && kw <= kMaxShiftedColumns;
  return cells > 0 && static_cast<double>(nnz) >= min_density * cells &&
         kw <= kMaxShiftedColumns && bytes <= static_cast<double>(kShiftedCopyL2s * L2Bytes()) &&
         widen <= kShiftedMaxWiden;
}

// Input copies band by band (CsrConvKernel::BandRows). Where the whole image's copies (shifted,
// or phase: PlanPhases) would take more than kBandL2s times the L2, CsrConv fills them for one
// band of output rows at a time (the copy rows the band reads: band + ((kH - 1) dH) / sH per
// plane), runs the tiles over the band while its copies are near, then fills the next. The band is the largest
// divisor of OH, at most OH / 2 and at least kMinBandRows and four times that reach (the rows
// a band copies twice), whose copies fit that budget; without one, the whole image's copies as
// before (shifted within kShiftedCopyL2s L2s, else phase). One node after a Relu, 1 thread, an
// Intel core (lscpu family 6 model 207, L2 2 MiB), against ONNX Runtime's dense Conv, bands
// within one L2: VGG-16's conv1_2 (64 channels of 224x224 at 22%, phase copies before) 1.27-1.48x
// -> 1.59-1.63x, conv2_1 (64 -> 128 on 112x112 at 34%) 1.40x -> 1.70x, conv2_2 (128 on 112x112
// at 36%) 1.09x -> 1.41x, 256 channels of 56x56 at 42% 1.23x -> 1.24-1.32x; 14x14 maps in two
// bands of 7 rows ran slower (256 channels at 30%: 2.02x -> 1.47x), hence the smallest band.
// The whole VGG-16 at the paper's densities, sessions in one process (20 rounds, twice): no
// bands 1.69x of dense, budget 1 MiB 1.70x, 2 MiB 1.82x, 3 MiB 1.80x, 4 MiB 1.86-1.90x, 6 MiB
// 1.85x, 8 MiB 1.87x; ResNet-50 level at 0 and 4 MiB (2.81x, 2.78x). Unmeasured on cores with
// a 1 MiB L2 (Zen 4, Zen 5).
// ONNXPRUNE_CONV_BAND_BYTES=n (read when a session creates its kernels) sets the budget instead
// (0: never band), for tests that need bands on small images and for A/B timing.
constexpr int64_t kMinBandRows = 8;
constexpr int64_t kBandL2s = 2;
double ChooseBandBytes() {
  const char* forced = std::getenv("ONNXPRUNE_CONV_BAND_BYTES");
  if (forced == nullptr || *forced == '\0') return static_cast<double>(kBandL2s * L2Bytes());
  char* end = nullptr;
  errno = 0;
  const long long v = std::strtoll(forced, &end, 10);
  if (*forced < '0' || *forced > '9' || *end != '\0' || errno == ERANGE)
    Fail(ortabi::kInvalidArgument, "ONNXPRUNE_CONV_BAND_BYTES=", forced, " is not a byte count (0 or more)");
  return static_cast<double>(v);
}

// A band's copy plane of `floats`, padded to P 64-byte lines with P = 8 (mod 16): the input
// channels of a block, read by the same tile, then start on lines 8 x (odd) apart, spread
// over the L1's 64 sets, where planes of 4 KiB (or 63 lines, or 126) put every channel's
// window in the same few sets. Measured: 64 channels of 56x56 at 30% in bands of 14 rows
// (16 rows of 64 floats, 4 KiB a plane) 1.07-1.10x of dense unpadded, 1.52x padded; 128 -> 256
// (53%) 0.68x against 1.10x; 64 -> 128 on 112x112 in bands of 7 and 16 rows (planes of 4032
// and 8064 bytes) 1.32-1.35x against 1.70-1.75x in bands of 4, 8, 14 or 28 rows. Whole-image
// planes keep their size: padded, 512 channels of 14x14 (16 lines a plane, 24 padded) ran
// 0.7x, their copies outgrowing the L2.
int64_t SpreadPlane(int64_t floats) {
  int64_t lines = (floats + 15) / 16;
  lines += ((8 - lines % 16) + 16) % 16;
  return lines * 16;
}

// Shifted copies in column strips (CsrConvKernel::StripGeometry). A tile runs over consecutive
// positions of Wq-wide rows and reads each tap's window, the tile plus (kH - 1) dH rows of Wq
// floats: on a 224-wide map a 224-position tile is one row and its window three, so an L1's
// worth of window holds few channels and few nonzeros per row and block. Where Wq is more than
// kMaxUnstripedWq floats, CsrConv lays each copy out in strips of kStripFloats columns (one
// 64-byte line a row), strip after strip, and the tiles run strip by strip: a tile is then 14
// rows of 16 and its window 16 rows. Measured as narrow images standing for strips (one node
// after a Relu, 1 thread, an Intel core of lscpu family 6 model 207, against ONNX Runtime's
// dense Conv): 64 channels of 224 x 224 at 22% 11.26 ms whole, 14 x 0.642 ms as 224 x 16 maps;
// 128 of 112 x 112 at 36% 11.32 against 7 x 1.41; 256 of 56 x 56 at 42% 11.86 against 3.5 x
// 2.97; 64 of 56 x 56 at 50% 1.065 against 3.5 x 0.240. In place, strips gained less than
// those suggest (kStripWindowL1); the narrow maps also wrote Y whole (conv_strip_rows).
// ONNXPRUNE_CONV_STRIPS=0 (read when a session creates its kernels) keeps whole rows, for tests
// and A/B timing; 1 (or unset) strips where the rule says.
// Layers with fewer input channels per group keep whole rows: VGG-16's conv1_1 (3 channels,
// one block, a 15-nonzero row) ran 0.74x of whole rows in strips, its time in writing Y.
constexpr int64_t kStripFloats = 16;
constexpr int64_t kMaxUnstripedWq = 32;
constexpr int64_t kMinStripChannels = 16;

// An on/off setting read from the environment (the ONNXPRUNE_* switches below, read when a
// session creates its kernels or a kernel makes its plan): `fallback` when unset or empty,
// true for 1, false for 0; anything else is refused.
bool EnvSwitch(const char* name, bool fallback) {
  const char* forced = std::getenv(name);
  if (forced == nullptr || *forced == '\0') return fallback;
  if (std::strcmp(forced, "1") == 0) return true;
  if (std::strcmp(forced, "0") == 0) return false;
  Fail(ortabi::kInvalidArgument, name, "=", forced, " is not one of 0, 1");
}

bool ChooseStrips() { return EnvSwitch("ONNXPRUNE_CONV_STRIPS", true); }

// Whether a CsrConv on AVX-512 may run its tiles on the AVX2 kernels (CsrConvKernel::Plan):
// ONNXPRUNE_CONV_NARROW=1 or 0 (read when a session creates its kernels), else on a core that
// splits each 512-bit FMA in two (CpuSplitsWideFma, a Zen 4 class core). There 16-lane tiles do
// no more multiply-adds a cycle than 8-lane ones, and rounding each output row to 16 floats
// instead of 8 is work thrown away: 3x3 layers on 56 x 56 maps (64 columns for 56) ran 1.13-1.15x
// faster on the AVX2 tiles, on 7 x 7 maps 1.11-1.24x; where both round alike (28, 14, 13 and
// 27 wide) the AVX-512 tiles were level or up to 1.2x faster (docs/BENCHMARKS.md).
bool ChooseNarrowTiles() { return EnvSwitch("ONNXPRUNE_CONV_NARROW", CpuSplitsWideFma()); }

Copies ChooseCopies() {
  const char* forced = std::getenv("ONNXPRUNE_CONV_COPIES");
  if (forced == nullptr || *forced == '\0') return Copies::kGate;
  if (std::strcmp(forced, "shifted") == 0) return Copies::kShifted;
  if (std::strcmp(forced, "phase") == 0) return Copies::kPhase;
  Fail(ortabi::kInvalidArgument, "ONNXPRUNE_CONV_COPIES=", forced, " is not one of shifted, phase");
}

// Depthwise layers (one input and one output channel per group) take their own paths
// (CsrConvKernel::DirectDepthwise, reading X where it lies; CsrConvKernel::Depthwise band by
// band for the layers it hands over) unless ONNXPRUNE_CONV_DEPTHWISE=0, which sends them
// through the input copies like any other grouped layer; =bands sends every depthwise layer
// band by band. Read when a session creates its kernels: for tests that compare the paths,
// and for A/B timing.
enum class DwPath { kCopies, kAuto, kBands, kBlocks, kDirect };
DwPath ChooseDepthwisePath() {
  const char* forced = std::getenv("ONNXPRUNE_CONV_DEPTHWISE");
  if (forced == nullptr || *forced == '\0' || std::strcmp(forced, "1") == 0) return DwPath::kAuto;
  if (std::strcmp(forced, "0") == 0) return DwPath::kCopies;
  if (std::strcmp(forced, "bands") == 0) return DwPath::kBands;
  if (std::strcmp(forced, "blocks") == 0) return DwPath::kBlocks;
  if (std::strcmp(forced, "direct") == 0) return DwPath::kDirect;
  Fail(ortabi::kInvalidArgument, "ONNXPRUNE_CONV_DEPTHWISE=", forced, " is not one of 0, 1, bands, blocks, direct");
}

// Column of entry j of a validated CSR, whatever the index encoding; `running` carries a row's
// uint8 delta sum (reset to 0 at each row start by the caller).
int64_t ColumnAt(const Csr& csr, int64_t j, int64_t* running) {
  switch (csr.index) {
    case kIndex16: return static_cast<const int16_t*>(csr.col)[j];
    case kIndex32: return static_cast<const int32_t*>(csr.col)[j];
    default: return *running += static_cast<const uint8_t*>(csr.col)[j];
  }
}

// The values of `csr` as float32: float16 ones widened into `buffer` (O(nnz), once per run;
// the tiles then read every weight once per tile, where widening would repeat).
const float* FloatValues(const Kernels& kern, const Csr& csr, std::vector<float>* buffer) {
  if (csr.value == kValueF32) return static_cast<const float*>(csr.values);
  buffer->resize(static_cast<size_t>(csr.nnz));
  kern.half_to_float(static_cast<const uint16_t*>(csr.values), csr.nnz, buffer->data());
  return buffer->data();
}

// Whether tile tasks read their entries once before their passes (TouchRange):
// ONNXPRUNE_TOUCH_ENTRIES=1 or 0, else yes except on Intel cores. The pass paid on a Zen 5
// class core (below) and cost on an Intel one (family 6 model 207, L2 2 MiB: ResNet-50 at 90%
// and the BERT-base layer 1.02-1.03x faster without it; docs/BENCHMARKS.md). Read when a plan
// is made.
bool ChooseTouch() { return EnvSwitch("ONNXPRUNE_TOUCH_ENTRIES", !CpuIsIntel()); }

// Reads the weights and offsets of entries [j0, j1) once, line by line, before use: a task
// takes its rows' entries block by block, a few cache lines of each row at a time, a pattern
// the hardware prefetchers do not follow, so a layer whose CSR arrays come from memory (inside
// a model, where the other layers evicted them) waited on each line in turn. One sequential
// pass lets the prefetchers stream them in. It loads rather than prefetches: prefetch
// instructions over the same range (into L2/L3) gained less (ResNet-50 at 90% on a Zen 5
// class core, one library per process: 2.17-2.27x of dense with them, 2.30-2.33x with the
// loads; docs/BENCHMARKS.md). The plans now store a task's entries in the order its passes
// take them (TaskOrder), and the pass still pays there: without it ResNet-50 ran
// 2.49-2.50x of dense against 2.51-2.53x with it (one library per process, alternating).
inline void TouchRange(const float* w, const int32_t* off, int64_t j0, int64_t j1) {
  uint32_t sink = 0;
  for (int64_t j = j0; j < j1; j += 16) {  // one float and one int32 of each 64-byte line
    uint32_t b;
    std::memcpy(&b, w + j, 4);
    sink += b ^ static_cast<uint32_t>(off[j]);
  }
  asm volatile("" : : "r"(sink));  // the loads stay: their value is used
}

// The activations a conv tile applies in registers as a clamp (ConvEnd): none, Relu, Clip.
// Sets end->lo and end->hi; false for any other activation.
bool ClampOf(const Activation& act, ConvEnd* end) {
  constexpr float kInf = std::numeric_limits<float>::infinity();
  switch (act.kind) {
    case Act::kNone: end->lo = -kInf, end->hi = kInf; return true;
    case Act::kRelu: end->lo = 0.f, end->hi = kInf; return true;
    case Act::kClip: end->lo = act.alpha, end->hi = act.beta; return true;
    default: return false;
  }
}

// `total` items in blocks of at most `fit` (>= 1 each), evened out: sets *blocks and returns the
// block size. At least one block, also when `total` is 0.
int64_t EvenBlocks(int64_t total, int64_t fit, int64_t* blocks) {
  const int64_t size = std::max<int64_t>(1, std::min(total, fit));
  *blocks = std::max<int64_t>(1, (total + size - 1) / size);
  return std::max<int64_t>(1, (total + *blocks - 1) / *blocks);
}

// A CSR's entries as the tile tasks take them: each entry's weight (float32) and offset into
// the tiles' input, task rows (task_rows) one after the other, in a task block after
// block, in a block row after row. Row r's block-b pass takes entries pos[i] .. pos[i + 1],
// i = Pass(r, b), and a task's whole range is pos[r0 * blocks] .. pos[r1 * blocks]. A task
// then reads its range front to back, one stream of weights and one of offsets that the
// hardware prefetchers follow, where the CSR's own order (row after row) had it take a few
// cache lines of each row per block pass. An entry's block is its column's, whatever the
// order of a row's columns; a pass keeps its row's order of entries.
struct TaskOrder {
  int64_t rows = 0, blocks = 1;
  int64_t asked_rows = 0;             // PoolSeen::TaskRows when the plan was made (a plan asked
  int64_t task_rows = kTileTaskRows;  // for another is remade), and the rows per task it took (Split)
  bool touch = true;  // Touch reads the range (ChooseTouch)
  std::vector<float> weights;
  std::vector<int32_t> off;
  std::vector<int64_t> pos;  // rows * blocks + 1: pos[0] = 0, the last one nnz
  int64_t Pass(int64_t r, int64_t b) const {
    const int64_t r0 = r / task_rows * task_rows;
    return static_cast<int64_t>(PassIn(r0, std::min(rows, r0 + task_rows), r, b));
  }
  // Pass(r, b) for row r of the task of rows [r0, r1), without the division: the index the
  // task's loops take.
  size_t PassIn(int64_t r0, int64_t r1, int64_t r, int64_t b) const {
    return static_cast<size_t>(r0 * blocks + b * (r1 - r0) + (r - r0));
  }
  // The range of the task of rows [r0, r1), read once before its passes (TouchRange) where
  // ChooseTouch says so.
  void Touch(int64_t r0, int64_t r1) const {
    if (!touch) return;
    TouchRange(weights.data(), off.data(), pos[static_cast<size_t>(r0 * blocks)], pos[static_cast<size_t>(r1 * blocks)]);
  }
  // From each entry's weight, offset and pass (Pass of its row and block), in CSR order.
  void Arrange(const float* values, const std::vector<int32_t>& entry_off, const std::vector<int64_t>& entry_pass) {
    touch = ChooseTouch();
    pos.assign(static_cast<size_t>(rows * blocks + 1), 0);
    for (const int64_t i : entry_pass) ++pos[static_cast<size_t>(i) + 1];
    for (size_t i = 1; i < pos.size(); ++i) pos[i] += pos[i - 1];
    std::vector<int64_t> next(pos.begin(), pos.end() - 1);
    weights.resize(entry_off.size());
    off.resize(entry_off.size());
    for (size_t j = 0; j < entry_off.size(); ++j) {
      const size_t at = static_cast<size_t>(next[static_cast<size_t>(entry_pass[j])]++);
      weights[at] = values[j];
      off[at] = entry_off[j];
    }
  }
};

// The plan a kernel keeps for its constant CSR and the last shape it ran: shared read-only by
// concurrent runs, replaced when a run brings another shape. Plans for CSR arrays fed as graph
// inputs are made every run and not kept.
template <class P>
class KeptPlan {
 public:
  // The kept plan when `keep` and it `fits`, else make() (kept in turn when `keep`).
  template <class Fits, class Make>
  std::shared_ptr<const P> Get(bool keep, const Fits& fits, const Make& make) const {
    if (keep) {
      std::lock_guard<std::mutex> lock(mutex_);
      if (plan_ && fits(*plan_)) return plan_;
    }
    std::shared_ptr<const P> plan = make();
    if (keep) {
      std::lock_guard<std::mutex> lock(mutex_);
      plan_ = plan;
    }
    return plan;
  }

 private:
  mutable std::mutex mutex_;
  mutable std::shared_ptr<const P> plan_;
};

// --- CsrGemm --------------------------------------------------------------------------------

// Whether a CsrGemm's batch-1 pass over a wide X reads its constant CSR copied in block order
// (CsrGemmKernel::GemvBlocks): ONNXPRUNE_GEMV_BLOCKS=0 or 1 (read when a session creates its
// kernels), on unless set to 0; for A/B timing and for tests of the blocked pass.
bool ChooseGemvBlocks() { return EnvSwitch("ONNXPRUNE_GEMV_BLOCKS", true); }

// Whether a CsrGemm's batch-1 pass on AVX-512 runs its constant CSR in lanes of rows
// (CsrGemmKernel::GemvSell): ONNXPRUNE_GEMV_SELL=0 never, 1 wherever the layout can be built,
// unset where the rule there says; read when a session creates its kernels, for A/B timing
// and for tests of both passes.
enum class SellUse { kNever, kAuto, kAlways };
SellUse ChooseGemvSell() {
  const char* forced = std::getenv("ONNXPRUNE_GEMV_SELL");
  if (forced == nullptr || *forced == '\0') return SellUse::kAuto;
  return EnvSwitch("ONNXPRUNE_GEMV_SELL", true) ? SellUse::kAlways : SellUse::kNever;
}

// CsrGemm's batch 1 in lanes of rows (sell.h) for a constant CSR on AVX-512. The CSR pass retires
// ~1.2-1.5 loads of x a cycle; a step takes 16 lanes in a few cycles, but its padding lanes
// are bytes streamed for nothing. Where the weights come from DRAM (a model larger than the
// L3, its layers read once a call) a pass costs its bytes: with float32 values and int16
// columns the lanes ran 1.06x the CSR pass at 1.17x the CSR's bytes, 0.92-0.97x at 1.46x and
// 0.87x at 1.85x; with float16 values (whose CSR pass is slower) 1.38-1.49x at 1.06-1.32x and
// 0.93x at 1.67x. So the layout is used (unless ONNXPRUNE_GEMV_SELL says otherwise) where its
// bytes are at most kSellMaxBytes times the CSR's (values and indices as stored), and never
// beyond 4 lanes per entry (the copy's size).
constexpr double kSellMaxBytes = 1.4;

std::shared_ptr<const SellPlan> MakeSellPlan(const Csr& csr, int64_t extent, SellUse use) {
  // An empty plan (the CSR pass) for this extent, kept like a full one so the choice is made once.
  const auto none = [extent] {
    auto empty = std::make_shared<SellPlan>();
    empty->extent = extent;
    return empty;
  };
  const int64_t groups = (csr.rows + kSellRows - 1) / kSellRows, blocks = (extent + kSellCols - 1) / kSellCols;
  // groups * blocks bounded by the entries before anything is sized by it
  if (csr.nnz == 0 || static_cast<double>(groups) * static_cast<double>(blocks) > static_cast<double>(csr.nnz) + 65536.0)
    return none();
  auto plan = none();
  SellPlan& p = *plan;
  p.rows = csr.rows, p.groups = groups, p.blocks = blocks, p.value = csr.value;
  // count[b * 16 + l]: entries of the group's row l in block b
  std::vector<int32_t> count(static_cast<size_t>(blocks * kSellRows));
  const auto each_entry = [&](int64_t g, const auto& body) {  // body(lane, j, column)
    for (int64_t l = 0; l < kSellRows && g * kSellRows + l < csr.rows; ++l) {
      const int64_t r = g * kSellRows + l;
      int64_t running = 0;
      for (int64_t j = csr.row_ptr[r]; j < csr.row_ptr[r + 1]; ++j) body(l, j, ColumnAt(csr, j, &running));
    }
  };
  p.steps.resize(static_cast<size_t>(groups * blocks));
  std::vector<int64_t> group_step(static_cast<size_t>(groups) + 1, 0);
  for (int64_t g = 0; g < groups; ++g) {
    std::fill(count.begin(), count.end(), 0);
    each_entry(g, [&](int64_t l, int64_t, int64_t c) { ++count[static_cast<size_t>(c / kSellCols * kSellRows + l)]; });
    int64_t steps = 0;
    for (int64_t b = 0; b < blocks; ++b) {
      const int32_t* at = count.data() + b * kSellRows;
      const int64_t n = *std::max_element(at, at + kSellRows);
      if (n > kSellMaxSteps) return none();  // repeated columns
      p.steps[static_cast<size_t>(g * blocks + b)] = static_cast<uint8_t>(n);
      steps += n;
    }
    group_step[static_cast<size_t>(g) + 1] = group_step[static_cast<size_t>(g)] + steps;
  }
  const double lanes = static_cast<double>(group_step.back()) * kSellRows, nnz = static_cast<double>(csr.nnz);
  const size_t vbytes = static_cast<size_t>(ValueBytes(csr.value));
  const double sell_bytes = lanes * static_cast<double>(vbytes + 1);
  const double csr_bytes = nnz * static_cast<double>(vbytes + static_cast<size_t>(IndexBytes(csr.index)));
  if (lanes > 4.0 * nnz + 4096.0 || (use == SellUse::kAuto && sell_bytes > kSellMaxBytes * csr_bytes))
    return none();
  p.values.assign(static_cast<size_t>(lanes) * vbytes, 0);
  p.index.assign(static_cast<size_t>(lanes), kSellPad);
  const auto* src = static_cast<const unsigned char*>(csr.values);
  std::vector<int64_t> first(static_cast<size_t>(blocks));  // block b's first step in the group
  for (int64_t g = 0; g < groups; ++g) {
    int64_t at = group_step[static_cast<size_t>(g)];
    for (int64_t b = 0; b < blocks; ++b) {
      first[static_cast<size_t>(b)] = at;
      at += p.steps[static_cast<size_t>(g * blocks + b)];
    }
    std::fill(count.begin(), count.end(), 0);
    each_entry(g, [&](int64_t l, int64_t j, int64_t c) {
      const int64_t b = c / kSellCols;
      const size_t lane = static_cast<size_t>(
          (first[static_cast<size_t>(b)] + count[static_cast<size_t>(b * kSellRows + l)]++) * kSellRows + l);
      p.index[lane] = static_cast<uint8_t>(c - b * kSellCols);
      std::memcpy(p.values.data() + lane * vbytes, src + static_cast<size_t>(j) * vbytes, vbytes);
    });
  }
  p.group_step = std::move(group_step);
  PreferHugePages(p.values.data(), p.values.size());
  PreferHugePages(p.index.data(), p.index.size());
  return plan;
}

// Z (optional; CsrConv from op-set 5, CsrGemm from op-set 6): a tensor added to the output
// before the activation, exactly Y's shape (no broadcasting), so that a residual Add after the
// product runs while the output is in cache instead of as a pass of its own over Y.
const float* ReadResidual(const ortabi::KernelContext* ctx, size_t count, const std::vector<int64_t>& y_shape) {
  const ortabi::Value* zv = Input(ctx, count, 5);
  if (zv == nullptr) return nullptr;
  const Tensor z = Inspect(zv);
  if (z.type != ortabi::kFloat || z.shape != y_shape)
    Fail(ortabi::kInvalidArgument, "Z must be a float32 tensor of the output's shape ", ShapeStr(y_shape),
         ", got shape ", ShapeStr(z.shape));
  return z.as<float>();
}


// Bias broadcast to the (M, N) output: element (m, n) is at data[m * stride_m + n * stride_n].
struct Bias {
  const float* data = nullptr;
  int64_t stride_m = 0, stride_n = 0;
  float scale = 0.f;
  float at(int64_t m, int64_t n) const { return scale * data[m * stride_m + n * stride_n]; }
};

struct CsrGemmKernel {
  int64_t trans_a = 0;
  // 0 Gemm style, 1 MatMul style, 2 MatMul style with Y transposed (op-set 7), 3 and 4 MatMul style
  // with each batch's Y (3) or X (4) transposed (op-set 8)
  int64_t matmul = 0;
  float alpha = 1.f, beta = 1.f;
  Isa isa = Isa::kScalar;
  Activation act;  // applied to each output after alpha and the bias (op-set 3)
  ValidatedCsr constant;
  int64_t columns = -1;  // K, when the node records it (ReadColumns)

  // matmul == 2: Y is (N, M), so a CsrGemm with transA = 1 reads it as it lies; matmul == 3:
  // Y is (..., N, S), each batch of S rows transposed (a transformer's heads, Kᵀ as it lies)
  bool TransY() const { return matmul == 2 || matmul == 3; }
  // transA = 1: X is (K, M); matmul == 4: X is (..., K, S), each batch of S rows transposed
  bool TransX() const { return trans_a != 0 || matmul == 4; }

  explicit CsrGemmKernel(const ortabi::KernelInfo* info) {
    matmul = AttrInt(info, "matmul", 0);
    trans_a = AttrInt(info, "transA", 0);
    alpha = AttrFloat(info, "alpha", 1.f);
    beta = AttrFloat(info, "beta", 1.f);
    if (matmul < 0 || matmul > 4) Fail(ortabi::kInvalidArgument, "attribute matmul must be 0, 1, 2, 3 or 4");
    if (trans_a != 0 && trans_a != 1) Fail(ortabi::kInvalidArgument, "attribute transA must be 0 or 1");
    if (matmul && trans_a) Fail(ortabi::kInvalidArgument, "transA is a Gemm attribute; it must be 0 when matmul is not 0");
    act = ReadActivation(info);
    isa = ChooseIsa();
    gemv_blocks = ChooseGemvBlocks();
    gemv_sell = ChooseGemvSell();
    constant = ValidateConstantCsr(info);
    columns = ReadColumns(info, constant);
  }

  void Compute(ortabi::KernelContext* ctx) const {
    size_t count = 0;
    Check(g_api->KernelContext_GetInputCount(ctx, &count));
    const ortabi::Value* xv = Input(ctx, count, 0);
    if (xv == nullptr) Fail(ortabi::kInvalidArgument, "input X is missing");
    const Tensor x = Inspect(xv);
    if (x.type != ortabi::kFloat) Fail(ortabi::kInvalidArgument, "X must be float32");
    const Csr csr = ReadCsr(ctx, count, constant);
    const int64_t n = csr.rows;

    // Shapes: the product is (M, K) x (K, N) -> (M, N), whatever the input layout; the M rows
    // come in batches of `seg` rows, each batch's rows contiguous in a transposed X or Y
    // (matmul 3 and 4; the whole M otherwise).
    int64_t m = 0, k = 0, seg = 0;
    std::vector<int64_t> out_shape;
    if (!matmul) {
      if (x.shape.size() != 2) Fail(ortabi::kInvalidArgument, "Gemm-style X must be 2-D, got ", ShapeStr(x.shape));
      m = trans_a ? x.shape[1] : x.shape[0];
      k = trans_a ? x.shape[0] : x.shape[1];
      seg = m;
      out_shape = {m, n};
    } else {
      const size_t rank = x.shape.size();
      if (rank == 0) Fail(ortabi::kInvalidArgument, "MatMul-style X must have rank >= 1");
      if (matmul >= 3 && rank < 2)
        Fail(ortabi::kInvalidArgument, "X must have rank >= 2 with matmul = ", matmul, ", got ", ShapeStr(x.shape));
      const size_t k_axis = matmul == 4 ? rank - 2 : rank - 1;
      k = x.shape[k_axis];
      m = 1;
      // An empty X may carry any leading dims, so their product is checked.
      for (size_t i = 0; i < rank; ++i)
        if (i != k_axis) m = CheckedMul(m, x.shape[i], "MatMul-style batch size");
      seg = matmul >= 3 ? x.shape[matmul == 4 ? rank - 1 : rank - 2] : m;
      out_shape.assign(x.shape.begin(), x.shape.end() - (matmul >= 3 ? 2 : 1));
      if (matmul == 1) out_shape.push_back(n);
      if (matmul == 2) out_shape = {n, m};
      if (matmul == 3) out_shape.insert(out_shape.end(), {n, seg});
      if (matmul == 4) out_shape.insert(out_shape.end(), {seg, n});
    }
    CheckColumns(columns, k, "input features");
    if (csr.max_col >= k)
      Fail(ortabi::kInvalidArgument, "col_idx refers to input column ", csr.max_col, " but X has only ", k,
           " input features");
    CheckedMul(m, n, "output size M * N");

    Bias bias = ReadBias(ctx, count, m, n, out_shape);
    const float* z = ReadResidual(ctx, count, out_shape);

    ortabi::Value* yv = nullptr;
    Check(g_api->KernelContext_GetOutput(ctx, 0, out_shape.data(), out_shape.size(), &yv));
    if (m == 0 || n == 0) return;
    void* ydata = nullptr;
    Check(g_api->GetTensorMutableData(yv, &ydata));
    float* y = static_cast<float*>(ydata);
    const Kernels& kern = KernelsFor(isa);

    if (m == 1) {
      // Columns past INT32_MAX are never referenced (indices are at most int32), and the
      // kernels' column blocking works in int32.
      Gemv(ctx, kern, csr, x.as<float>(), std::min<int64_t>(k, INT32_MAX), bias, z, y);
    } else if (m >= kTiledMinRows &&
               CheckedMul(k, m + kConvMaxTile + kPlaneSlack, "packed batch size") <= INT32_MAX) {
      SpmmTiled(ctx, kern, csr, x.as<float>(), m, k, seg, bias, z, y);
    } else {
      Spmm(ctx, kern, csr, x.as<float>(), m, k, seg, bias, z, y);
    }
  }

  // From this many rows of X (batch x sequence for a transformer's MatMul) the product runs on
  // CsrConv's tiles, as a 1x1 convolution over the rows: X transposed into K planes of
  // Mp >= tiles * T floats (PackedPlane), each nonzero (r, c) one offset c * Mp (so every load
  // is aligned), rows of W over a tile of T consecutive rows of X in 4-14 vector accumulators. K is split
  // into blocks whose planes take kGemmBlockL1s times the L1 data cache, so the rows of a
  // task that use a plane in one block pass mostly find it in L1 rather than in L2. Below
  // kTiledMinRows the K x 16..64 panels of Spmm waste less padding.
  static constexpr int64_t kTiledMinRows = 32;
  // On an Intel core (lscpu family 6 model 207, 48 KiB L1d, 2 MiB L2), BERT-base's encoder
  // layer at 10% density ran 1.10-1.13x faster at batch 1 (128 rows, 512-byte planes) with
  // blocks of 80-160 planes than with blocks filling half the L2 (1536-2048 planes), flat
  // across 80-160; at batch 8 (1024 rows, tiles of 224) 1.06-1.09x with 54-128 planes. (Half
  // the L2 had measured faster before a block pass ran all of a task's rows in one call,
  // conv_rows: at 10% density a block of an L1's planes holds ~10 nonzeros of a row.)
  static constexpr double kGemmBlockL1s = 1.25;
  // Planes of `tile` floats a K block holds (kGemmBlockL1s of the L1).
  static double BlockPlanes(int64_t tile) {
    return kGemmBlockL1s * static_cast<double>(L1DataBytes()) / (static_cast<double>(tile) * sizeof(float));
  }

  // Floats in a packed plane of X for `positions` rows: an odd number of 64-byte lines, so that
  // the planes a block pass reads, one tile's window each, spread over the L1's sets. Planes of
  // a multiple of 2 KiB had put every plane's window in the same sets: BERT-base's products at
  // batch 4 (512 rows, 8-vector tiles) ran 1.16-1.23x faster with planes one line longer, and
  // 8-vector tiles at batch 8 (1024 rows) went from 0.85x to 1.06-1.11x of 13-vector ones (a Zen
  // 4 class core, docs/BENCHMARKS.md). At most kPlaneSlack floats over the tiles' positions.
  static constexpr int64_t kPlaneSlack = 32;
  static int64_t PackedPlane(int64_t positions) { return (((positions + 15) / 16) | 1) * 16; }

  // The tile for M rows of X packed into planes of K: the V whose padded positions cost least,
  // each weighted by the memory operations a multiply-add carries besides its load of X: a
  // nonzero's broadcast and offset, 2 / V, and, where K spans more than one block, the V
  // partial sums a row loads and stores each block pass, 2 / (the row's nonzeros in a block:
  // the density times the planes a block holds, fewer for wider tiles). At 10% density this
  // takes 8-vector tiles over 13 for BERT-base's 1024 rows at batch 8 (1.06-1.11x faster, a Zen
  // 4 class core), where the weight 2 / V alone had taken 13; at 30% it keeps 13.
  static int64_t ChooseGemmTile(int lanes, int64_t m, int64_t k, double density, int* vi) {
    return ChooseTile(lanes, m, vi, [&](int64_t t) {
      const double fit = BlockPlanes(t);
      return static_cast<double>(k) > fit ? 2.0 / std::max(1.0, density * fit) : 0.0;
    });
  }

  // The plan of SpmmTiled for one M: tile width, K blocks and offsets. Kept for the constant
  // CSR and the last M and layout seen.
  struct GemmPlan {
    int64_t m = 0, k = 0;
    int64_t in_place = 0;  // the batch length `seg` where X is read as it lies (InPlaceSeg), else 0
    int vi = 0;
    int64_t tile = 0, tiles = 0, plane = 0, blocks = 1, kb = 0;
    TaskOrder entries;  // weights and offsets into the transposed X
  };
  KeptPlan<GemmPlan> kept_plan;
  PoolSeen pool{kGemmSingleThreadTaskRows};

  // A transposed X (transA = 1, matmul = 4) whose batches of `seg` rows each split into whole
  // tiles (InPlaceTile), X on 64 bytes, K > 0: each batch's K rows of `seg` floats are its
  // tiles' planes as they lie, every tile reads inside its own batch, and X is read in place
  // rather than copied into planes across the batches. Returns seg, else 0. (An empty X may
  // come with no data pointer, and the tiles would still offset it.) A graph input fed from an
  // array at another alignment would split every vector load across two cache lines
  // (BERT-base's 768 x 128 Xᵀ at 10%, an Intel core: 0.296 ms in place at 16 bytes, 0.177 ms
  // at 64, 0.204 ms copied).
  int64_t InPlaceSeg(const Kernels& kern, const float* x, int64_t m, int64_t k, int64_t seg) const {
    if (!TransX() || m <= 0 || k <= 0 || seg <= 0 || reinterpret_cast<uintptr_t>(x) % 64 != 0) return 0;
    int vi = 0;
    return InPlaceTile(kern.conv_lanes, seg, &vi) > 0 ? seg : 0;
  }

  // The tile for batches of `seg` rows read in place, at least 4 vectors wide: the one chosen
  // for `seg` rows where it divides them, else the widest that does (sets *vi), else 0.
  // Narrower tiles pay their broadcast and offset per nonzero over too few rows: an FFN pair of
  // BERT-base's shape at 10%, 8 batches of 16 rows, ran 0.78x as fast in one-vector tiles in
  // place as copied into 128-row tiles (an Intel core, lscpu family 6 model 207).
  static int64_t InPlaceTile(int lanes, int64_t seg, int* vi) {
    const int64_t tile = ChooseTile(lanes, seg, vi);
    if (seg % tile == 0 && kConvVectors[*vi] >= 4) return tile;
    for (int v = kConvVectorChoices - 1; v >= 0 && kConvVectors[v] >= 4; --v) {
      if (seg % (static_cast<int64_t>(lanes) * kConvVectors[v]) == 0) {
        *vi = v;
        return static_cast<int64_t>(lanes) * kConvVectors[v];
      }
    }
    return 0;
  }

  std::shared_ptr<const GemmPlan> GemmPlanFor(const Kernels& kern, const Csr& csr, int64_t m, int64_t k,
                                              int64_t in_place) const {
    const int64_t task_rows = pool.TaskRows();
    return kept_plan.Get(
        constant.Holds(csr),
        [&](const GemmPlan& p) {
          return p.m == m && p.k == k && p.in_place == in_place && p.entries.asked_rows == task_rows;
        },
        [&] { return MakeGemmPlan(kern, csr, m, k, in_place, task_rows); });
  }

  std::shared_ptr<const GemmPlan> MakeGemmPlan(const Kernels& kern, const Csr& csr, int64_t m, int64_t k,
                                               int64_t in_place, int64_t task_rows) const {
    auto plan = std::make_shared<GemmPlan>();
    GemmPlan& p = *plan;
    p.m = m;
    p.k = k;
    p.in_place = in_place;
    // In place: tiles within each batch, planes `seg` floats apart (M is a whole number of
    // batches, each of whole tiles); else tiles across M, X copied into planes of whole tiles.
    const double density =
        static_cast<double>(csr.nnz) / std::max(1.0, static_cast<double>(csr.rows) * static_cast<double>(k));
    p.tile = in_place > 0 ? InPlaceTile(kern.conv_lanes, in_place, &p.vi)
                          : ChooseGemmTile(kern.conv_lanes, m, k, density, &p.vi);
    p.tiles = (m + p.tile - 1) / p.tile;
    p.entries.asked_rows = task_rows;
    p.entries.task_rows = pool.Split(task_rows, csr.rows, p.tiles);
    // k * plane <= k * (m + kConvMaxTile + kPlaneSlack) <= INT32_MAX (Compute)
    p.plane = in_place > 0 ? in_place : PackedPlane(p.tiles * p.tile);
    p.kb = EvenBlocks(k, static_cast<int64_t>(BlockPlanes(p.tile)), &p.blocks);
    std::vector<int32_t> off(static_cast<size_t>(csr.nnz));
    std::vector<int64_t> pass(static_cast<size_t>(csr.nnz));
    p.entries.rows = csr.rows;
    p.entries.blocks = p.blocks;
    for (int64_t r = 0; r < csr.rows; ++r) {
      int64_t running = 0;
      for (int64_t j = csr.row_ptr[r]; j < csr.row_ptr[r + 1]; ++j) {
        const int64_t c = ColumnAt(csr, j, &running);  // < k: checked against X
        off[static_cast<size_t>(j)] = static_cast<int32_t>(c * p.plane);
        pass[static_cast<size_t>(j)] = p.entries.Pass(r, c / p.kb);
      }
    }
    std::vector<float> widened;
    p.entries.Arrange(FloatValues(kern, csr, &widened), off, pass);
    return plan;
  }

  // Copies rows i0..i0+len of a transposed X's column kk (TransX: batches of `seg` rows, each
  // batch's K rows of `seg` floats) to `dst`.
  static void CopyColumn(const float* x, int64_t k, int64_t seg, int64_t kk, int64_t i0, int64_t len, float* dst) {
    while (len > 0) {
      const int64_t s0 = i0 % seg, run = std::min(len, seg - s0);
      std::memcpy(dst, x + (i0 - s0) * k + kk * seg + s0, static_cast<size_t>(run) * sizeof(float));
      dst += run;
      i0 += run;
      len -= run;
    }
  }

  // X as SpmmTiled's K planes of `plane` floats: plane kk holds column kk of X for rows
  // 0..m-1, zero to the plane's end (+ one tile of slack, also zero: no tile reads past it).
  PackBuffer PackPlanes(const ortabi::KernelContext* ctx, const Kernels& kern, const float* x, int64_t m, int64_t k,
                        int64_t seg, int64_t plane) const {
    PackBuffer q = CallPack(static_cast<size_t>(k * plane + kConvMaxTile));
    constexpr int64_t kPackK = 64;
    const int64_t pack_tasks = std::max<int64_t>(1, (k + kPackK - 1) / kPackK);
    ParallelFor(ctx, static_cast<size_t>(pack_tasks), [&](size_t t) {
      const int64_t k0 = static_cast<int64_t>(t) * kPackK, k1 = std::min(k, k0 + kPackK);
      if (TransX()) {
        for (int64_t kk = k0; kk < k1; ++kk) CopyColumn(x, k, seg, kk, 0, m, q.get() + kk * plane);
      } else {
        kern.transpose(x + k0, k, q.get() + k0 * plane, plane, m, k1 - k0);
      }
      for (int64_t kk = k0; kk < k1; ++kk)
        std::memset(q.get() + kk * plane + m, 0, static_cast<size_t>(plane - m) * sizeof(float));
    });
    std::memset(q.get() + k * plane, 0, static_cast<size_t>(kConvMaxTile) * sizeof(float));
    return q;
  }

  void SpmmTiled(const ortabi::KernelContext* ctx, const Kernels& kern, const Csr& csr, const float* x, int64_t m,
                 int64_t k, int64_t seg, const Bias& bias, const float* z, float* y) const {
    const int64_t n = csr.rows;
    const int64_t in_place = InPlaceSeg(kern, x, m, k, seg);
    const std::shared_ptr<const GemmPlan> plan = GemmPlanFor(kern, csr, m, k, in_place);
    const GemmPlan& p = *plan;
    const TaskOrder& e = p.entries;
    const PackBuffer q = in_place > 0 ? PackBuffer() : PackPlanes(ctx, kern, x, m, k, seg, p.plane);
    // A transposed X read in place (InPlaceSeg): a transposed chain's second product or
    // matmul = 4, as BERT-base's FFN and attention output read theirs: 1.5 MB not copied for
    // fc2 at sequence 128, and at batch 8 each batch's planes as one batch's lie (copied into
    // planes across the batches, fc2's tiles had read 2.5 MB of planes, more than an L2).
    const float* w = e.weights.data();
    const int32_t* off = e.off.data();
    const int64_t task_rows = e.task_rows;
    const int64_t chunks = (n + task_rows - 1) / task_rows;
    const auto rows = kern.conv_rows[p.vi];
    // With alpha 1 and a bias over the output features only (MatMul + Add, Gemm with a 1-D C),
    // each row of Y^T starts at its bias and, without Z, is activated in the tile, in L1,
    // before the transpose; otherwise scale, bias, Z and activation follow the transpose, on
    // the rows of Y it has just written.
    const bool in_tile = alpha == 1.f && bias.stride_m == 0;
    const bool act_in_tile = in_tile && z == nullptr;
    // Y^T summed where it lies (TransY, X packed): where every batch of `seg` columns is whole
    // tiles, a tile's row r is `tile` floats of Y^T's row r in its batch, the rows `seg` floats
    // apart, and with nothing but Z and the activation left after the passes, the tiles sum
    // there instead of in a task buffer copied out afterwards. BERT-base's query, key, value
    // and fc1 at sequence 128 (8-vector tiles, one a batch): the encoder layer 1.02-1.03x faster
    // at batch 8, 1.025x at 4, 0.99-1.02x at 1 (bench/ab_library.py, a Zen 4 class core).
    const bool in_y = TransY() && in_tile && in_place == 0 && seg > 0 && m % seg == 0 && seg % p.tile == 0;
    pool.ParallelFor(ctx, static_cast<size_t>(p.tiles * chunks), [&](size_t t) {
      const int64_t tile = static_cast<int64_t>(t) / chunks, r0 = (static_cast<int64_t>(t) % chunks) * task_rows;
      const int64_t r1 = std::min(n, r0 + task_rows);
      e.Touch(r0, r1);
      const int64_t m0 = tile * p.tile, mc = std::min(p.tile, m - m0);
      // The tile's row r0 in Y^T: batch m0 / seg starts at its N * seg floats (FinishTransposed).
      float* const at_y = in_y ? y + (m0 - m0 % seg) * n + r0 * seg + m0 % seg : nullptr;
      float* const buf = in_y ? at_y : TaskScratch(static_cast<size_t>((r1 - r0) * p.tile));
      const float* qt = in_place > 0 ? x + m0 / in_place * k * in_place + m0 % in_place : q.get() + m0;
      // Each block pass runs the task's rows in one call (conv_rows), each row's tile starting
      // at its bias where the tile applies it.
      float inits[kMaxTaskRows];  // >= task_rows
      const bool has_init = in_tile && bias.data != nullptr;
      for (int64_t r = r0; has_init && r < r1; ++r) inits[r - r0] = bias.at(0, r);
      for (int64_t b = 0; b < p.blocks; ++b)
        rows(w, off, e.pos.data() + e.PassIn(r0, r1, r0, b), r1 - r0, qt, buf, in_y ? seg : p.tile,
             has_init ? inits : nullptr, b > 0, nullptr, 0);
      if (in_y) {  // Z, then the activation, on the rows as they lie (one run where a tile is a batch)
        const bool one_run = p.tile == seg;
        for (int64_t i = 0; i < (one_run ? 1 : r1 - r0); ++i) {
          float* const row = at_y + i * seg;
          const int64_t len = one_run ? (r1 - r0) * seg : p.tile;
          if (z != nullptr) kern.add(row, z + (row - y), len);
          if (act.kind != Act::kNone) kern.activate(row, len, act);
        }
        return;
      }
      // buf holds Y^T for rows r0..r1 and batch rows m0..m0+mc (its other lanes are never read).
      if (act_in_tile && act.kind != Act::kNone) kern.activate(buf, (r1 - r0) * p.tile, act);
      if (TransY()) {
        FinishTransposed(kern, buf, p.tile, r0, r1, m0, mc, n, seg, in_tile, act_in_tile, bias, z, y);
        return;
      }
      kern.transpose(buf, p.tile, y + m0 * n + r0, n, r1 - r0, mc);
      if (act_in_tile) return;
      for (int64_t i = 0; i < mc; ++i) {
        float* yrow = y + (m0 + i) * n;
        if (!in_tile && bias.data) {
          for (int64_t r = r0; r < r1; ++r) yrow[r] = alpha * yrow[r] + bias.at(m0 + i, r);
        } else if (!in_tile && alpha != 1.f) {
          for (int64_t r = r0; r < r1; ++r) yrow[r] *= alpha;
        }
        if (z != nullptr) kern.add(yrow + r0, z + (m0 + i) * n + r0, r1 - r0);
        if (act.kind != Act::kNone) kern.activate(yrow + r0, r1 - r0, act);
      }
    });
  }

  // Y^T rows r0..r1, columns m0..m0+mc (TransY): the tile's rows as they lie (`src`, rows
  // `stride` floats apart), then what the tile did not apply: scale and bias, Z (Y's shape),
  // the activation. Y holds batches of `seg` columns, each batch's N rows of `seg` floats
  // (matmul = 3; one batch of M for matmul = 2), so a tile across a batch's end writes in runs.
  void FinishTransposed(const Kernels& kern, const float* src, int64_t stride, int64_t r0, int64_t r1, int64_t m0,
                        int64_t mc, int64_t n, int64_t seg, bool in_tile, bool act_in_tile, const Bias& bias,
                        const float* z, float* y) const {
    for (int64_t i0 = m0; i0 < m0 + mc;) {
      const int64_t s0 = i0 % seg, run = std::min(m0 + mc - i0, seg - s0);
      const int64_t at = (i0 - s0) * n + s0;  // batch (i0 - s0) / seg starts at its N * seg floats
      for (int64_t r = r0; r < r1; ++r) {
        float* row = y + at + r * seg;
        std::copy_n(src + (r - r0) * stride + (i0 - m0), run, row);
        if (act_in_tile) continue;
        if (!in_tile && bias.data) {
          for (int64_t i = 0; i < run; ++i) row[i] = alpha * row[i] + bias.at(i0 + i, r);
        } else if (!in_tile && alpha != 1.f) {
          for (int64_t i = 0; i < run; ++i) row[i] *= alpha;
        }
        if (z != nullptr) kern.add(row, z + at + r * seg, run);
        if (act.kind != Act::kNone) kern.activate(row, run, act);
      }
      i0 += run;
    }
  }

  Bias ReadBias(const ortabi::KernelContext* ctx, size_t count, int64_t m, int64_t n,
                const std::vector<int64_t>& out_shape) const {
    Bias b;
    const ortabi::Value* cv = Input(ctx, count, 4);
    if (cv == nullptr || beta == 0.f) return b;
    const Tensor c = Inspect(cv);
    if (c.type != ortabi::kFloat) Fail(ortabi::kInvalidArgument, "C must be float32");
    const auto bad = [&] {
      Fail(ortabi::kInvalidArgument, "C of shape ", ShapeStr(c.shape), " does not broadcast to the output shape ",
           ShapeStr(out_shape));
    };
    if (c.shape.size() > out_shape.size()) bad();
    const int64_t c_last = c.shape.empty() ? 1 : c.shape.back();
    if (c_last != 1 && c_last != n) bad();
    b.stride_n = (c_last == n && n != 1) ? 1 : 0;
    if (!matmul) {
      const int64_t c_first = c.shape.size() == 2 ? c.shape[0] : 1;
      if (c_first != 1 && c_first != m) bad();
      b.stride_m = (c_first == m && m != 1) ? c_last : 0;
    } else {
      // Only a bias over the output features (MatMul + Add fusion): every leading dim is 1.
      for (size_t i = 0; i + 1 < c.shape.size(); ++i)
        if (c.shape[i] != 1) bad();
    }
    b.data = c.as<float>();
    b.scale = beta;
    return b;
  }

  // Batch 1: outputs r0 .. r1 of y finished in place: alpha and the bias, then Z, then the
  // activation.
  void Epilogue1(const Kernels& kern, float* y, int64_t r0, int64_t r1, const Bias& bias, const float* z) const {
    if (bias.data) {
      for (int64_t r = r0; r < r1; ++r) y[r] = alpha * y[r] + bias.at(0, r);
    } else if (alpha != 1.f) {
      for (int64_t r = r0; r < r1; ++r) y[r] *= alpha;
    }
    if (z != nullptr) kern.add(y + r0, z + r0, r1 - r0);
    if (act.kind != Act::kNone) kern.activate(y + r0, r1 - r0, act);
  }

  void Gemv(const ortabi::KernelContext* ctx, const Kernels& kern, const Csr& csr, const float* x, int64_t k,
            const Bias& bias, const float* z, float* y) const {
    // The blocks split the CSR's columns (max_col < k), not X's: an X whose width changes
    // between runs reads the same copy.
    const int64_t extent = csr.max_col + 1;
    if (isa == Isa::kAvx512 && gemv_sell != SellUse::kNever && constant.Holds(csr)) {
      const std::shared_ptr<const SellPlan> plan = kept_sell.Get(
          true, [&](const SellPlan& p) { return p.extent == extent; }, [&] { return MakeSellPlan(csr, extent, gemv_sell); });
      if (!plan->Empty()) {
        GemvSell(ctx, kern, csr, *plan, x, k, bias, z, y);
        return;
      }
    }
    if (gemv_blocks && constant.Holds(csr) && extent > kSpmvBlockCols + kSpmvBlockCols / 2) {
      const std::shared_ptr<const GemvBlocksPlan> plan = kept_gemv.Get(
          true, [&](const GemvBlocksPlan& p) { return p.k == extent; }, [&] { return MakeGemvBlocks(csr, extent); });
      if (!plan->seg_ptr.empty()) {
        GemvBlocks(ctx, kern, csr, *plan, x, bias, z, y);
        return;
      }
    }
    const int64_t parts = PartsFor(static_cast<double>(csr.nnz) + 8.0 * csr.rows, 64);
    const std::vector<int64_t> bounds = SplitRows(csr.row_ptr, csr.rows, parts, 8);
    ParallelFor(ctx, static_cast<size_t>(parts), [&](size_t p) {
      const int64_t r0 = bounds[p], r1 = bounds[p + 1];
      if (r0 >= r1) return;
      kern.spmv[csr.value][csr.index](csr.values, csr.col, csr.row_ptr, x, k, r0, r1, y + r0);
      Epilogue1(kern, y, r0, r1, bias, z);
    });
  }

  // Batch 1 over an X wider than 1.5 column blocks (kernels.h kSpmvBlockCols; VGG-16's fc6, the
  // first layer of AlexNet's FC stack). spmv's blocked pass sweeps a group of kSpmvGroupRows
  // rows block by block, so that the block of x it gathers from stays in L1; but it reads each
  // row's share of a block where the row lies, so its CSR arrays come from memory in as many
  // short runs as the group has rows and blocks, and fc6 streamed them at 9.7 GB/s where ORT's
  // dense pass reads 22 GB/s. For the constant CSR the entries are copied once, in the order
  // that pass takes them: group by group, block by block, row by row, each (group, block, row)
  // a segment of its own (GemvBlocksPlan), and a call reads one sequential stream. Columns keep
  // their absolute value, int16 where K allows it, else int32 (uint8 deltas would restart on
  // every segment); values keep their type. The segments are rows of a CSR whose columns each
  // lie in one block: spmv_rows takes them in order, 16 segments of a block at a time, and the
  // blocks' sums are added per row. Where the segments would outnumber the entries (very wide
  // and very sparse), nothing is copied and the blocked pass runs as before.
  struct GemvBlocksPlan {
    int64_t k = 0, blocks = 0, groups = 0;  // k: the columns the blocks split (the CSR's extent)
    IndexKind index = kIndex16;
    std::vector<int32_t> seg_ptr;    // segment ((group * blocks + block) * kSpmvGroupRows + row) -> entries
    std::vector<int32_t> group_ptr;  // group -> its first entry (SplitRows' cost)
    std::vector<unsigned char> values, cols;
  };
  KeptPlan<GemvBlocksPlan> kept_gemv;
  bool gemv_blocks = true;  // ONNXPRUNE_GEMV_BLOCKS (ChooseGemvBlocks)

  KeptPlan<SellPlan> kept_sell;
  SellUse gemv_sell = SellUse::kAuto;  // ONNXPRUNE_GEMV_SELL (ChooseGemvSell)

  void GemvSell(const ortabi::KernelContext* ctx, const Kernels& kern, const Csr& csr, const SellPlan& p,
                const float* x, int64_t k, const Bias& bias, const float* z, float* y) const {
    const int64_t parts = PartsFor(static_cast<double>(p.group_step.back()) * kSellRows, 64);
    const std::vector<int64_t> bounds = SplitRows(p.group_step.data(), p.groups, parts, 4);
    ParallelFor(ctx, static_cast<size_t>(parts), [&](size_t part) {
      const int64_t g0 = bounds[part], g1 = bounds[part + 1];
      if (g0 >= g1) return;
      SellRows(p, x, k, g0, g1, y + g0 * kSellRows);
      Epilogue1(kern, y, g0 * kSellRows, std::min(csr.rows, g1 * kSellRows), bias, z);
    });
  }

  std::shared_ptr<const GemvBlocksPlan> MakeGemvBlocks(const Csr& csr, int64_t k) const {
    auto plan = std::make_shared<GemvBlocksPlan>();
    GemvBlocksPlan& p = *plan;
    p.k = k;
    p.blocks = (k + kSpmvBlockCols - 1) / kSpmvBlockCols;  // as SpmvBlocked splits K
    const int64_t width = (k + p.blocks - 1) / p.blocks;
    p.groups = (csr.rows + kSpmvGroupRows - 1) / kSpmvGroupRows;
    // groups * blocks * 16 <= (rows + 15) * (K / 5120 + 1): bounded by the test before it is formed
    if (static_cast<double>(p.groups) * static_cast<double>(p.blocks) * kSpmvGroupRows >
        static_cast<double>(csr.nnz) + 65536.0)
      return plan;
    const int64_t segments = p.groups * p.blocks * kSpmvGroupRows;
    p.index = k <= INT16_MAX ? kIndex16 : kIndex32;
    const size_t vbytes = static_cast<size_t>(ValueBytes(csr.value)), ibytes = static_cast<size_t>(IndexBytes(p.index));
    const auto segment = [&](int64_t r, int64_t c) {
      const int64_t b = std::min(c / width, p.blocks - 1);
      return ((r / kSpmvGroupRows) * p.blocks + b) * kSpmvGroupRows + r % kSpmvGroupRows;
    };
    // body(r, j, column) for every entry j of every row r, columns decoded
    const auto each_entry = [&](const auto& body) {
      for (int64_t r = 0; r < csr.rows; ++r) {
        int64_t running = 0;
        for (int64_t j = csr.row_ptr[r]; j < csr.row_ptr[r + 1]; ++j) body(r, j, ColumnAt(csr, j, &running));
      }
    };
    std::vector<int64_t> at(static_cast<size_t>(segments) + 1, 0);
    each_entry([&](int64_t r, int64_t, int64_t c) { ++at[static_cast<size_t>(segment(r, c)) + 1]; });
    for (size_t i = 1; i < at.size(); ++i) at[i] += at[i - 1];
    p.seg_ptr.assign(at.begin(), at.end());  // <= nnz <= INT32_MAX
    p.group_ptr.resize(static_cast<size_t>(p.groups) + 1);
    for (int64_t gi = 0; gi <= p.groups; ++gi)
      p.group_ptr[static_cast<size_t>(gi)] = p.seg_ptr[static_cast<size_t>(gi * p.blocks * kSpmvGroupRows)];
    p.values.resize(static_cast<size_t>(csr.nnz) * vbytes);
    p.cols.resize(static_cast<size_t>(csr.nnz) * ibytes);
    const auto* src = static_cast<const unsigned char*>(csr.values);
    each_entry([&](int64_t r, int64_t j, int64_t c) {  // c < K: checked against X
      const size_t to = static_cast<size_t>(at[static_cast<size_t>(segment(r, c))]++);
      std::memcpy(p.values.data() + to * vbytes, src + static_cast<size_t>(j) * vbytes, vbytes);
      if (p.index == kIndex16) {
        const int16_t c16 = static_cast<int16_t>(c);
        std::memcpy(p.cols.data() + to * ibytes, &c16, ibytes);
      } else {
        const int32_t c32 = static_cast<int32_t>(c);
        std::memcpy(p.cols.data() + to * ibytes, &c32, ibytes);
      }
    });
    PreferHugePages(p.values.data(), p.values.size());
    PreferHugePages(p.cols.data(), p.cols.size());
    return plan;
  }

  void GemvBlocks(const ortabi::KernelContext* ctx, const Kernels& kern, const Csr& csr, const GemvBlocksPlan& p,
                  const float* x, const Bias& bias, const float* z, float* y) const {
    const int64_t parts = PartsFor(static_cast<double>(csr.nnz) + 8.0 * csr.rows, 64);
    const std::vector<int64_t> bounds = SplitRows(p.group_ptr.data(), p.groups, parts, 8 * kSpmvGroupRows);
    const auto rows = kern.spmv_rows[csr.value][p.index];
    ParallelFor(ctx, static_cast<size_t>(parts), [&](size_t part) {
      const int64_t g0 = bounds[part], g1 = bounds[part + 1];
      if (g0 >= g1) return;
      for (int64_t gi = g0; gi < g1; ++gi) {
        float sum[kSpmvGroupRows] = {}, block[kSpmvGroupRows];
        for (int64_t b = 0; b < p.blocks; ++b) {
          const int64_t s0 = (gi * p.blocks + b) * kSpmvGroupRows;
          rows(p.values.data(), p.cols.data(), p.seg_ptr.data(), x, p.k, s0, s0 + kSpmvGroupRows, block);
          for (int i = 0; i < kSpmvGroupRows; ++i) sum[i] += block[i];
        }
        const int64_t r0 = gi * kSpmvGroupRows, n = std::min<int64_t>(kSpmvGroupRows, csr.rows - r0);
        std::memcpy(y + r0, sum, static_cast<size_t>(n) * sizeof(float));
      }
      const int64_t r0 = g0 * kSpmvGroupRows, r1 = std::min(csr.rows, g1 * kSpmvGroupRows);
      Epilogue1(kern, y, r0, r1, bias, z);
    });
  }

  // Batch > 1: the batch is packed into K x mb panels (X transposed, zero padded) so every
  // nonzero multiplies one contiguous, aligned run of batch values; results come back per row
  // as mb-vectors and are transposed into Y in blocks of 16 rows.
  void Spmm(const ortabi::KernelContext* ctx, const Kernels& kern, const Csr& csr, const float* x, int64_t m,
            int64_t k, int64_t seg, const Bias& bias, const float* z, float* y) const {
    const int64_t n = csr.rows;
    const int mb = PanelWidth(m, k);
    const int64_t panels = (m + mb - 1) / mb;
    const int64_t panel_size = std::max<int64_t>(k, 1) * mb;
    const PackBuffer xt = CallPack(static_cast<size_t>(CheckedMul(panels, panel_size, "packed batch size")));

    // Pack: panel p holds batch rows [p*mb, p*mb + mb) of X, as K rows of mb floats.
    constexpr int64_t kBlockK = 256;
    const int64_t kblocks = (k + kBlockK - 1) / kBlockK;
    const int64_t pack_tasks = panels * std::max<int64_t>(kblocks, 1);
    ParallelFor(ctx, static_cast<size_t>(pack_tasks), [&](size_t t) {
      const int64_t p = static_cast<int64_t>(t) / std::max<int64_t>(kblocks, 1);
      const int64_t k0 = (static_cast<int64_t>(t) % std::max<int64_t>(kblocks, 1)) * kBlockK;
      const int64_t k1 = std::min(k, k0 + kBlockK);
      const int64_t m0 = p * mb, mc = std::min<int64_t>(mb, m - m0);
      float* dst = xt.get() + p * panel_size;
      for (int64_t kk = k0; kk < k1; ++kk) {
        float* d = dst + kk * mb;
        if (TransX()) {
          CopyColumn(x, k, seg, kk, m0, mc, d);
        } else {
          for (int64_t i = 0; i < mc; ++i) d[i] = x[(m0 + i) * k + kk];
        }
        for (int64_t i = mc; i < mb; ++i) d[i] = 0.f;
      }
    });

    const double work_per_panel = static_cast<double>(csr.nnz) * mb + 8.0 * n * mb;
    const int64_t row_parts = PartsFor(work_per_panel, std::max<int64_t>(1, 64 / panels));
    const std::vector<int64_t> bounds = SplitRows(csr.row_ptr, n, row_parts, 8);
    ParallelFor(ctx, static_cast<size_t>(panels * row_parts), [&](size_t t) {
      const int64_t p = static_cast<int64_t>(t) / row_parts;
      const int64_t part = static_cast<int64_t>(t) % row_parts;
      const int64_t m0 = p * mb, mc = std::min<int64_t>(mb, m - m0);
      const float* panel = xt.get() + p * panel_size;
      constexpr int64_t kRowBlock = 16;
      alignas(64) float acc[kRowBlock * 64];
      for (int64_t r0 = bounds[part]; r0 < bounds[part + 1]; r0 += kRowBlock) {
        const int64_t r1 = std::min(bounds[part + 1], r0 + kRowBlock);
        kern.spmm[csr.value][csr.index](csr.values, csr.col, csr.row_ptr, panel, mb, r0, r1, acc);
        if (TransY()) {  // acc holds Y^T's rows r0..r1 for the panel's batch rows, mb floats apart
          FinishTransposed(kern, acc, mb, r0, r1, m0, mc, n, seg, false, false, bias, z, y);
          continue;
        }
        for (int64_t i = 0; i < mc; ++i) {
          float* yrow = y + (m0 + i) * n;
          if (bias.data) {
            for (int64_t r = r0; r < r1; ++r) yrow[r] = alpha * acc[(r - r0) * mb + i] + bias.at(m0 + i, r);
          } else {
            for (int64_t r = r0; r < r1; ++r) yrow[r] = alpha * acc[(r - r0) * mb + i];
          }
          if (z != nullptr) kern.add(yrow + r0, z + (m0 + i) * n + r0, r1 - r0);
          if (act.kind != Act::kNone) kern.activate(yrow + r0, r1 - r0, act);
        }
      }
    });
  }

  // The widest panel (up to 64 batch columns) whose K x mb block stays within about half of a
  // 1 MiB L2: beyond that every nonzero's panel row comes from L3 and the loop stalls on it.
  static int PanelWidth(int64_t m, int64_t k) {
    constexpr int64_t kPanelBytes = 640 * 1024;
    int mb = 64;
    while (mb > kPanelQuantum && static_cast<int64_t>(mb) * k * 4 > kPanelBytes) mb -= kPanelQuantum;
    const int64_t needed = (m + kPanelQuantum - 1) / kPanelQuantum * kPanelQuantum;
    return static_cast<int>(std::min<int64_t>(mb, needed));
  }
};

// --- CsrConv geometry -----------------------------------------------------------------------

// Largest kernel_shape, strides and dilations entry, and largest pad, that CsrConv accepts
// (README "Limits"). Real networks stay far below; the bound keeps (kH-1)*dH, pads and every
// sum of them far from int64 overflow before any shape is known.
constexpr int64_t kMaxConvAttr = 65536;
// Largest input-copy buffer and output plane, in floats: offsets into the buffer are int32.
constexpr int64_t kMaxConvPlane = INT32_MAX;

// Empty when the attributes are within the documented limits, else the rule they break.
// Shared by kernel creation (which fails with it) and shape inference (which then gives up).
// A 1-D convolution (op-set 4) has kernel_shape [k] and X of shape (N, C, L); the others are
// 2-D. `ks`, `st`, `di`, `pa` as given (st, di, pa filled with their defaults for ks's rank
// when absent, ConvDefaults).
std::string ConvAttrsError(const std::vector<int64_t>& ks, const std::vector<int64_t>& st,
                           const std::vector<int64_t>& di, const std::vector<int64_t>& pa) {
  const auto in_range = [](const std::vector<int64_t>& v, int64_t lo) {
    return std::all_of(v.begin(), v.end(), [lo](int64_t e) { return e >= lo && e <= kMaxConvAttr; });
  };
  const std::string bound = std::to_string(kMaxConvAttr);
  if ((ks.size() != 1 && ks.size() != 2) || !in_range(ks, 1))
    return "attribute kernel_shape must be [kH, kW], or [k] for a 1-D convolution, ints in [1, " + bound + "]";
  const bool one = ks.size() == 1;
  if (st.size() != ks.size() || !in_range(st, 1))
    return std::string("strides must be ") + (one ? "one int" : "two ints") + " in [1, " + bound + "]";
  if (di.size() != ks.size() || !in_range(di, 1))
    return std::string("dilations must be ") + (one ? "one int" : "two ints") + " in [1, " + bound + "]";
  if (pa.size() != 2 * ks.size() || !in_range(pa, 0))
    return std::string("pads must be ") + (one ? "two ints [begin, end]" : "four ints [top, left, bottom, right]") +
           " in [0, " + bound + "]";
  return "";
}

// The defaults of strides, dilations and pads for a kernel_shape of `rank` entries (1 or 2).
void ConvDefaults(size_t rank, std::vector<int64_t>* st, std::vector<int64_t>* di, std::vector<int64_t>* pa) {
  const size_t n = rank == 1 ? 1 : 2;
  st->assign(n, 1);
  di->assign(n, 1);
  pa->assign(2 * n, 0);
}

// A valid 1-D convolution's attributes as the 2-D ones of a 1 x k kernel over a height of 1.
void WidenConv1D(std::vector<int64_t>* ks, std::vector<int64_t>* st, std::vector<int64_t>* di,
                 std::vector<int64_t>* pa) {
  if (ks->size() != 1) return;
  *ks = {1, (*ks)[0]};
  *st = {1, (*st)[0]};
  *di = {1, (*di)[0]};
  *pa = {0, (*pa)[0], 0, (*pa)[1]};
}

// A window's attributes as the node gives them, CsrConv's and MaxPool's: kernel_shape, and
// strides, dilations and pads, their defaults for its rank where absent (bounded by the
// callers). ONNX's auto_pad has no meaning here (pads are explicit): ignoring it would compute
// another op than the model asks for, so it is refused.
void ReadWindow(const ortabi::KernelInfo* info, std::vector<int64_t>* ks, std::vector<int64_t>* st,
                std::vector<int64_t>* di, std::vector<int64_t>* pa) {
  *ks = AttrInts(info, "kernel_shape", {});
  ConvDefaults(ks->size(), st, di, pa);
  *st = AttrInts(info, "strides", *st);
  *di = AttrInts(info, "dilations", *di);
  *pa = AttrInts(info, "pads", *pa);
  if (HasAttr(info, "auto_pad")) Fail(ortabi::kInvalidArgument, "attribute auto_pad is not supported: give explicit pads");
}

// Output extent along one axis, the ONNX Conv rule: (in + pad0 + pad1 - (k-1)*d - 1) / s + 1.
// False when the dilated kernel does not fit the padded input, or `in` is so large that the
// padded extent overflows. k, d, s, pads are within kMaxConvAttr (ConvAttrsError).
bool ConvExtent(int64_t in, int64_t pad0, int64_t pad1, int64_t k, int64_t d, int64_t s, int64_t* out) {
  int64_t padded = 0;
  if (in < 0 || __builtin_add_overflow(in, pad0 + pad1, &padded)) return false;
  const int64_t span = padded - (k - 1) * d - 1;  // (k-1)*d <= 2^32, no overflow
  if (span < 0) return false;
  *out = span / s + 1;
  return true;
}

// Everything CsrConvKernel::Compute derives from the shapes, checked once.
struct ConvGeometry {
  int64_t nb = 0, c_in = 0, h = 0, w = 0, c_out = 0;
  int64_t cg = 0, og = 0;   // input / output channels per group
  Isa tiles = Isa::kScalar;  // whose tiles compute it: their row quantum, lanes and loops (Plan)
  int64_t oh = 0, ow = 0;   // output plane
  int64_t sh = 1, sw = 1;   // strides (1 along an axis with a single output)
  // The input is read through copies (CsrConvKernel::Compute), one per used row phase
  // (i * dH) % sh and copy column k: copy (ph, k) is slot row_slot[ph] * col_start.size() + k
  // (row_slot -1 for phases no tap lands on) and holds the Xpad columns col_start[k] + b * sw.
  // Kernel column j reads copy column tap_col[j] from column tap_shift[j] on.
  std::vector<int64_t> row_phases;
  std::vector<int32_t> row_slot;
  std::vector<int64_t> col_start, tap_shift;
  std::vector<int32_t> tap_col;
  // Copy column k holds X columns from col_first[k] * sw + col_start[k] - pad_l at its columns
  // [col_first[k], col_end[k]), zeros elsewhere (FillCopyPlane).
  std::vector<int64_t> col_first, col_end;
  int64_t copies = 0;       // row_phases.size() * col_start.size()
  int64_t hq = 0, wq = 0;   // rows and columns of a channel's copy
  int64_t plane = 0;        // hq * wq; for a 1x1 kernel's copies rounded up to RowQuantum (PlanPhases)
  bool x_layout = false;    // the copy is X itself (1x1, unit strides, no padding): wq = W
  bool in_place = false;    // the tiles read X itself, no copy (ReadsXInPlace)
  bool shifted = false;     // kW column-shifted copies (ShiftedCopies), else phase copies
  int64_t band = 0;         // output rows per band of copies (CsrConvKernel::BandRows); 0: the whole image's
  int64_t strip = 0;        // shifted copies in column strips of this many floats (kStripFloats); 0: none
  int64_t strips = 1;       // a strip geometry's strips (StripGeometry): Wq / strip of the image's
  int64_t y_row = 0;        // Y's row stride, OW (a strip's OW is its own columns, at most `strip`)
  int64_t q_size = 0;       // copies * c_in * plane <= kMaxConvPlane
  int64_t q_alloc = 0;      // q_size plus the zeroed slack the tiles may read, <= kMaxConvPlane
  bool empty() const { return nb == 0 || c_out == 0 || oh == 0 || ow == 0; }
};

// A channel block's input window, as a share of the L1 data cache (CsrConvKernel::MakePlan):
// whole rows' copies, and column strips' (StripGeometry), whose windows are 16-line runs of
// more channels and copies. Strips at 0.8 had run slower than whole rows on some layers (128
// -> 256 channels of 56 x 56 at 53%, one node: 0.85x), at 0.4-0.6 level or faster (0.4 1.02x,
// 0.5 level); 64 channels of 224 x 224 at 22%, 128 of 112 x 112 at 36%, 256 of 56 x 56 at 42%
// ran 1.05x, 1.08x, 1.06x faster than whole rows at 0.5 (bench/ab_library.py style, one
// process, 20 rounds).
constexpr double kWindowL1 = 0.8;
constexpr double kStripWindowL1 = 0.5;

// A strip's copy reads 16 floats of each row of a channel's band, rows W floats apart: a line
// per row at a new place each time, which the hardware prefetchers do not foresee, so the copy
// waited on X's lines (VGG-16's conv1_2 ran 1.3x faster with X's planes all in the L1 than from
// where they lay). FillStrip asks for the same rows of the channel this many channels ahead as
// it copies each one (lscpu family 25 model 17, one node after a Relu, 20 rounds: 64 channels
// of 224x224 at 22% 1.07-1.22x faster at 4-8 channels ahead, 1.17x at 16, 1.12x at 32).
constexpr int64_t kStripPrefetchChannels = 6;

// Fewest nonzeros per output row and input-channel block that justify a block (CsrConv).
constexpr int64_t kConvMinBlockNnz = 16;

// How many fewer output positions (rows of Wq) the AVX2 tiles must compute than the AVX-512
// ones for a layer to take them on a core that splits 512-bit FMAs (CsrConvKernel::Plan): 56-
// and 7-wide maps compute 1.14x and 1.13x fewer and ran 1.11-1.24x faster; equal ones ran
// slower.
constexpr double kNarrowGain = 1.1;

// How CsrConv computes one input shape with one CSR (CsrConvKernel::MakePlan). For constant CSR
// arrays it is made once per input shape and kept by the kernel.
struct ConvPlan {
  int64_t c_in = 0, h = 0, w = 0;  // the input shape it was made for
  int vi = 0;                      // tile width: kConvVectors[vi] vectors
  int64_t tile = 0;                // output positions per tile (conv_lanes * kConvVectors[vi])
  int tail_vi = 0;                 // the last tile's width, kConvVectors[tail_vi] <= that
  int64_t tail = 0;                // its positions (<= tile)
  int64_t npos = 0;                // oh * wq: output rows, Wq positions each
  int64_t tiles = 0;               // ceil((npos - tail) / tile) + 1: the last one is `tail` wide
  // Where tile t starts, its width and its vector choice.
  int64_t Start(int64_t t) const { return t * tile; }
  int64_t Width(int64_t t) const { return t + 1 == tiles ? tail : tile; }
  int Vectors(int64_t t) const { return t + 1 == tiles ? tail_vi : vi; }
  int64_t End() const { return (tiles - 1) * tile + tail; }  // past the last tile's last position
  int64_t blocks = 1, cb = 0;      // input channels (per group) in blocks of cb
  TaskOrder entries;               // weights and offsets into the input copies, by task rows
  // A tile task's output channels (of c_out > 0) and the tasks' count across them.
  int64_t Chunk(int64_t c_out) const { return std::min(c_out, entries.task_rows); }
  int64_t Chunks(int64_t c_out) const { return (c_out + Chunk(c_out) - 1) / Chunk(c_out); }
};

// CsrConv's weights for its Winograd path (winograd.h), made from the CSR for X's channel
// count c: U, 36 x kp x c floats.
struct WinoWeights {
  int64_t c = 0;
  AlignedBuffer u;
};

// --- CsrConv --------------------------------------------------------------------------------

struct CsrConvKernel {
  int64_t kh = 0, kw = 0, sh = 1, sw = 1, dh = 1, dw = 1, group = 1;
  size_t x_rank = 4;  // 3 for a 1-D convolution: X (N, C, L) runs as (N, C, 1, L)
  int64_t pad_t = 0, pad_l = 0, pad_b = 0, pad_r = 0;
  Isa isa = Isa::kScalar;
  Copies copies = Copies::kGate;  // ONNXPRUNE_CONV_COPIES (ShiftedCopies)
  double band_bytes = 0;          // ONNXPRUNE_CONV_BAND_BYTES or the L2 size (BandRows)
  bool strips = true;             // ONNXPRUNE_CONV_STRIPS (StripGeometry)
  bool narrow = false;            // ONNXPRUNE_CONV_NARROW (Plan)
  DwPath depthwise = DwPath::kAuto;  // ONNXPRUNE_CONV_DEPTHWISE (ChooseDepthwisePath)
  Activation act;  // applied to each output as its tile completes
  bool winograd = false;  // the node's `winograd` attribute: 3x3 by F(4x4, 3x3) (Winograd)
  KeptPlan<WinoWeights> kept_wino;  // U for the constant CSR and the last channel count seen
  ValidatedCsr constant;
  int64_t columns = -1;  // K = C_in/group * kH * kW, when the node records it (ReadColumns)
  // The plan for the constant CSR and the last input shape seen.
  KeptPlan<ConvPlan> kept_plan;
  PoolSeen pool;  // task rows of the tiles (Tiles)

  CsrConvKernel() = default;  // for Layout

  // The input layout the kernel plans for X of shape `x` (N, C, H, W) and a CSR of `c_out` rows
  // and `nnz` entries, on `isa`, with ONNXPRUNE_CONV_COPIES and ONNXPRUNE_CONV_DEPTHWISE read
  // as a session would: 0 X read in place, 1 phase copies, 2 shifted copies, 3 depthwise band
  // by band, 4 depthwise reading X directly (DirectDepthwise, which may still hand a layer to
  // the bands: repeated columns past its mask table, non-finite weights), 5 depthwise channel
  // blocks, 6 the depthwise grid, 7 input copies band by band (BandRows), 8 shifted copies in
  // column strips (StripGeometry; band by band where 7 would be). attrs: kH, kW, sH,
  // sW, dH, dW, pad_t, pad_l, pad_b, pad_r, group. Refused attributes or shapes fail as the op
  // does.
  static int Layout(Isa isa, const int64_t* attrs, const int64_t* x, int64_t c_out, int64_t nnz) {
    const std::string error = ConvAttrsError({attrs[0], attrs[1]}, {attrs[2], attrs[3]}, {attrs[4], attrs[5]},
                                             {attrs[6], attrs[7], attrs[8], attrs[9]});
    if (!error.empty() || attrs[10] < 1 || c_out < 0 || nnz < 0) Fail(ortabi::kInvalidArgument, "refused: ", error);
    for (int d = 0; d < 4; ++d)
      if (x[d] < 0) Fail(ortabi::kInvalidArgument, "refused: negative dimension");
    CsrConvKernel k;
    k.kh = attrs[0], k.kw = attrs[1], k.sh = attrs[2], k.sw = attrs[3], k.dh = attrs[4], k.dw = attrs[5];
    k.pad_t = attrs[6], k.pad_l = attrs[7], k.pad_b = attrs[8], k.pad_r = attrs[9], k.group = attrs[10];
    k.isa = isa;
    k.copies = ChooseCopies();
    k.band_bytes = ChooseBandBytes();
    k.strips = ChooseStrips();
    k.narrow = ChooseNarrowTiles();
    k.depthwise = ChooseDepthwisePath();
    Tensor t;
    t.type = ortabi::kFloat;
    t.shape.assign(x, x + 4);
    Csr csr;
    csr.rows = c_out;
    csr.nnz = nnz;
    csr.max_col = 0;
    const ConvGeometry g = k.Plan(t, csr);
    if (g.empty()) Fail(ortabi::kInvalidArgument, "refused: an empty output");
    if (k.ChannelBlocks(g, nnz)) return 5;
    int64_t pitch = 0;
    if (k.ReadsXDirectly(g)) return k.GridKernel(KernelsFor(isa), g, &pitch) && nnz == c_out * k.kh * k.kw ? 6 : 4;
    DwGeometry d;
    if (k.DepthwiseRows(g, &d)) return 3;
    if (g.strip > 0) return 8;
    if (g.band > 0) return 7;
    return g.x_layout ? 0 : g.shifted ? 2 : 1;
  }

  // Every attribute is bounded here, before any shape is seen (ConvAttrsError).
  explicit CsrConvKernel(const ortabi::KernelInfo* info) {
    std::vector<int64_t> ks, st, di, pa;
    ReadWindow(info, &ks, &st, &di, &pa);
    const std::string error = ConvAttrsError(ks, st, di, pa);
    if (!error.empty()) Fail(ortabi::kInvalidArgument, error);
    x_rank = ks.size() + 2;
    WidenConv1D(&ks, &st, &di, &pa);
    kh = ks[0];
    kw = ks[1];
    sh = st[0];
    sw = st[1];
    dh = di[0];
    dw = di[1];
    pad_t = pa[0];
    pad_l = pa[1];
    pad_b = pa[2];
    pad_r = pa[3];
    group = AttrInt(info, "group", 1);
    if (group < 1) Fail(ortabi::kInvalidArgument, "group must be >= 1");
    act = ReadActivation(info);
    ReadWinograd(info);
    isa = ChooseIsa();
    copies = ChooseCopies();
    band_bytes = ChooseBandBytes();
    strips = ChooseStrips();
    narrow = ChooseNarrowTiles();
    depthwise = ChooseDepthwisePath();
    constant = ValidateConstantCsr(info);
    columns = ReadColumns(info, constant);
  }

  // Y[n, r, oh, ow] = B[r] + sum_(c,i,j) W[r, c, i, j] X[n, g(r)*Cg + c, oh*sh + i*dh - pad_t, ow*sw + j*dw - pad_l]
  //
  // The padded input is read through copies Q[ph][j][c] (Q[..][a][b] = Xpad[c][a*sh+ph][b*sw+j*dW]),
  // one per kernel column j and row phase ph = (i*dH) % sh that some kernel row i lands on:
  // the column shift and stride are baked into the copy, the row stride into the phase, so
  // kernel tap (c, i, j) reads copy (ph, j) of channel c from row (i*dH)/sh on. Each nonzero
  // then becomes one offset into Q, and every output plane, taken row-major with row length
  // Wq (OW rounded up to the row quantum, RowQuantum), is
  //   out[p] = sum_j w_j * Q[off_j + p]
  // a sum of shifted contiguous runs (columns ow >= OW of each Wq-wide row are computed and
  // discarded). With Wq a multiple of the tile's vector width every offset, and so every load
  // of a tile, is vector-aligned (no load splits a cache line). No im2col buffer, and the work
  // is proportional to the nonzeros.
  void Compute(ortabi::KernelContext* ctx) const {
    size_t count = 0;
    const Tensor x = ReadNchw(ctx, x_rank, &count);
    const Csr csr = ReadCsr(ctx, count, constant);
    const ConvGeometry g = Plan(x, csr);
    const float* bias = ReadBias(ctx, count, g.c_out);

    std::vector<int64_t> out_shape = {g.nb, g.c_out, g.oh, g.ow};
    if (x_rank == 3) out_shape.erase(out_shape.begin() + 2);  // oh == 1
    const float* z = ReadResidual(ctx, count, out_shape);
    ortabi::Value* yv = nullptr;
    Check(g_api->KernelContext_GetOutput(ctx, 0, out_shape.data(), out_shape.size(), &yv));
    if (g.empty()) return;
    void* ydata = nullptr;
    Check(g_api->GetTensorMutableData(yv, &ydata));
    float* y = static_cast<float*>(ydata);

    const float* xd = x.as<float>();
    if (winograd && isa != Isa::kScalar && Winograd(ctx, g, csr, xd, bias, z, y)) return;
    DwGeometry dg;
    const bool blocks = ChannelBlocks(g, csr.nnz), direct = ReadsXDirectly(g), bands = DepthwiseRows(g, &dg);
    if (blocks || direct || bands) {  // the tiles read the plan's own float32 weights
      std::vector<float> widened;
      const float* w = FloatValues(KernelsFor(isa), csr, &widened);
      if (blocks) {
        DepthwiseBlocks(ctx, g, csr, w, xd, bias, z, y);
        return;
      }
      if (direct && DirectDepthwise(ctx, g, csr, w, xd, bias, z, y)) return;
      if (bands) {
        Depthwise(ctx, g, dg, csr, w, xd, bias, z, y);
        return;
      }
    }
    // A strip's tiles run on one thread (the strips are the parallel tasks): rows per task as
    // on one thread.
    const int64_t task_rows = g.strip > 0 ? pool.SerialTaskRows() : pool.TaskRows();
    const ConvGeometry gb = g.band > 0 ? BandGeometry(g) : ConvGeometry();
    const ConvGeometry& fg = g.band > 0 ? gb : g;  // what one fill of Q holds: a band's rows, or the image's
    const ConvGeometry gs = g.strip > 0 ? StripGeometry(fg) : ConvGeometry();
    const ConvGeometry& pg = g.strip > 0 ? gs : fg;  // the tiles' geometry: a strip's, a band's or the image's
    const std::shared_ptr<const ConvPlan> plan = kept_plan.Get(
        constant.Holds(csr),
        [&](const ConvPlan& p) {
          return p.c_in == g.c_in && p.h == g.h && p.w == g.w && p.entries.asked_rows == task_rows;
        },
        [&] { return MakePlan(csr, pg, task_rows); });
    const int64_t y_plane = g.oh * g.ow, y_image = g.c_out * y_plane;
    if (g.in_place) {
      Tiles(ctx, g, *plan, xd, true, bias, z, y, y_plane, 0, false, g.nb, g.c_in * g.h * g.w, y_image);
      return;
    }
    // The tiles read at most tiles * tile floats past an offset < q_size, within q_alloc
    // (PlanPhases, BandGeometry or StripGeometry, checked again in MakePlan). The slack past Q
    // is zeroed once per buffer: the copies of every image, band or strip fill Q only.
    const int64_t rows = g.band > 0 ? g.band : g.oh;  // output rows per fill of Q
    if (g.strip > 0) {
      StripTasks(ctx, g, fg, pg, *plan, xd, bias, z, y);
      return;
    }
    if (g.band == 0 && g.nb > plan->tiles * plan->Chunks(g.c_out)) {
      ImageTasks(ctx, g, *plan, xd, bias, z, y);
      return;
    }
    const PackBuffer q = CallPack(static_cast<size_t>(pg.q_alloc));
    std::memset(q.get() + pg.q_size, 0, static_cast<size_t>(pg.q_alloc - pg.q_size) * sizeof(float));
    for (int64_t img = 0; img < g.nb; ++img)
      for (int64_t oy0 = 0; oy0 < g.oh; oy0 += rows) {
        const float* xi = xd + img * g.c_in * g.h * g.w;
        const int64_t at = img * y_image + oy0 * g.ow;
        if (g.band > 0) {
          FillCopyRows(ctx, g, gb, xi, oy0, q.get());
        } else {
          FillCopies(ctx, g, xi, q.get());
        }
        Tiles(ctx, pg, *plan, q.get(), false, bias, z ? z + at : nullptr, y + at, y_plane, 0);
      }
  }

  // Column strips (g.strip > 0; fg what one fill holds, s a strip's geometry): one task per
  // (image, band, strip), the strip's copies of the band in the thread's own buffer, then its
  // tiles, one after another on that thread. Tasks of a band's tiles within each strip left two
  // threads with two uneven tasks a call on a 224-wide layer in bands of 16 rows (VGG-16's
  // conv1_2 at 2 threads 0.65x of whole rows); the images' tasks are one loop, as Tiles runs
  // them in place. The slack past Q is zeroed per buffer (the copies fill Q only).
  void StripTasks(const ortabi::KernelContext* ctx, const ConvGeometry& g, const ConvGeometry& fg,
                  const ConvGeometry& s, const ConvPlan& plan, const float* xd, const float* bias, const float* z,
                  float* y) const {
    const int64_t rows = g.band > 0 ? g.band : g.oh;  // output rows per fill; the band divides OH (BandRows)
    const int64_t per_image = g.oh / rows * s.strips, y_plane = g.oh * g.ow, y_image = g.c_out * y_plane;
    pool.ParallelFor(ctx, static_cast<size_t>(g.nb * per_image), [&](size_t ui) {
      const int64_t img = static_cast<int64_t>(ui) / per_image, u = static_cast<int64_t>(ui) % per_image;
      const int64_t oy0 = u / s.strips * rows, strip = u % s.strips;
      const PackBuffer q = CallPack(static_cast<size_t>(s.q_alloc));
      std::memset(q.get() + s.q_size, 0, static_cast<size_t>(s.q_alloc - s.q_size) * sizeof(float));
      FillStrip(g, fg, s, xd + img * g.c_in * g.h * g.w, oy0, strip, q.get());
      const int64_t at = img * y_image + oy0 * g.ow;
      Tiles(ctx, s, plan, q.get(), false, bias, z ? z + at : nullptr, y + at, y_plane, strip, true);
    });
  }

  // Whole-image copies where an image has fewer tile tasks than the batch has images (small
  // maps at a batch): one task per image, its copies and its tiles on one thread. A loop per
  // image had paid 2 threads a wake-up and a join twice per image for a task or two
  // (MobileNetV2's 7x7 layers at batch 8 ran 1.19-1.5x faster on 2 threads than on 1).
  void ImageTasks(const ortabi::KernelContext* ctx, const ConvGeometry& g, const ConvPlan& plan, const float* xd,
                  const float* bias, const float* z, float* y) const {
    const int64_t y_plane = g.oh * g.ow, y_image = g.c_out * y_plane;
    pool.ParallelFor(ctx, static_cast<size_t>(g.nb), [&](size_t i) {
      const int64_t img = static_cast<int64_t>(i);
      const PackBuffer q = CallPack(static_cast<size_t>(g.q_alloc));
      std::memset(q.get() + g.q_size, 0, static_cast<size_t>(g.q_alloc - g.q_size) * sizeof(float));
      FillCopies(nullptr, g, xd + img * g.c_in * g.h * g.w, q.get());  // in turn, on this thread
      Tiles(ctx, g, plan, q.get(), false, bias, z ? z + img * y_image : nullptr, y + img * y_image, y_plane, 0, true);
    });
  }

  // The `winograd` attribute (0, the default, or 1), which only a 2-D 3x3 kernel at unit
  // strides and dilations with one group may set: refused otherwise, before any run.
  void ReadWinograd(const ortabi::KernelInfo* info) {
    const int64_t asked = AttrInt(info, "winograd", 0);
    if (asked != 0 && asked != 1) Fail(ortabi::kInvalidArgument, "attribute winograd must be 0 or 1");
    if (asked == 1 && (x_rank != 4 || kh != 3 || kw != 3 || sh != 1 || sw != 1 || dh != 1 || dw != 1 || group != 1))
      Fail(ortabi::kInvalidArgument,
           "attribute winograd=1 needs a 2-D 3x3 kernel at unit strides and dilations with one group");
    winograd = asked == 1;
  }

  // U (winograd.h) from the validated CSR, whose columns are < c * 9 (Plan checked them): the
  // weights made dense (repeated columns, fillers included, add up) and transformed.
  std::shared_ptr<const WinoWeights> MakeWinoWeights(const Csr& csr, const WinoShape& s) const {
    std::vector<float> widened, dense(static_cast<size_t>(s.k * s.c * 9), 0.f);
    const float* v = FloatValues(KernelsFor(isa), csr, &widened);
    for (int64_t r = 0; r < csr.rows; ++r) {
      int64_t running = 0;
      for (int64_t j = csr.row_ptr[r]; j < csr.row_ptr[r + 1]; ++j) {
        const int64_t col = ColumnAt(csr, j, &running);
        if (col < 0 || col >= s.c * 9) Fail(ortabi::kInvalidArgument, "col_idx out of range for the input's channels");
        dense[static_cast<size_t>(r * s.c * 9 + col)] += v[j];
      }
    }
    auto w = std::make_shared<WinoWeights>();
    w->c = s.c;
    w->u = AllocFloats(static_cast<size_t>(s.WeightFloats()));
    WinogradWeights(dense.data(), s.k, s.c, s.kp, w->u.get());
    return w;
  }

  // Y by the Winograd path, image by image: X padded once, then the tasks' tiles on the pool.
  // False, computing nothing, where the shape is past the path's bounds (WinoShape::Plan) or
  // the CSR holds less than 1/16 of the dense weight: the direct path runs then.
  bool Winograd(const ortabi::KernelContext* ctx, const ConvGeometry& g, const Csr& csr, const float* x,
                const float* bias, const float* z, float* y) const {
    WinoShape s;
    if (!s.Plan(g.c_in, g.c_out, g.h, g.w, pad_t, pad_l, pad_b, pad_r) || s.oh != g.oh || s.ow != g.ow) return false;
    // U is the dense layer's size, not the CSR's: below 1/16 (where the direct path is the
    // faster one anyway) a few bytes of file could make a node keep 256 MiB
    if (static_cast<double>(csr.nnz) * kWinoMinDensityInverse < static_cast<double>(s.k) * s.c * 9) return false;
    const std::shared_ptr<const WinoWeights> u = kept_wino.Get(
        constant.Holds(csr), [&](const WinoWeights& p) { return p.c == s.c; }, [&] { return MakeWinoWeights(csr, s); });
    const PackBuffer xp = CallPack(static_cast<size_t>(s.PaddedFloats()));
    std::memset(xp.get() + s.PaddedFloats() - kWinoSlack, 0, kWinoSlack * sizeof(float));
    const int64_t image = s.k * s.oh * s.ow;
    WinoEnd end;
    end.bias = bias;
    if (act.kind != Act::kNone) end.activate = KernelsFor(isa).activate, end.act = &act;
    for (int64_t img = 0; img < g.nb; ++img) {
      WinogradPad(s, x + img * s.c * s.h * s.w, xp.get());
      end.z = z ? z + img * image : nullptr;
      ParallelFor(ctx, static_cast<size_t>(s.Tasks()), [&](size_t task) {
        // kept per thread as the tiles' scratch is, up to kKeptPackBytes; larger, per task
        const size_t floats = static_cast<size_t>(s.ScratchFloats());
        AlignedBuffer own = floats > kKeptPackBytes / sizeof(float) ? AllocFloats(floats) : AlignedBuffer();
        WinogradTask(s, xp.get(), u->u.get(), static_cast<int64_t>(task), own ? own.get() : TaskScratch(floats), end,
                     y + img * image, isa);
      });
    }
    return true;
  }

  // A 1x1 kernel with stride 1 (or a single output along the strided axis) and no padding
  // has one copy per channel that is the channel of X itself, row for row: the tiles
  // then read X where it lies instead of a copy (for a 256x56x56 input the copy is a 3.2 MB
  // read and write per call: ResNet-50's 256->64 1x1 layer at 10% ran 0.55-0.70 ms with it,
  // 0.45 ms without, back to back on a Zen 4 core). The tiles may not
  // read past X, so the last, partial tile is moved back to end at the plane's end
  // (Tiles, in_place); that needs a plane of at least one tile. PlanPhases then lays Q out
  // as X (x_layout: one copy, Hq = H, Wq = W, whatever the row quantum), except that a plane
  // narrower than the tiles, copied anyway, gets each channel's copy rounded up to the row
  // quantum (aligned tile loads), as every other 1x1 layer's copies do.
  // Decided once, by PlanPhases (ConvGeometry::in_place), with the tiles MakePlan chooses.
  bool ReadsXInPlace(const ConvGeometry& g) const {
    if (!g.x_layout) return false;
    int vi = 0, tail_vi = 0;
    int64_t tail = 0;
    const int64_t npos = g.oh * g.wq;  // ConvPlan::npos
    const int64_t tile = ChooseTiles(KernelsFor(g.tiles).conv_lanes, npos, &vi, &tail_vi, &tail);
    return npos >= tile && npos >= tail;
  }

  // Where kernel tap (row i, column jj) of channel `channel` starts in copies laid out
  // [copy][channels][plane] (the whole image's: channels C_in and plane Hq * Wq; a depthwise
  // band's: one channel and the band's rows): the copy its row phase and column take, then the
  // row and column shift inside it.
  int64_t TapOffset(const ConvGeometry& g, int64_t i, int64_t jj, int64_t channel, int64_t channels,
                    int64_t plane) const {
    const int64_t rh = i * dh;  // < 2^32: attributes are bounded
    const int64_t copy = g.row_slot[static_cast<size_t>(rh % g.sh)] * static_cast<int64_t>(g.col_start.size()) +
                         g.tap_col[static_cast<size_t>(jj)];  // used: a tap lands there
    return (copy * channels + channel) * plane + (rh / g.sh) * g.wq + g.tap_shift[static_cast<size_t>(jj)];
  }

  // Depthwise layers (one input and one output channel per group) read their input where it
  // lies: output row oy of channel c is
  //   Y[c][oy][ox] = B[c] + sum over the row's nonzeros (i, j) of w * X[c][oy sH + i dH - pad_t][ox sW + j dW - pad_l]
  // a weighted sum of the input rows the taps land on, each shifted by its column. Each tap
  // is one offset into the channel's plane, and output rows are sH input rows apart
  // (Kernels::dw_rows: four vectors of accumulators at a time, every tap taken while they
  // stay in registers, each output stored once). At a column stride sW > 1 the channel's
  // plane is first split into its sW column phases (columns p, p + sW, ...; one pass over the
  // plane), where tap j reads phase (j dW - pad_l) mod sW from column ox + floor((j dW -
  // pad_l) / sW): consecutive outputs read consecutive floats again. A table of lane masks per
  // vector step and tap, made once per channel, leaves out the lanes where a tap reads padding;
  // the steps where no tap does take plain loads. The rows where some tap's input row lies
  // outside X take the taps that land, one row at a time. Z and the activation follow on each
  // run of rows while it is in L1. The band path (Depthwise), which copies each band's input
  // rows in and its output rows out, ran 1.02-2.85x slower at stride 1 and 1.63-1.80x at
  // stride 2 (one node, a Zen 5 class core, bench/bench_depthwise.py: 3x3 at 20% over 128
  // channels of 100x76 2.70-2.85x, 5x5 over 256 of 25x19 1.02-1.17x), level only on 128
  // channels of 13x10 (0.93-1.00x), where a call's fixed cost dominates.
  static constexpr int64_t kDwMaxMasks = 1 << 20;        // mask table entries a task may hold
  static constexpr int64_t kDwMaxPhaseFloats = 1 << 22;  // a channel's column phases (16 MiB; DwPhaseFloats)
  static constexpr int64_t kDwGridMaxFloats = 1 << 22;   // a band's zero-padded copy (16 MiB; GridKernel)
  static constexpr int64_t kDwRunFloats = 4096;          // outputs per run of rows (16 KiB)
  // A row of the plane DirectDepthwise reads: ceil(W / sW) floats, the widest column phase
  // (W itself at sW = 1, where that plane is X's channel).
  static int64_t PhaseRow(const ConvGeometry& g) { return (g.w + g.sw - 1) / g.sw; }
  // Floats of one channel's column phases: the min(sW, W) phases that hold a column (a stride
  // past W, which wide pads allow, leaves the others empty), H rows of PhaseRow each.
  static double DwPhaseFloats(const ConvGeometry& g) {
    return static_cast<double>(std::min(g.sw, g.w)) * static_cast<double>(g.h) * static_cast<double>(PhaseRow(g));
  }

  // A depthwise layer (one input and one output channel per group) with an output, not the
  // unpadded unit-stride 1x1 that reads X as its copy: what every depthwise path takes.
  static bool OneChannelGroups(const ConvGeometry& g) { return g.cg == 1 && g.og == 1 && !g.x_layout && !g.empty(); }

  bool ReadsXDirectly(const ConvGeometry& g) const {
    if (depthwise == DwPath::kCopies || depthwise == DwPath::kBands || !OneChannelGroups(g)) return false;
    if (g.sw > 1 && DwPhaseFloats(g) > static_cast<double>(kDwMaxPhaseFloats)) return false;
    const double steps = static_cast<double>((g.ow + 7) / 8);  // the widest table: 8 lanes
    return steps * static_cast<double>(kh) * static_cast<double>(kw) <= static_cast<double>(kDwMaxMasks);
  }

  // A nonzero's tap in the plane DirectDepthwise reads (X's channel at sW = 1, else its
  // column phases): input row oy sH + dy, its offset there, and the output columns [a, b) and
  // rows [ra, rb) at which it reads inside X.
  struct DwTap {
    int64_t dy = 0, off = 0, a = 0, b = 0, ra = 0, rb = 0;
  };
  // A task's buffers: one channel's taps, weights and masks (`edge` for the rows where only
  // some taps land), and the column phases of its plane.
  struct DwScratch {
    std::vector<int64_t> off, off_edge;
    std::vector<float> wt, wt_edge;
    std::vector<uint16_t> mask, mask_edge;
    AlignedBuffer phases;
    AlignedBuffer grid;  // the grid path's zero-padded copy of a band of a plane (GridPlane)
    // The taps `off` and `mask` were made for, and what they gave (DirectPlane): the next plane
    // with the same taps (every channel of an unpruned layer) takes its weights only.
    bool made = false;
    std::vector<DwTap> made_for;
    int64_t lo = 0, hi = 0, ry0 = 0, ry1 = 0;
  };

  // Columns of phase p (p, p + sW, ...) of an input row; PhaseRow holds the widest.
  static int64_t PhaseWidth(const ConvGeometry& g, int64_t p) { return p < g.w ? (g.w - p + g.sw - 1) / g.sw : 0; }

  // Every nonzero's tap, once per call (no division per channel); *widest: the longest row.
  // At sW = 1 the one phase is X's channel (phase 0, q = dx, PhaseRow = W), and the same
  // formulas give its offsets.
  std::vector<DwTap> DirectTaps(const ConvGeometry& g, const Csr& csr, int64_t* widest) const {
    const int64_t sw_ = g.sw, wp = PhaseRow(g);
    std::vector<DwTap> taps(static_cast<size_t>(csr.nnz));
    *widest = 0;
    for (int64_t r = 0; r < csr.rows; ++r) {
      int64_t running = 0;
      for (int64_t j = csr.row_ptr[r]; j < csr.row_ptr[r + 1]; ++j) {
        const int64_t col = ColumnAt(csr, j, &running);  // < kH * kW (Plan); attributes <= 2^16
        const int64_t ty = (col / kw) * dh - pad_t, tx = (col % kw) * dw - pad_l;
        const int64_t ph = ((tx % sw_) + sw_) % sw_, q = (tx - ph) / sw_;  // phase, and floor(tx / sW)
        const int64_t width = PhaseWidth(g, ph);
        DwTap& tap = taps[static_cast<size_t>(j)];
        tap.dy = ty;
        tap.off = (ph * g.h + ty) * wp + q;
        tap.a = std::min(g.ow, std::max<int64_t>(0, -q));
        tap.b = std::max(tap.a, std::min(g.ow, width - q));
        tap.ra = std::min(g.oh, ty >= 0 ? 0 : (-ty + g.sh - 1) / g.sh);
        tap.rb = std::min(g.oh, ty > g.h - 1 ? 0 : (g.h - 1 - ty) / g.sh + 1);
      }
      *widest = std::max<int64_t>(*widest, csr.row_ptr[r + 1] - csr.row_ptr[r]);
    }
    return taps;
  }

  // A row xr of w floats split into its even columns (ceil(w / 2) of them, to even) and its
  // odd ones (floor(w / 2), to odd) in one pass.
  static void SplitEvenOdd(const Kernels& kern, const float* xr, int64_t w, float* even, float* odd) {
    kern.deinterleave(xr, w / 2, even, odd);
    if (w % 2 != 0) even[w / 2] = xr[w - 1];
  }

  // The sW column phases of one channel's plane xc (sW > 1), row by row: phase p's row r at
  // phases + (p H + r) wp.
  void FillColumnPhases(const Kernels& kern, const ConvGeometry& g, const float* xc, float* phases) const {
    const int64_t wp = PhaseRow(g);
    for (int64_t r = 0; r < g.h; ++r) {
      const float* xr = xc + r * g.w;
      if (g.sw == 2) {
        SplitEvenOdd(kern, xr, g.w, phases + r * wp, phases + (g.h + r) * wp);
        continue;
      }
      for (int64_t p = 0; p < std::min(g.sw, g.w); ++p)
        kern.strided(xr + p, g.sw, PhaseWidth(g, p), phases + (p * g.h + r) * wp);
    }
  }

  static bool SameTaps(const std::vector<DwTap>& a, const DwTap* b, int64_t n) {
    if (static_cast<int64_t>(a.size()) != n) return false;
    for (int64_t k = 0; k < n; ++k) {
      const DwTap &p = a[static_cast<size_t>(k)], &q = b[k];
      if (p.dy != q.dy || p.off != q.off || p.a != q.a || p.b != q.b || p.ra != q.ra || p.rb != q.rb) return false;
    }
    return true;
  }

  // What a plane's n taps give whatever their weights, into sc: each tap's offset, its mask
  // per step of `lanes` outputs, the columns [lo, hi) and rows [ry0, ry1) of the output where
  // every tap reads inside X.
  void PlaneLayout(const ConvGeometry& g, int64_t lanes, const DwTap* taps, int64_t n, DwScratch& sc) const {
    const int64_t steps = (g.ow + lanes - 1) / lanes;
    int64_t lo = 0, hi = g.ow, ry0 = 0, ry1 = g.oh;
    for (int64_t k = 0; k < n; ++k) {
      const DwTap& tap = taps[k];
      sc.off[static_cast<size_t>(k)] = tap.off;
      lo = std::max(lo, tap.a);
      hi = std::min(hi, tap.b);
      ry0 = std::max(ry0, tap.ra);
      ry1 = std::min(ry1, tap.rb);
      for (int64_t s = 0; s < steps; ++s) {
        const int64_t s0 = s * lanes, from = std::max(tap.a, s0) - s0, to = std::min(tap.b, s0 + lanes) - s0;
        sc.mask[static_cast<size_t>(s * n + k)] =
            to <= from ? 0 : static_cast<uint16_t>(((1u << to) - 1u) & ~((1u << from) - 1u));
      }
    }
    sc.lo = lo;
    sc.hi = hi;
    sc.ry0 = std::min(ry0, g.oh);
    sc.ry1 = std::max(sc.ry0, ry1);
    sc.made_for.assign(taps, taps + n);
    sc.made = true;
  }

  // One channel plane: its n taps (from `taps`, weights w) over src, the plane they read, into
  // yc; zc its Z plane or null.
  void DirectPlane(const Kernels& kern, const ConvGeometry& g, const DwTap* taps, const float* w, int64_t n,
                   const float* src, float init, const float* zc, float* yc, DwScratch& sc) const {
    const int64_t lanes = kern.conv_lanes, steps = (g.ow + lanes - 1) / lanes;
    std::copy_n(w, n, sc.wt.begin());
    if (!sc.made || !SameTaps(sc.made_for, taps, n)) PlaneLayout(g, lanes, taps, n, sc);
    const int64_t lo = sc.lo, hi = sc.hi, ry0 = sc.ry0, ry1 = sc.ry1;
    const int64_t full0 = (lo + lanes - 1) / lanes, full1 = std::max(full0, std::max(lo, hi) / lanes);
    const int64_t stride = g.sh * PhaseRow(g);  // between output rows in src
    const auto finish = [&](int64_t oy0, int64_t oy1) {  // Z, then the activation, on rows [oy0, oy1)
      const int64_t count = (oy1 - oy0) * g.ow;
      if (zc != nullptr) kern.add(yc + oy0 * g.ow, zc + oy0 * g.ow, count);
      if (act.kind != Act::kNone) kern.activate(yc + oy0 * g.ow, count, act);
    };
    // A row where some tap's input row lies outside X: the taps that land, every step masked.
    const auto edge_row = [&](int64_t oy) {
      int64_t m = 0;
      for (int64_t k = 0; k < n; ++k) {
        const int64_t iy = oy * g.sh + taps[k].dy;
        if (iy < 0 || iy >= g.h) continue;
        sc.off_edge[static_cast<size_t>(m)] = sc.off[static_cast<size_t>(k)];
        sc.wt_edge[static_cast<size_t>(m)] = sc.wt[static_cast<size_t>(k)];
        ++m;
      }
      for (int64_t s = 0; s < steps; ++s) {
        int64_t e = 0;
        for (int64_t k = 0; k < n; ++k) {
          const int64_t iy = oy * g.sh + taps[k].dy;
          if (iy >= 0 && iy < g.h) sc.mask_edge[static_cast<size_t>(s * m + e++)] = sc.mask[static_cast<size_t>(s * n + k)];
        }
      }
      kern.dw_rows(src, stride, sc.off_edge.data(), sc.wt_edge.data(), sc.mask_edge.data(), m, 0, 0, oy, oy + 1, g.ow,
                   init, yc);
      finish(oy, oy + 1);
    };
    for (int64_t oy = 0; oy < ry0; ++oy) edge_row(oy);
    const int64_t run_rows = std::max<int64_t>(1, kDwRunFloats / g.ow);
    for (int64_t oy0 = ry0; oy0 < ry1; oy0 += run_rows) {
      const int64_t oy1 = std::min(ry1, oy0 + run_rows);
      kern.dw_rows(src, stride, sc.off.data(), sc.wt.data(), sc.mask.data(), n, full0, full1, oy0, oy1, g.ow, init, yc);
      finish(oy0, oy1);
    }
    for (int64_t oy = ry1; oy < g.oh; ++oy) edge_row(oy);
  }

  // False, having written nothing, and the band path takes the layer, when a row's mask table
  // would pass kDwMaxMasks (a CSR row repeating columns can hold more than kH * kW entries), or
  // when a weight is not finite: ONNX's Conv multiplies the padding's zeros too, and an
  // infinite weight times a zero is NaN, where this path never reads the padding at all.
  bool DirectDepthwise(const ortabi::KernelContext* ctx, const ConvGeometry& g, const Csr& csr, const float* w,
                       const float* x, const float* bias, const float* z, float* y) const {
    for (int64_t j = 0; j < csr.nnz; ++j)
      if (!std::isfinite(w[j])) return false;
    const Kernels& kern = KernelsFor(isa);
    int64_t pitch = 0;
    const DwGridFn grid = GridKernel(kern, g, &pitch);
    const std::shared_ptr<const DwDirectPlan> plan = kept_direct.Get(
        constant.Holds(csr), [&](const DwDirectPlan& p) { return p.h == g.h && p.w == g.w; },
        [&] { return MakeDirectPlan(g, csr, w, grid != nullptr); });
    const std::vector<DwTap>& taps = plan->taps;
    const int64_t widest = plan->widest;
    const int64_t steps = (g.ow + kern.conv_lanes - 1) / kern.conv_lanes;
    if (static_cast<double>(steps) * static_cast<double>(widest) > static_cast<double>(kDwMaxMasks)) return false;
    const int64_t planes = g.nb * g.c_out, groups = (planes + kDwTaskPlanes - 1) / kDwTaskPlanes;
    ParallelFor(ctx, static_cast<size_t>(groups), [&](size_t t) {
      const size_t cap = static_cast<size_t>(widest);
      DwScratch sc;
      if (grid != nullptr) sc.grid = GridCopy(g, pitch);
      sc.off.resize(cap);
      sc.off_edge.resize(cap);
      sc.wt.resize(cap);
      sc.wt_edge.resize(cap);
      sc.mask.resize(cap * static_cast<size_t>(steps));
      sc.mask_edge.resize(sc.mask.size());
      // the column phases (ReadsXDirectly bounds their floats)
      sc.phases = AllocFloats(g.sw == 1 ? 1 : static_cast<size_t>(DwPhaseFloats(g)));  // <= kDwMaxPhaseFloats
      const int64_t p1 = std::min(planes, (static_cast<int64_t>(t) + 1) * kDwTaskPlanes);
      for (int64_t plane = static_cast<int64_t>(t) * kDwTaskPlanes; plane < p1; ++plane) {
        const int64_t c = plane % g.c_out;  // also the input channel
        const float* xc = x + plane * g.h * g.w;
        const float init = bias ? bias[c] : 0.f;
        const float* zc = z ? z + plane * g.oh * g.ow : nullptr;
        float* yc = y + plane * g.oh * g.ow;
        if (grid != nullptr && plan->grid_ok[static_cast<size_t>(c)]) {
          GridPlane(kern, g, grid, pitch, xc, plan->grid_w.data() + c * kh * kw, init, zc, yc, sc.grid.get());
          continue;
        }
        if (g.sw > 1) FillColumnPhases(kern, g, xc, sc.phases.get());
        const int64_t j0 = csr.row_ptr[c];
        DirectPlane(kern, g, taps.data() + j0, w + j0, csr.row_ptr[c + 1] - j0, g.sw > 1 ? sc.phases.get() : xc,
                    init, zc, yc, sc);
      }
    });
    return true;
  }

  // The grid path (Kernels::dw_grid) for this layer, or null: stride 1 or 2 along both axes,
  // unit dilation, a 3x3 or 5x5 kernel padded (K - 1) / 2 columns on each side (so OW = W or
  // ceil(W / 2)), an instruction set that has it, and a band's copy within kDwGridMaxFloats;
  // *pitch: the length of a copy's (sub-)row. Its channels that keep every tap take it
  // (GridWeights). One node after a Relu, 1 thread, an Intel core (lscpu family 6 model 207):
  // 3x3 over 144 channels of 56x56 1.32x as fast as the row kernel, 192 of 28x28 1.20x
  // (docs/BENCHMARKS.md).
  using DwGridFn = void (*)(const float*, int64_t, const float*, int64_t, int64_t, int64_t, float, float*);
  DwGridFn GridKernel(const Kernels& kern, const ConvGeometry& g, int64_t* pitch) const {
    if (sh != sw || (sh != 1 && sh != 2) || dh != 1 || dw != 1 || kh != kw || (kh != 3 && kh != 5)) return nullptr;
    if (pad_l != (kw - 1) / 2 || pad_r != pad_l || g.ow != (g.w + sw - 1) / sw) return nullptr;
    const DwGridFn fn = kern.dw_grid[sh - 1][kh == 5 ? 1 : 0];
    if (fn == nullptr) return nullptr;
    if (g.ow > kDwGridMaxFloats / 64) return nullptr;  // bounds pitch, so that the products below stay small
    *pitch = 16 * ((g.ow + 15) / 16 + 2);  // >= 16 + ceil(W / sW): the lead vector, a row, the last steps' reach
    const double floats = static_cast<double>(GridCopyRows(GridRunRows(g, *pitch))) * static_cast<double>(sw * *pitch);
    return floats <= static_cast<double>(kDwGridMaxFloats) ? fn : nullptr;
  }

  // Input rows a band of n output rows reads on the grid path.
  int64_t GridCopyRows(int64_t n) const { return sh * (n - 1) + kh; }

  // What DirectDepthwise derives from the CSR for one input size, kept for a constant CSR (the
  // taps' divisions had cost ~90 cycles a nonzero on every call): every nonzero's tap, the
  // longest row and, where the grid path applies, each channel's K x K weights and whether it
  // takes them (GridWeights).
  struct DwDirectPlan {
    int64_t h = 0, w = 0;
    std::vector<DwTap> taps;
    int64_t widest = 0;
    std::vector<uint8_t> grid_ok;  // by channel
    std::vector<float> grid_w;     // c_out * kH * kW
  };
  KeptPlan<DwDirectPlan> kept_direct;

  std::shared_ptr<const DwDirectPlan> MakeDirectPlan(const ConvGeometry& g, const Csr& csr, const float* w,
                                                     bool grid) const {
    auto plan = std::make_shared<DwDirectPlan>();
    plan->h = g.h;
    plan->w = g.w;
    plan->taps = DirectTaps(g, csr, &plan->widest);
    if (grid) {
      plan->grid_ok.resize(static_cast<size_t>(g.c_out));
      plan->grid_w.resize(static_cast<size_t>(g.c_out * kh * kw));
      for (int64_t c = 0; c < g.c_out; ++c)
        plan->grid_ok[static_cast<size_t>(c)] = GridWeights(csr, w, c, plan->grid_w.data() + c * kh * kw) ? 1 : 0;
    }
    return plan;
  }

  // A task's copy for the grid path (a band's rows, GridPlane), zero to begin with: the bands
  // write only the columns of X.
  AlignedBuffer GridCopy(const ConvGeometry& g, int64_t pitch) const {
    // <= kDwGridMaxFloats (GridKernel)
    const size_t floats = static_cast<size_t>(GridCopyRows(GridRunRows(g, pitch)) * sw * pitch);
    AlignedBuffer copy = AllocFloats(floats);
    std::memset(copy.get(), 0, floats * sizeof(float));
    return copy;
  }

  // Channel c's K x K weights, row-major, into gw (repeated columns summed), when it keeps every
  // tap and every sum is finite; false otherwise (the direct path takes the channel: it never
  // reads a tap the channel leaves out, while the grid multiplies all of them).
  bool GridWeights(const Csr& csr, const float* w, int64_t c, float* gw) const {
    const int64_t taps = kh * kw;  // <= 25 (GridKernel)
    bool seen[25] = {};
    int64_t distinct = 0, running = 0;
    std::fill_n(gw, taps, 0.f);
    for (int64_t j = csr.row_ptr[c]; j < csr.row_ptr[c + 1]; ++j) {
      const int64_t col = ColumnAt(csr, j, &running);  // < kH * kW (Plan)
      distinct += seen[col] ? 0 : 1;
      seen[col] = true;
      gw[col] += w[j];
    }
    if (distinct != taps) return false;
    for (int64_t k = 0; k < taps; ++k)
      if (!std::isfinite(gw[k])) return false;
    return true;
  }

  // One channel plane through the grid path, band by band of GridRunRows output rows: the
  // input rows a band reads into the copy (at stride 2 split into their even and odd columns,
  // Kernels::dw_grid; rows of padding zeroed; the columns ahead of and past X's stay zero from
  // GridCopy), the kernel over the band, then its Z and activation while it is in cache.
  void GridPlane(const Kernels& kern, const ConvGeometry& g, DwGridFn grid, int64_t pitch, const float* xc,
                 const float* gw, float init, const float* zc, float* yc, float* copy) const {
    const int64_t run = GridRunRows(g, pitch), row = sw * pitch;  // copy floats per input row
    const int64_t even = (g.w + sw - 1) / sw, odd = g.w - even;   // X's columns in each sub-row (odd: sW 2)
    for (int64_t oy0 = 0; oy0 < g.oh; oy0 += run) {
      const int64_t oy1 = std::min(g.oh, oy0 + run), rows = GridCopyRows(oy1 - oy0);
      const int64_t r0 = oy0 * sh - pad_t;  // the input row of the copy's row 0
      const int64_t in0 = std::min(std::max<int64_t>(0, r0), g.h), in1 = std::max(in0, std::min(g.h, r0 + rows));
      for (int64_t i = 0; i < rows; ++i) {
        if (r0 + i >= in0 && r0 + i < in1) continue;
        std::memset(copy + i * row + 16, 0, static_cast<size_t>(even) * sizeof(float));
        if (sw == 2) std::memset(copy + i * row + pitch + 16, 0, static_cast<size_t>(odd) * sizeof(float));
      }
      if (sw == 1 && in1 > in0) kern.copy_rows(xc + in0 * g.w, g.w, g.w, in1 - in0, copy + (in0 - r0) * row + 16, pitch);
      for (int64_t r = in0; sw == 2 && r < in1; ++r) {
        float* e = copy + (r - r0) * row + 16;
        SplitEvenOdd(kern, xc + r * g.w, g.w, e, e + pitch);
      }
      grid(copy, pitch, gw, 0, oy1 - oy0, g.ow, init, yc + oy0 * g.ow);
      const int64_t count = (oy1 - oy0) * g.ow;
      if (zc != nullptr) kern.add(yc + oy0 * g.ow, zc + oy0 * g.ow, count);
      if (act.kind != Act::kNone) kern.activate(yc + oy0 * g.ow, count, act);
    }
  }

  // Output rows per band of the grid path: its copy (GridCopyRows of sW sub-rows) within half
  // the L1 data cache, a multiple of the kernel's groups of four rows, at least four. A whole
  // 112 x 112 plane's copy (65 KB) had run 0.92x as fast as the direct path's rows.
  int64_t GridRunRows(const ConvGeometry& g, int64_t pitch) const {
    const int64_t fit = static_cast<int64_t>(0.5 * static_cast<double>(L1DataBytes()) /
                                             static_cast<double>(sw * pitch * static_cast<int64_t>(sizeof(float))));
    const int64_t n = (fit - kh) / sh + 1;  // GridCopyRows(n) <= fit
    return std::min(std::max<int64_t>(4, n / 4 * 4), std::max<int64_t>(g.oh, 1));
  }

  // Depthwise layers on small maps, L = conv_lanes channels at a time (Kernels::dw_block): a
  // task transposes its block's input planes into pixels of L floats (channel l in lane l),
  // zero-padded (dw_block_in), runs every output pixel as a vector (eight pixels of a row at a
  // time, each tap a vector of the block's weights) and transposes the output back into the
  // channels' planes (dw_block_out), a Relu or Clip applied on the way, Z or another
  // activation after. The figures below predate the transposes in registers (which made the
  // blocks 10-30% faster on small maps: 192 of 28x28 stride 2 0.112 -> 0.091 ms, four layers
  // chained). The direct path (DirectDepthwise)
  // vectorises along a row instead: on a map of one or two vectors' width each row is one or
  // two chains of dependent FMAs, and a channel's set-up (masks, edge rows) is paid for a few
  // rows. One node, 1 thread, on an Intel core (lscpu family 6 model 207; bench/bench_depthwise.py):
  // dense 3x3 over 960 channels of 7x7 0.053 against 0.407 ms direct, 384 of 14x14 0.081
  // against 0.202, 192 of 28x28 0.126 against 0.185; at 20% density 7x7 0.054 against 0.156,
  // 14x14 level, but 28x28 0.129 against 0.083 and 5x5 on 25x19 0.200 against 0.160 (a
  // block computes every tap that any of its channels keeps); on 56x56 and wider maps the
  // transposes cost more than the chains save. A strided layer's transposes take in 4 input
  // pixels an output one: at 20% and stride 2, 576 channels of 32x32 (16 outputs wide) ran
  // 0.26 ms in blocks against 0.18 direct, 192 of 28x28 level, 384 of 14x14 0.026 against
  // 0.069 (dense: 576 of 32x32 0.26 against 0.32). Hence: maps at most kDwBlockNarrow wide
  // (half that for a sparse strided layer), or at most kDwBlockWide wide where the channels
  // keep at least kDwBlockDense of their taps, while a block's planes fit kDwBlockL2s of the L2
  // (ChannelBlocks). Unmeasured on AVX2 cores.
  static constexpr int64_t kDwBlockMaxTaps = 64;  // kH * kW
  static constexpr int64_t kDwBlockNarrow = 16, kDwBlockWide = 32;  // output columns
  static constexpr double kDwBlockDense = 0.5;
  static constexpr double kDwBlockL2s = 0.5;
  static constexpr double kDwBlockMaxFloats = 1 << 22;  // forced (ONNXPRUNE_CONV_DEPTHWISE=blocks)
  // Floats of a block's scratch: its zero-padded input and its output (DepthwiseBlocks).
  double DwBlockFloats(const ConvGeometry& g, int64_t lanes) const {
    const double hp = static_cast<double>(g.h + pad_t + pad_b), wp = static_cast<double>(g.w + pad_l + pad_r);
    return (hp * wp + static_cast<double>(g.oh * g.ow)) * static_cast<double>(lanes);
  }
  bool ChannelBlocks(const ConvGeometry& g, int64_t nnz) const {
    if (depthwise == DwPath::kCopies || depthwise == DwPath::kBands || depthwise == DwPath::kDirect) return false;
    if (!OneChannelGroups(g) || kh * kw > kDwBlockMaxTaps) return false;
    const double floats = DwBlockFloats(g, KernelsFor(isa).conv_lanes);
    if (depthwise == DwPath::kBlocks) return floats <= kDwBlockMaxFloats;
    const double density = static_cast<double>(nnz) / (static_cast<double>(g.c_out) * static_cast<double>(kh * kw));
    const bool dense = density >= kDwBlockDense;
    const int64_t most = dense || (g.sh == 1 && g.sw == 1) ? kDwBlockNarrow : kDwBlockNarrow / 2;
    // Dense layers up to kDwBlockWide columns wide stay here also where the grid path could take
    // them, since the transposes run in registers (dw_block_in / dw_block_out): 3x3 over 192
    // channels of 28x28 0.116-0.120 ms against 0.129-0.130 on the grid, at stride 2 0.081
    // against 0.086, 144 of 56x56 at stride 2 0.248-0.252 against 0.266-0.277 (one node after
    // a Relu, 1 thread, an Intel core, lscpu family 6 model 207); 56 columns go to the grid
    // (144 of 56x56 0.366 against 0.333, 96 of 112x112 at stride 2 0.713 against 0.626).
    // On a core that splits each 512-bit operation in two (`narrow`, CpuSplitsWideFma) the
    // blocks' 16 x 16 transposes cost twice their shuffles and the grid (GridKernel: every
    // channel keeping every tap, as the count says; others keep the blocks) is ahead instead:
    // 192 channels of 28x28 0.066 ms on the grid against 0.087 in blocks, 144 of 56x56 at stride
    // 2 0.099-0.101 against 0.112-0.113, 256 of 32x32 0.089 against 0.166 (a Zen 4 class core,
    // docs/BENCHMARKS.md); at 14 and 7 columns the blocks stay ahead (384 of 14x14 0.052
    // against 0.058, 576 of 14x14 at stride 2 0.041 against 0.087).
    int64_t pitch = 0;
    const bool grid = narrow && nnz == g.c_out * kh * kw && GridKernel(KernelsFor(isa), g, &pitch) != nullptr;
    const bool wide = g.ow <= kDwBlockWide && dense && !grid;
    return (g.ow <= most || wide) && floats * sizeof(float) <= kDwBlockL2s * static_cast<double>(L2Bytes());
  }

  // Each channel block's taps that some channel of it stores: offset, weights (zero for the
  // channels that leave the tap out, whose lanes its mask clears) and mask, in kernel order;
  // made once per padded row width for a constant CSR and kept (kept_blocks).
  struct DwBlockPlan {
    int64_t wp = 0;
    std::vector<int64_t> off, count;
    std::vector<float> wt;
    std::vector<uint16_t> mask;
  };
  KeptPlan<DwBlockPlan> kept_blocks;

  std::shared_ptr<const DwBlockPlan> MakeBlockPlan(const Csr& csr, const float* w, int64_t lanes, int64_t wp) const {
    const int64_t taps = kh * kw, blocks = (csr.rows + lanes - 1) / lanes;  // taps <= kDwBlockMaxTaps
    std::vector<float> wt(static_cast<size_t>(blocks * taps * lanes), 0.f);
    std::vector<uint16_t> mask(static_cast<size_t>(blocks * taps), 0);
    for (int64_t r = 0; r < csr.rows; ++r) {
      int64_t running = 0;
      const size_t b = static_cast<size_t>(r / lanes), l = static_cast<size_t>(r % lanes);
      for (int64_t j = csr.row_ptr[r]; j < csr.row_ptr[r + 1]; ++j) {
        const size_t col = static_cast<size_t>(ColumnAt(csr, j, &running));  // < kH * kW (Plan)
        wt[(b * static_cast<size_t>(taps) + col) * static_cast<size_t>(lanes) + l] += w[j];
        mask[b * static_cast<size_t>(taps) + col] |= static_cast<uint16_t>(1u << l);
      }
    }
    auto plan = std::make_shared<DwBlockPlan>();
    DwBlockPlan& p = *plan;
    p.wp = wp;
    p.off.assign(mask.size(), 0);
    p.count.assign(static_cast<size_t>(blocks), 0);
    p.wt.assign(wt.size(), 0.f);
    p.mask.assign(mask.size(), 0);
    for (int64_t b = 0; b < blocks; ++b) {
      int64_t& n = p.count[static_cast<size_t>(b)];
      for (int64_t t = 0; t < taps; ++t) {
        const size_t from = static_cast<size_t>(b * taps + t), to = static_cast<size_t>(b * taps + n);
        if (mask[from] == 0) continue;
        p.off[to] = ((t / kw) * dh * wp + (t % kw) * dw) * lanes;
        p.mask[to] = mask[from];
        std::copy_n(wt.begin() + static_cast<std::ptrdiff_t>(from) * lanes, lanes,
                    p.wt.begin() + static_cast<std::ptrdiff_t>(to) * lanes);
        ++n;
      }
    }
    return plan;
  }

  void DepthwiseBlocks(const ortabi::KernelContext* ctx, const ConvGeometry& g, const Csr& csr, const float* w,
                       const float* x, const float* bias, const float* z, float* y) const {
    const Kernels& kern = KernelsFor(isa);
    const int64_t lanes = kern.conv_lanes, taps = kh * kw;
    const int64_t hp = g.h + pad_t + pad_b, wp = g.w + pad_l + pad_r;  // bounded by ChannelBlocks' floats
    const int64_t hw = g.h * g.w, ohw = g.oh * g.ow, blocks = (g.c_out + lanes - 1) / lanes;
    const std::shared_ptr<const DwBlockPlan> plan = kept_blocks.Get(
        constant.Holds(csr), [&](const DwBlockPlan& p) { return p.wp == wp; },
        [&] { return MakeBlockPlan(csr, w, lanes, wp); });
    const DwBlockPlan& bp = *plan;
    std::vector<float> init(static_cast<size_t>(blocks * lanes), 0.f);
    if (bias != nullptr) std::copy_n(bias, g.c_out, init.begin());
    // Without Z, a Relu or Clip is applied as the output is transposed back (dw_block_out);
    // with Z, or another activation, after it, plane by plane.
    ConvEnd end;
    const bool clamp = z == nullptr && ClampOf(act, &end);
    if (!clamp) ClampOf(Activation(), &end);  // (-inf, inf): the transpose alone
    ParallelFor(ctx, static_cast<size_t>(g.nb * blocks), [&](size_t t) {
      const int64_t img = static_cast<int64_t>(t) / blocks, b = static_cast<int64_t>(t) % blocks;
      const int64_t c0 = b * lanes, lv = std::min(lanes, g.c_out - c0);
      float* const p = TaskScratch(static_cast<size_t>(DwBlockFloats(g, lanes)));
      float* const out = p + hp * wp * lanes;  // first the block's input, pixel after pixel
      // The block's planes transposed into the zero-padded pixels in one pass (the lanes past
      // lv zero too, though no mask sets them).
      kern.dw_block_in(x + (img * g.c_in + c0) * hw, hw, lv, g.h, g.w, pad_t, pad_l, hp, wp, p);  // c_in == c_out
      const size_t at = static_cast<size_t>(b * taps);
      kern.dw_block(p, wp, g.sh, g.sw, bp.off.data() + at, bp.wt.data() + at * static_cast<size_t>(lanes),
                    bp.mask.data() + at, bp.count[static_cast<size_t>(b)], g.oh, g.ow, init.data() + b * lanes, out);
      float* const yb = y + (img * g.c_out + c0) * ohw;
      kern.dw_block_out(out, ohw, lv, end.lo, end.hi, yb, ohw);
      if (clamp) return;
      for (int64_t l = 0; l < lv; ++l) {
        if (z != nullptr) kern.add(yb + l * ohw, z + (img * g.c_out + c0 + l) * ohw, ohw);
        if (act.kind != Act::kNone) kern.activate(yb + l * ohw, ohw, act);
      }
    });
  }

  // Depthwise layers (one input and one output channel per group) band by band, where the
  // direct path does not take them (ONNXPRUNE_CONV_DEPTHWISE=bands, huge planes at a column
  // stride, huge mask tables). The other
  // layouts write the input copies of the whole image (every channel, every kernel column or
  // phase) to memory and read them back, which costs more than the few multiply-adds a
  // position takes here (a 3x3 layer at 20% has about two). Instead each task takes one
  // channel and a band of output rows, fills the copies' rows that band reads (the same
  // copies, FillCopyPlane, so the same offsets with one channel) into a buffer sized to stay in
  // L1, and runs the tiles over the band's positions. Z and the activation are applied in the
  // band's buffer before its rows go to Y. A layer where even a band of one output row would
  // pass kDwMaxBandFloats (huge widths or dilations) takes the whole-image copies instead.
  struct DwGeometry {
    int64_t rows = 0;   // output rows per band
    int64_t reach = 0;  // copy rows a band reads past its own: ((kH - 1) * dH) / sH
    int64_t plane = 0;  // a copy's rows in the band buffer: (rows + reach) * Wq floats
  };
  static constexpr double kDwMaxBandFloats = 1 << 20;
  static constexpr int64_t kDwTaskPlanes = 16;

  bool DepthwiseRows(const ConvGeometry& g, DwGeometry* d) const {
    if (depthwise == DwPath::kCopies || !OneChannelGroups(g)) return false;
    d->reach = (kh - 1) * dh / g.sh;  // attributes <= 2^16 (ConvAttrsError)
    const double row_floats = static_cast<double>(g.copies) * static_cast<double>(g.wq);  // one row of every copy
    if (static_cast<double>(d->reach + 1) * row_floats > kDwMaxBandFloats) return false;
    // Band buffer within half the L1 data cache, at least one output row.
    const int64_t fit =
        static_cast<int64_t>(0.5 * static_cast<double>(L1DataBytes()) / (row_floats * sizeof(float))) - d->reach;
    d->rows = std::min(g.oh, std::max<int64_t>(1, fit));
    d->plane = (d->rows + d->reach) * g.wq;
    return true;
  }

  void Depthwise(const ortabi::KernelContext* ctx, const ConvGeometry& g, const DwGeometry& d, const Csr& csr,
                 const float* w, const float* x, const float* bias, const float* z, float* y) const {
    const Kernels& kern = KernelsFor(isa);
    const int64_t cols = static_cast<int64_t>(g.col_start.size());
    // One offset per nonzero into a band buffer: MakePlan's, for one channel and the band's plane.
    std::vector<int32_t> off(static_cast<size_t>(csr.nnz));
    for (int64_t r = 0; r < csr.rows; ++r) {
      int64_t running = 0;
      for (int64_t j = csr.row_ptr[r]; j < csr.row_ptr[r + 1]; ++j) {
        const int64_t col = ColumnAt(csr, j, &running);  // < kH * kW (Plan)
        const int64_t o = TapOffset(g, col / kw, col % kw, 0, 1, d.plane);
        // A tile reads up to one band of positions plus a tile past its offset: within the
        // buffer (below) when every offset lies inside the copies.
        if (o < 0 || o >= g.copies * d.plane)
          Fail(ortabi::kFail, "offset ", o, " of nonzero ", j, " is outside the band's copies");
        off[static_cast<size_t>(j)] = static_cast<int32_t>(o);
      }
    }
    const int64_t bands = (g.oh + d.rows - 1) / d.rows;
    // A task: one band of up to kDwTaskPlanes (image, channel) planes, its buffers reused for each.
    const int64_t planes = g.nb * g.c_out, groups = (planes + kDwTaskPlanes - 1) / kDwTaskPlanes;
    const int64_t rows_cols = static_cast<int64_t>(g.row_phases.size());
    const bool paired = PairedColumns(g);
    ParallelFor(ctx, static_cast<size_t>(groups * bands), [&](size_t t) {
      const int64_t band = static_cast<int64_t>(t) % bands, group = static_cast<int64_t>(t) / bands;
      const int64_t oy0 = band * d.rows, rows = std::min(d.rows, g.oh - oy0);
      const int64_t npos = rows * g.wq;
      int vi = 0;
      const int64_t tile = ChooseTile(kern.conv_lanes, npos, &vi);
      const int64_t tiles = (npos + tile - 1) / tile;
      const auto run = kern.conv_run[vi];
      // The copies' rows oy0 .. oy0 + rows + reach, then zeros for the tiles' overhang past
      // the last copy: less than a band of positions and a tile.
      const size_t buf_floats = static_cast<size_t>(g.copies * d.plane + d.rows * g.wq + kConvMaxTile);
      AlignedBuffer buf = AllocFloats(buf_floats);
      std::fill(buf.get() + g.copies * d.plane, buf.get() + buf_floats, 0.f);
      AlignedBuffer acc = AllocFloats(static_cast<size_t>(tiles * tile));
      const int64_t p1 = std::min(planes, (group + 1) * kDwTaskPlanes);
      for (int64_t image_plane = group * kDwTaskPlanes; image_plane < p1; ++image_plane) {
        const int64_t c = image_plane % g.c_out;  // also the input channel
        const float* xc = x + image_plane * g.h * g.w;
        // every row of the plane, also past a short last band's: the tiles' discarded
        // positions read them, and nothing in the buffer is left unwritten
        for (int64_t slot = 0; slot < rows_cols; ++slot) {
          if (paired) {
            float* dst = buf.get() + slot * cols * d.plane;  // copy column 1: a plane on
            for (int64_t a = 0; a < d.rows + d.reach; ++a) FillCopyRowPair(g, xc, slot, oy0 + a, dst + a * g.wq, d.plane);
            continue;
          }
          for (int64_t k = 0; k < cols; ++k) {
            float* dst = buf.get() + (slot * cols + k) * d.plane;
            FillCopyPlane(g, xc, slot, k, oy0, d.rows + d.reach, dst);
          }
        }
        const int64_t j0 = csr.row_ptr[c], nnz = csr.row_ptr[c + 1] - j0;
        const float init = bias ? bias[c] : 0.f;
        for (int64_t k = 0; k < tiles; ++k)
          run(w + j0, off.data() + j0, nnz, buf.get() + k * tile, acc.get() + k * tile, init, false, nullptr);
        for (int64_t r = 0; r < rows; ++r) {
          float* a = acc.get() + r * g.wq;
          const int64_t at = (image_plane * g.oh + oy0 + r) * g.ow;
          if (z != nullptr) kern.add(a, z + at, g.ow);
          if (act.kind != Act::kNone) kern.activate(a, g.ow, act);
          std::memcpy(y + at, a, static_cast<size_t>(g.ow) * sizeof(float));
        }
      }
    });
  }

  // Checks channels, columns and output size against the input and derives the input copies'
  // geometry; every product and sum is overflow-checked, so nothing downstream can wrap.
  ConvGeometry Plan(const Tensor& x, const Csr& csr) const {
    ConvGeometry g;
    g.nb = x.shape[0];
    g.c_in = x.shape[1];
    g.h = x.shape[2];
    g.w = x.shape[3];
    g.c_out = csr.rows;
    if (g.c_in % group != 0 || g.c_out % group != 0)
      Fail(ortabi::kInvalidArgument, "group ", group, " must divide both input channels ", g.c_in,
           " and output channels ", g.c_out);
    g.cg = g.c_in / group;
    g.og = g.c_out / group;
    const int64_t k_cols = CheckedMul(CheckedMul(g.cg, kh, "C_in/group * kH"), kw, "C_in/group * kH * kW");
    CheckColumns(columns, k_cols, "columns (C_in/group * kH * kW)");
    if (csr.max_col >= k_cols)
      Fail(ortabi::kInvalidArgument, "col_idx refers to column ", csr.max_col, " but a row has only ", k_cols,
           " columns (C_in/group * kH * kW)");
    if (!ConvExtent(g.h, pad_t, pad_b, kh, dh, sh, &g.oh) || !ConvExtent(g.w, pad_l, pad_r, kw, dw, sw, &g.ow))
      Fail(ortabi::kInvalidArgument, "the dilated kernel does not fit the padded input ", ShapeStr(x.shape));
    if (CheckedMul(g.oh, g.ow, "OH * OW") > kMaxConvPlane)
      Fail(ortabi::kInvalidArgument, "output plane ", g.oh, " x ", g.ow, " exceeds 2^31-1 elements");
    CheckedMul(CheckedMul(CheckedMul(g.nb, g.c_out, "output size"), g.oh, "output size"), g.ow, "output size");
    // Depthwise layers read phase copies (Depthwise): a band fills one copy per phase, not kW.
    const Copies layout = depthwise != DwPath::kCopies && g.cg == 1 && g.og == 1 ? Copies::kPhase : copies;
    g.tiles = isa;
    if (g.empty()) return g;
    const double cells = static_cast<double>(g.c_out) * static_cast<double>(k_cols);
    ConvGeometry wide = g;
    PlanPhases(&wide, csr.nnz, cells, layout);
    // On a core that splits 512-bit FMAs (ChooseNarrowTiles), the AVX2 tiles where they compute
    // kNarrowGain fewer positions. Their rows are either the same phase copies (no gain) or
    // shifted copies of OW rounded up to 8 floats, so a layer whose AVX-512 rows are not that
    // much longer keeps them unplanned. Depthwise layers keep their own paths' lanes.
    const auto fewer = [&](int64_t wq) {
      return static_cast<double>(wq) * kNarrowGain <= static_cast<double>(wide.wq);
    };
    const int64_t quantum = RowQuantum(Isa::kAvx2);
    const int64_t narrow_wq = (wide.ow + quantum - 1) / quantum * quantum;  // OW <= 2^31: no overflow
    if (!narrow || isa != Isa::kAvx512 || (g.cg == 1 && g.og == 1) || !fewer(narrow_wq)) return wide;
    g.tiles = Isa::kAvx2;
    try {
      PlanPhases(&g, csr.nnz, cells, layout);
    } catch (const OpError&) {
      // The other width's copies past the size limits (kW shifted copies where the AVX-512 rows
      // took phase copies): the layer keeps the plan it was accepted with.
      return wide;
    }
    return fewer(g.wq) ? g : wide;
  }

  // A stride along an axis with a single output never moves the kernel, so the split uses 1
  // there; otherwise a huge stride on a small input would make stride-many empty row phases.
  // A copy has Hq = ceil(Hpad / sh) rows (output row oy of tap row i reads row oy + (i*dH)/sh
  // < Hq) of Wq columns; there are at most min(kH, sh) * kW copies of each channel.
  // Shifted copies or phase copies: ShiftedCopies, from the CSR's `nnz` out of `cells` weights.
  void PlanPhases(ConvGeometry* g, int64_t nnz, double cells, Copies layout) const {
    g->sh = g->oh == 1 ? 1 : sh;
    g->sw = g->ow == 1 ? 1 : sw;
    const int64_t hp = g->h + pad_t + pad_b, wp = g->w + pad_l + pad_r;  // checked by ConvExtent
    g->x_layout = kh == 1 && kw == 1 && g->sh == 1 && g->sw == 1 && pad_t == 0 && pad_l == 0 && pad_b == 0 &&
                  pad_r == 0;
    g->hq = (hp - 1) / g->sh + 1;  // ceil(hp / sh); hp >= 1 as the kernel fits
    UsedPhases(kh, dh, g->sh, &g->row_phases, &g->row_slot);
    // What the shifted copies would take, in double: every factor is <= 2^31.
    const int64_t quantum = RowQuantum(g->tiles);
    const double shifted_bytes = static_cast<double>(g->row_phases.size()) * static_cast<double>(kw) *
                                 static_cast<double>(g->c_in) * static_cast<double>(g->hq) *
                                 static_cast<double>(g->ow + quantum - 1) * sizeof(float);
    const int64_t shifted_wq = (g->ow + quantum - 1) / quantum * quantum;  // ow <= w + pads <= 2^31
    const int64_t phase_wq = (wp - 1) / g->sw + 1;                          // ceil(wp / sw) >= 1
    const double widen = static_cast<double>(shifted_wq) / static_cast<double>(phase_wq);
    g->tap_col.resize(static_cast<size_t>(kw));
    g->tap_shift.resize(static_cast<size_t>(kw));
    const int64_t reach = (kh - 1) * dh / g->sh;
    // The band for `copies` copies per channel of `wq`-float rows (BandRows), with what a band's
    // copies take.
    const auto band_for = [&](int64_t per_channel, int64_t wq, double* bytes) {
      const double planes = static_cast<double>(per_channel) * static_cast<double>(g->c_in);
      const double image = planes * static_cast<double>(g->hq) * static_cast<double>(wq) * sizeof(float);
      const int64_t band = BandRows(g->oh, reach, planes, wq, image);
      if (bytes != nullptr && band > 0)
        *bytes = planes * static_cast<double>(SpreadPlane((band + reach) * wq)) * sizeof(float);
      return band;
    };
    double copy_bytes = shifted_bytes;
    g->band = g->x_layout ? 0 : band_for(static_cast<int64_t>(g->row_phases.size()) * kw, shifted_wq, &copy_bytes);
    const double min_density = narrow && isa == Isa::kAvx512 ? kNarrowShiftedMinDensity : kShiftedMinDensity;
    if (!g->x_layout && ShiftedCopies(layout, nnz, cells, kw, copy_bytes, widen, min_density)) {
      // copy column j is kernel column j, shifted into place
      g->shifted = true;
      g->wq = shifted_wq;
      for (int64_t j = 0; j < kw; ++j) {
        g->col_start.push_back(j * dw);  // < 2^32: attributes are bounded
        g->tap_col[static_cast<size_t>(j)] = static_cast<int32_t>(j);
        g->tap_shift[static_cast<size_t>(j)] = 0;
      }
    } else {  // one copy column per used column phase; a kernel column reads its phase, shifted
      g->wq = phase_wq;  // W itself in x_layout
      std::vector<int32_t> col_slot;
      UsedPhases(kw, dw, g->sw, &g->col_start, &col_slot);
      for (int64_t j = 0; j < kw; ++j) {
        g->tap_col[static_cast<size_t>(j)] = col_slot[static_cast<size_t>(j * dw % g->sw)];
        g->tap_shift[static_cast<size_t>(j)] = j * dw / g->sw;
      }
      // Phase copies band by band as well (BandRows): 64 channels of 224x224 at 10%, one node
      // after a Relu, 1.67x of dense -> 2.26x, 32 -> 64 on 320x320 at 10% 1.53x -> 1.91x, 128
      // of 112x112 level (3.03x, 3.05x); layout_cdla at 80% 3.02x -> 3.09x, nudenet 1.35x ->
      // 1.38x, ResNet-50 level (sessions in one process, 20-30 rounds).
      g->band = g->x_layout || kh * kw == 1
                    ? 0
                    : band_for(static_cast<int64_t>(g->row_phases.size() * g->col_start.size()), phase_wq, nullptr);
    }
    g->plane = CheckedMul(g->hq, g->wq, "input copy size");
    g->in_place = ReadsXInPlace(*g);
    if (kh == 1 && kw == 1 && !g->in_place) {
      // A 1x1 kernel reads each channel's copy from its start: with the channel planes
      // rounded up to the vector width, no tile load splits a cache line. ResNet-50's 1x1
      // layers on 7x7 maps (49 floats a channel) ran 1.11-1.21x faster so, one node, its
      // arrays from memory. X read in place keeps its plane: copying a 14x14 plane (196
      // floats) to aligned planes ran 0.89-1.08x.
      const int64_t quantum = RowQuantum(g->tiles);
      g->plane = (g->plane + quantum - 1) / quantum * quantum;
    }
    g->copies = CheckedMul(static_cast<int64_t>(g->row_phases.size()), static_cast<int64_t>(g->col_start.size()),
                           "input copy count");  // <= 2^32
    // Columns b with 0 <= b * sw + shift < W come from the input, the rest are padding.
    for (const int64_t start : g->col_start) {
      const int64_t shift = start - pad_l;  // |shift| <= 2^32: attributes are bounded
      const int64_t first = std::min(g->wq, std::max<int64_t>(0, (g->sw - 1 - shift) / g->sw));
      const int64_t last_in = g->w - 1 - shift;  // < 0: no input column
      g->col_first.push_back(first);
      g->col_end.push_back(last_in < 0 ? first : std::max(first, std::min(g->wq, last_in / g->sw + 1)));
    }
    const int64_t planes = CheckedMul(g->copies, g->c_in, "input copy count");
    g->q_size = CheckedMul(planes, g->plane, "input copies' size");
    // Room for the tiles' overhang past the last offset (< one output plane of Wq-wide rows
    // plus a tile), zeroed. Both terms are bounded before they are added: an X with no
    // elements may still bring a channel count that takes q_size near 2^63.
    const int64_t overhang = CheckedMul(g->oh, g->wq, "output rows");
    g->q_alloc = g->q_size > kMaxConvPlane || overhang > kMaxConvPlane
                     ? kMaxConvPlane + 1
                     : (g->q_size + overhang + 2 * kConvMaxTile + 15) / 16 * 16;
    if (g->q_alloc > kMaxConvPlane)
      Fail(ortabi::kInvalidArgument, "the strided, padded input needs ", g->q_size,
           " floats of input copies, more than 2^31-1 (int32 offsets)");
    g->y_row = g->ow;
    // Column strips (StripGeometry) for shifted copies of rows wider than kMaxUnstripedWq that
    // split into whole strips (every Wq on AVX-512; on AVX2 a Wq of an odd number of 8-float
    // vectors keeps whole rows).
    if (strips && g->shifted && g->sw == 1 && g->wq > kMaxUnstripedWq && g->wq % kStripFloats == 0 &&
        g->cg >= kMinStripChannels) {
      // a strip's copies (16-float rows, against Wq >= 48) are smaller than those checked above
      g->strip = kStripFloats;
    }
  }

  // Output rows per band of input copies (kMinBandRows), 0 for the whole image's copies at
  // once: `planes` copy planes (copies x C_in) of `wq`-float rows, `image_bytes` the whole
  // image's copies. The divisors of OH by trial division up to its square root: at most 46341
  // steps for any OH < 2^31, whatever the shape (a hostile prime OH near 2^31 with an empty X
  // must not cost a billion divisions before the size checks refuse it).
  int64_t BandRows(int64_t oh, int64_t reach, double planes, int64_t wq, double image_bytes) const {
    if (band_bytes <= 0 || image_bytes <= band_bytes || oh < 2 * kMinBandRows) return 0;
    const auto fits = [&](int64_t r) {
      if (r < std::max(kMinBandRows, 4 * reach) || r > oh / 2) return false;
      const double plane = static_cast<double>(SpreadPlane((r + reach) * wq));  // r + reach < 2^31, wq < 2^31
      return planes * plane * sizeof(float) <= band_bytes;
    };
    int64_t best = 0;
    for (int64_t d = 1; d <= oh / d; ++d) {
      if (oh % d != 0) continue;
      if (fits(d)) best = std::max(best, d);
      if (fits(oh / d)) best = std::max(best, oh / d);
    }
    return best;
  }

  // The phases (k_i * d) % s of an axis with k taps, ascending, and each phase's slot (-1 when
  // no tap lands on it). A 1x1 kernel with stride 2 uses one phase of four. s, k <= 2^16.
  static void UsedPhases(int64_t k, int64_t d, int64_t s, std::vector<int64_t>* phases, std::vector<int32_t>* slot) {
    slot->assign(static_cast<size_t>(s), -1);
    for (int64_t i = 0; i < k && static_cast<int64_t>(phases->size()) < s; ++i) {
      const int64_t ph = (i * d) % s;
      if ((*slot)[static_cast<size_t>(ph)] < 0) {
        (*slot)[static_cast<size_t>(ph)] = 0;
        phases->push_back(ph);
      }
    }
    std::sort(phases->begin(), phases->end());
    for (size_t n = 0; n < phases->size(); ++n) (*slot)[static_cast<size_t>((*phases)[n])] = static_cast<int32_t>(n);
  }

  const float* ReadBias(const ortabi::KernelContext* ctx, size_t count, int64_t c_out) const {
    const ortabi::Value* bv = Input(ctx, count, 4);
    if (bv == nullptr) return nullptr;
    const Tensor b = Inspect(bv);
    if (b.type != ortabi::kFloat || b.shape.size() != 1 || b.numel != c_out)
      Fail(ortabi::kInvalidArgument, "B must be a float32 vector of ", c_out, " output channels, got shape ",
           ShapeStr(b.shape));
    return b.as<float>();
  }

  // Tile width, input-channel blocks and one offset into Q per nonzero (each bounded by
  // q_size <= 2^31-1 before it is narrowed to int32).
  //
  // Tile width: the V (of kConvVectors) with the least padded work, ceil(npos / T) * T
  // positions weighted by 1 + 2 / V for the per-nonzero broadcast and offset load.
  // Channel blocks: a block's input window, (T + the kernel's reach) floats per channel and
  // phase, is kept within kWindowL1 of the L1 data cache (kStripWindowL1 in column strips)
  // while every output channel of a task passes over it, partial sums kept per tile (TaskOrder).
  std::shared_ptr<const ConvPlan> MakePlan(const Csr& csr, const ConvGeometry& g, int64_t task_rows) const {
    auto plan = std::make_shared<ConvPlan>();
    ConvPlan& p = *plan;
    p.c_in = g.c_in;
    p.h = g.h;
    p.w = g.w;
    p.npos = g.oh * g.wq;  // <= q_size: oh <= hq
    p.tile = ChooseTiles(KernelsFor(g.tiles).conv_lanes, p.npos, &p.vi, &p.tail_vi, &p.tail);
    p.tiles = std::max<int64_t>(1, (p.npos + p.tile - 1) / p.tile);
    p.entries.asked_rows = task_rows;
    p.entries.task_rows = g.strip > 0 ? task_rows : pool.Split(task_rows, g.c_out, p.tiles);  // strips: serial
    const int64_t reach = ((kh - 1) * dh / g.sh) * g.wq + g.tap_shift.back();  // attributes <= 2^16
    const double window = static_cast<double>(g.copies) * static_cast<double>(p.tile + reach) * sizeof(float);
    const double share = g.y_row == g.ow ? kWindowL1 : kStripWindowL1;
    const int64_t fit = static_cast<int64_t>(share * static_cast<double>(L1DataBytes()) / window);
    // A block pass reloads and stores the tile's partial sums: worth it only with enough
    // nonzeros per row and block (a 1x1 conv over 256 channels at 10% has 26 per row).
    const int64_t per_row = g.c_out > 0 ? csr.nnz / g.c_out : 0;
    int64_t fitting = 1;
    EvenBlocks(g.cg, fit, &fitting);  // 1 block also when C_in = 0 (then nnz = 0)
    const int64_t want = std::min(fitting, std::max<int64_t>(1, per_row / kConvMinBlockNnz));
    p.cb = EvenBlocks(g.cg, (g.cg + want - 1) / want, &p.blocks);

    const bool in_place = g.in_place;  // q_size is then X's size
    // Each entry's offset and pass, then the weights and offsets in the tiles' order.
    const size_t nnz = static_cast<size_t>(csr.nnz);
    std::vector<int32_t> off(nnz);
    std::vector<int64_t> pass(nnz);
    p.entries.rows = g.c_out;
    p.entries.blocks = p.blocks;
    for (int64_t r = 0; r < g.c_out; ++r) {
      const int64_t c_base = (r / g.og) * g.cg;
      int64_t running = 0;  // uint8 deltas: the decoded column, from 0 at the row start
      for (int64_t j = csr.row_ptr[r]; j < csr.row_ptr[r + 1]; ++j) {
        const int64_t col = ColumnAt(csr, j, &running);
        const int64_t c = col / (kh * kw);
        const int64_t o = TapOffset(g, (col / kw) % kh, col % kw, c_base + c, g.c_in, g.plane);
        if (o < 0 || o >= g.q_size) Fail(ortabi::kFail, "offset ", o, " of nonzero ", j, " is outside the input copies");
        if (o + p.End() > g.q_alloc) Fail(ortabi::kFail, "the tiles of nonzero ", j, " overrun the input copies");
        if (in_place && o + p.npos > g.q_size) Fail(ortabi::kFail, "the tiles of nonzero ", j, " overrun X");
        off[static_cast<size_t>(j)] = static_cast<int32_t>(o);
        pass[static_cast<size_t>(j)] = p.entries.Pass(r, c / p.cb);  // c < cg: the column bound was checked
      }
    }
    std::vector<float> widened;
    p.entries.Arrange(FloatValues(KernelsFor(isa), csr, &widened), off, pass);
    return plan;
  }

  // Q[ph][k][c] = the padded image's rows ph :: sh and columns col_start[k] :: sw, Wq of them,
  // for each used row phase ph and copy column k (ConvGeometry); one task per (row phase,
  // channel), its copy columns one after the other, each a single sequential stream of writes
  // (writing the kW copies of each input row in turn, the row then read from L1, measured
  // slower: VGG-16's conv1_1 0.87x, its conv1_2 0.94x, on the Zen 1 class core). The two
  // column phases of a stride-2 layer are the exception: written together, row by row, from
  // one pass over each input row (FillCopyRowPair; 1.2-1.3x faster on a 56x56 map).
  void FillCopies(const ortabi::KernelContext* ctx, const ConvGeometry& g, const float* xi, float* q) const {
    if (g.x_layout) {
      FillAlignedPlanes(ctx, g, xi, q);
      return;
    }
    if (NarrowCopies(g)) {
      FillNarrowCopies(ctx, g, xi, q);
      return;
    }
    if (!PairedColumns(g)) {
      FillCopyRows(ctx, g, g, xi, 0, q);  // every copy row of the image
      return;
    }
    const int64_t cols = static_cast<int64_t>(g.col_start.size());
    ParallelFor(ctx, static_cast<size_t>(static_cast<int64_t>(g.row_phases.size()) * g.c_in), [&](size_t t) {
      const int64_t slot = static_cast<int64_t>(t) / g.c_in, c = static_cast<int64_t>(t) % g.c_in;
      float* dst = q + (slot * cols * g.c_in + c) * g.plane;  // copy column 1: C_in planes on
      for (int64_t a = 0; a < g.hq; ++a) FillCopyRowPair(g, xi + c * g.h * g.w, slot, a, dst + a * g.wq, g.c_in * g.plane);
      for (int64_t k = 0; k < 2; ++k) {  // a rounded plane's slack, as FillCopyRows (none today: 1x1 only)
        float* copy = dst + k * g.c_in * g.plane;
        std::fill(copy + g.hq * g.wq, copy + g.plane, 0.f);
      }
    });
  }

  // The copies of one band of g.band output rows (PlanPhases, BandRows): the image's copy
  // layout with only the copy rows the band reads, (band + reach) of them per plane, and the
  // tiles' slack after them, as PlanPhases sizes it for the image.
  ConvGeometry BandGeometry(const ConvGeometry& g) const {
    ConvGeometry b = g;
    b.oh = g.band;
    b.hq = g.band + (kh - 1) * dh / g.sh;  // attributes <= 2^16; rows < the image's copies' (BandRows)
    b.plane = SpreadPlane(b.hq * b.wq);    // < the image's plane + 16 lines
    b.q_size = CheckedMul(CheckedMul(b.copies, b.c_in, "input copy count"), b.plane, "band copies' size");
    b.q_alloc = (b.q_size + b.oh * b.wq + 2 * kConvMaxTile + 15) / 16 * 16;
    if (b.q_alloc > kMaxConvPlane) Fail(ortabi::kInvalidArgument, "a band's input copies need more than 2^31-1 floats");
    return b;
  }

  // The tiles' geometry of one column strip of b (the image's copies or a band's; b.strip > 0,
  // PlanPhases): rows of `strip` floats (OW too; Tiles clips the last strip to Y's row,
  // y_row), planes of b.hq rows padded to an odd number of 64-byte lines (each channel's window
  // then starts in another of the L1's sets), q_size one strip's copies and q_alloc what its
  // tiles may read. Every strip has this geometry, so one plan's offsets serve them all; the
  // strips are filled and computed one after the other (FillStrip, Tiles), each strip's copies
  // in the buffer the previous one's took.
  ConvGeometry StripGeometry(const ConvGeometry& b) const {
    ConvGeometry s = b;
    s.wq = b.strip;
    s.ow = b.strip;
    s.strips = b.wq / b.strip;
    const int64_t lines = (CheckedMul(b.hq, s.wq, "a strip's copy plane") + 15) / 16;
    s.plane = (lines | 1) * 16;
    s.q_size = CheckedMul(CheckedMul(s.copies, s.c_in, "input copy count"), s.plane, "a strip's copies");
    s.q_alloc = (s.q_size + s.oh * s.wq + 2 * kConvMaxTile + 15) / 16 * 16;
    if (s.q_alloc > kMaxConvPlane) Fail(ortabi::kInvalidArgument, "a strip's input copies need more than 2^31-1 floats");
    return s;
  }

  // Asks for the cache lines of `rows` rows of n <= 16 floats, `stride` floats apart from src (at
  // most two lines a row), ahead of their copy (FillStrip). A prefetch never faults; every
  // address formed lies inside X, as the copy it precedes would read it.
  static void PrefetchRows(const float* src, int64_t stride, int64_t n, int64_t rows) {
    for (int64_t r = 0; r < rows; ++r) {
      __builtin_prefetch(src + r * stride, 0, 3);
      __builtin_prefetch(src + r * stride + n - 1, 0, 3);
    }
  }

  // Copy rows oy0 .. oy0 + b.hq of column strip `strip` of every copy plane of image xi (b the
  // image's geometry or a band's, s their strip's: StripGeometry; unit column stride), each
  // strip row one 64-byte line, its floats outside X zero, each plane's slack rows zero. Filled
  // strip by strip, each just before its tiles, on the thread that runs them (Compute): the
  // copies of all of a 56 x 56 map's strips (2.9 MB for 64 channels) filled at once outgrew
  // the L2 before the first strip's tiles ran, which then took 10% longer than the whole rows'
  // tiles.
  void FillStrip(const ConvGeometry& g, const ConvGeometry& b, const ConvGeometry& s, const float* xi, int64_t oy0,
                 int64_t strip, float* q) const {
    static_assert(kStripFloats == 16, "one 64-byte line per strip row");
    const int64_t phases = static_cast<int64_t>(g.row_phases.size());
    const int64_t cols = static_cast<int64_t>(g.col_start.size());
    const int64_t rows = b.hq, x0 = strip * kStripFloats;
    const auto& kern = KernelsFor(isa);
    for (int64_t t = 0; t < phases * g.c_in; ++t) {
      const int64_t slot = t / g.c_in, c = t % g.c_in;
      const int64_t ph = g.row_phases[static_cast<size_t>(slot)];
      const float* xc = xi + c * g.h * g.w;
      for (int64_t k = 0; k < cols; ++k) {
        float* dst = q + ((slot * cols + k) * g.c_in + c) * s.plane;
        // copy column x0 + i holds X column x0 + i + shift where first <= x0 + i < end (FillCopyPlane)
        const int64_t shift = g.col_start[static_cast<size_t>(k)] - pad_l;
        const int64_t lo = std::clamp<int64_t>(g.col_first[static_cast<size_t>(k)] - x0, 0, kStripFloats);
        const int64_t hi = std::clamp<int64_t>(g.col_end[static_cast<size_t>(k)] - x0, lo, kStripFloats);
        // Copy rows [a0, a1) come from X rows (oy0 + a) sh + ph - pad_t, the others are zero.
        const int64_t first_row = oy0 * g.sh + ph - pad_t;  // X row of copy row a = 0, may be < 0
        const int64_t a0 = std::clamp<int64_t>(first_row >= 0 ? 0 : (-first_row + g.sh - 1) / g.sh, 0, rows);
        const int64_t a1 = hi == lo ? a0
                                    : std::clamp<int64_t>(std::min(g.hq - oy0, (g.h - first_row + g.sh - 1) / g.sh), a0, rows);
        // Columns [lo, hi) of copy rows [a0, a1) from X (X row first_row + a sh, column x0 +
        // shift + i: inside X there), zeros around them and in the plane's other rows.
        const bool edge = lo > 0 || hi < kStripFloats;
        const bool any = a1 > a0 && hi > lo;
        const int64_t from = (first_row + a0 * g.sh) * g.w + x0 + shift + lo;  // in the channel's plane when `any`
        if (any && c + kStripPrefetchChannels < g.c_in)
          PrefetchRows(xc + kStripPrefetchChannels * g.h * g.w + from, g.sh * g.w, hi - lo, a1 - a0);
        std::fill(dst, dst + (edge ? a1 : a0) * kStripFloats, 0.f);
        if (any) kern.copy_rows(xc + from, g.sh * g.w, hi - lo, a1 - a0, dst + a0 * kStripFloats + lo, kStripFloats);
        std::fill(dst + a1 * kStripFloats, dst + s.plane, 0.f);
      }
    }
  }

  // Copy rows oy0 .. oy0 + b.hq of every copy plane of image xi into q, laid out as b (the
  // image's geometry g itself from row 0, or a band's, BandGeometry), rows past the image's
  // copies zero, then each plane's slack (PlanPhases, SpreadPlane) zero. One task per (row
  // phase, channel), every copy plane through FillCopyPlane: a stride-2 layer's two column phases
  // from one pass over each row (FillCopyRowPair, FillCopies' whole-image path) measured
  // slower in bands (one node after a Relu, 10% density, 3x3/2: 32 -> 64 on 320x320 0.974x,
  // 64 -> 128 on 224x224 0.964x; bench/ab_library.py, 30 rounds).
  void FillCopyRows(const ortabi::KernelContext* ctx, const ConvGeometry& g, const ConvGeometry& b, const float* xi,
                int64_t oy0, float* q) const {
    const int64_t phases = static_cast<int64_t>(g.row_phases.size());
    const int64_t cols = static_cast<int64_t>(g.col_start.size());
    ParallelFor(ctx, static_cast<size_t>(phases * g.c_in), [&](size_t t) {
      const int64_t slot = static_cast<int64_t>(t) / g.c_in, c = static_cast<int64_t>(t) % g.c_in;
      const float* xc = xi + c * g.h * g.w;
      for (int64_t k = 0; k < cols; ++k) {
        float* dst = q + ((slot * cols + k) * g.c_in + c) * b.plane;
        FillCopyPlane(g, xc, slot, k, oy0, b.hq, dst);
        std::fill(dst + b.hq * b.wq, dst + b.plane, 0.f);
      }
    });
  }

  // body(c0, c1) for the input channels in tasks of kFillChannels, so that a copy of small
  // planes is not thousands of tiny tasks (FillAlignedPlanes, FillNarrowCopies).
  template <class F>
  static void ForChannelGroups(const ortabi::KernelContext* ctx, int64_t channels, const F& body) {
    constexpr int64_t kFillChannels = 64;
    const int64_t tasks = (channels + kFillChannels - 1) / kFillChannels;
    ParallelFor(ctx, static_cast<size_t>(tasks), [&](size_t t) {
      const int64_t c0 = static_cast<int64_t>(t) * kFillChannels;
      body(c0, std::min(channels, c0 + kFillChannels));
    });
  }

  // The copy of an x_layout layer that is not read in place (a 1x1 layer whose planes are
  // rounded up to the vector width, PlanPhases): each channel's plane is X's, H * W floats in
  // one piece, then zeros to the rounded plane. Row by row (as FillCopyPlane copies), ResNet-50's
  // 2048 x 7 x 7 input took 14336 copies of 7 floats, a third as long as the layer's products.
  void FillAlignedPlanes(const ortabi::KernelContext* ctx, const ConvGeometry& g, const float* xi, float* q) const {
    const int64_t n = g.h * g.w;  // = hq * wq <= plane
    ForChannelGroups(ctx, g.c_in, [&](int64_t c0, int64_t c1) {
      for (int64_t c = c0; c < c1; ++c) {
        float* dst = q + c * g.plane;
        std::memcpy(dst, xi + c * n, static_cast<size_t>(n) * sizeof(float));
        std::fill(dst + n, dst + g.plane, 0.f);
      }
    });
  }

  // Copies of narrow rows (Wq <= kNarrowCopyRow: the 14x14 and 7x7 maps of ResNet-50's
  // stride-2 layers) are filled through a table instead of row by row: the X offset of each
  // position of each copy plane (or -1 for padding), made once per call, then one loop per
  // channel and copy over the plane. Row by row, each row of 7 or 8 floats went through
  // fills and a strided or deinterleaving call of its own: a fifth of a 512->512 3x3/2
  // layer's time on 14x14, a seventh of a 1024->2048 1x1/2 one's.
  static constexpr int64_t kNarrowCopyRow = 16;
  static constexpr int64_t kNarrowCopyTable = 1 << 16;  // table entries at most
  static bool NarrowCopies(const ConvGeometry& g) {
    return g.wq <= kNarrowCopyRow && g.h * g.w <= INT32_MAX &&
           static_cast<double>(g.copies) * static_cast<double>(g.hq * g.wq) <= kNarrowCopyTable;
  }

  void FillNarrowCopies(const ortabi::KernelContext* ctx, const ConvGeometry& g, const float* xi, float* q) const {
    const int64_t cols = static_cast<int64_t>(g.col_start.size());
    const int64_t n = g.hq * g.wq;  // <= plane
    std::vector<int32_t> at(static_cast<size_t>(g.copies * n), -1);
    for (int64_t slot = 0; slot < static_cast<int64_t>(g.row_phases.size()); ++slot) {
      for (int64_t k = 0; k < cols; ++k) {
        int32_t* t = at.data() + (slot * cols + k) * n;
        const int64_t shift = g.col_start[static_cast<size_t>(k)] - pad_l;
        const int64_t first = g.col_first[static_cast<size_t>(k)], end = g.col_end[static_cast<size_t>(k)];
        for (int64_t a = 0; a < g.hq; ++a) {
          const int64_t row = a * g.sh + g.row_phases[static_cast<size_t>(slot)] - pad_t;
          if (row < 0 || row >= g.h) continue;
          // as FillCopyPlane: copy column b in [first, end) holds X column b * sw + shift
          for (int64_t b = first; b < end; ++b) t[a * g.wq + b] = static_cast<int32_t>(row * g.w + b * g.sw + shift);
        }
      }
    }
    const auto gather = KernelsFor(isa).gather;
    ForChannelGroups(ctx, g.c_in, [&](int64_t c0, int64_t c1) {
      for (int64_t copy = 0; copy < g.copies; ++copy) {
        const int32_t* t = at.data() + copy * n;
        for (int64_t c = c0; c < c1; ++c) {
          float* dst = q + (copy * g.c_in + c) * g.plane;
          gather(xi + c * g.h * g.w, t, n, dst);
          std::fill(dst + n, dst + g.plane, 0.f);
        }
      }
    });
  }

  // Whether the layer reads two copy columns that are the two column phases of stride 2: a
  // row of both then comes from one pass over the input row (FillCopyRowPair).
  static bool PairedColumns(const ConvGeometry& g) {
    return g.sw == 2 && g.col_start.size() == 2 && g.col_start[1] == g.col_start[0] + 1;
  }

  // Row a of copy columns 0 and 1 of (row phase slot) of one channel `src` (PairedColumns),
  // column 1's row at d + k_stride: what FillCopyPlane writes for each, with the columns both
  // copies hold taken from one pass over the input row (Deinterleave), where two strided
  // passes would each read the whole row.
  void FillCopyRowPair(const ConvGeometry& g, const float* src, int64_t slot, int64_t a, float* d, int64_t k_stride) const {
    const int64_t row = a * g.sh + g.row_phases[static_cast<size_t>(slot)] - pad_t;
    if (a >= g.hq || row < 0 || row >= g.h) {
      std::fill(d, d + g.wq, 0.f);
      std::fill(d + k_stride, d + k_stride + g.wq, 0.f);
      return;
    }
    // Copy column k, column b holds X column 2b + s + k (s = col_start[0] - pad_l) where
    // col_first[k] <= b < col_end[k]; both hold theirs for b in [lo, hi).
    const int64_t lo = std::max(g.col_first[0], g.col_first[1]);
    const int64_t hi = std::max(lo, std::min(g.col_end[0], g.col_end[1]));
    const int64_t s = g.col_start[0] - pad_l;
    const float* x = src + row * g.w;
    for (int64_t k = 0; k < 2; ++k) {
      float* o = d + k * k_stride;
      const int64_t first = g.col_first[static_cast<size_t>(k)], end = g.col_end[static_cast<size_t>(k)];
      std::fill(o, o + first, 0.f);
      for (int64_t b = first; b < std::min(lo, end); ++b) o[b] = x[2 * b + s + k];
      for (int64_t b = std::max(first, hi); b < end; ++b) o[b] = x[2 * b + s + k];
      std::fill(o + end, o + g.wq, 0.f);
    }
    // X columns 2 lo + s .. 2 hi + s - 1: copy 0's at b = lo and copy 1's at b = hi - 1, both in X.
    if (hi > lo) KernelsFor(isa).deinterleave(x + 2 * lo + s, hi - lo, d + lo, d + k_stride + lo);
  }

  // Rows oy0 .. oy0 + n of copy (row phase slot, copy column k) of one channel `src` (H x W
  // floats) into d, rows Wq floats apart: copy row a holds X row a * sh + ph - pad_t, columns
  // [first, end) from X column first * sw + shift on; rows outside X or past Hq and the other
  // columns are zeros. The rows that hold X are one run (X's row grows with a); at unit column
  // stride it is copied by one Kernels::copy_rows call. A library memcpy a row (3 x 58 calls of
  // 224 bytes a channel for a 3x3 on 56x56) had cost a third of the copying: one node, 3x3 at
  // 10-50% on 56x56, 28x28 and 14x14 maps, 1.009-1.028x faster.
  void FillCopyPlane(const ConvGeometry& g, const float* src, int64_t slot, int64_t k, int64_t oy0, int64_t n,
                     float* d) const {
    const int64_t ph = g.row_phases[static_cast<size_t>(slot)];
    const int64_t shift = g.col_start[static_cast<size_t>(k)] - pad_l;
    const int64_t first = g.col_first[static_cast<size_t>(k)], end = g.col_end[static_cast<size_t>(k)];
    // rows a in [a0, a1): copy row oy0 + a < Hq and X row (oy0 + a) * sh + ph - pad_t in [0, H)
    int64_t a0 = 0, a1 = n;
    while (a0 < n && ((oy0 + a0) * g.sh + ph - pad_t < 0)) ++a0;
    while (a1 > a0 && (oy0 + a1 - 1 >= g.hq || (oy0 + a1 - 1) * g.sh + ph - pad_t >= g.h)) --a1;
    if (end == first) a1 = a0;
    std::fill(d, d + a0 * g.wq, 0.f);
    std::fill(d + a1 * g.wq, d + n * g.wq, 0.f);
    if (a1 == a0) return;
    const Kernels& kern = KernelsFor(isa);
    const float* s0 = src + ((oy0 + a0) * g.sh + ph - pad_t) * g.w + first * g.sw + shift;  // in X
    if (g.sw == 1) {
      kern.copy_rows(s0, g.sh * g.w, end - first, a1 - a0, d + a0 * g.wq + first, g.wq);
    } else {
      for (int64_t a = a0; a < a1; ++a) kern.strided(s0 + (a - a0) * g.sh * g.w, g.sw, end - first, d + a * g.wq + first);
    }
    for (int64_t a = a0; a < a1; ++a) {
      float* r = d + a * g.wq;
      std::fill(r, r + first, 0.f);
      std::fill(r + end, r + g.wq, 0.f);
    }
  }

  // The positions [p0, p1) of a finished tile, position p at tile[p - start], that fall in Y
  // (columns c < ow of each wq-wide row) to Y's plane y (ForEachRunInY).
  static void CopyOut(int64_t wq, int64_t ow, int64_t y_row, int64_t p0, int64_t p1, int64_t start, const float* tile,
                      float* y) {
    ForEachRunInY(wq, ow, y_row, p0, p1, [&](int64_t at, int64_t pos, int64_t n) {
      if (n == kStripFloats) {  // a strip's row: one inline 64-byte copy, not a call
        std::memcpy(y + at, tile + (pos - start), kStripFloats * sizeof(float));
      } else {
        std::memcpy(y + at, tile + (pos - start), static_cast<size_t>(n) * sizeof(float));
      }
    });
  }

  // f(y, pos, n) for each run [pos, pos + n) of the positions [p0, p1) of the wq-wide rows
  // that falls in Y (columns c < ow), y its offset in the Y plane (rows y_row floats apart):
  // what a tile writes to Y and where. One run when no column is discarded and Y's rows are
  // the positions' (wq = ow = y_row: a 1x1 layer's whole tile).
  template <class F>
  static void ForEachRunInY(int64_t wq, int64_t ow, int64_t y_row, int64_t p0, int64_t p1, F f) {
    if (wq == ow && ow == y_row) {
      if (p1 > p0) f(p0, p0, p1 - p0);
      return;
    }
    int64_t a = p0 / wq, c = p0 % wq;  // one division a call: every later run starts a row
    for (int64_t pos = p0; pos < p1; ++a, c = 0) {
      const int64_t n = std::min(wq - c, p1 - pos);
      const int64_t keep = std::min(n, std::max<int64_t>(0, ow - c));
      if (keep > 0) f(a * y_row + c, pos, keep);
      pos += n;
    }
  }

  // Outputs of one image (or of one band of its rows, g a band's geometry; or of column strip
  // `strip` of either, g a strip's: its columns of Y and Z from strip * Wq on): tasks of (tile, up
  // to task_rows output channels); in a task the channel blocks are taken in turn, every output
  // channel of the task passing over a block's input window before the next block, the partial
  // sums in a per-task buffer. Y and Z hold an output channel's positions out_plane floats after
  // the previous one's. With `in_place` (ReadsXInPlace) q is the image's X, exactly plane * C_in floats: the last
  // tile, when partial, starts at npos - tile instead (reading only X) and writes only the
  // positions the other tiles leave. With `serial` the tasks run in turn on the calling thread
  // (a strip's, inside its own parallel task). With `images` above 1 (in place only), the tasks
  // of that many images, each q_image floats of Q and y_image of Y and Z after the previous, run
  // as one parallel loop: a loop per image cost 2 threads a wake-up and a join per image, and
  // ran MobileNetV2's 1x1 layers at batch 8 1.16-1.5x faster on 2 threads than on 1.
  void Tiles(const ortabi::KernelContext* ctx, const ConvGeometry& g, const ConvPlan& p, const float* q,
             bool in_place, const float* bias, const float* zi, float* yi, int64_t out_plane, int64_t strip,
             bool serial = false, int64_t images = 1, int64_t q_image = 0, int64_t y_image = 0) const {
    const TaskOrder& e = p.entries;
    const int64_t chunk = p.Chunk(g.c_out), chunks = p.Chunks(g.c_out), per_image = p.tiles * chunks;
    const auto& kern = KernelsFor(g.tiles);
    const float* w = e.weights.data();
    const int32_t* off = e.off.data();
    // The strip's columns of Y and Z (StripGeometry: the last strip may hold fewer than Wq
    // columns of Y); without strips, strip 0 of one.
    const int64_t x0 = strip * g.wq, ow = std::min(g.ow, g.y_row - x0);
    const auto task = [&](size_t ti) {
      const int64_t img = static_cast<int64_t>(ti) / per_image, t = static_cast<int64_t>(ti) % per_image;
      const int64_t tile = t / chunks, r0 = (t % chunks) * chunk, r1 = std::min(g.c_out, r0 + chunk);
      float* const ys = yi + img * y_image + x0;
      const float* const zs = zi != nullptr ? zi + img * y_image + x0 : nullptr;
      e.Touch(r0, r1);
      const int64_t width = p.Width(tile);
      const auto run = kern.conv_run[p.Vectors(tile)];
      const int64_t p0 = p.Start(tile), p1 = std::min(p.npos, p0 + width);
      const bool partial = p0 + width > p.npos;
      const int64_t start = in_place && partial ? p.npos - width : p0;  // npos >= width in place
      // Without discarded columns (Wq = OW: 1x1 kernels, no horizontal padding) a whole tile is
      // a run of Y, accumulated there directly; otherwise (and for the last, partial tile) in a
      // per-task buffer whose valid columns are copied out when the row is complete.
      const bool whole_rows = g.wq == ow && g.y_row == ow;  // every position a Y position, in order
      const bool direct = whole_rows && !partial;
      // The activation as a clamp (or none), applied as the last pass stores the tile (ConvEnd).
      ConvEnd end;
      const bool clamp = ClampOf(act, &end);
      // A whole strip's tile of whole strip rows (StripGeometry, every column of its rows in
      // Y) accumulates where it lies in Y, row r of the strip at Y's row r (conv_strip_rows),
      // when its last pass needs nothing done row by row after it (a clamp or no activation; Z
      // read the same way) and Y's rows keep its vectors on 64-byte lines (OW a multiple of
      // 16: on 56-wide maps, each vector across two lines, it measured level or slower).
      const bool in_y = g.strip > 0 && ow == g.wq && !partial && clamp && p0 % g.wq == 0 && width % g.wq == 0 &&
                        g.y_row % kStripFloats == 0;
      float* const buf = direct || in_y ? nullptr : TaskScratch(static_cast<size_t>((r1 - r0) * width));
      const float* qt = q + img * q_image + start;
      // The last pass finishes the tile in registers (ConvEnd) when the activation is a clamp
      // and Z, if any, lies under the tile: no discarded columns (Wq = OW, where position = Y
      // offset); a partial tile reads Z only for its positions before the plane's end.
      end.z_lanes = in_y ? INT64_MAX : std::min(width, p.npos - start);
      const bool z_fits = zi == nullptr || whole_rows || in_y;
      const bool finish = (zi != nullptr || act.kind != Act::kNone) && z_fits && clamp;
      if (in_y) {
        const int64_t at = (p0 / g.wq) * g.y_row;  // the tile's first strip row in Y
        const auto strip_rows = kern.conv_strip_rows[p.Vectors(tile)];
        for (int64_t b = 0; b < p.blocks; ++b) {
          const bool last = b + 1 == p.blocks;
          if (finish && last) end.z = zs != nullptr ? zs + r0 * out_plane + at : nullptr;
          strip_rows(w, off, e.pos.data() + e.PassIn(r0, r1, r0, b), r1 - r0, qt, ys + r0 * out_plane + at, out_plane,
                     g.y_row, bias != nullptr ? bias + r0 : nullptr, b > 0, finish && last ? &end : nullptr, out_plane);
        }
        return;
      }
      const auto rows = kern.conv_rows[p.Vectors(tile)];
      // A last pass with nothing left to do row by row afterwards (a direct tile, finished in
      // registers or with neither Z nor an activation) runs its rows in one call, as the
      // passes before it do.
      const bool rows_last = direct && (finish || (zi == nullptr && act.kind == Act::kNone));
      for (int64_t b = 0; b < p.blocks; ++b) {
        const bool last = b + 1 == p.blocks;
        if (!last || rows_last) {
          if (finish && last) end.z = zs != nullptr ? zs + r0 * out_plane + start : nullptr;
          rows(w, off, e.pos.data() + e.PassIn(r0, r1, r0, b), r1 - r0, qt,
               direct ? ys + r0 * out_plane + p0 : buf, direct ? out_plane : width,
               bias != nullptr ? bias + r0 : nullptr, b > 0, finish && last ? &end : nullptr, out_plane);
          continue;
        }
        // The last pass, row by row: each row's work after it while its tile is in L1.
        for (int64_t r = r0; r < r1; ++r) {
          const size_t i = e.PassIn(r0, r1, r, b);
          const int64_t j0 = e.pos[i], j1 = e.pos[i + 1];
          float* yr = ys + r * out_plane;
          float* acc = direct ? yr + p0 : buf + (r - r0) * width;
          if (finish) end.z = zs != nullptr ? zs + r * out_plane + start : nullptr;
          run(w + j0, off + j0, j1 - j0, qt, acc, bias ? bias[r] : 0.f, b > 0, finish ? &end : nullptr);
          // Unless the pass did: Z, then the activation (the positions a partial tile computes
          // past the plane's end, or discarded columns, are finite or NaN floats and never
          // copied; Z is added only where the tile writes Y).
          if (!finish && zs != nullptr) {
            const float* zr = zs + r * out_plane;
            ForEachRunInY(g.wq, ow, g.y_row, p0, p1,
                          [&](int64_t at, int64_t pos, int64_t n) { kern.add(acc + (pos - start), zr + at, n); });
          }
          if (!finish && act.kind != Act::kNone) kern.activate(acc, width, act);
          if (!direct) CopyOut(g.wq, ow, g.y_row, p0, p1, start, acc, yr);  // row r is complete
        }
      }
    };
    const size_t tasks = static_cast<size_t>(images * per_image);
    if (serial) {
      for (size_t t = 0; t < tasks; ++t) task(t);
    } else {
      pool.ParallelFor(ctx, tasks, task);
    }
  }
};

// --- MaxPool (op-set 9) ----------------------------------------------------------------------

// ONNX MaxPool, NCHW float32, 1-D or 2-D, without the Indices output (runtime_ops/README.md).
// The lowering puts it where an ONNX MaxPool reads a CsrConv's output: ONNX Runtime runs its own
// MaxPool in its blocked NCHWc layout, and so wraps one fed by a custom op in a reorder of its
// input and another of its output, which cost VGG-16 twice what its pools take.
//
// Output extent along an axis, as ONNX Runtime computes it: floor((in + pads - (k-1)*d - 1) / s)
// + 1, or with ceil_mode the ceiling, less one where the last window would start past the input
// and its leading pad. False when the dilated window does not fit the padded input.
bool PoolExtent(int64_t in, int64_t pad0, int64_t pad1, int64_t k, int64_t d, int64_t s, bool ceil_mode,
                int64_t* out) {
  if (!ConvExtent(in, pad0, pad1, k, d, s, out)) return false;
  if (ceil_mode) {
    const int64_t span = in + pad0 + pad1 - (k - 1) * d - 1;  // >= 0, checked by ConvExtent
    if (span % s != 0) *out += 1;
    if ((*out - 1) * s >= in + pad0) *out -= 1;
  }
  return true;
}

// Empty when MaxPool's attributes are within the limits (CsrConv's, and ONNX Runtime's rule that
// each pad is smaller than the kernel along its axis), else the rule they break.
std::string PoolAttrsError(const std::vector<int64_t>& ks, const std::vector<int64_t>& st,
                           const std::vector<int64_t>& di, const std::vector<int64_t>& pa) {
  std::string error = ConvAttrsError(ks, st, di, pa);
  if (!error.empty()) return error;
  for (size_t i = 0; i < pa.size(); ++i)
    if (pa[i] >= ks[i % ks.size()]) return "each pad must be smaller than the kernel along its axis";
  return "";
}

// Padded planes of at most kPoolBlockPixels pixels are pooled 16 or 8 channels at a time
// (MaxPoolKernel::Blocks), larger ones row by row, as are 2 x 2 windows at stride 2 on planes of
// kPoolPairsPixels or more. One node, 1 thread, an Intel core of lscpu family 6: 3 x 3 / 2 on
// 13 x 13 13.4 us in blocks against 26.7 row by row, on 7 x 7 13.6 against 34.7; on 27 x 27 (841
// pixels) 56.8 against 63.5, on 56 x 56 63.5 against 53.2; 2 x 2 / 2 on 14 x 14 24.3 against
// 18.2, on 7 x 7 10.0 against 11.3.
constexpr int64_t kPoolBlockPixels = 1024;
constexpr int64_t kPoolPairsPixels = 14 * 14;

struct MaxPoolKernel {
  int64_t kh = 1, kw = 1, sh = 1, sw = 1, dh = 1, dw = 1;
  int64_t pad_t = 0, pad_l = 0, pad_b = 0, pad_r = 0;
  bool ceil_mode = false;
  size_t x_rank = 4;  // 3 for a 1-D pool: X (N, C, L) runs as (N, C, 1, L)
  Isa isa = Isa::kScalar;

  // Every attribute is bounded here, before any shape is seen.
  explicit MaxPoolKernel(const ortabi::KernelInfo* info) {
    std::vector<int64_t> ks, st, di, pa;
    ReadWindow(info, &ks, &st, &di, &pa);
    const int64_t cm = AttrInt(info, "ceil_mode", 0);
    if (cm != 0 && cm != 1) Fail(ortabi::kInvalidArgument, "ceil_mode must be 0 or 1");
    ceil_mode = cm == 1;
    const std::string error = PoolAttrsError(ks, st, di, pa);
    if (!error.empty()) Fail(ortabi::kInvalidArgument, error);
    x_rank = ks.size() + 2;
    WidenConv1D(&ks, &st, &di, &pa);
    kh = ks[0], kw = ks[1], sh = st[0], sw = st[1], dh = di[0], dw = di[1];
    pad_t = pa[0], pad_l = pa[1], pad_b = pa[2], pad_r = pa[3];
    isa = ChooseIsa();
  }

  // Y[n, c, oy, ox] = max of -FLT_MAX and X[n, c, oy*sh - pad_t + i*dh, ox*sw - pad_l + j*dw]
  // over the taps (i, j) that land inside X, as ONNX Runtime computes it (its maximum starts at
  // -FLT_MAX: a window of -inf taps, or of padding only, gives -FLT_MAX): 2 x 2 windows at
  // stride 2 a pair of rows at a time, small planes by channel blocks (Blocks), the others
  // row by row (Rows).
  void Compute(ortabi::KernelContext* ctx) const {
    size_t count = 0;
    const Tensor x = ReadNchw(ctx, x_rank, &count);
    const int64_t h = x.shape[2], w = x.shape[3];
    int64_t oh = 0, ow = 0;
    if (!PoolExtent(h, pad_t, pad_b, kh, dh, sh, ceil_mode, &oh) ||
        !PoolExtent(w, pad_l, pad_r, kw, dw, sw, ceil_mode, &ow))
      Fail(ortabi::kInvalidArgument, "the pooling window does not fit the padded input of shape ", ShapeStr(x.shape));
    std::vector<int64_t> out_shape = {x.shape[0], x.shape[1], oh, ow};
    if (x_rank == 3) out_shape.erase(out_shape.begin() + 2);
    ortabi::Value* yv = nullptr;
    Check(g_api->KernelContext_GetOutput(ctx, 0, out_shape.data(), out_shape.size(), &yv));
    const int64_t planes = CheckedMul(x.shape[0], x.shape[1], "N * C");
    if (planes == 0 || oh == 0 || ow == 0) return;
    // Padding alone could size an output from an empty plane (every window outside X); no
    // pool reads nothing, and the sizes below would start from a dimension X does not bound.
    if (h == 0 || w == 0)
      Fail(ortabi::kInvalidArgument, "X of shape ", ShapeStr(x.shape), " has an empty plane but the output does not");
    void* ydata = nullptr;
    Check(g_api->GetTensorMutableData(yv, &ydata));
    PoolShape g;
    g.h = h, g.w = w, g.kh = kh, g.kw = kw, g.sh = sh, g.sw = sw, g.dh = dh, g.dw = dw, g.pad_t = pad_t;
    g.pad_l = pad_l, g.ow = ow;
    // The padded block a small plane takes: every pixel a window reads, and X.
    const int64_t hp = std::max(pad_t + h, (oh - 1) * sh + (kh - 1) * dh + 1);
    const int64_t wp = std::max(pad_l + w, (ow - 1) * sw + (kw - 1) * dw + 1);
    const float* xd = x.as<float>();
    float* y = static_cast<float*>(ydata);
    // 2 x 2 windows at stride 2 that all lie inside X (VGG's, and most pools between
    // convolutions) take one pass over their two input rows, no row buffer, on planes of at
    // least kPoolPairsPixels; other small planes go conv_lanes channels at a time.
    const bool pairs = kh == 2 && kw == 2 && sh == 2 && sw == 2 && dh == 1 && dw == 1 && pad_t == 0 && pad_l == 0 &&
                       2 * oh <= h && 2 * ow <= w;
    // X holds h * w floats a plane, and hp, wp exceed h, w by at most twice kMaxConvAttr
    if (pairs ? h * w < kPoolPairsPixels : CheckedMul(hp, wp, "MaxPool's padded plane") <= kPoolBlockPixels)
      return Blocks(ctx, g, x.shape[0], x.shape[1], oh, hp, wp, xd, y);
    Rows(ctx, g, planes, oh, pairs, xd, y);
  }

  // conv_lanes (16 or 8) channels at a time, interleaved as ONNX Runtime's NCHWc pool holds them:
  // a vector max per tap gives that many outputs, where a small plane's rows are a vector or two.
  void Blocks(const ortabi::KernelContext* ctx, const PoolShape& g, int64_t nb, int64_t c, int64_t oh, int64_t hp,
              int64_t wp, const float* x, float* y) const {
    const Kernels& kern = KernelsFor(isa);
    const int64_t lanes = kern.conv_lanes, blocks = (c + lanes - 1) / lanes, hw = g.h * g.w, ohw = oh * g.ow;
    const size_t floats = static_cast<size_t>((hp * wp + ohw) * lanes);  // hp * wp <= kPoolBlockPixels, ohw < it
    const float lowest = std::numeric_limits<float>::lowest();
    ParallelFor(ctx, static_cast<size_t>(nb * blocks), [&](size_t t) {
      const int64_t img = static_cast<int64_t>(t) / blocks, c0 = static_cast<int64_t>(t) % blocks * lanes;
      const int64_t lv = std::min(lanes, c - c0);
      float* const p = TaskScratch(floats);
      float* const out = p + hp * wp * lanes;
      kern.dw_block_in(x + (img * c + c0) * hw, hw, lv, g.h, g.w, g.pad_t, g.pad_l, hp, wp, p);
      const auto pad = [&](int64_t r, int64_t c_from, int64_t c_to) {  // pixels [c_from, c_to) of row r
        std::fill(p + (r * wp + c_from) * lanes, p + (r * wp + c_to) * lanes, lowest);
      };
      for (int64_t r = 0; r < hp; ++r) {
        if (r < g.pad_t || r >= g.pad_t + g.h) {
          pad(r, 0, wp);
        } else {
          pad(r, 0, g.pad_l);
          pad(r, g.pad_l + g.w, wp);
        }
      }
      kern.max_pool_block(p, wp, g, oh, out);
      kern.dw_block_out(out, ohw, lv, -std::numeric_limits<float>::infinity(),
                        std::numeric_limits<float>::infinity(), y + (img * c + c0) * ohw, ohw);
    });
  }

  // Plane by plane, output rows in tasks of ~16 K input floats.
  void Rows(const ortabi::KernelContext* ctx, PoolShape g, int64_t planes, int64_t oh, bool pairs, const float* x,
            float* y) const {
    // Row buffer: every column an output reads, up to (ow - 1) * sw + (kw - 1) * dw, and X's row
    // after the leading pad, rounded up to whole column phases (both terms are at most a few
    // times w + 2^17: ow <= w + pads, every attribute <= kMaxConvAttr).
    g.row = (std::max(pad_l + g.w, (g.ow - 1) * sw + (kw - 1) * dw + 1) + sw - 1) / sw * sw;
    // as many output rows' buffers as 8 KiB hold (they stay in the L1 between steps), at least one
    g.chunk = std::max<int64_t>(1, std::min<int64_t>(oh, 2048 / PoolRowScratch(g)));
    const size_t scratch = static_cast<size_t>(CheckedMul(g.chunk, PoolRowScratch(g), "MaxPool's row buffers"));
    const int64_t rows = CheckedMul(planes, oh, "N * C * OH"), h = g.h, w = g.w, ow = g.ow;
    const int64_t per = std::max<int64_t>(1, (int64_t{1} << 14) / std::max<int64_t>(1, w * kh));
    const int64_t tasks = (rows + per - 1) / per;
    const Kernels& kern = KernelsFor(isa);
    ParallelFor(ctx, static_cast<size_t>(tasks), [&](size_t t) {
      const int64_t r1 = std::min(rows, (static_cast<int64_t>(t) + 1) * per);
      float* buf = pairs ? nullptr : TaskScratch(scratch);
      for (int64_t r = static_cast<int64_t>(t) * per, run = 0; r < r1; r += run) {  // runs within a plane
        const int64_t p = r / oh, oy = r % oh;
        run = std::min(r1 - r, oh - oy);
        if (pairs) kern.max_pool_2x2(x + p * h * w + 2 * oy * w, w, run, ow, y + r * ow);
        else kern.max_pool_rows(x + p * h * w, g, oy, oy + run, buf, y + r * ow);
      }
    });
  }
};

// --- shape inference ------------------------------------------------------------------------

// Output shapes for ORT's graph-level shape inference, so that downstream nodes (and
// session.get_outputs()) see (M, N), (..., N) or (N, C_out, OH, OW) instead of an unknown shape.
// ORT 1.17+ discards the status this callback returns, so nothing here may fail loudly: every
// status an API call hands back is released, and when a shape cannot be derived (unknown rank,
// an unnamed unknown dimension, malformed attributes) the output is simply left without one.
// The kernels still validate everything at run time.
class ShapeInfer {
 public:
  // One dimension as shape inference sees it: a value, a symbolic name, or neither (unknown).
  struct Dim {
    int64_t value = -1;
    std::string param;
    bool known() const { return value >= 0 || !param.empty(); }
  };

  explicit ShapeInfer(ortabi::ShapeInferContext* ctx) : ctx_(ctx) {}

  // Dims of input `index`; false when the input is absent or its rank is unknown (ORT reports
  // a missing shape as rank 0, and no input used here is a scalar).
  bool InputDims(size_t index, std::vector<Dim>* dims) const {
    size_t count = 0;
    if (!Ok(g_api->ShapeInferContext_GetInputCount(ctx_, &count)) || index >= count) return false;
    ortabi::TensorTypeAndShapeInfo* info = nullptr;  // owned by the context
    if (!Ok(g_api->ShapeInferContext_GetInputTypeShape(ctx_, index, &info)) || info == nullptr) return false;
    size_t rank = 0;
    if (!Ok(g_api->GetDimensionsCount(info, &rank)) || rank == 0) return false;
    std::vector<int64_t> values(rank);
    std::vector<const char*> names(rank, nullptr);
    if (!Ok(g_api->GetDimensions(info, values.data(), rank))) return false;
    if (!Ok(g_api->GetSymbolicDimensions(info, names.data(), rank))) return false;
    dims->assign(rank, Dim{});
    for (size_t i = 0; i < rank; ++i) {
      (*dims)[i].value = values[i];
      if (values[i] < 0 && names[i] != nullptr) (*dims)[i].param = names[i];
    }
    return true;
  }

  // An int attribute, or `fallback` when it is absent or unreadable.
  int64_t AttrInt(const char* name, int64_t fallback) const {
    const ortabi::OpAttr* attr = nullptr;
    if (!Ok(g_api->ShapeInferContext_GetAttribute(ctx_, name, &attr)) || attr == nullptr) return fallback;
    int64_t v = 0;
    size_t size = 0;
    if (!Ok(g_api->ReadOpAttr(attr, ortabi::kOpAttrInt, &v, sizeof(v), &size))) return fallback;
    return v;
  }

  // An ints attribute into `out` (left as is when absent); false when it is present but longer
  // than any attribute of these ops can be, or unreadable.
  bool AttrInts(const char* name, std::vector<int64_t>* out) const {
    const ortabi::OpAttr* attr = nullptr;
    if (!Ok(g_api->ShapeInferContext_GetAttribute(ctx_, name, &attr)) || attr == nullptr) return true;
    int64_t buf[8] = {};
    size_t size = 0;
    if (!Ok(g_api->ReadOpAttr(attr, ortabi::kOpAttrInts, buf, sizeof(buf), &size))) return false;
    out->assign(buf, buf + size / sizeof(int64_t));
    return true;
  }

  // Declares output 0 as float32 with `dims`, unless one of them is unknown: an unnamed
  // unknown dimension cannot be expressed, and a made-up name could wrongly equal another.
  void SetOutput(const std::vector<Dim>& dims) const {
    for (const Dim& d : dims)
      if (!d.known()) return;
    ortabi::TensorTypeAndShapeInfo* raw = nullptr;
    if (!Ok(g_api->CreateTensorTypeAndShapeInfo(&raw)) || raw == nullptr) return;
    std::unique_ptr<ortabi::TensorTypeAndShapeInfo, void (*)(ortabi::TensorTypeAndShapeInfo*) noexcept> info(
        raw, g_api->ReleaseTensorTypeAndShapeInfo);
    std::vector<int64_t> values(dims.size());
    std::vector<const char*> names(dims.size());
    for (size_t i = 0; i < dims.size(); ++i) {
      values[i] = dims[i].value >= 0 ? dims[i].value : -1;
      names[i] = dims[i].value >= 0 ? "" : dims[i].param.c_str();
    }
    if (!Ok(g_api->SetTensorElementType(info.get(), ortabi::kFloat))) return;
    if (!Ok(g_api->SetDimensions(info.get(), values.data(), values.size()))) return;
    if (!Ok(g_api->SetSymbolicDimensions(info.get(), names.data(), names.size()))) return;
    Ok(g_api->ShapeInferContext_SetOutputTypeShape(ctx_, 0, info.get()));
  }

  // kernel_shape, strides, dilations and pads as ReadWindow reads them (the defaults for the
  // kernel's rank where absent); false where one is unreadable or too long.
  bool Window(std::vector<int64_t>* ks, std::vector<int64_t>* st, std::vector<int64_t>* di,
              std::vector<int64_t>* pa) const {
    if (!AttrInts("kernel_shape", ks)) return false;
    ConvDefaults(ks->size(), st, di, pa);
    return AttrInts("strides", st) && AttrInts("dilations", di) && AttrInts("pads", pa);
  }

  // Output features / channels: len(row_ptr) - 1, when row_ptr's length is a known value.
  bool Rows(Dim* n) const {
    std::vector<Dim> rp;
    if (!InputDims(3, &rp) || rp.size() != 1 || rp[0].value < 1) return false;
    n->value = rp[0].value - 1;
    return true;
  }

 private:
  static bool Ok(ortabi::Status* st) {
    if (st == nullptr) return true;
    g_api->ReleaseStatus(st);
    return false;
  }
  ortabi::ShapeInferContext* ctx_;
};

// The rules below mirror CsrGemmKernel::Compute and CsrConvKernel::Compute.
void InferCsrGemm(const ShapeInfer& si) {
  std::vector<ShapeInfer::Dim> x, out;
  ShapeInfer::Dim n;
  if (!si.InputDims(0, &x) || !si.Rows(&n)) return;
  const int64_t matmul = si.AttrInt("matmul", 0), trans_a = si.AttrInt("transA", 0);
  if (matmul == 0) {
    if (x.size() != 2) return;
    out = {trans_a ? x[1] : x[0], n};
  } else if (matmul == 2) {  // (N, M), M the product of X's leading dims: known when they all are
    int64_t m = 1;
    for (size_t i = 0; i + 1 < x.size(); ++i)  // declared dims, not a tensor's: bounded here
      if (x[i].value < 0 || __builtin_mul_overflow(m, x[i].value, &m)) return;
    ShapeInfer::Dim md;
    md.value = m;
    out = {n, md};
  } else if (matmul == 3 || matmul == 4) {  // (..., N, S) or (..., S, N) from (..., S, K) or (..., K, S)
    if (x.size() < 2) return;
    const ShapeInfer::Dim s = x[x.size() - (matmul == 4 ? 1 : 2)];
    out.assign(x.begin(), x.end() - 2);
    if (matmul == 3) out.insert(out.end(), {n, s});
    else out.insert(out.end(), {s, n});
  } else {
    out.assign(x.begin(), x.end() - 1);
    out.push_back(n);
  }
  si.SetOutput(out);
}

void InferCsrConv(const ShapeInfer& si) {
  std::vector<ShapeInfer::Dim> x;
  ShapeInfer::Dim c_out;
  if (!si.InputDims(0, &x) || !si.Rows(&c_out)) return;
  std::vector<int64_t> ks, st, di, pa;
  if (!si.Window(&ks, &st, &di, &pa)) return;
  if (!ConvAttrsError(ks, st, di, pa).empty() || x.size() != ks.size() + 2) return;  // the kernel refuses these
  const bool one = ks.size() == 1;
  WidenConv1D(&ks, &st, &di, &pa);
  if (one) x.insert(x.begin() + 2, ShapeInfer::Dim{1});
  if (x[2].value < 0 || x[3].value < 0) return;  // spatial dims must be values to compute OH, OW
  ShapeInfer::Dim oh, ow;
  if (!ConvExtent(x[2].value, pa[0], pa[2], ks[0], di[0], st[0], &oh.value) ||
      !ConvExtent(x[3].value, pa[1], pa[3], ks[1], di[1], st[1], &ow.value))
    return;
  if (one) {
    si.SetOutput({x[0], c_out, ow});
  } else {
    si.SetOutput({x[0], c_out, oh, ow});
  }
}

void InferMaxPool(const ShapeInfer& si) {
  std::vector<ShapeInfer::Dim> x;
  if (!si.InputDims(0, &x)) return;
  std::vector<int64_t> ks, st, di, pa;
  if (!si.Window(&ks, &st, &di, &pa)) return;
  const int64_t cm = si.AttrInt("ceil_mode", 0);
  if (!PoolAttrsError(ks, st, di, pa).empty() || (cm != 0 && cm != 1) || x.size() != ks.size() + 2) return;
  std::vector<ShapeInfer::Dim> out(x.begin(), x.begin() + 2);
  for (size_t i = 0; i < ks.size(); ++i) {
    ShapeInfer::Dim o;
    if (x[i + 2].value < 0 ||
        !PoolExtent(x[i + 2].value, pa[i], pa[i + ks.size()], ks[i], di[i], st[i], cm == 1, &o.value))
      return;
    out.push_back(o);
  }
  si.SetOutput(out);
}

// --- registration ---------------------------------------------------------------------------

template <class K>
struct OpDef {
  static constexpr size_t kInputs = K::kInputs;

  static ortabi::Status* CreateKernelV2(const ortabi::CustomOp* op, const ortabi::Api*, const ortabi::KernelInfo* info,
                                        void** kernel) noexcept {
    *kernel = nullptr;
    return Guard(op->GetName(op), [&] { *kernel = new K(info); });
  }
  static ortabi::Status* KernelComputeV2(void* kernel, ortabi::KernelContext* ctx) noexcept {
    return Guard(K::kName, [&] { static_cast<const K*>(kernel)->Compute(ctx); });
  }
  static void KernelDestroy(void* kernel) noexcept { delete static_cast<K*>(kernel); }
  static void* CreateKernelV1(const ortabi::CustomOp*, const ortabi::Api*, const ortabi::KernelInfo*) noexcept {
    return nullptr;  // never used: version >= 16 makes ORT call CreateKernelV2
  }
  static void KernelComputeV1(void*, ortabi::KernelContext*) noexcept {}
  static const char* GetName(const ortabi::CustomOp*) noexcept { return K::kName; }
  static const char* GetExecutionProviderType(const ortabi::CustomOp*) noexcept { return "CPUExecutionProvider"; }
  static size_t GetInputTypeCount(const ortabi::CustomOp*) noexcept { return kInputs; }
  static ortabi::ElementType GetInputType(const ortabi::CustomOp*, size_t index) noexcept {
    // values and col_idx accept several element types (checked by DescribeCsr), so their
    // declared type is open.
    switch (index) {
      case 1:  // values: float or float16
      case 2:  // col_idx: int16, int32 or uint8 deltas
        return ortabi::kUndefined;
      case 3: return ortabi::kInt32;
      default: return ortabi::kFloat;
    }
  }
  static size_t GetOutputTypeCount(const ortabi::CustomOp*) noexcept { return 1; }
  static ortabi::ElementType GetOutputType(const ortabi::CustomOp*, size_t) noexcept { return ortabi::kFloat; }
  static ortabi::InputOutputCharacteristic GetInputCharacteristic(const ortabi::CustomOp*, size_t index) noexcept {
    return index >= 4 ? ortabi::kOptional : ortabi::kRequired;  // B (C), and CsrConv's Z
  }
  static ortabi::InputOutputCharacteristic GetOutputCharacteristic(const ortabi::CustomOp*, size_t) noexcept {
    return ortabi::kRequired;
  }
  static ortabi::MemType GetInputMemoryType(const ortabi::CustomOp*, size_t) noexcept { return ortabi::kMemTypeDefault; }
  static int VariadicMinArity(const ortabi::CustomOp*) noexcept { return 1; }
  static int VariadicHomogeneity(const ortabi::CustomOp*) noexcept { return 1; }
  static int GetStartVersion(const ortabi::CustomOp*) noexcept { return 1; }
  // Open-ended: ORT matches a custom kernel against the op's schema version (the start version),
  // not the model's op-set, so an end version would refuse nothing (measured with ORT 1.32).
  static int GetEndVersion(const ortabi::CustomOp*) noexcept { return INT32_MAX; }
  static ortabi::Status* InferOutputShape(const ortabi::CustomOp*, ortabi::ShapeInferContext* ctx) noexcept {
    try {
      K::InferShape(ShapeInfer(ctx));
    } catch (...) {
      // Only allocation can throw here; an output without a shape is the fallback anyway.
    }
    return nullptr;  // see ShapeInfer: the status would be dropped by ORT, so none is made
  }

  static ortabi::CustomOp Make() {
    ortabi::CustomOp op;
    std::memset(&op, 0, sizeof(op));
    op.version = ortabi::kTargetApiVersion;
    op.CreateKernel = CreateKernelV1;
    op.GetName = GetName;
    op.GetExecutionProviderType = GetExecutionProviderType;
    op.GetInputType = GetInputType;
    op.GetInputTypeCount = GetInputTypeCount;
    op.GetOutputType = GetOutputType;
    op.GetOutputTypeCount = GetOutputTypeCount;
    op.KernelCompute = KernelComputeV1;
    op.KernelDestroy = KernelDestroy;
    op.GetInputCharacteristic = GetInputCharacteristic;
    op.GetOutputCharacteristic = GetOutputCharacteristic;
    op.GetInputMemoryType = GetInputMemoryType;
    op.GetVariadicInputMinArity = VariadicMinArity;
    op.GetVariadicInputHomogeneity = VariadicHomogeneity;
    op.GetVariadicOutputMinArity = VariadicMinArity;
    op.GetVariadicOutputHomogeneity = VariadicHomogeneity;
    op.CreateKernelV2 = CreateKernelV2;
    op.KernelComputeV2 = KernelComputeV2;
    op.InferOutputShapeFn = InferOutputShape;
    op.GetStartVersion = GetStartVersion;
    op.GetEndVersion = GetEndVersion;
    return op;
  }
};

struct CsrGemmOp : CsrGemmKernel {
  static constexpr const char* kName = "CsrGemm";
  static constexpr size_t kInputs = 6;  // X, values, col_idx, row_ptr, C, Z (op-set 6)
  static void InferShape(const ShapeInfer& si) { InferCsrGemm(si); }
  using CsrGemmKernel::CsrGemmKernel;
};
struct CsrConvOp : CsrConvKernel {
  static constexpr const char* kName = "CsrConv";
  static constexpr size_t kInputs = 6;  // X, values, col_idx, row_ptr, B, Z (op-set 5)
  static void InferShape(const ShapeInfer& si) { InferCsrConv(si); }
  using CsrConvKernel::CsrConvKernel;
};
struct MaxPoolOp : MaxPoolKernel {
  static constexpr const char* kName = "MaxPool";
  static constexpr size_t kInputs = 1;  // X (op-set 9)
  static void InferShape(const ShapeInfer& si) { InferMaxPool(si); }
  using MaxPoolKernel::MaxPoolKernel;
};

// ORT keeps pointers to these for as long as any session uses them, i.e. until process exit.
const ortabi::CustomOp kCsrGemm = OpDef<CsrGemmOp>::Make();
const ortabi::CustomOp kCsrConv = OpDef<CsrConvOp>::Make();
const ortabi::CustomOp kMaxPool = OpDef<MaxPoolOp>::Make();

}  // namespace
}  // namespace onnxprune

using onnxprune::g_api;

ONNXPRUNE_EXPORT ortabi::Status* RegisterCustomOps(ortabi::SessionOptions* options, const ortabi::ApiBase* base) {
  const ortabi::Api* api = base->GetApi(ortabi::kTargetApiVersion);
  if (api == nullptr) {
    // Too old a runtime: refuse with a status built from the version-1 table, which every
    // runtime serves and whose slot 0 is CreateStatus.
    std::string msg = std::string("onnxprune sparse ops need ONNX Runtime C API version ") +
                      std::to_string(ortabi::kTargetApiVersion) + " (onnxruntime >= 1." +
                      std::to_string(ortabi::kTargetApiVersion) + "); this runtime is " + base->GetVersionString();
    const ortabi::Api* v1 = base->GetApi(1);
    if (v1 == nullptr) return nullptr;  // not an ONNX Runtime we can talk to at all
    return v1->CreateStatus(ortabi::kFail, msg.c_str());
  }
  g_api = api;
  ortabi::CustomOpDomain* domain = nullptr;
  if (ortabi::Status* st = api->CreateCustomOpDomain(onnxprune::kDomain, &domain)) return st;
  for (const ortabi::CustomOp* op : {&onnxprune::kCsrGemm, &onnxprune::kCsrConv, &onnxprune::kMaxPool}) {
    if (ortabi::Status* st = api->CustomOpDomain_Add(domain, op)) {
      api->ReleaseCustomOpDomain(domain);
      return st;
    }
  }
  if (ortabi::Status* st = api->AddCustomOpDomain(options, domain)) {
    api->ReleaseCustomOpDomain(domain);
    return st;
  }
  // The session options now reference the domain and sessions created from them outlive this
  // call, so the domain is deliberately never released (a few bytes per registration).
  return nullptr;
}

// Introspection for the Python loader and tests.
ONNXPRUNE_EXPORT uint32_t onnxprune_ops_api_version() { return ortabi::kTargetApiVersion; }
ONNXPRUNE_EXPORT const char* onnxprune_ops_domain() { return onnxprune::kDomain; }
ONNXPRUNE_EXPORT int onnxprune_ops_opset_version() { return onnxprune::kOpsetVersion; }
ONNXPRUNE_EXPORT const char* onnxprune_ops_best_isa() { return onnxprune::IsaName(onnxprune::BestIsa()); }
ONNXPRUNE_EXPORT int onnxprune_ops_cpu_has(const char* isa_name) {
  onnxprune::Isa isa = onnxprune::Isa::kScalar;
  if (!onnxprune::IsaByName(isa_name, &isa)) return -1;
  return onnxprune::CpuHas(isa) ? 1 : 0;
}

// CsrConvKernel::Layout for tests and benchmarks: -1 when the ISA is unknown or not on this
// CPU, or the attributes or shapes are refused.
ONNXPRUNE_EXPORT int onnxprune_ops_conv_layout(const char* isa_name, const int64_t* attrs, const int64_t* x,
                                               int64_t c_out, int64_t nnz) {
  onnxprune::Isa isa = onnxprune::Isa::kScalar;
  if (isa_name == nullptr || attrs == nullptr || x == nullptr || !onnxprune::IsaByName(isa_name, &isa) ||
      !onnxprune::CpuHas(isa))
    return -1;
  try {
    return onnxprune::CsrConvKernel::Layout(isa, attrs, x, c_out, nnz);
  } catch (...) {
    return -1;
  }
}

// MakeSellPlan for tests: the lanes (16 per step) of the plan a CsrGemm's batch-1 pass builds
// for this CSR under `use` (0 never, as ONNXPRUNE_GEMV_SELL=0; 1 the rule, as when it is unset;
// 2 wherever it can, as =1); 0 where it keeps the CSR pass, -1 when the kinds are unknown.
// value_kind 0 float32, 1 float16; index_kind 0 int16, 1 int32, 2 uint8 deltas; -1 also when
// row_ptr does not start at 0 and rise, or a column lies outside [0, extent).
ONNXPRUNE_EXPORT int64_t onnxprune_ops_gemv_lanes(const void* values, int value_kind, const void* col, int index_kind,
                                                  const int32_t* row_ptr, int64_t rows, int64_t extent, int use) {
  if (values == nullptr || col == nullptr || row_ptr == nullptr || value_kind < 0 || value_kind > 1 ||
      index_kind < 0 || index_kind > 2 || use < 0 || use > 2 || rows < 0 || extent < 1)
    return -1;
  onnxprune::Csr csr;
  csr.values = values, csr.col = col, csr.row_ptr = row_ptr, csr.rows = rows, csr.nnz = row_ptr[rows];
  csr.value = static_cast<onnxprune::ValueKind>(value_kind);
  csr.index = static_cast<onnxprune::IndexKind>(index_kind);
  const onnxprune::SellUse uses[] = {onnxprune::SellUse::kNever, onnxprune::SellUse::kAuto, onnxprune::SellUse::kAlways};
  try {
    // validated as a model's CSR is (a caller's mistake is a -1, not a write outside the
    // plan's counters), every column below extent
    onnxprune::Validate(csr);
    if (csr.max_col >= extent) return -1;
    if (uses[use] == onnxprune::SellUse::kNever) return 0;
    const auto plan = onnxprune::MakeSellPlan(csr, extent, uses[use]);
    return plan->Empty() ? 0 : plan->group_step.back() * onnxprune::kSellRows;
  } catch (...) {
    return -1;
  }
}

// PoolSeen::Split for tests: the rows per task a plan for `rows` output rows over `tiles` tiles
// takes when `asked` rows are asked for (ONNXPRUNE_TASK_ROWS read as a kernel would); -1 when
// that setting is refused.
ONNXPRUNE_EXPORT int64_t onnxprune_ops_task_rows(int64_t asked, int64_t rows, int64_t tiles) {
  try {
    return onnxprune::PoolSeen().Split(asked, rows, tiles);
  } catch (...) {
    return -1;
  }
}

// Calls the library-level API slots against a live runtime and checks they behave as
// declared: 0 on success, otherwise the number of the first failed check.
ONNXPRUNE_EXPORT int onnxprune_ops_abi_probe(const ortabi::ApiBase* base) {
  const ortabi::Api* api = base->GetApi(ortabi::kTargetApiVersion);
  if (api == nullptr) return 1;
  ortabi::Status* st = api->CreateStatus(ortabi::kInvalidGraph, "probe");
  if (st == nullptr) return 2;
  const bool code_ok = api->GetErrorCode(st) == ortabi::kInvalidGraph;
  const bool msg_ok = std::strcmp(api->GetErrorMessage(st), "probe") == 0;
  api->ReleaseStatus(st);
  if (!code_ok) return 3;
  if (!msg_ok) return 4;
  ortabi::CustomOpDomain* domain = nullptr;
  if (ortabi::Status* s = api->CreateCustomOpDomain("ai.onnxprune.probe", &domain)) {
    api->ReleaseStatus(s);
    return 5;
  }
  if (ortabi::Status* s = api->CustomOpDomain_Add(domain, &onnxprune::kCsrGemm)) {
    api->ReleaseStatus(s);
    api->ReleaseCustomOpDomain(domain);
    return 6;
  }
  api->ReleaseCustomOpDomain(domain);
  return 0;
}
