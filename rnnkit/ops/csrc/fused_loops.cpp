// The compiled loop kernel of rnnkit's fused engine: the per-step recurrence.
//
// Same contract as rnnkit/engine/fused_loops.py (read its docstring; the math is in
// fused.py). Python does the GEMMs that span all steps; this file runs the loop over
// time, where per-step dispatch overhead is what a Python loop cannot avoid.
//
// The whole time loop runs inside one OpenMP region. With a small batch each thread owns a slice of
// hidden units, computes the GEMM columns of exactly those units with the register-blocked kernel
// below (its weight columns packed once per call into contiguous panels), then their gate math,
// and threads meet at one spinning barrier per step (two with an LSTM projection). With 8 or more
// rows per thread each thread runs its own rows alone, without barriers (share_rows). There is no
// per-step dispatch, allocation or fork/join. Measured faster than a library GEMM per step
// (at::mm_out, MKL) at every batch size tried, 1 to 64.
// Only headers needed are included: <torch/extension.h> alone takes ~25 s to compile.

#include <ATen/core/Tensor.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/linear.h>
#include <ATen/ops/zeros.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/grad_mode.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <torch/library.h>

#include "bf16_tiles.h"
#include "inference_only.h"
#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <optional>
#include <thread>
#include <tuple>
#include <type_traits>
#include <vector>

namespace {

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

// Everything a step needs, as raw pointers into contiguous buffers.
template <typename T>
struct Loop {
  int64_t kind, L, N, H, Hout, G;
  bool reverse, proj;
  const bool* valid;                 // (L, N) or null
  T *gates, *y, *hs, *cs, *hn, *hraw;  // forward buffers (see the Python contract)
  const T *w_hh, *b_hn, *w_hr;
  T* scratch;                        // forward: h W_hh^T (N, G*H); backward: dr (N, H)
  // backward
  const T* dy;  // any strides (an expanded gradient of a sum is not copied): see dy_stride
  T *dgx, *dgh_n, *dh, *dc, *dproj;  // dgh_n: GRU's recurrent-side n gradient δn⊙r (L, N, H)
  int64_t dy_stride[3] = {0, 0, 0};  // (t, n, q)
  // dy in bf16 (the output's gradient under bf16 autocast), read in place of `dy`: no float32 copy of it is made
  const uint16_t* dy_bf16 = nullptr;
  StepBarrier* barrier = nullptr;  // shared by the team running the loop
  // Zoneout (L, N, H_out) or null: keep-previous weights m_t. A valid step's h_t becomes
  // h̃_t + m_t (h_{t-1} - h̃_t); backward sends (1 - m_t) dh_t into the step, m_t dh_t to dh_{t-1}.
  // Either weights of type T (`zone`; eval mode's constant p) or 0/1 flags (`zone_flags`, training's masks,
  // a quarter of the memory traffic in float32); at most one is set.
  const T* zone = nullptr;
  const uint8_t* zone_flags = nullptr;  // a bool tensor's bytes, 0 or 1
  // Locked output dropout (N, H_out) or null: the output is y_t = h_t ⊙ m (the state keeps h_t), and
  // backward adds dy_t ⊙ m to dh_t, so no masked copy of the output or of its gradient is made.
  const T* out_mask = nullptr;
  // The per-step products with bf16 operands (bf16_tiles.h), on when W_hh came in bf16. Each step's
  // operand (h_{t-1} forward, [dG_t] backward) is rounded into one of two slots by step parity: a
  // thread writes step t's while the others may still read step t-1's.
  struct LowOperand {
    bool on = false, dot = false, amx = false;  // amx: the dot products on AMX tiles, else AVX512-BF16
    // dot: hardware bf16 dot products (bf16_tiles.h: AMX tiles, or AVX512-BF16), over W_hh packed as TilePanels
    int64_t rows = 0, width = 0;  // N and the operand's columns; with dot rounded up to 16 and 32
    uint16_t* tiles = nullptr;    // dot: (2, rows, width) bf16, zero padded
    T* rounded = nullptr;         // otherwise: (2, rows, width), bf16 values held in T
    T* product = nullptr;         // dot backward: (rows, H_out), dG_t W_hh before it joins dh
    // backward: the rounded gate gradients of every step, (L, N, G*H) and GRU's (L, N, H), the op's bf16 results;
    // dgx and dgh_n then hold only two steps (slot t & 1), in T
    uint16_t *dgx_bf16 = nullptr, *dgh_n_bf16 = nullptr;
  } low;
  // The row of step t's gate gradients in dgx (a slot of two with bf16 results, see LowOperand).
  int64_t grad_step(int64_t t) const { return low.dgx_bf16 != nullptr ? (t & 1) : t; }

  bool zoned() const { return zone != nullptr || zone_flags != nullptr; }
  // f(m, flags) with m row (t, n)'s zoneout weights, valid on [c0, c1), and flags a std::bool_constant: whether
  // they came from 0/1 flags. Flags are first widened to T in a per-thread row buffer (in L1), so that the gate
  // loops read T as with weights: byte loads inside them kept GCC from vectorising the LSTM's (measured 1.2x slower).
  template <typename F>
  void with_zone(int64_t t, int64_t n, int64_t c0, int64_t c1, const F& f) const {
    const int64_t offset = (t * N + n) * Hout;
    if (zone_flags == nullptr) return f(zone + offset, std::false_type{});
    static thread_local std::vector<T> row;
    if (static_cast<int64_t>(row.size()) < Hout) row.resize(Hout);
    T* weights = row.data();
    const uint8_t* flags = zone_flags + offset;
#pragma omp simd
    for (int64_t u = c0; u < c1; ++u) weights[u] = T(flags[u]);
    f(static_cast<const T*>(weights), std::true_type{});
  }
  // y_row[u] *= m[u] on [u0, u1): the output dropout, after everything else has written the row.
  void mask_output(T* y_row, int64_t n, int64_t u0, int64_t u1) const {
    const T* m = out_mask + n * Hout;
#pragma omp simd
    for (int64_t u = u0; u < u1; ++u) y_row[u] *= m[u];
  }

  // Training keeps every step's state and gates for backward. Inference keeps only what the next
  // step reads: hs/cs are two alternating slots, hn/hraw one, and `gates` holds the projected
  // inputs of the current chunk of steps, which starts at step `chunk_start`.
  bool history = true;
  int64_t chunk_start = 0;
  int64_t row0 = 0, row1 = 0;  // the batch rows [row0, row1) this copy of the loop runs (share_rows sets them)

  bool ok(int64_t t, int64_t n) const { return valid == nullptr || valid[t * N + n]; }
  int64_t slot(int64_t i) const { return history ? i : (i & 1); }
  int64_t before(int64_t t) const { return slot(t + reverse); }
  int64_t after(int64_t t) const { return slot(t + 1 - reverse); }
  int64_t step_slot(int64_t t) const { return history ? t : 0; }

  // Columns [c0, c1) of the (N, ld) matrix src, rounded to bf16, into slot `parity` of the low operand at column `to`.
  void round_operand(const T* src, int64_t ld, int64_t c0, int64_t c1, int64_t to, int64_t parity) const {
    for (int64_t n = row0; n < row1; ++n) {
      const T* from = src + n * ld + c0;
      const int64_t offset = (parity * low.rows + n) * low.width + to;
      if (low.dot) {
        uint16_t* dst = low.tiles + offset;
#pragma omp simd
        for (int64_t c = 0; c < c1 - c0; ++c) dst[c] = rnnkit_bf16::to_bf16(from[c]);
      } else {
        T* dst = low.rounded + offset;
#pragma omp simd
        for (int64_t c = 0; c < c1 - c0; ++c) dst[c] = rnnkit_bf16::round_bf16(from[c]);
      }
    }
  }

  // C (low.rows, ldc) = slot `parity` of the low operand times the packed tiles (dot; float32 only).
  void tile_product(int64_t parity, const rnnkit_bf16::TilePanels& tiles, T* C, int64_t ldc) const {
    if constexpr (std::is_same_v<T, float>)
      rnnkit_bf16::tile_gemm(low.tiles + (parity * low.rows + row0) * low.width, low.width, row1 - row0, tiles, C + row0 * ldc, ldc, low.amx);
  }

  // ---- forward ----
  // The thread's columns of h_{t-1} W_hh^T; `recurrent` (or `tiles`, dot) holds them packed.
  void forward_gemm(int64_t t, const Panels<T>& recurrent, const rnnkit_bf16::TilePanels& tiles) const {
    if (low.dot) return tile_product(before(t) & 1, tiles, scratch, G * H);
    if (low.on)
      return gemm_panels(low.rounded + ((before(t) & 1) * low.rows + row0) * low.width, low.width, recurrent, scratch + row0 * G * H, G * H,
                         row1 - row0, false);
    gemm_panels(hs + (before(t) * N + row0) * Hout, Hout, recurrent, scratch + row0 * G * H, G * H, row1 - row0, false);
  }
  // h_t's columns [p0, p1), rounded, as the next step's operand (once the step has written them).
  void round_state(int64_t index, int64_t p0, int64_t p1) const {
    if (low.on) round_operand(hs + index * N * Hout, Hout, p0, p1, p0, index & 1);
  }

  void forward_gates(int64_t t, int64_t u0, int64_t u1) const {
    for (int64_t n = row0; n < row1; ++n) {
      if (!ok(t, n)) {  // padding: the state holds, the output is zero
        const T* h_prev = hs + (before(t) * N + n) * Hout;
        T* h_new = proj ? hraw + (step_slot(t) * N + n) * H : hs + (after(t) * N + n) * Hout;
        T* y_row = y + (t * N + n) * Hout;
        if (kind == LSTM) {
          const T* c_prev = cs + (before(t) * N + n) * H;
          T* c_new = cs + (after(t) * N + n) * H;
          for (int64_t u = u0; u < u1; ++u) c_new[u] = c_prev[u];
        }
        if (proj)  // r_t is unused but enters the dW_hr GEMM (times zero): keep it finite
          for (int64_t u = u0; u < u1; ++u) h_new[u] = T(0);
        else
          for (int64_t u = u0; u < u1; ++u) h_new[u] = h_prev[u], y_row[u] = T(0);
        continue;
      }
      const bool zoned_row = zoned() && !proj, masked = out_mask != nullptr && !proj;  // with projection: forward_projection
      if (zoned_row && masked)
        with_zone(t, n, u0, u1, [&](const T* m, auto flags) { forward_row<true, true, decltype(flags)::value>(t, n, u0, u1, m); });
      else if (zoned_row)
        with_zone(t, n, u0, u1, [&](const T* m, auto flags) { forward_row<true, false, decltype(flags)::value>(t, n, u0, u1, m); });
      else if (masked)
        forward_row<false, true, false>(t, n, u0, u1, nullptr);
      else
        forward_row<false, false, false>(t, n, u0, u1, nullptr);
    }
  }

