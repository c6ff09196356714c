// What the compiled loops share (csrc/fused_loops.cpp, layer_norm_loops.cpp, cell_step.cpp): the cell kinds,
// the barrier and the team that run a loop, how a team shares it (by hidden units or by batch rows), the gate
// functions, and the register-blocked GEMM over packed weight panels. fused_loops.cpp's header comment says how
// a loop runs.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <omp.h>

#include "buffer_pool.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <optional>
#include <thread>
#include <utility>
#include <vector>

namespace rnnkit::loops {

enum Kind : int64_t { RNN_TANH = 0, RNN_RELU = 1, LSTM = 2, GRU = 3 };

// The barrier between the steps of a loop. libgomp's `omp barrier` puts a waiting thread to sleep
// in the kernel once its spin runs out, and on a VM a wake-up can cost tens of microseconds, paid
// at every step: a B=32, H=256 LSTM training step ran 1.2-1.5x slower in 4 of 5 processes with it
// and in 1 of 6 with this one. This one spins with a pause and only yields the CPU after a long
// wait, so an oversubscribed machine still makes progress.
class StepBarrier {
 public:
  void reset(int threads) {
    threads_ = threads;
    arrived_.store(0, std::memory_order_relaxed);
  }
  void wait() {
    if (threads_ <= 1) return;
    const unsigned generation = generation_.load(std::memory_order_acquire);
    if (arrived_.fetch_add(1, std::memory_order_acq_rel) == threads_ - 1) {
      arrived_.store(0, std::memory_order_relaxed);
      generation_.fetch_add(1, std::memory_order_release);  // publishes every thread's writes before the barrier
      return;
    }
    for (int spins = 0; generation_.load(std::memory_order_acquire) == generation; ++spins) {
      if (spins < kSpins)
        relax();
      else
        std::this_thread::yield();
    }
  }

 private:
  static constexpr int kSpins = 1 << 14;  // ~0.3 ms of pauses
  static void relax() {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
  }
  std::atomic<int> arrived_{0};
  std::atomic<unsigned> generation_{0};
  int threads_ = 1;
};

// Zoneout on units [u0, u1) of one row: h = h̃ + m (h_prev - h̃), in the state and the output. M is T
// (weights) or uint8_t (0/1 flags, read as T(m[u]): the same arithmetic as the float mask, so the same bits).
template <typename T, typename M>
inline void zone_out(const M* m, const T* h_prev, T* h_new, T* y_row, int64_t u0, int64_t u1) {
#pragma omp simd
  for (int64_t u = u0; u < u1; ++u) {
    const T h = h_new[u] + T(m[u]) * (h_prev[u] - h_new[u]);
    h_new[u] = h;
    y_row[u] = h;
  }
}

// body(tid, threads) on a team of up to `threads` OpenMP threads that share `barrier`.
template <typename Body>
void run_team(int threads, StepBarrier& barrier, const Body& body) {
#pragma omp parallel num_threads(threads)
  {
#pragma omp single
    barrier.reset(omp_get_num_threads());  // the team may be smaller than asked (nested regions)
    body(omp_get_thread_num(), omp_get_num_threads());
  }
}

// Gate functions are forced inline so that the `omp simd` loops calling them vectorise.
#define RNNKIT_INLINE inline __attribute__((always_inline))

// exp for float32 that the compiler can vectorise (Cephes' polynomial, ~1 ulp);
// std::exp is a scalar libm call. NaN propagates through `poly`.
RNNKIT_INLINE float exp_vec(float x) {
  x = x > 88.0f ? 88.0f : x;
  x = x < -87.0f ? -87.0f : x;
  // round to nearest by adding and removing 1.5 * 2^23 (std::nearbyint would be a libm call)
  const float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  const float r = x - n * 0.693359375f + n * 2.12194440e-4f;
  float poly = 1.9875691500e-4f;
  poly = poly * r + 1.3981999507e-3f;
  poly = poly * r + 8.3334519073e-3f;
  poly = poly * r + 4.1665795894e-2f;
  poly = poly * r + 1.6666665459e-1f;
  poly = poly * r + 5.0000001201e-1f;
  poly = poly * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return poly * scale;
}
RNNKIT_INLINE float sigmoid(float x) { return 1.0f / (1.0f + exp_vec(-x)); }
// tanh as Cephes' tanhf (~2 ulp): an odd polynomial below |x| = 0.625, where 1 - 2/(e^{2|x|}+1)
// would lose digits to cancellation; both are computed and one selected, so the loop vectorises.
RNNKIT_INLINE float tanh_(float x) {
  const float ax = x < 0.0f ? -x : x;
  const float large = 1.0f - 2.0f / (exp_vec(2.0f * ax) + 1.0f);
  const float z = x * x;
  const float small =
      ((((-5.70498872745e-3f * z + 2.06390887954e-2f) * z - 5.37397155531e-2f) * z + 1.33314422036e-1f) * z - 3.33332819422e-1f) * z * x + x;
  return ax >= 0.625f ? (x < 0.0f ? -large : large) : small;
}
// float64 is the precision path (gradcheck, 1e-10 tests): libm, not speed.
RNNKIT_INLINE double sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }
RNNKIT_INLINE double tanh_(double x) { return std::tanh(x); }