  // The end of a valid row's step for unit u, from the cell's new state h̃: with kZoned, zoneout
  // h = h̃ + m (h_prev - h̃) (m: the weights, or 0/1 flags widened to T); then the state, and the
  // output y = h, times the output mask with kMasked (both only without projection).
  template <bool kZoned, bool kMasked>
  RNNKIT_INLINE void finish(int64_t u, T h, const T* m, const T* h_prev, T* h_new, T* y_row, const T* out_m) const {
    if constexpr (kZoned) h = h + m[u] * (h_prev[u] - h);
    h_new[u] = h;
    if (!proj) y_row[u] = kMasked ? h * out_m[u] : h;
  }

  // One valid row's gate math on units [u0, u1), zoneout and the output mask in the same pass; kFlags: m came from flags.
  template <bool kZoned, bool kMasked, bool kFlags>
  void forward_row(int64_t t, int64_t n, int64_t u0, int64_t u1, const T* m) const {
    T* gate = gates + ((t - chunk_start) * N + n) * G * H;
    const T* rec = scratch + n * G * H;
    const T* h_prev = hs + (before(t) * N + n) * Hout;
    T* h_new = proj ? hraw + (step_slot(t) * N + n) * H : hs + (after(t) * N + n) * Hout;
    T* y_row = y + (t * N + n) * Hout;
    const T* out_m = kMasked ? out_mask + n * Hout : nullptr;
    if (kind == LSTM) {
      const T* c_prev = cs + (before(t) * N + n) * H;
      T* c_new = cs + (after(t) * N + n) * H;
#pragma omp simd
      for (int64_t u = u0; u < u1; ++u) {
        const T i = sigmoid(gate[u] + rec[u]);
        const T f = sigmoid(gate[H + u] + rec[H + u]);
        const T g = tanh_(gate[2 * H + u] + rec[2 * H + u]);
        const T o = sigmoid(gate[3 * H + u] + rec[3 * H + u]);
        const T c = f * c_prev[u] + i * g;
        gate[u] = i, gate[H + u] = f, gate[2 * H + u] = g, gate[3 * H + u] = o;
        c_new[u] = c;
        finish<kZoned, kMasked>(u, o * tanh_(c), m, h_prev, h_new, y_row, out_m);
      }
    } else if (kind == GRU) {
      T* hn_row = hn + (step_slot(t) * N + n) * H;
#pragma omp simd
      for (int64_t u = u0; u < u1; ++u) {
        const T r = sigmoid(gate[u] + rec[u]);
        const T z = sigmoid(gate[H + u] + rec[H + u]);
        const T hn_u = rec[2 * H + u] + (b_hn ? b_hn[u] : T(0));
        const T nv = tanh_(gate[2 * H + u] + r * hn_u);
        gate[u] = r, gate[H + u] = z, gate[2 * H + u] = nv;
        hn_row[u] = hn_u;
        finish<kZoned, kMasked>(u, nv + z * (h_prev[u] - nv), m, h_prev, h_new, y_row, out_m);
      }
    } else {
#pragma omp simd
      for (int64_t u = u0; u < u1; ++u) {
        const T a = gate[u] + rec[u];
        const T h = kind == RNN_TANH ? tanh_(a) : (a > T(0) ? a : T(0));
        // backward's tanh'/relu' need h̃_t, which zoneout with weights does not leave in hs. With 0/1 flags hs holds
        // h̃_t wherever the step gets a gradient (m = 0; where m = 1 it gets (1 - 1) dh = 0): no gates are kept.
        if constexpr (kZoned && !kFlags) gate[u] = h;
        finish<kZoned, kMasked>(u, h, m, h_prev, h_new, y_row, out_m);
      }
    }
  }

  // LSTM projection h_t = r_t W_hr^T for output columns [p0, p1); padding keeps h_{t-1}.
  void forward_projection(int64_t t, int64_t p0, int64_t p1, const Panels<T>& projection) const {
    T* h_new = hs + after(t) * N * Hout;
    const T* h_prev = hs + before(t) * N * Hout;
    gemm_panels(hraw + step_slot(t) * N * H, H, projection, h_new, Hout, N, false);
    for (int64_t n = row0; n < row1; ++n) {
      T* y_row = y + (t * N + n) * Hout;
      const bool keep = ok(t, n);
      if (keep && zoned()) {
        with_zone(t, n, p0, p1, [&](const T* m, auto) { zone_out(m, h_prev + n * Hout, h_new + n * Hout, y_row, p0, p1); });
      } else {
        for (int64_t p = p0; p < p1; ++p) {
          if (!keep) h_new[n * Hout + p] = h_prev[n * Hout + p];
          y_row[p] = keep ? h_new[n * Hout + p] : T(0);
        }
      }
      if (keep && out_mask != nullptr) mask_output(y_row, n, p0, p1);
    }
  }

  // One step by one thread of the team: its units' GEMM columns and gates, its output columns of the
  // projection; the barriers publish h_t to all threads.
  void forward_step(int64_t t, int64_t u0, int64_t u1, int64_t p0, int64_t p1, const Panels<T>& recurrent,
                    const Panels<T>& projection, const rnnkit_bf16::TilePanels& tiles = {}) const {
    forward_gemm(t, recurrent, tiles);
    forward_gates(t, u0, u1);
    if (!proj) round_state(after(t), p0, p1);
    barrier->wait();
    if (proj) {
      forward_projection(t, p0, p1, projection);
      round_state(after(t), p0, p1);
      barrier->wait();
    }
  }

  // ---- backward ----
  // dh += dy_t on output columns [q0, q1); with projection, also record dh_t for dW_hr.
  void backward_collect(int64_t t, int64_t q0, int64_t q1) const {
    for (int64_t n = row0; n < row1; ++n) {
      const bool keep = ok(t, n);
      T* dh_row = dh + n * Hout;
      const T* dy_row = dy_bf16 ? nullptr : dy + t * dy_stride[0] + n * dy_stride[1];
      int64_t dq = dy_stride[2];
      if (dy_bf16 != nullptr && keep) {  // this row's columns widened into a float row of the thread's own
        static thread_local std::vector<T> widened;
        if (static_cast<int64_t>(widened.size()) < Hout) widened.resize(Hout);
        const uint16_t* from = dy_bf16 + t * dy_stride[0] + n * dy_stride[1];
        for (int64_t q = q0; q < q1; ++q) widened[q] = T(rnnkit_bf16::from_bf16(from[q * dq]));
        dy_row = widened.data(), dq = 1;
      }
      if (keep && out_mask != nullptr) {  // the output dropout's backward: dy_t ⊙ m, as autograd's product would give it
        const T* m = out_mask + n * Hout;
        for (int64_t q = q0; q < q1; ++q) dh_row[q] += dy_row[q * dq] * m[q];
      } else if (keep) {
        for (int64_t q = q0; q < q1; ++q) dh_row[q] += dy_row[q * dq];
      }
      if (proj) {
        T* dproj_row = dproj + (t * N + n) * Hout;
        if (keep && zoned())
          with_zone(t, n, q0, q1, [&](const T* m, auto) {
            for (int64_t q = q0; q < q1; ++q) dproj_row[q] = dh_row[q] - m[q] * dh_row[q];
          });
        else
          for (int64_t q = q0; q < q1; ++q) dproj_row[q] = keep ? dh_row[q] : T(0);
      }
    }
  }

  // dr_t = dh_t W_hr for hidden columns [u0, u1) (projection only); with zoneout, of the step's part (1 - m_t) dh_t.
  void backward_projection(int64_t t, const Panels<T>& projection) const {
    gemm_panels(!zoned() ? dh : dproj + t * N * Hout, Hout, projection, scratch, H, N, false);
  }

  // Gate gradients of hidden units [u0, u1). Without projection it also replaces dh with
  // the part of dh_{t-1} that bypasses W_hh (GRU: dh⊙z; padding: all of dh; zoneout: m_t dh_t too).
  void backward_gates(int64_t t, int64_t u0, int64_t u1) const {
    for (int64_t n = row0; n < row1; ++n) {
      if (!ok(t, n)) {
        T* dgx_row = dgx + (grad_step(t) * N + n) * G * H;
        for (int64_t g = 0; g < G; ++g)
          for (int64_t u = u0; u < u1; ++u) dgx_row[g * H + u] = T(0);
        if (kind == GRU)
          for (int64_t u = u0; u < u1; ++u) dgh_n[(grad_step(t) * N + n) * H + u] = T(0);
        continue;  // dh and dc pass through unchanged
      }
      if (zoned() && !proj)  // the zoneout split is in the gate loop itself: no pass of its own over the row
        with_zone(t, n, u0, u1, [&](const T* m, auto flags) { gate_row<true, decltype(flags)::value>(t, n, u0, u1, m); });
      else
        gate_row<false, false>(t, n, u0, u1, nullptr);
    }
  }

  // One valid row's gate gradients. kZoned (no projection): the step gets d = (1 - m_t) dh_t, and
  // b = m_t dh_t joins dh_{t-1}'s bypass; kFlags: m came from 0/1 flags (see the RNN's h̃ below).
  template <bool kZoned, bool kFlags>
  void gate_row(int64_t t, int64_t n, int64_t u0, int64_t u1, const T* m) const {
    const int64_t row = (t * N + n) * G * H;
    T* dgx_row = dgx + (grad_step(t) * N + n) * G * H;
    T* dh_row = dh + n * Hout;
    const T* gate = gates + row;
    if (kind == LSTM) {
      const T* dr = proj ? scratch + n * H : dh_row;
      const T* c_new = cs + (after(t) * N + n) * H;
      const T* c_prev = cs + (before(t) * N + n) * H;
      T* dc_row = dc + n * H;
#pragma omp simd
      for (int64_t u = u0; u < u1; ++u) {
        T d = dr[u], b = T(0);
        if constexpr (kZoned) b = m[u] * d, d -= b;
        const T i = gate[u], f = gate[H + u], g = gate[2 * H + u], o = gate[3 * H + u];
        const T tc = tanh_(c_new[u]);
        const T d_c = dc_row[u] + d * o * (T(1) - tc * tc);
        dgx_row[u] = d_c * g * i * (T(1) - i);
        dgx_row[H + u] = d_c * c_prev[u] * f * (T(1) - f);
        dgx_row[2 * H + u] = d_c * i * (T(1) - g * g);
        dgx_row[3 * H + u] = d * tc * o * (T(1) - o);
        dc_row[u] = d_c * f;
        if (!proj) dh_row[u] = b;
      }
    } else if (kind == GRU) {
      const T* h_prev = hs + (before(t) * N + n) * Hout;
      const T* hn_row = hn + (t * N + n) * H;
      T* dgh_n_row = dgh_n + (grad_step(t) * N + n) * H;
#pragma omp simd
      for (int64_t u = u0; u < u1; ++u) {
        T d = dh_row[u], b = T(0);
        if constexpr (kZoned) b = m[u] * d, d -= b;
        const T r = gate[u], z = gate[H + u], nv = gate[2 * H + u];
        const T d_n = d * (T(1) - z) * (T(1) - nv * nv);
        const T d_z = d * (h_prev[u] - nv) * z * (T(1) - z);
        const T d_r = d_n * hn_row[u] * r * (T(1) - r);
        dgx_row[u] = d_r;
        dgx_row[H + u] = d_z;
        dgx_row[2 * H + u] = d_n;
        dgh_n_row[u] = d_n * r;
        dh_row[u] = kZoned ? d * z + b : d * z;
      }
    } else {
      const T* h = kZoned && !kFlags ? gate : hs + (after(t) * N + n) * Hout;  // h̃_t (see forward_row)
#pragma omp simd
      for (int64_t u = u0; u < u1; ++u) {
        T d = dh_row[u], b = T(0);
        if constexpr (kZoned) b = m[u] * d, d -= b;
        dgx_row[u] = kind == RNN_TANH ? d * (T(1) - h[u] * h[u]) : (h[u] > T(0) ? d : T(0));
        dh_row[u] = b;
      }
    }
  }