// C[r, c0:c1] (+)= A[r, :K] . B[:K, c0:c1] for every row r, B row-major. A register-blocked
// micro-kernel: a tile of kRows rows x kVecs vectors of accumulators lives in registers for the
// whole K loop, each B vector loaded once per k serves kRows rows, each A value is broadcast.
// GCC/Clang vector extensions keep it portable. The vector is the machine's own (-march=native):
// 64 bytes with AVX-512's 32 registers, 32 bytes with AVX2's 16. A 64-byte vector emulated on AVX2
// doubles every tile's registers past the 16 there are, and the spills made the loop 3.6x slower
// than torch.nn's LSTM on an AVX2 machine (B=32, H=64); the tiles below are sized per register file.
// (aligned(sizeof element): loads and stores need not be 64-byte aligned)
#if defined(__AVX512F__)
constexpr int kVecBytes = 64;
constexpr int kBigRows = 8, kBigVecs = 2, kMidRows = 4, kMidVecs = 4;  // 16 + 2 (+ 4) of 32 registers
#else
constexpr int kVecBytes = 32;
constexpr int kBigRows = 6, kBigVecs = 2, kMidRows = 2, kMidVecs = 4;  // 12 + 2 + 1, and 8 + 4 + 1, of 16 registers
#endif
typedef float VecF __attribute__((vector_size(kVecBytes), aligned(4)));
typedef double VecD __attribute__((vector_size(kVecBytes), aligned(8)));
template <typename T> struct VecOf;
template <> struct VecOf<float> { using type = VecF; };
template <> struct VecOf<double> { using type = VecD; };
template <typename T>
using Vec = typename VecOf<T>::type;

template <typename T, int kRows, int kVecs>
inline void gemm_tile(const T* A, int64_t lda, const T* B, int64_t ldb, T* C, int64_t ldc, int64_t K, bool accumulate) {
  constexpr int kLanes = kVecBytes / sizeof(T);
  Vec<T> acc[kRows][kVecs];
  for (int r = 0; r < kRows; ++r)
    for (int v = 0; v < kVecs; ++v)
      acc[r][v] = accumulate ? *reinterpret_cast<const Vec<T>*>(C + r * ldc + v * kLanes) : Vec<T>{};
  for (int64_t k = 0; k < K; ++k) {
    Vec<T> b[kVecs];
    for (int v = 0; v < kVecs; ++v) b[v] = *reinterpret_cast<const Vec<T>*>(B + k * ldb + v * kLanes);
    for (int r = 0; r < kRows; ++r) {
      const T a = A[r * lda + k];
      for (int v = 0; v < kVecs; ++v) acc[r][v] += a * b[v];
    }
  }
  for (int r = 0; r < kRows; ++r)
    for (int v = 0; v < kVecs; ++v) *reinterpret_cast<Vec<T>*>(C + r * ldc + v * kLanes) = acc[r][v];
}

template <typename T, int kRows, int kVecs = kMidVecs>
inline void gemm_row_block(const T* A, int64_t lda, const T* B, int64_t ldb, T* C, int64_t ldc, int64_t K, int64_t c0,
                           int64_t c1, bool accumulate) {
  constexpr int64_t kLanes = kVecBytes / sizeof(T);
  int64_t j = c0;
  for (; j + kVecs * kLanes <= c1; j += kVecs * kLanes) gemm_tile<T, kRows, kVecs>(A, lda, B + j, ldb, C + j, ldc, K, accumulate);
  for (; j + kLanes <= c1; j += kLanes) gemm_tile<T, kRows, 1>(A, lda, B + j, ldb, C + j, ldc, K, accumulate);
  for (; j < c1; ++j)
    for (int r = 0; r < kRows; ++r) {
      T sum = accumulate ? C[r * ldc + j] : T(0);
      for (int64_t k = 0; k < K; ++k) sum += A[r * lda + k] * B[k * ldb + j];
      C[r * ldc + j] = sum;
    }
}

// Columns [c0, c1) of a K x M matrix B (element (k, c) at base[k * row_stride + c * col_stride]),
// copied into panels of at most kPanel columns, each K x width and contiguous: the kernel then
// streams memory linearly, and a panel stays in cache while every row block of A passes over it.
// Panels start on 64-byte boundaries so that full-width vector loads never straddle cache lines.
template <typename T>
struct Panels {
  static constexpr int64_t kPanel = 256 / sizeof(T);
  static constexpr int64_t kAlign = 64 / sizeof(T);
  struct Panel {
    int64_t column, width, offset;
  };
  int64_t K = 0;
  std::vector<Panel> panels;
  at::Tensor storage;  // the CPU allocator aligns to 64 bytes