  // The thread's units of [dgx_t] (GRU: δn⊙r in the n columns), rounded, as this step's backward operand.
  // They are also kept for every step in bf16 (low.dgx_bf16, low.dgh_n_bf16), the op's results.
  void round_gate_gradients(int64_t t, int64_t u0, int64_t u1) const {
    const T* d_gates = dgx + grad_step(t) * N * G * H;
    const T* d_n = kind == GRU ? dgh_n + grad_step(t) * N * H : nullptr;
    for (int64_t g = 0; g < G; ++g) {
      if (kind == GRU && g == 2)
        round_operand(d_n, H, u0, u1, 2 * H + u0, t & 1);
      else
        round_operand(d_gates, G * H, g * H + u0, g * H + u1, g * H + u0, t & 1);
    }
    for (int64_t n = row0; n < row1; ++n) {
      for (int64_t g = 0; g < G; ++g) {
        const T* from = d_gates + n * G * H + g * H;
        uint16_t* to = low.dgx_bf16 + (t * N + n) * G * H + g * H;
#pragma omp simd
        for (int64_t u = u0; u < u1; ++u) to[u] = rnnkit_bf16::to_bf16(from[u]);
      }
      if (kind == GRU) {
        const T* from = d_n + n * H;
        uint16_t* to = low.dgh_n_bf16 + (t * N + n) * H;
#pragma omp simd
        for (int64_t u = u0; u < u1; ++u) to[u] = rnnkit_bf16::to_bf16(from[u]);
      }
    }
  }

  // With projection the bypass of dh_{t-1} is padding's pass-through and zoneout's m_t dh_t: other rows restart at zero.
  void backward_projected_bypass(int64_t t, int64_t q0, int64_t q1) const {
    for (int64_t n = row0; n < row1; ++n) {
      if (!ok(t, n)) continue;
      if (zoned())
        with_zone(t, n, q0, q1, [&](const T* m, auto) {
          for (int64_t q = q0; q < q1; ++q) dh[n * Hout + q] = m[q] * dh[n * Hout + q];
        });
      else
        for (int64_t q = q0; q < q1; ++q) dh[n * Hout + q] = T(0);
    }
  }

  // dh_{t-1}[:, q0:q1] = (bypass part, already in dh) + dG^h_t W_hh; GRU's dG^h is [δr δz] from
  // dgx (the rows of W_hh for r and z) and δn⊙r from dgh_n (the rows for n).
  // `recurrent` packs the W_hh rows that dgx multiplies (all but GRU's n rows, in `gru_n`).
  // With bf16 operands, `recurrent` (or `tiles`) packs all of W_hh, and the operand is [dgx_t], GRU's n part δn⊙r.
  void backward_gemm(int64_t t, int64_t q0, int64_t q1, const Panels<T>& recurrent, const Panels<T>& gru_n,
                     const rnnkit_bf16::TilePanels& tiles) const {
    if (proj) backward_projected_bypass(t, q0, q1);
    if (low.dot) {
      tile_product(t & 1, tiles, low.product, Hout);
      for (int64_t n = row0; n < row1; ++n)
#pragma omp simd
        for (int64_t q = q0; q < q1; ++q) dh[n * Hout + q] += low.product[n * Hout + q];
      return;
    }
    if (low.on)
      return gemm_panels(low.rounded + ((t & 1) * low.rows + row0) * low.width, low.width, recurrent, dh + row0 * Hout, Hout, row1 - row0, true);
    gemm_panels(dgx + (t * N + row0) * G * H, G * H, recurrent, dh + row0 * Hout, Hout, row1 - row0, true);
    if (kind == GRU) gemm_panels(dgh_n + (t * N + row0) * H, H, gru_n, dh + row0 * Hout, Hout, row1 - row0, true);
  }
};

// W_hh's columns packed as bf16 tiles for the dot products (bf16 operands; the loop runs them in float32 only).
template <typename T>
rnnkit_bf16::TilePanels low_tiles(const T* base, int64_t row_stride, int64_t col_stride, int64_t K,
                                  const std::vector<std::pair<int64_t, int64_t>>& ranges) {
  if constexpr (std::is_same_v<T, float>)
    return rnnkit_bf16::TilePanels(base, row_stride, col_stride, K, ranges);
  else
    return rnnkit_bf16::TilePanels();
}

// Splits [0, size) into `parts` ranges aligned to a vector width, so threads never share a cache line.
inline std::pair<int64_t, int64_t> slice(int64_t size, int parts, int index) {
  const int64_t chunk = ((size + parts - 1) / parts + 15) / 16 * 16;
  return {std::min(size, chunk * index), std::min(size, chunk * (index + 1))};
}

at::Tensor empty_like_or_none(const at::Tensor& like, at::IntArrayRef shape, bool needed) {
  return at::empty(needed ? shape : at::IntArrayRef{0}, like.options());
}

at::Tensor ptr_source(const std::optional<at::Tensor>& t) { return t.has_value() ? *t : at::Tensor(); }

template <typename T>
const T* data_or_null(const at::Tensor& t) {
  return t.defined() && t.numel() > 0 ? t.const_data_ptr<T>() : nullptr;
}

int thread_count(int64_t H) { return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), H / 32))); }

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

template <typename T>
void drive_forward(Loop<T> loop, const at::TensorOptions& options) {
  const int64_t L = loop.L, H = loop.H, Hout = loop.Hout, G = loop.G;
  StepBarrier barrier;
  loop.barrier = &barrier;
  run_team(thread_count(H), barrier, [&](int tid, int nt) {
    Loop<T> mine = loop;
    StepBarrier alone;
    const bool by_rows = share_rows(mine, loop.N, tid, nt, !loop.proj && !loop.low.amx, G * H * Hout * int64_t(sizeof(T)), alone);
    const auto [u0, u1] = by_rows ? std::pair<int64_t, int64_t>{0, H} : slice(H, nt, tid);
    const auto [p0, p1] = by_rows ? std::pair<int64_t, int64_t>{0, Hout} : slice(Hout, nt, tid);
    // B(k, c) = W_hh[c, k]: the columns of W_hh^T for this thread's units, in every gate
    std::vector<std::pair<int64_t, int64_t>> columns;
    for (int64_t g = 0; g < G; ++g) columns.push_back({g * H + u0, g * H + u1});
    const Panels<T> recurrent(loop.w_hh, 1, Hout, Hout, loop.low.dot ? decltype(columns){} : columns, options);
    const Panels<T> projection = loop.proj ? Panels<T>(loop.w_hr, 1, H, H, {{p0, p1}}, options) : Panels<T>();
    const rnnkit_bf16::TilePanels tiles = loop.low.dot ? low_tiles(loop.w_hh, 1, Hout, Hout, columns) : rnnkit_bf16::TilePanels();
    std::optional<rnnkit_bf16::TileScope> tile_state;
    if (loop.low.dot) tile_state.emplace();
    if (loop.low.on) {  // h_0, rounded, is the first step's operand
      mine.round_state(loop.reverse ? L : 0, p0, p1);
      barrier.wait();
    }
    for (int64_t s = 0; s < L; ++s) mine.forward_step(loop.reverse ? L - 1 - s : s, u0, u1, p0, p1, recurrent, projection, tiles);
  });
}

// Inference: no history to keep, so the input projections are computed a chunk of steps at a
// time, by each thread for its own gate columns (no barrier: a thread's gate math reads only
// its own columns), into a buffer small enough to stay in cache until the steps read it. Only
// the output is a full (L, N, H_out) buffer: nothing of the size of all steps' gates is
// allocated (at B=64, T=256, H=512 that is 134 MB, and its first-touch page faults cost more
// than the projection GEMM itself).
// With hardware bf16 dot products (shared.low.dot), `x_tiles` holds x in bf16, rows padded to 16 and columns to x_width
// (a multiple of 32), and each chunk's projections run on the tiles; otherwise x and w_ih hold bf16 values in T.
template <typename T>
void drive_inference(const Loop<T>& shared, const T* x, int64_t I, const T* w_ih, const T* bias, int64_t chunk,
                     const at::TensorOptions& options, const uint16_t* x_tiles = nullptr, int64_t x_width = 0) {
  const int64_t L = shared.L, N = shared.N, H = shared.H, Hout = shared.Hout, G = shared.G, GH = G * H;
  StepBarrier barrier;
  run_team(thread_count(H), barrier, [&](int tid, int nt) {
    Loop<T> loop = shared;  // each thread moves its own chunk_start
    loop.barrier = &barrier;
    StepBarrier alone;
    const bool by_rows = share_rows(loop, N, tid, nt, !loop.proj && !loop.low.amx, G * H * Hout * int64_t(sizeof(T)), alone);
    const auto [u0, u1] = by_rows ? std::pair<int64_t, int64_t>{0, H} : slice(H, nt, tid);
    const auto [p0, p1] = by_rows ? std::pair<int64_t, int64_t>{0, Hout} : slice(Hout, nt, tid);
    std::vector<std::pair<int64_t, int64_t>> columns;
    for (int64_t g = 0; g < G; ++g) columns.push_back({g * H + u0, g * H + u1});
    const bool dot = loop.low.dot;
    const std::vector<std::pair<int64_t, int64_t>> packed = dot ? std::vector<std::pair<int64_t, int64_t>>{} : columns;
    const Panels<T> input(w_ih, 1, I, I, packed, options);
    const Panels<T> recurrent(loop.w_hh, 1, Hout, Hout, packed, options);
    const rnnkit_bf16::TilePanels input_tiles = dot ? low_tiles(w_ih, 1, I, I, columns) : rnnkit_bf16::TilePanels();
    const rnnkit_bf16::TilePanels tiles = dot ? low_tiles(loop.w_hh, 1, Hout, Hout, columns) : rnnkit_bf16::TilePanels();
    std::optional<rnnkit_bf16::TileScope> tile_state;
    if (dot) tile_state.emplace();
    const Panels<T> projection = loop.proj ? Panels<T>(loop.w_hr, 1, H, H, {{p0, p1}}, options) : Panels<T>();
    if (loop.low.on) {  // h_0, rounded, is the first step's operand
      loop.round_state(loop.reverse ? L & 1 : 0, p0, p1);
      barrier.wait();
    }
    const int64_t chunks = (L + chunk - 1) / chunk;
    for (int64_t k = 0; k < chunks; ++k) {
      const int64_t c0 = (loop.reverse ? chunks - 1 - k : k) * chunk, c1 = std::min(L, c0 + chunk);
      loop.chunk_start = c0;
      if (dot && by_rows) {  // (never with AMX, whose 16-row tiles would write other threads' rows)
        for (int64_t s = 0; s < c1 - c0; ++s) {
          T* rows = loop.gates + (s * N + loop.row0) * GH;
          if constexpr (std::is_same_v<T, float>)
            rnnkit_bf16::tile_gemm(x_tiles + ((c0 + s) * N + loop.row0) * x_width, x_width, loop.row1 - loop.row0, input_tiles, rows, GH, false);
          if (bias)
            for (int64_t row = 0; row < loop.row1 - loop.row0; ++row)
              for (int64_t j = 0; j < GH; ++j) rows[row * GH + j] += bias[j];
        }
      } else if (dot) {  // AMX runs whole 16-row tiles: `gates` and x_tiles have the rows to spare
        if constexpr (std::is_same_v<T, float>)
          rnnkit_bf16::tile_gemm(x_tiles + c0 * N * x_width, x_width, (c1 - c0) * N, input_tiles, loop.gates, GH, loop.low.amx);
        if (bias)
          for (int64_t row = 0; row < (c1 - c0) * N; ++row)
            for (const auto& [g0, g1] : columns)
              for (int64_t j = g0; j < g1; ++j) loop.gates[row * GH + j] += bias[j];
      } else if (by_rows) {  // the thread's rows of each step in the chunk, every column
        for (int64_t s = 0; s < c1 - c0; ++s) {
          T* rows = loop.gates + (s * N + loop.row0) * GH;
          for (int64_t row = 0; row < loop.row1 - loop.row0; ++row)
            for (int64_t j = 0; j < GH; ++j) rows[row * GH + j] = bias ? bias[j] : T(0);
          gemm_panels(x + ((c0 + s) * N + loop.row0) * I, I, input, rows, GH, loop.row1 - loop.row0, true);
        }
      } else {
        for (int64_t row = 0; row < (c1 - c0) * N; ++row)
          for (const auto& [g0, g1] : columns)
            for (int64_t j = g0; j < g1; ++j) loop.gates[row * GH + j] = bias ? bias[j] : T(0);
        gemm_panels(x + c0 * N * I, I, input, loop.gates, GH, (c1 - c0) * N, true);
      }
      for (int64_t s = 0; s < c1 - c0; ++s) loop.forward_step(loop.reverse ? c1 - 1 - s : c0 + s, u0, u1, p0, p1, recurrent, projection, tiles);
    }
  });
}

template <typename T>
void drive_backward(Loop<T> loop, const at::TensorOptions& options) {
  const int64_t L = loop.L, H = loop.H, Hout = loop.Hout, G = loop.G;
  StepBarrier barrier;
  loop.barrier = &barrier;
  run_team(thread_count(H), barrier, [&](int tid, int nt) {
    Loop<T> mine = loop;
    StepBarrier alone;
    const bool by_rows = share_rows(mine, loop.N, tid, nt, !loop.proj && !loop.low.amx, G * H * Hout * int64_t(sizeof(T)), alone);
    const auto [u0, u1] = by_rows ? std::pair<int64_t, int64_t>{0, H} : slice(H, nt, tid);
    const auto [q0, q1] = by_rows ? std::pair<int64_t, int64_t>{0, Hout} : slice(Hout, nt, tid);
    // B = W_hh (rows: gates, columns: h_out), split at GRU's n rows; B = W_hr
    // (with bf16 operands: all of W_hh at once, the operand holding GRU's δn⊙r in the n columns)
    const int64_t shared_rows = loop.kind == GRU && !loop.low.on ? 2 * H : G * H;
    const Panels<T> recurrent(loop.w_hh, Hout, 1, shared_rows, loop.low.dot ? std::vector<std::pair<int64_t, int64_t>>{} : std::vector<std::pair<int64_t, int64_t>>{{q0, q1}}, options);
    const Panels<T> gru_n = loop.kind == GRU && !loop.low.on ? Panels<T>(loop.w_hh + 2 * H * Hout, Hout, 1, H, {{q0, q1}}, options) : Panels<T>();
    const rnnkit_bf16::TilePanels tiles = loop.low.dot ? low_tiles(loop.w_hh, Hout, 1, G * H, {{q0, q1}}) : rnnkit_bf16::TilePanels();
    std::optional<rnnkit_bf16::TileScope> tile_state;
    if (loop.low.dot) tile_state.emplace();
    const Panels<T> projection = loop.proj ? Panels<T>(loop.w_hr, H, 1, Hout, {{u0, u1}}, options) : Panels<T>();
    for (int64_t s = 0; s < L; ++s) {
      const int64_t t = loop.reverse ? s : L - 1 - s;
      mine.backward_collect(t, q0, q1);
      if (loop.proj) {
        mine.barrier->wait();
        mine.backward_projection(t, projection);
      }
      mine.backward_gates(t, u0, u1);
      if (loop.low.on) mine.round_gate_gradients(t, u0, u1);
      mine.barrier->wait();
      mine.backward_gemm(t, q0, q1, recurrent, gru_n, tiles);
    }
  });
}

// A forward Loop over these buffers: `gates` holds the projected inputs (L, N, G*H), y is (L, N, H_out).
template <typename T>
Loop<T> forward_state(int64_t kind, int64_t G, bool proj, bool reverse, const at::Tensor& valid, const at::Tensor& gates,
                      const at::Tensor& y, const at::Tensor& hs, const at::Tensor& cs, const at::Tensor& hn, const at::Tensor& hraw,
                      const at::Tensor& w_hh, const at::Tensor& b_hn, const std::optional<at::Tensor>& w_hr, const at::Tensor& scratch) {
  const int64_t L = y.size(0), N = y.size(1), Hout = y.size(2), H = w_hh.size(0) / G;
  return Loop<T>{kind, L, N, H, Hout, G, reverse, proj, data_or_null<bool>(valid), gates.data_ptr<T>(), y.data_ptr<T>(),
                 hs.data_ptr<T>(), cs.data_ptr<T>(), hn.data_ptr<T>(), hraw.data_ptr<T>(), w_hh.const_data_ptr<T>(),
                 data_or_null<T>(b_hn), proj ? w_hr->const_data_ptr<T>() : nullptr, scratch.data_ptr<T>(),
                 nullptr, nullptr, nullptr, nullptr, nullptr, nullptr};
}

// The regularisers' masks of a training Loop, checked against its sizes (the kernels read them by those sizes):
// zoneout (L, N, H_out) of T or bool, the output dropout's (N, H_out) of T; both contiguous.
template <typename T>
void set_masks(Loop<T>& loop, const at::Tensor& zone, const at::Tensor& out_mask) {
  if (zone.defined()) {
    TORCH_CHECK(zone.dim() == 3 && zone.size(0) == loop.L && zone.size(1) == loop.N && zone.size(2) == loop.Hout && zone.is_contiguous(),
                "zoneout: expected a contiguous (L, N, H_out) = (", loop.L, ", ", loop.N, ", ", loop.Hout, ") mask, got ", zone.sizes());
    if (zone.numel() > 0) {
      if (zone.scalar_type() == at::kBool)
        loop.zone_flags = reinterpret_cast<const uint8_t*>(zone.const_data_ptr<bool>());
      else
        loop.zone = zone.const_data_ptr<T>();  // raises for another dtype
    }
  }
  if (out_mask.defined()) {
    TORCH_CHECK(out_mask.dim() == 2 && out_mask.size(0) == loop.N && out_mask.size(1) == loop.Hout && out_mask.is_contiguous(),
                "output_mask: expected a contiguous (N, H_out) = (", loop.N, ", ", loop.Hout, ") mask, got ", out_mask.sizes());
    if (out_mask.numel() > 0) loop.out_mask = out_mask.const_data_ptr<T>();
  }
}

// W_hh in bf16 asks for the per-step products with bf16 operands (bf16_tiles.h): the loop then reads W_hh as
// float32 (its values are bf16's, exactly) and rounds each step's operand, of `columns` columns, into `buffer`.
struct LowPlan {
  bool on = false, dot = false, amx = false;
  int64_t rows = 0, width = 0;
  at::Tensor weights, buffer;
};

LowPlan low_plan(const char* op, const at::Tensor& w_hh, const at::Tensor& like, int64_t N, int64_t H, int64_t Hout, int64_t columns) {
  LowPlan plan;
  plan.weights = w_hh;
  if (w_hh.scalar_type() != at::kBFloat16) return plan;
  TORCH_CHECK(like.scalar_type() == at::kFloat, op, ": w_hh in bf16 (bf16 per-step products) needs the rest in float32, got ", like.scalar_type());
  plan.on = true;
  plan.dot = rnnkit_bf16::bf16_dot_enabled() && H % 16 == 0 && Hout % 16 == 0;
  plan.amx = plan.dot && rnnkit_bf16::amx_enabled();
  plan.rows = plan.dot ? rnnkit_bf16::round_up(N, 16) : N;
  plan.width = plan.dot ? rnnkit_bf16::round_up(columns, 32) : columns;
  plan.weights = w_hh.to(at::kFloat).contiguous();
  plan.buffer = plan.dot ? at::zeros({2, plan.rows, plan.width}, like.options().dtype(at::kBFloat16)) : at::empty({2, N, columns}, like.options());
  return plan;
}