  // `ranges` are [c0, c1) column ranges of B, all with K rows.
  Panels(const T* base, int64_t row_stride, int64_t col_stride, int64_t rows, const std::vector<std::pair<int64_t, int64_t>>& ranges,
         const at::TensorOptions& options)
      : K(rows) {
    int64_t size = 0;
    for (const auto& [c0, c1] : ranges)
      for (int64_t c = c0; c < c1; c += kPanel) {
        const int64_t width = std::min(kPanel, c1 - c);
        panels.push_back({c, width, size});
        size += (K * width + kAlign - 1) / kAlign * kAlign;
      }
    storage = at::empty({size}, options);
    T* data = storage.data_ptr<T>();
    for (const auto& panel : panels)
      for (int64_t k = 0; k < K; ++k)
        for (int64_t j = 0; j < panel.width; ++j)
          data[panel.offset + k * panel.width + j] = base[k * row_stride + (panel.column + j) * col_stride];
  }
  Panels() = default;
  const T* data() const { return storage.defined() ? storage.const_data_ptr<T>() : nullptr; }
};

// C[:rows, panel columns] (+)= A[:rows, :K] . B for every panel of B.
template <typename T>
void gemm_panels(const T* A, int64_t lda, const Panels<T>& B, T* C, int64_t ldc, int64_t rows, bool accumulate) {
  for (const auto& panel : B.panels) {
    const T* b = B.data() + panel.offset;
    T* c = C + panel.column;
    int64_t r = 0;
    for (; r + kBigRows <= rows; r += kBigRows)
      gemm_row_block<T, kBigRows, kBigVecs>(A + r * lda, lda, b, panel.width, c + r * ldc, ldc, B.K, 0, panel.width, accumulate);
    for (; r + kMidRows <= rows; r += kMidRows)
      gemm_row_block<T, kMidRows>(A + r * lda, lda, b, panel.width, c + r * ldc, ldc, B.K, 0, panel.width, accumulate);
    for (; r < rows; ++r)
      gemm_row_block<T, 1>(A + r * lda, lda, b, panel.width, c + r * ldc, ldc, B.K, 0, panel.width, accumulate);
  }
}

// Splits [0, size) into `parts` ranges aligned to a vector width, so threads never share a cache line.
inline std::pair<int64_t, int64_t> slice(int64_t size, int parts, int index) {
  const int64_t chunk = ((size + parts - 1) / parts + 15) / 16 * 16;
  return {std::min(size, chunk * index), std::min(size, chunk * (index + 1))};
}

inline at::Tensor empty_like_or_none(const at::Tensor& like, at::IntArrayRef shape, bool needed) {
  return rnnkit::pool::empty(needed ? shape : at::IntArrayRef{0}, like.options());
}

inline at::Tensor ptr_source(const std::optional<at::Tensor>& t) { return t.has_value() ? *t : at::Tensor(); }

template <typename T>
const T* data_or_null(const at::Tensor& t) {
  return t.defined() && t.numel() > 0 ? t.const_data_ptr<T>() : nullptr;
}

inline int thread_count(int64_t H) { return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), H / 32))); }

// A team splits the batch instead of the hidden units from this many rows per thread, for a W_hh of at most this size.
constexpr int64_t kRowsPerThread = 8, kRowsWeightBytes = int64_t(4) << 20;

// How thread `tid` of a team of `nt` shares a loop (Loop or NormLoop), and whether it runs by rows. With at least
// kRowsPerThread rows per thread (and where `allowed`), each thread runs its own batch rows through every step
// alone: a row's states, statistics and gradients never leave its thread, so it meets no barrier (`alone`, a team
// of one), at the price of packing and reading all of W_hh (`weight_bytes`) instead of its slice. A barrier costs
// most on a VM, whose second core can wake slowly. Measured on a 2-core AMD EPYC (Zen 4, 1 MB of L2 a core), by
// rows against by units: the LayerNorm LSTM's backward loop at B=32, H=256 took 15-18 ms against 28-54 ms; the
// plain loops gained 5-30% at B=32, H=256 (W_hh 0.25-1 MB) and 0-10% at B=64, H=512 (1-4 MB); at B=16, H=1024
// (W_hh 4-16 MB) the LSTM's training step was 1.45x slower by rows, hence the cap on W_hh's size.
// Otherwise each thread owns a slice of hidden units, and the team meets at the barriers.
template <typename LoopT>
bool share_rows(LoopT& mine, int64_t N, int tid, int nt, bool allowed, int64_t weight_bytes, StepBarrier& alone) {
  if (!allowed || nt < 2 || N < kRowsPerThread * nt || weight_bytes > kRowsWeightBytes) {
    mine.row0 = 0, mine.row1 = N;
    return false;
  }
  mine.row0 = N * tid / nt, mine.row1 = N * (tid + 1) / nt;
  alone.reset(1);
  mine.barrier = &alone;
  return true;
}

}  // namespace rnnkit::loops