template <typename T>
void set_low(Loop<T>& loop, const LowPlan& plan) {
  if (!plan.on) return;
  if constexpr (std::is_same_v<T, float>) {
    loop.low.on = true, loop.low.dot = plan.dot, loop.low.amx = plan.amx, loop.low.rows = plan.rows, loop.low.width = plan.width;
    if (plan.dot)
      loop.low.tiles = reinterpret_cast<uint16_t*>(plan.buffer.data_ptr<at::BFloat16>());
    else
      loop.low.rounded = plan.buffer.data_ptr<float>();
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> forward_loop(
    int64_t kind, at::Tensor xp, at::Tensor h0, at::Tensor c0, at::Tensor w_hh, std::optional<at::Tensor> b_hn,
    std::optional<at::Tensor> w_hr, std::optional<at::Tensor> valid, bool reverse, std::optional<at::Tensor> zoneout,
    std::optional<at::Tensor> output_mask) {
  const int64_t L = xp.size(0), N = xp.size(1), GH = xp.size(2), Hout = h0.size(1);
  const bool proj = w_hr.has_value();
  const int64_t G = kind == LSTM ? 4 : kind == GRU ? 3 : 1, H = GH / G;
  at::Tensor hs = at::empty({L + 1, N, Hout}, xp.options());
  // Without padding or projection the output is exactly the states it saves: the loop's writes to y
  // land in hs, one (L, N, H) buffer less. Operator outputs must not alias each other (torch.compile
  // and export rely on it), so y is then returned empty and Python takes the output as a view of hs.
  // With an output mask the output differs from the states: a buffer of its own.
  const bool alias = !valid.has_value() && !proj && !output_mask.has_value();
  at::Tensor y = alias ? at::empty({0}, xp.options()).set_(hs.storage(), hs.storage_offset() + (reverse ? 0 : N * Hout), {L, N, Hout}, {N * Hout, Hout, 1})
                       : at::empty({L, N, Hout}, xp.options());
  hs.select(0, reverse ? L : 0).copy_(h0);
  at::Tensor cs = empty_like_or_none(xp, {L + 1, N, H}, kind == LSTM);
  if (kind == LSTM) cs.select(0, reverse ? L : 0).copy_(c0);
  at::Tensor hn = empty_like_or_none(xp, {L, N, H}, kind == GRU);
  at::Tensor hraw = empty_like_or_none(xp, {L, N, H}, proj);
  const LowPlan low = low_plan("forward_loop", w_hh, xp, N, H, Hout, Hout);
  at::Tensor scratch = at::empty({low.dot ? low.rows : N, GH}, xp.options());  // AMX stores whole 16-row tiles (dot: rows >= N)
  at::Tensor valid_t = ptr_source(valid), b_hn_t = ptr_source(b_hn);
  at::Tensor zone_t = ptr_source(zoneout), mask_t = ptr_source(output_mask);
  AT_DISPATCH_FLOATING_TYPES(xp.scalar_type(), "rnnkit_fused_forward", [&] {
    auto loop = forward_state<scalar_t>(kind, G, proj, reverse, valid_t, xp, y, hs, cs, hn, hraw, low.weights, b_hn_t, w_hr, scratch);
    set_masks(loop, zone_t, mask_t);
    set_low(loop, low);
    drive_forward(loop, xp.options());
  });
  return {alias ? at::empty({0}, xp.options()) : y, hs, cs, hn, hraw};
}

// Steps per chunk of the inference loop: about 256K projected values (1 MB in float32).
int64_t inference_chunk(int64_t N, int64_t GH) { return N * GH == 0 ? 1 : std::max<int64_t>(1, (int64_t(1) << 18) / (N * GH)); }

// Inference over a whole sequence from the raw input: returns (y, h_n, c_n), c_n empty but for the LSTM.
std::tuple<at::Tensor, at::Tensor, at::Tensor> forward_inference(
    int64_t kind, at::Tensor x, at::Tensor w_ih, std::optional<at::Tensor> bias, at::Tensor h0, at::Tensor c0,
    at::Tensor w_hh, std::optional<at::Tensor> b_hn, std::optional<at::Tensor> w_hr, std::optional<at::Tensor> valid,
    bool reverse) {
  const int64_t L = x.size(0), N = x.size(1), I = x.size(2), GH = w_hh.size(0), Hout = h0.size(1);
  const bool proj = w_hr.has_value();
  const int64_t G = kind == LSTM ? 4 : kind == GRU ? 3 : 1, H = GH / G;
  const int64_t chunk = std::max<int64_t>(1, std::min(L, inference_chunk(N, GH)));
  at::Tensor y = at::empty({L, N, Hout}, x.options());
  at::Tensor hs = at::empty({2, N, Hout}, x.options());  // slots: step index & 1
  hs.select(0, reverse ? L & 1 : 0).copy_(h0);
  at::Tensor cs = empty_like_or_none(x, {2, N, H}, kind == LSTM);
  if (kind == LSTM) cs.select(0, reverse ? L & 1 : 0).copy_(c0);
  at::Tensor hn = empty_like_or_none(x, {1, N, H}, kind == GRU);
  at::Tensor hraw = empty_like_or_none(x, {1, N, H}, proj);
  // w_ih and w_hh in bf16: every product with bf16 operands (bf16_tiles.h), the projections' too
  const LowPlan low = low_plan("forward_inference", w_hh, x, N, H, Hout, Hout);
  TORCH_CHECK(low.on == (w_ih.scalar_type() == at::kBFloat16), "forward_inference: w_ih and w_hh must both be bf16 (bf16 products) or both of x's dtype, got ",
              w_ih.scalar_type(), " and ", w_hh.scalar_type());
  const at::Tensor w_ih_values = low.on ? w_ih.to(at::kFloat).contiguous() : w_ih;
  at::Tensor x_values = low.on && !low.dot ? x.to(at::kBFloat16).to(at::kFloat) : x, x_tiles;
  const int64_t x_width = rnnkit_bf16::round_up(I, 32);
  if (low.dot) {
    // the last chunk's tiles start at row c0 * N and may run 15 rows past L * N: zero rows to spare
    x_tiles = at::zeros({rnnkit_bf16::round_up(L * N, 16) + 16, x_width}, x.options().dtype(at::kBFloat16));
    x_tiles.narrow(0, 0, L * N).narrow(1, 0, I).copy_(x.reshape({L * N, I}));
  }
  at::Tensor projected = at::empty({low.dot ? rnnkit_bf16::round_up(chunk * N, 16) : chunk * N, GH}, x.options());
  at::Tensor scratch = at::empty({low.dot ? low.rows : N, GH}, x.options());
  at::Tensor valid_t = ptr_source(valid), b_hn_t = ptr_source(b_hn), bias_t = ptr_source(bias);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "rnnkit_fused_inference", [&] {
    auto loop = forward_state<scalar_t>(kind, G, proj, reverse, valid_t, projected, y, hs, cs, hn, hraw, low.weights, b_hn_t, w_hr, scratch);
    loop.history = false;
    set_low(loop, low);
    drive_inference(loop, x_values.const_data_ptr<scalar_t>(), I, w_ih_values.const_data_ptr<scalar_t>(), data_or_null<scalar_t>(bias_t),
                    chunk, x.options(), low.dot ? reinterpret_cast<const uint16_t*>(x_tiles.const_data_ptr<at::BFloat16>()) : nullptr, x_width);
  });
  const int64_t final_slot = reverse ? 0 : L & 1;  // tensors of their own, as the fake kernel gives (not views into a slot)
  return {y, hs.select(0, final_slot).clone(), kind == LSTM ? cs.select(0, final_slot).clone() : cs};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> backward_loop(
    int64_t kind, at::Tensor gates, at::Tensor hs, at::Tensor cs, at::Tensor hn, at::Tensor hraw, at::Tensor w_hh,
    std::optional<at::Tensor> w_hr, std::optional<at::Tensor> valid, bool reverse, at::Tensor dy, at::Tensor dh_n,
    at::Tensor dc_n, std::optional<at::Tensor> zoneout, std::optional<at::Tensor> output_mask) {
  const int64_t L = dy.size(0), N = dy.size(1), GH = w_hh.size(0), Hout = hs.size(2);  // RNN passes no gates
  const bool proj = w_hr.has_value();
  const int64_t G = kind == LSTM ? 4 : kind == GRU ? 3 : 1, H = GH / G;
  // With bf16 products the op returns the rounded gate gradients in bf16 (what the weight gradients' bf16 GEMMs read),
  // and keeps only two steps of them in float32.
  const LowPlan low = low_plan("backward_loop", w_hh, gates, N, H, Hout, GH);
  const int64_t kept = low.on ? std::min<int64_t>(L, 2) : L;
  at::Tensor dgx = at::empty({kept, N, GH}, gates.options());
  at::Tensor dgh_n = empty_like_or_none(gates, {kept, N, H}, kind == GRU);
  at::Tensor dgx_bf16 = low.on ? at::empty({L, N, GH}, gates.options().dtype(at::kBFloat16)) : at::Tensor();
  at::Tensor dgh_n_bf16 = low.on ? empty_like_or_none(dgx_bf16, {L, N, H}, kind == GRU) : at::Tensor();
  at::Tensor dproj = empty_like_or_none(gates, {L, N, Hout}, proj);
  at::Tensor dh = dh_n.clone();
  at::Tensor dc = kind == LSTM ? dc_n.clone() : at::empty({0}, gates.options());
  at::Tensor scratch = at::empty({N, H}, gates.options());
  w_hh = low.weights;
  at::Tensor product = low.dot ? at::empty({low.rows, Hout}, dgx.options()) : at::Tensor();
  at::Tensor valid_t = ptr_source(valid), zone_t = ptr_source(zoneout), mask_t = ptr_source(output_mask);
  const bool dy_low = dy.scalar_type() == at::kBFloat16 && hs.scalar_type() == at::kFloat;
  TORCH_CHECK(dy_low || dy.scalar_type() == hs.scalar_type(), "backward_loop: dy must be of the states' dtype (or bf16 with float32 states), got ",
              dy.scalar_type(), " with ", hs.scalar_type(), " states");
  AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "rnnkit_fused_backward", [&] {
    Loop<scalar_t> loop{kind, L, N, H, Hout, G, reverse, proj, data_or_null<bool>(valid_t),
                        gates.data_ptr<scalar_t>(), nullptr, hs.data_ptr<scalar_t>(), cs.data_ptr<scalar_t>(),
                        hn.data_ptr<scalar_t>(), hraw.data_ptr<scalar_t>(), w_hh.const_data_ptr<scalar_t>(), nullptr,
                        proj ? w_hr->const_data_ptr<scalar_t>() : nullptr, scratch.data_ptr<scalar_t>(),
                        dy_low ? nullptr : dy.const_data_ptr<scalar_t>(), dgx.data_ptr<scalar_t>(), dgh_n.data_ptr<scalar_t>(),
                        dh.data_ptr<scalar_t>(), dc.data_ptr<scalar_t>(), dproj.data_ptr<scalar_t>()};
    for (int d = 0; d < 3; ++d) loop.dy_stride[d] = dy.stride(d);
    if (dy_low) loop.dy_bf16 = reinterpret_cast<const uint16_t*>(dy.const_data_ptr<at::BFloat16>());
    set_masks(loop, zone_t, mask_t);
    set_low(loop, low);
    if (low.dot) loop.low.product = product.data_ptr<scalar_t>();
    if (low.on) {
      loop.low.dgx_bf16 = reinterpret_cast<uint16_t*>(dgx_bf16.data_ptr<at::BFloat16>());
      loop.low.dgh_n_bf16 = kind == GRU ? reinterpret_cast<uint16_t*>(dgh_n_bf16.data_ptr<at::BFloat16>()) : nullptr;
    }
    drive_backward(loop, gates.options());
  });
  if (low.on) return {dgx_bf16, dgh_n_bf16, dh, dc, dproj};
  return {dgx, dgh_n, dh, dc, dproj};
}

// One step of a cell, for inference (no autograd): the projections, then the gate math in one
// pass, writing only the new state. A stand-alone step has no time loop to amortise packing the
// weights over: small steps (streaming) compute the products in place (small_step), larger ones
// call at::linear/addmm_.
// RNN and LSTM accumulate both products into one buffer (b_hh is added in the gate pass); GRU
// keeps W_hh h + b_hh apart, since its reset gate scales the n part of it.
template <typename T>
void cell_gates(int64_t kind, int64_t N, int64_t H, const T* gx, const T* gh, const T* b_hh, const T* h, const T* c, T* h_out,
                T* c_out) {
  const int64_t G = kind == LSTM ? 4 : kind == GRU ? 3 : 1;
  for (int64_t n = 0; n < N; ++n) {
    const T* x = gx + n * G * H;
    T* ho = h_out + n * H;
    if (kind == GRU) {
      const T* r = gh + n * G * H;
      const T* hp = h + n * H;
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) {
        const T rr = sigmoid(x[j] + r[j]), z = sigmoid(x[H + j] + r[H + j]);
        const T nn = tanh_(x[2 * H + j] + rr * r[2 * H + j]);
        ho[j] = nn + z * (hp[j] - nn);
      }
      continue;
    }
    auto at = [&](int64_t k) { return x[k] + (b_hh ? b_hh[k] : T(0)); };
    if (kind == LSTM) {
      const T* cp = c + n * H;
      T* co = c_out + n * H;
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) {
        const T i = sigmoid(at(j)), f = sigmoid(at(H + j)), g = tanh_(at(2 * H + j)), o = sigmoid(at(3 * H + j));
        co[j] = f * cp[j] + i * g;
        ho[j] = o * tanh_(co[j]);
      }
    } else if (kind == RNN_TANH) {
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) ho[j] = tanh_(at(j));
    } else {
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) ho[j] = std::max(at(j), T(0));
    }
  }
}

// out[n, j] (+)= bias[j] + a[n, :] . W[j, :] over rows of a row-major W: a small product computed
// in place, cheaper than a library call's dispatch and output allocation at streaming sizes.
template <typename T>
void small_linear(const T* a, int64_t N, int64_t K, const T* W, const T* bias, T* out, int64_t M, bool accumulate) {
  for (int64_t n = 0; n < N; ++n)
    for (int64_t j = 0; j < M; ++j) {
      const T *row = a + n * K, *w = W + j * K;
      T sum = 0;
#pragma omp simd reduction(+ : sum)
      for (int64_t k = 0; k < K; ++k) sum += row[k] * w[k];
      out[n * M + j] = (accumulate ? out[n * M + j] : bias ? bias[j] : T(0)) + sum;
    }
}

// Products up to this many multiply-adds (B=1, H=128 LSTM: 82K) skip the library GEMM.
constexpr int64_t kSmallStep = int64_t(1) << 18;

template <typename T>
bool small_step(const at::Tensor& x, const at::Tensor& h, const at::Tensor& w_ih, const at::Tensor& w_hh, const std::optional<at::Tensor>& b_ih,
                const std::optional<at::Tensor>& b_hh, int64_t kind, at::Tensor& h_out, at::Tensor& c_out, const at::Tensor& c) {
  const int64_t N = x.size(0), I = x.size(1), H = h.size(1), GH = w_hh.size(0);
  const bool contiguous = x.is_contiguous() && h.is_contiguous() && w_ih.is_contiguous() && w_hh.is_contiguous() &&
                          (!b_ih.has_value() || (b_ih->is_contiguous() && b_hh->is_contiguous())) && (kind != LSTM || c.is_contiguous());
  if (!contiguous || N * GH * (I + H) > kSmallStep) return false;
  thread_local std::vector<T> buffer;
  buffer.resize(2 * N * GH);
  T *gx = buffer.data(), *gh = gx + N * GH;
  const T* bias_ih = b_ih.has_value() ? b_ih->const_data_ptr<T>() : nullptr;
  const T* bias_hh = b_hh.has_value() ? b_hh->const_data_ptr<T>() : nullptr;
  small_linear(x.const_data_ptr<T>(), N, I, w_ih.const_data_ptr<T>(), bias_ih, gx, GH, false);
  if (kind == GRU)
    small_linear(h.const_data_ptr<T>(), N, H, w_hh.const_data_ptr<T>(), bias_hh, gh, GH, false);
  else
    small_linear<T>(h.const_data_ptr<T>(), N, H, w_hh.const_data_ptr<T>(), nullptr, gx, GH, true);
  cell_gates<T>(kind, N, H, gx, kind == GRU ? gh : nullptr, kind == GRU ? nullptr : bias_hh, h.const_data_ptr<T>(),
                kind == LSTM ? c.const_data_ptr<T>() : nullptr, h_out.data_ptr<T>(), kind == LSTM ? c_out.data_ptr<T>() : nullptr);
  return true;
}

// The step written into h_out and c_out, contiguous (N, H) tensors (c_out read only by the LSTM).
void cell_step_into(int64_t kind, const at::Tensor& x, const at::Tensor& h, const at::Tensor& c, const at::Tensor& w_ih,
                    const at::Tensor& w_hh, const std::optional<at::Tensor>& b_ih, const std::optional<at::Tensor>& b_hh,
                    at::Tensor& h_out, at::Tensor& c_out) {
  const int64_t N = x.size(0), H = h.size(1);
  bool done = false;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "rnnkit_small_cell_step", [&] { done = small_step<scalar_t>(x, h, w_ih, w_hh, b_ih, b_hh, kind, h_out, c_out, c); });
  if (done) return;
  at::Tensor gx = at::linear(x, w_ih, b_ih);
  at::Tensor gh, b_hh_t;
  if (kind == GRU) {
    gh = at::linear(h, w_hh, b_hh).contiguous();
  } else {
    gx.addmm_(h, w_hh.t());
    if (b_hh.has_value()) b_hh_t = b_hh->contiguous();
  }
  gx = gx.contiguous();
  at::Tensor h_prev = h.contiguous(), c_prev = kind == LSTM ? c.contiguous() : c;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "rnnkit_cell_step", [&] {
    cell_gates<scalar_t>(kind, N, H, gx.const_data_ptr<scalar_t>(), gh.defined() ? gh.const_data_ptr<scalar_t>() : nullptr,
                         b_hh_t.defined() ? b_hh_t.const_data_ptr<scalar_t>() : nullptr, h_prev.const_data_ptr<scalar_t>(),
                         kind == LSTM ? c_prev.const_data_ptr<scalar_t>() : nullptr, h_out.data_ptr<scalar_t>(),
                         kind == LSTM ? c_out.data_ptr<scalar_t>() : nullptr);
  });
}

std::tuple<at::Tensor, at::Tensor> cell_step(int64_t kind, at::Tensor x, at::Tensor h, at::Tensor c, at::Tensor w_ih, at::Tensor w_hh,
                                             std::optional<at::Tensor> b_ih, std::optional<at::Tensor> b_hh) {
  at::Tensor h_out = at::empty({x.size(0), h.size(1)}, x.options());
  at::Tensor c_out = at::empty({kind == LSTM ? x.size(0) : 0, h.size(1)}, x.options());
  cell_step_into(kind, x, h, c, w_ih, w_hh, b_ih, b_hh, h_out, c_out);
  return {h_out, c_out};
}


// ---- The LayerNorm LSTM (haste's LayerNormLSTM; math in rnnkit/engine/fused_layer_norm.py) ----
// Same threading as the plain loop. By rows, each thread computes its rows' statistics alone. By
// units (each thread owns a slice of hidden units and the four gate columns of each), LayerNorm needs
// statistics over a whole row: every thread publishes its partial sums (in double), and after a
// barrier each one combines them in thread order, so the result does not depend on timing. Three
// barriers per step forward, four backward.
constexpr double kLayerNormEps = 1e-5;  // rnnkit.cells.base.LAYER_NORM_EPS

template <typename T>
struct NormLoop {
  int64_t L, N, H;
  bool reverse;
  const bool* valid;
  const T* xp;                          // (L, N, 4H) LN(W_ih x)γ_ih + b_ih + b_hh; the forward overwrites it with `gates`
  T *gates, *y, *hs, *cs, *ahat, *chat, *rstd;  // rstd: (L, N, 2) for W_hh h and c
  const T *w_hh, *gain_hh, *gain_cell, *bias_cell;
  T *scratch, *scratch_c;               // (N, 4H) and (N, H)
  double *partial_a, *partial_c;        // (threads, N, 2)
  int threads;
  // backward
  const T* dy;
  int64_t dy_stride[3] = {0, 0, 0};
  T *dgx, *da, *dh, *dc;
  double *dgain_hh, *dgain_cell, *dbias_cell;  // sums over every step and row: accumulated in double
  StepBarrier* barrier = nullptr;  // shared by the team running the loop
  // Zoneout (L, N, H) or null, as in Loop; backward keeps each row's m_t dh_t in `scratch` (N, H) between phases 1 and 2.
  const T* zone = nullptr;
  int64_t row0 = 0, row1 = 0;  // the rows [row0, row1) this copy of the loop runs (drive_norm sets them)

  bool ok(int64_t t, int64_t n) const { return valid == nullptr || valid[t * N + n]; }
  int64_t before(int64_t t) const { return t + reverse; }
  int64_t after(int64_t t) const { return t + 1 - reverse; }

  // the means of row n's two published sums over `size` values (forward: of x and x²; backward: of dx̂ and dx̂⊙x̂)
  std::pair<double, double> means(const double* partial, int nt, int64_t n, int64_t size) const {
    double first = 0, second = 0;
    for (int k = 0; k < nt; ++k) first += partial[(k * N + n) * 2], second += partial[(k * N + n) * 2 + 1];
    return {first / size, second / size};
  }
  // mean and 1/sqrt(var + eps) of row n
  std::pair<double, double> stats(const double* partial, int nt, int64_t n, int64_t size) const {
    const auto [mean, square] = means(partial, nt, n, size);
    return {mean, 1.0 / std::sqrt(std::max(square - mean * mean, 0.0) + kLayerNormEps)};
  }

  void forward_step(int64_t t, int tid, int nt, int64_t u0, int64_t u1, const Panels<T>& recurrent) const {
    const int64_t G = 4, GH = G * H;
    gemm_panels(hs + (before(t) * N + row0) * H, H, recurrent, scratch + row0 * GH, GH, row1 - row0, false);
    for (int64_t n = row0; n < row1; ++n) {
      double sum = 0, squares = 0;
      for (int64_t g = 0; g < G; ++g) {
        const T* a = scratch + n * GH + g * H;  // locals throughout: indexing members inside these loops made GCC gather
#pragma omp simd reduction(+ : sum, squares)
        for (int64_t u = u0; u < u1; ++u) sum += a[u], squares += double(a[u]) * a[u];
      }
      partial_a[(tid * N + n) * 2] = sum, partial_a[(tid * N + n) * 2 + 1] = squares;
    }
    barrier->wait();
    for (int64_t n = row0; n < row1; ++n) {
      const int64_t row = (t * N + n) * GH;
      const T* c_prev = cs + (before(t) * N + n) * H;
      T* c_new = cs + (after(t) * N + n) * H;
      double sum = 0, squares = 0;
      if (ok(t, n)) {
        const auto [mean_d, r_d] = stats(partial_a, nt, n, GH);
        const T mean = T(mean_d), r = T(r_d);
        const int64_t H = this->H;
        const T *a = scratch + n * GH, *x = xp + row, *gain = gain_hh;
        T *gate = gates + row, *a_hat = ahat + row;
        // the four gates' normalised products and pre-activations, written out: no per-gate array inside the loop
        auto pre = [&](int64_t j) {
          const T normed = (a[j] - mean) * r;
          a_hat[j] = normed;
          return x[j] + normed * gain[j];
        };
#pragma omp simd reduction(+ : sum, squares)
        for (int64_t u = u0; u < u1; ++u) {
          const T i = sigmoid(pre(u)), f = sigmoid(pre(H + u)), g = tanh_(pre(2 * H + u)), o = sigmoid(pre(3 * H + u));
          const T c = f * c_prev[u] + i * g;
          gate[u] = i, gate[H + u] = f, gate[2 * H + u] = g, gate[3 * H + u] = o;
          c_new[u] = c;
          sum += c, squares += double(c) * c;
        }
        if (tid == 0) rstd[(t * N + n) * 2] = r;
      } else {  // padding: the state passes through; zeros keep the saved buffers finite
        for (int64_t g = 0; g < 4; ++g)
          for (int64_t u = u0; u < u1; ++u) gates[row + g * H + u] = T(0), ahat[row + g * H + u] = T(0);
        for (int64_t u = u0; u < u1; ++u) c_new[u] = c_prev[u];
        if (tid == 0) rstd[(t * N + n) * 2] = T(0);
      }
      partial_c[(tid * N + n) * 2] = sum, partial_c[(tid * N + n) * 2 + 1] = squares;
    }
    barrier->wait();
    for (int64_t n = row0; n < row1; ++n) {
      const int64_t row = (t * N + n) * H;
      T* h_new = hs + (after(t) * N + n) * H;
      T* y_row = y + row;
      T* c_hat = chat + row;
      if (!ok(t, n)) {
        const T* h_prev = hs + (before(t) * N + n) * H;
        for (int64_t u = u0; u < u1; ++u) h_new[u] = h_prev[u], y_row[u] = T(0), c_hat[u] = T(0);
        if (tid == 0) rstd[(t * N + n) * 2 + 1] = T(0);
        continue;
      }
      const auto [mean_d, r_d] = stats(partial_c, nt, n, H);
      const T mean = T(mean_d), r = T(r_d);
      const T* c = cs + (after(t) * N + n) * H;
      const T* o = gates + (t * N + n) * 4 * H + 3 * H;
#pragma omp simd
      for (int64_t u = u0; u < u1; ++u) {
        const T normed = (c[u] - mean) * r;
        c_hat[u] = normed;
        const T h = o[u] * tanh_(normed * gain_cell[u] + bias_cell[u]);
        h_new[u] = h;
        y_row[u] = h;
      }
      if (zone != nullptr) zone_out(zone + (t * N + n) * H, hs + (before(t) * N + n) * H, h_new, y_row, u0, u1);
      if (tid == 0) rstd[(t * N + n) * 2 + 1] = r;
    }
    barrier->wait();
  }

  void backward_step(int64_t t, int tid, int nt, int64_t u0, int64_t u1, const Panels<T>& recurrent) const {
    const int64_t GH = 4 * H;
    // 1. dh_t += dy_t; the output side: δo, and dĉ = d(LN(c)γ+β)⊙γ with its two row sums
    for (int64_t n = row0; n < row1; ++n) {
      double sum = 0, dot = 0;
      if (ok(t, n)) {
        T* dh_row = dh + n * H;
        const T* dy_row = dy + t * dy_stride[0] + n * dy_stride[1];
        for (int64_t u = u0; u < u1; ++u) dh_row[u] += dy_row[u * dy_stride[2]];
        if (zone != nullptr) {  // the step gets (1 - m_t) dh_t; m_t dh_t waits in scratch to become dh_{t-1}'s bypass
          const T* m = zone + (t * N + n) * H;
          T* zoned = scratch + n * H;
#pragma omp simd
          for (int64_t u = u0; u < u1; ++u) {
            const T bypass = m[u] * dh_row[u];
            zoned[u] = bypass;
            dh_row[u] -= bypass;
          }
        }
        const T* o = gates + (t * N + n) * GH + 3 * H;
        const T* c_hat = chat + (t * N + n) * H;
        T* d_o = dgx + (t * N + n) * GH + 3 * H;
        T* dc_hat = scratch_c + n * H;
        const T *gain = gain_cell, *bias = bias_cell;  // locals: members indexed inside the loop made GCC gather and scatter
        double *d_gain = dgain_cell, *d_bias = dbias_cell;
#pragma omp simd reduction(+ : sum, dot)
        for (int64_t u = u0; u < u1; ++u) {
          const T tc = tanh_(c_hat[u] * gain[u] + bias[u]);
          const T d_normed = dh_row[u] * o[u] * (T(1) - tc * tc);  // gradient of LN(c)γ+β
          d_o[u] = dh_row[u] * tc * o[u] * (T(1) - o[u]);
          d_gain[u] += d_normed * c_hat[u];
          d_bias[u] += d_normed;
          const T d = d_normed * gain[u];
          dc_hat[u] = d;
          sum += d, dot += double(d) * c_hat[u];
        }
      }
      partial_c[(tid * N + n) * 2] = sum, partial_c[(tid * N + n) * 2 + 1] = dot;
    }
    barrier->wait();
    // 2. dc through LN(c), the gate gradients dpre (= dxp), and dâ = dpre⊙γ_hh with its row sums
    for (int64_t n = row0; n < row1; ++n) {
      double sum = 0, dot = 0;
      const int64_t row = (t * N + n) * GH;
      if (ok(t, n)) {
        const auto [mean_d, mean_dot] = means(partial_c, nt, n, H);
        const T r = rstd[(t * N + n) * 2 + 1], m1 = T(mean_d), m2 = T(mean_dot);
        const T* gate = gates + row;
        const T* c_hat = chat + (t * N + n) * H;
        const T* c_prev = cs + (before(t) * N + n) * H;
        const T* a_hat = ahat + row;
        const T* dc_hat = scratch_c + n * H;
        T *d_pre = dgx + row, *d_a = da + row, *dc_row = dc + n * H, *dh_row = dh + n * H;
        const T* gain = gain_hh;
        double* d_gain = dgain_hh;
        const int64_t H = this->H;
        // gate j's share of dâ = dpre⊙γ_hh, its row sums, and dγ_hh (the four gates written out, as in the forward)
        auto through_gain = [&](int64_t j, double& sum, double& dot) {
          d_gain[j] += d_pre[j] * a_hat[j];
          const T d = d_pre[j] * gain[j];
          d_a[j] = d;
          sum += d, dot += double(d) * a_hat[j];
        };
#pragma omp simd reduction(+ : sum, dot)
        for (int64_t u = u0; u < u1; ++u) {
          const T i = gate[u], f = gate[H + u], g = gate[2 * H + u];
          const T d_c = dc_row[u] + r * (dc_hat[u] - m1 - c_hat[u] * m2);
          d_pre[u] = d_c * g * i * (T(1) - i);
          d_pre[H + u] = d_c * c_prev[u] * f * (T(1) - f);
          d_pre[2 * H + u] = d_c * i * (T(1) - g * g);
          dc_row[u] = d_c * f;
          dh_row[u] = T(0);
          through_gain(u, sum, dot), through_gain(H + u, sum, dot), through_gain(2 * H + u, sum, dot), through_gain(3 * H + u, sum, dot);
        }
        if (zone != nullptr)
          for (int64_t u = u0; u < u1; ++u) dh_row[u] = scratch[n * H + u];
      } else {  // padding: dh and dc pass through; this step contributes nothing
        for (int64_t k = 0; k < 4; ++k)
          for (int64_t u = u0; u < u1; ++u) dgx[row + k * H + u] = T(0), da[row + k * H + u] = T(0);
      }
      partial_a[(tid * N + n) * 2] = sum, partial_a[(tid * N + n) * 2 + 1] = dot;
    }
    barrier->wait();
    // 3. da through LN(W_hh h): the gradient of the raw recurrent product
    for (int64_t n = row0; n < row1; ++n) {
      if (!ok(t, n)) continue;
      const int64_t row = (t * N + n) * GH;
      const auto [mean_d, mean_dot] = means(partial_a, nt, n, GH);
      const T r = rstd[(t * N + n) * 2], m1 = T(mean_d), m2 = T(mean_dot);
      const T* a_hat = ahat + row;
      T* d_a = da + row;
      for (int64_t k = 0; k < 4; ++k)
#pragma omp simd
        for (int64_t u = u0; u < u1; ++u) d_a[k * H + u] = r * (d_a[k * H + u] - m1 - a_hat[k * H + u] * m2);
    }
    barrier->wait();
    // 4. dh_{t-1} = da_t W_hh (valid rows restart from zero above; padded rows keep dh)
    gemm_panels(da + (t * N + row0) * GH, GH, recurrent, dh + row0 * H, H, row1 - row0, true);
  }
};

// The team shares the loop by rows or by hidden units, as the plain loop does (share_rows). By rows, the weight
// gradients' sums (dγ_hh, dγ_c, dβ_c) go to one buffer per thread, added in thread order at the end: the result does
// not depend on timing. By units, the threads combine each row's statistics at the barriers.
template <typename T>
void drive_norm(NormLoop<T> loop, bool backward, const at::TensorOptions& options) {
  const int64_t H = loop.H, L = loop.L, N = loop.N;
  std::vector<double> partial_a(loop.threads * N * 2), partial_c(loop.threads * N * 2);
  loop.partial_a = partial_a.data(), loop.partial_c = partial_c.data();
  std::vector<double> own_sums;  // by rows, backward: each thread's dγ_hh (4H), dγ_c (H) and dβ_c (H)
  int team = 1;
  StepBarrier barrier;
  loop.barrier = &barrier;
  run_team(loop.threads, barrier, [&](int tid, int nt) {
    NormLoop<T> mine = loop;
    StepBarrier alone;
    int64_t u0 = 0, u1 = H;
    int rank = 0, ranks = 1;  // the thread's place among those that share rows' statistics
    if (share_rows(mine, N, tid, nt, true, 4 * H * H * int64_t(sizeof(T)), alone)) {
#pragma omp single
      {
        team = nt;
        if (backward) own_sums.assign(static_cast<size_t>(nt) * 6 * H, 0.0);
      }  // (the single's barrier publishes team and own_sums)
      if (backward) {
        double* sums = own_sums.data() + static_cast<size_t>(tid) * 6 * H;
        mine.dgain_hh = sums, mine.dgain_cell = sums + 4 * H, mine.dbias_cell = sums + 5 * H;
      }
    } else {
      std::tie(u0, u1) = slice(H, nt, tid);
      rank = tid, ranks = nt;
    }
    if (backward) {
      const Panels<T> recurrent(loop.w_hh, H, 1, 4 * H, {{u0, u1}}, options);  // B = W_hh, this thread's columns
      for (int64_t s = 0; s < L; ++s) mine.backward_step(loop.reverse ? s : L - 1 - s, rank, ranks, u0, u1, recurrent);
    } else {
      std::vector<std::pair<int64_t, int64_t>> columns;  // B = W_hh^T: this thread's units in every gate
      for (int64_t g = 0; g < 4; ++g) columns.push_back({g * H + u0, g * H + u1});
      const Panels<T> recurrent(loop.w_hh, 1, H, H, columns, options);
      for (int64_t s = 0; s < L; ++s) mine.forward_step(loop.reverse ? L - 1 - s : s, rank, ranks, u0, u1, recurrent);
    }
  });
  for (int k = 0; k < team && !own_sums.empty(); ++k) {
    const double* sums = own_sums.data() + static_cast<size_t>(k) * 6 * H;
    for (int64_t j = 0; j < 4 * H; ++j) loop.dgain_hh[j] += sums[j];
    for (int64_t j = 0; j < H; ++j) loop.dgain_cell[j] += sums[4 * H + j], loop.dbias_cell[j] += sums[5 * H + j];
  }
}

// xp is overwritten with the gate activations (the backward's `gates`). Without padding the
// output y is a view of hs, as in forward_loop.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> layer_norm_lstm_forward(
    at::Tensor xp, at::Tensor h0, at::Tensor c0, at::Tensor w_hh, at::Tensor gain_hh, at::Tensor gain_cell, at::Tensor bias_cell,
    std::optional<at::Tensor> valid, bool reverse, std::optional<at::Tensor> zoneout) {
  const int64_t L = xp.size(0), N = xp.size(1), H = h0.size(1);
  at::Tensor hs = at::empty({L + 1, N, H}, xp.options()), cs = at::empty({L + 1, N, H}, xp.options());
  hs.select(0, reverse ? L : 0).copy_(h0);
  cs.select(0, reverse ? L : 0).copy_(c0);
  at::Tensor y = valid.has_value() ? at::empty({L, N, H}, xp.options()) : hs.narrow(0, reverse ? 0 : 1, L);  // returned empty, as in forward_loop
  at::Tensor gates = xp, ahat = at::empty_like(xp);
  at::Tensor chat = at::empty({L, N, H}, xp.options()), rstd = at::empty({L, N, 2}, xp.options());
  at::Tensor scratch = at::empty({N, 4 * H}, xp.options());
  at::Tensor valid_t = ptr_source(valid), zone_t = ptr_source(zoneout);
  AT_DISPATCH_FLOATING_TYPES(xp.scalar_type(), "rnnkit_layer_norm_lstm_forward", [&] {
    NormLoop<scalar_t> loop{L, N, H, reverse, data_or_null<bool>(valid_t), xp.const_data_ptr<scalar_t>(),
                            gates.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), hs.data_ptr<scalar_t>(), cs.data_ptr<scalar_t>(),
                            ahat.data_ptr<scalar_t>(), chat.data_ptr<scalar_t>(), rstd.data_ptr<scalar_t>(),
                            w_hh.const_data_ptr<scalar_t>(), gain_hh.const_data_ptr<scalar_t>(),
                            gain_cell.const_data_ptr<scalar_t>(), bias_cell.const_data_ptr<scalar_t>(),
                            scratch.data_ptr<scalar_t>(), nullptr, nullptr, nullptr, thread_count(H)};
    loop.zone = data_or_null<scalar_t>(zone_t);
    drive_norm(loop, false, xp.options());
  });
  return {valid.has_value() ? y : at::empty({0}, xp.options()), hs, cs, ahat, chat, rstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> layer_norm_lstm_backward(
    at::Tensor gates, at::Tensor hs, at::Tensor cs, at::Tensor ahat, at::Tensor chat, at::Tensor rstd, at::Tensor w_hh,
    at::Tensor gain_hh, at::Tensor gain_cell, at::Tensor bias_cell, std::optional<at::Tensor> valid, bool reverse, at::Tensor dy,
    at::Tensor dh_n, at::Tensor dc_n, std::optional<at::Tensor> zoneout) {
  const int64_t L = dy.size(0), N = dy.size(1), H = hs.size(2);
  at::Tensor dgx = at::empty_like(gates), da = at::empty_like(gates);
  at::Tensor dh = dh_n.clone(), dc = dc_n.clone();
  const auto sums = gain_hh.options().dtype(at::kDouble);
  at::Tensor dgain_hh = at::zeros(gain_hh.sizes(), sums), dgain_cell = at::zeros(gain_cell.sizes(), sums), dbias_cell = at::zeros(bias_cell.sizes(), sums);
  at::Tensor scratch_c = at::empty({N, H}, gates.options());
  at::Tensor zoned = empty_like_or_none(gates, {N, H}, zoneout.has_value());
  at::Tensor valid_t = ptr_source(valid), zone_t = ptr_source(zoneout);
  AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "rnnkit_layer_norm_lstm_backward", [&] {
    NormLoop<scalar_t> loop{L, N, H, reverse, data_or_null<bool>(valid_t), nullptr, gates.data_ptr<scalar_t>(), nullptr,
                            hs.data_ptr<scalar_t>(), cs.data_ptr<scalar_t>(), ahat.data_ptr<scalar_t>(), chat.data_ptr<scalar_t>(),
                            rstd.data_ptr<scalar_t>(), w_hh.const_data_ptr<scalar_t>(), gain_hh.const_data_ptr<scalar_t>(),
                            gain_cell.const_data_ptr<scalar_t>(), bias_cell.const_data_ptr<scalar_t>(), nullptr,
                            scratch_c.data_ptr<scalar_t>(), nullptr, nullptr, thread_count(H), dy.const_data_ptr<scalar_t>()};
    for (int d = 0; d < 3; ++d) loop.dy_stride[d] = dy.stride(d);
    loop.dgx = dgx.data_ptr<scalar_t>(), loop.da = da.data_ptr<scalar_t>(), loop.dh = dh.data_ptr<scalar_t>();
    loop.dc = dc.data_ptr<scalar_t>(), loop.dgain_hh = dgain_hh.data_ptr<double>();
    loop.dgain_cell = dgain_cell.data_ptr<double>(), loop.dbias_cell = dbias_cell.data_ptr<double>();
    loop.zone = data_or_null<scalar_t>(zone_t), loop.scratch = zoned.data_ptr<scalar_t>();
    drive_norm(loop, true, gates.options());
  });
  return {dgx, da, dh, dc, dgain_hh.to(gates.scalar_type()), dgain_cell.to(gates.scalar_type()), dbias_cell.to(gates.scalar_type())};
}

constexpr char k_forward_loop[] = "forward_loop", k_cell_step[] = "cell_step", k_forward_inference[] = "forward_inference",
               k_backward_loop[] = "backward_loop", k_layer_norm_lstm_forward[] = "layer_norm_lstm_forward",
               k_layer_norm_lstm_backward[] = "layer_norm_lstm_backward";

}  // namespace

namespace rnnkit {
// cell_step's CPU kernel for csrc/stacked_step.cpp, which calls it once per (layer, direction) without a dispatch,
// writing into its outputs' slices.
void cell_step_into_cpu(int64_t kind, const at::Tensor& x, const at::Tensor& h, const at::Tensor& c, const at::Tensor& w_ih,
                        const at::Tensor& w_hh, const std::optional<at::Tensor>& b_ih, const std::optional<at::Tensor>& b_hh,
                        at::Tensor& h_out, at::Tensor& c_out) {
  cell_step_into(kind, x, h, c, w_ih, w_hh, b_ih, b_hh, h_out, c_out);
}
}  // namespace rnnkit

TORCH_LIBRARY(rnnkit_fused, m) {
  m.def("forward_loop(int kind, Tensor(a!) xp, Tensor h0, Tensor c0, Tensor w_hh, Tensor? b_hn, Tensor? w_hr, Tensor? valid, bool reverse, Tensor? zoneout=None, Tensor? output_mask=None) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("cell_step(int kind, Tensor x, Tensor h, Tensor c, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh) -> (Tensor, Tensor)");
  m.def("layer_norm_lstm_forward(Tensor(a!) xp, Tensor h0, Tensor c0, Tensor w_hh, Tensor gain_hh, Tensor gain_cell, Tensor bias_cell, Tensor? valid, bool reverse, Tensor? zoneout=None) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("layer_norm_lstm_backward(Tensor gates, Tensor hs, Tensor cs, Tensor ahat, Tensor chat, Tensor rstd, Tensor w_hh, Tensor gain_hh, Tensor gain_cell, Tensor bias_cell, Tensor? valid, bool reverse, Tensor dy, Tensor dh_n, Tensor dc_n, Tensor? zoneout=None) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("forward_inference(int kind, Tensor x, Tensor w_ih, Tensor? bias, Tensor h0, Tensor c0, Tensor w_hh, Tensor? b_hn, Tensor? w_hr, Tensor? valid, bool reverse) -> (Tensor, Tensor, Tensor)");
  m.def("backward_loop(int kind, Tensor gates, Tensor hs, Tensor cs, Tensor hn, Tensor hraw, Tensor w_hh, Tensor? w_hr, Tensor? valid, bool reverse, Tensor dy, Tensor dh_n, Tensor dc_n, Tensor? zoneout=None, Tensor? output_mask=None) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(rnnkit_fused, CPU, m) {
  m.impl("forward_loop", &forward_loop);
  m.impl("cell_step", &cell_step);
  m.impl("layer_norm_lstm_forward", &layer_norm_lstm_forward);
  m.impl("layer_norm_lstm_backward", &layer_norm_lstm_backward);
  m.impl("forward_inference", &forward_inference);
  m.impl("backward_loop", &backward_loop);
}

// The kernels have no derivatives of their own: rnnkit/engine differentiates whole sequences
// around them (autograd.Functions with hand-written backward through time). Their Autograd kernel
// refuses a call that autograd would have to record, rather than let gradients stop silently.
TORCH_LIBRARY_IMPL(rnnkit_fused, Autograd, m) {
  m.impl("forward_loop", &rnnkit::InferenceOnly<decltype(forward_loop), forward_loop, k_forward_loop>::call);
  m.impl("cell_step", &rnnkit::InferenceOnly<decltype(cell_step), cell_step, k_cell_step>::call);
  m.impl("layer_norm_lstm_forward", &rnnkit::InferenceOnly<decltype(layer_norm_lstm_forward), layer_norm_lstm_forward, k_layer_norm_lstm_forward>::call);
  m.impl("layer_norm_lstm_backward", &rnnkit::InferenceOnly<decltype(layer_norm_lstm_backward), layer_norm_lstm_backward, k_layer_norm_lstm_backward>::call);
  m.impl("forward_inference", &rnnkit::InferenceOnly<decltype(forward_inference), forward_inference, k_forward_inference>::call);
  m.impl("backward_loop", &rnnkit::InferenceOnly<decltype(backward_loop), backward_loop, k_backward_loop>::call);
}
