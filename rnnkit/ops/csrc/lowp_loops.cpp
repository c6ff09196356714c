// The int8 recurrence of rnnkit's quantized layers (rnnkit/engine/int8.py): inference only.
//
// int8_layer runs one direction of a layer over time; int8_linear computes any x W^T + b with the
// same per-row quantization and GEMM. Per step and batch row, int8_layer:
//   0. projects x_t the same way (x_t W_ih^T + b), in a buffer of the thread's rows;
//   1. h_{t-1} is quantized on the fly, symmetric per row: s = max|h| / 127, q = round(h / s);
//   2. the recurrent product h W_hh^T runs in int8 with int32 accumulation (AVX-512 VNNI's
//      vpdpbusd, unsigned x signed: q is offset by +128 and 128 * colsum(W) taken off again),
//      then is dequantized with the row scale and W's per-output-channel scales;
//   3. the gate math and the state stay in float32.
// Batch rows are independent through the whole sequence, so each thread owns a range of rows for
// every step: no barrier, no per-step fork. W_ih and W_hh come packed (see engine/int8.py: pack_recurrent)
// as (GHp/16, K4, 16, 4) int8: 16 output channels by 4 consecutive inputs, one 64-byte register.

#include <ATen/core/Tensor.h>
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/grad_mode.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <vector>

#include "bf16_tiles.h"
#include "buffer_pool.h"

#if defined(__AVX512VNNI__) && defined(__AVX512F__)
#include <immintrin.h>
#define RNNKIT_VNNI 1
#endif

namespace {

enum Kind : int64_t { RNN_TANH = 0, RNN_RELU = 1, LSTM = 2, GRU = 3 };

// 2^x as 2^round(x) * p(x - round(x)), p a degree-6 fit of 2^f on [-0.5, 0.5] (~2e-7 relative);
// written so that `omp simd` loops over it vectorise (std::exp is a scalar libm call).
inline __attribute__((always_inline)) float exp2_poly(float x) {
  x = std::min(std::max(x, -126.0f), 126.0f);
  const float whole = (x + 12582912.0f) - 12582912.0f;  // round to nearest by 1.5 * 2^23
  const float f = x - whole;
  const float p = 1.0f + f * (0.69314718f + f * (0.24022652f + f * (0.05550411f + f * (0.00961813f + f * (0.00133336f + f * 0.00015404f)))));
  const int32_t bits = (static_cast<int32_t>(whole) + 127) << 23;
  float power;
  std::memcpy(&power, &bits, sizeof power);
  return p * power;
}
inline __attribute__((always_inline)) float logistic(float x) { return 1.0f / (1.0f + exp2_poly(-1.44269504f * x)); }
inline __attribute__((always_inline)) float tanh_logistic(float x) { return 2.0f * logistic(2.0f * x) - 1.0f; }

// One row of h: quantized (offset by +128 into uint8, K padded to K4*4 with the zero point) and its scale.
// Vectorised: |h| <= 127 after scaling, where adding and removing 1.5 * 2^23 rounds to nearest even exactly as
// std::nearbyint does (a libm call per element, 8% of a B=32, H=256 LSTM's time).
float quantize_row(const float* h, int64_t K, int64_t K4, uint8_t* q) {
  float amax = 0.0f;
#pragma omp simd reduction(max : amax)
  for (int64_t k = 0; k < K; ++k) amax = std::max(amax, std::fabs(h[k]));
  const float scale = amax > 0.0f ? amax / 127.0f : 1.0f;
  const float inverse = 1.0f / scale;
#pragma omp simd
  for (int64_t k = 0; k < K; ++k) q[k] = static_cast<uint8_t>(static_cast<int32_t>((h[k] * inverse + 12582912.0f) - 12582912.0f) + 128);
  for (int64_t k = K; k < 4 * K4; ++k) q[k] = 128;
  return scale;
}

#ifdef RNNKIT_VNNI
// The VNNI product's register tile: kTileRows rows of q by kTileBlocks blocks of 16 columns, int32 sums over all of K.
constexpr int kTileRows = 4, kTileBlocks = 4;

// Where one tile reads and writes: the caller's operands moved to row r0 and column block b0.
struct VnniOperands {
  const uint8_t* q;
  int64_t ldq;
  const int8_t* W;
  int64_t K4;
  const int32_t* colsum;
  const float *w_scale, *row_scale;
  float* out;
  int64_t ldo;
  VnniOperands at(int64_t r0, int64_t b0) const {
    return {q + r0 * ldq, ldq, W + b0 * K4 * 64, K4, colsum + b0 * 16, w_scale + b0 * 16, row_scale + r0, out + r0 * ldo + b0 * 16, ldo};
  }
};

// One tile of kRows x kBlocks, sizes known at compile time so that the accumulators stay in registers: with the
// sizes as runtime bounds GCC kept them on the stack and tested the bounds inside the k loop. Measured on the 2-core
// EPYC, int8 inference: C GRU 61.6 -> 58.5 ms, C RNN 21.8 -> 20.6, C LSTM 85.5 -> 82-84 from the compile-time sizes;
// then 48, 17 and 67 ms with W kept in registers (below). (Columns outside and rows inside, so that a group of W's
// blocks serves every row from L1, measured no faster.)
template <int kRows, int kBlocks>
inline void vnni_tile(const VnniOperands& o) {
  __m512i acc[kRows][kBlocks];
  for (int r = 0; r < kRows; ++r)
    for (int b = 0; b < kBlocks; ++b) acc[r][b] = _mm512_setzero_si512();
  for (int64_t k4 = 0; k4 < o.K4; ++k4) {
    __m512i w[kBlocks];
    for (int b = 0; b < kBlocks; ++b) {
      __m512i loaded = _mm512_loadu_si512(o.W + (b * o.K4 + k4) * 64);
      // in a register, opaque to GCC: else it folds the load into each row's vpdpbusd as a memory operand, 20 loads
      // for 16 products, and one 512-bit load a cycle (Zen 4) then bounds the kernel at 0.8 products a cycle. (On a
      // local, not the array element: an asm operand on w[b] made GCC keep w and acc on the stack, 1.8x slower.)
      __asm__("" : "+v"(loaded));
      w[b] = loaded;
    }
    for (int r = 0; r < kRows; ++r) {
      int32_t four;
      std::memcpy(&four, o.q + r * o.ldq + 4 * k4, 4);
      const __m512i a = _mm512_set1_epi32(four);
      for (int b = 0; b < kBlocks; ++b) acc[r][b] = _mm512_dpbusd_epi32(acc[r][b], a, w[b]);
    }
  }
  for (int r = 0; r < kRows; ++r)
    for (int b = 0; b < kBlocks; ++b) {
      const __m512i offset = _mm512_slli_epi32(_mm512_loadu_si512(o.colsum + b * 16), 7);  // 128 * colsum
      const __m512 value = _mm512_cvtepi32_ps(_mm512_sub_epi32(acc[r][b], offset));
      const __m512 scale = _mm512_mul_ps(_mm512_loadu_ps(o.w_scale + b * 16), _mm512_set1_ps(o.row_scale[r]));
      _mm512_storeu_ps(o.out + r * o.ldo + b * 16, _mm512_mul_ps(value, scale));
    }
}

// A tile of rows x blocks (at most kTileRows x kTileBlocks): the instantiation of that size.
template <int kRows = kTileRows, int kBlocks = kTileBlocks>
inline void vnni_tile_upto(int64_t rows, int64_t blocks, const VnniOperands& o) {
  if constexpr (kRows > 1) {
    if (rows < kRows) return vnni_tile_upto<kRows - 1, kBlocks>(rows, blocks, o);
  }
  if constexpr (kBlocks > 1) {
    if (blocks < kBlocks) return vnni_tile_upto<kRows, kBlocks - 1>(rows, blocks, o);
  }
  vnni_tile<kRows, kBlocks>(o);
}
#endif

// out[r][j] = (Σ_k (q[r][k]) W[j][k] - 128 colsum[j]) * row_scale[r] * w_scale[j], for `rows` rows.
void int8_rows(const uint8_t* q, int64_t ldq, int64_t rows, const int8_t* W, int64_t blocks, int64_t K4, const int32_t* colsum,
               const float* w_scale, const float* row_scale, float* out, int64_t ldo) {
#if defined(RNNKIT_AMX) && defined(__AMX_INT8__) && defined(RNNKIT_VNNI)
  // AMX-INT8 (TDPBUSD) for whole 16-row tiles: the packing above is its B tile layout (16 groups of 4 k
  // by 16 columns = 1 KB). Integer sums are exact, so the results are the VNNI path's, bit for bit.
  // (below 32K multiply-adds a row, e.g. an RNN of 128 units, configuring the tiles costs more than they save)
  if (K4 % 16 == 0 && rows >= 16 && blocks * 16 * K4 * 4 >= (int64_t(1) << 15) && rnnkit_bf16::amx_enabled()) {
    const int64_t tiles = rows / 16, columns = blocks * 16;
    static thread_local std::vector<int32_t> sums;
    sums.resize(tiles * 16 * columns);
    {
      rnnkit_bf16::TileScope tile_state;
      rnnkit_bf16::tile_rows<rnnkit_bf16::Dot::kInt8>(
          q, ldq, tiles, reinterpret_cast<const uint8_t*>(W), blocks, [&](int64_t b) { return b * K4 * 64; }, [&](int64_t b) { return b * 16; },
          K4 / 16, reinterpret_cast<uint8_t*>(sums.data()), columns * 4);
    }
    for (int64_t r = 0; r < tiles * 16; ++r)
      for (int64_t j0 = 0; j0 < columns; j0 += 16) {
        const __m512i offset = _mm512_slli_epi32(_mm512_loadu_si512(colsum + j0), 7);  // as the VNNI path below
        const __m512 value = _mm512_cvtepi32_ps(_mm512_sub_epi32(_mm512_loadu_si512(sums.data() + r * columns + j0), offset));
        const __m512 scale = _mm512_mul_ps(_mm512_loadu_ps(w_scale + j0), _mm512_set1_ps(row_scale[r]));
        _mm512_storeu_ps(out + r * ldo + j0, _mm512_mul_ps(value, scale));
      }
    q += tiles * 16 * ldq, row_scale += tiles * 16, out += tiles * 16 * ldo, rows -= tiles * 16;
  }
#endif
#ifdef RNNKIT_VNNI
  const VnniOperands base{q, ldq, W, K4, colsum, w_scale, row_scale, out, ldo};
  for (int64_t r0 = 0; r0 < rows; r0 += kTileRows)
    for (int64_t b0 = 0; b0 < blocks; b0 += kTileBlocks)
      vnni_tile_upto(std::min<int64_t>(kTileRows, rows - r0), std::min<int64_t>(kTileBlocks, blocks - b0), base.at(r0, b0));
#else  // portable: the same arithmetic, one dot product at a time
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t blk = 0; blk < blocks; ++blk)
      for (int64_t lane = 0; lane < 16; ++lane) {
        int32_t acc = 0;
        for (int64_t k4 = 0; k4 < K4; ++k4)
          for (int64_t e = 0; e < 4; ++e) acc += int32_t(q[r * ldq + 4 * k4 + e]) * int32_t(W[(blk * K4 + k4) * 64 + lane * 4 + e]);
        const int64_t j = blk * 16 + lane;
        out[r * ldo + j] = float(acc - 128 * colsum[j]) * row_scale[r] * w_scale[j];
      }
#endif
}

// out (rows, ldo) = `rows` consecutive rows of K floats from src, each quantized on the fly (into q and scales, the
// caller's buffers), times the packed W: the product every op here runs.
void quantized_product(const float* src, int64_t K, int64_t rows, const at::Tensor& w_packed, const at::Tensor& w_scale, const at::Tensor& colsum,
                       uint8_t* q, float* scales, float* out, int64_t ldo) {
  const int64_t K4 = w_packed.size(1);
  for (int64_t r = 0; r < rows; ++r) scales[r] = quantize_row(src + r * K, K, K4, q + r * 4 * K4);
  int8_rows(q, 4 * K4, rows, w_packed.const_data_ptr<int8_t>(), w_packed.size(0), K4, colsum.const_data_ptr<int32_t>(),
            w_scale.const_data_ptr<float>(), scales, out, ldo);
}

// The gate math of one row: pre = xp_t + h W_hh^T (rec), writes the new h (and c).
inline void gates_row(int64_t kind, int64_t H, const float* xp, const float* rec, const float* b_hn, const float* h_prev, const float* c_prev,
                      float* h_new, float* c_new) {
  if (kind == LSTM) {
#pragma omp simd
    for (int64_t j = 0; j < H; ++j) {
      const float i = logistic(xp[j] + rec[j]), f = logistic(xp[H + j] + rec[H + j]);
      const float g = tanh_logistic(xp[2 * H + j] + rec[2 * H + j]), o = logistic(xp[3 * H + j] + rec[3 * H + j]);
      const float c = f * c_prev[j] + i * g;
      c_new[j] = c;
      h_new[j] = o * tanh_logistic(c);
    }
  } else if (kind == GRU) {
#pragma omp simd
    for (int64_t j = 0; j < H; ++j) {
      const float r = logistic(xp[j] + rec[j]), z = logistic(xp[H + j] + rec[H + j]);
      const float hn = rec[2 * H + j] + (b_hn ? b_hn[j] : 0.0f);
      const float n = tanh_logistic(xp[2 * H + j] + r * hn);
      h_new[j] = n + z * (h_prev[j] - n);
    }
  } else {
#pragma omp simd
    for (int64_t j = 0; j < H; ++j) {
      const float a = xp[j] + rec[j];
      h_new[j] = kind == RNN_TANH ? tanh_logistic(a) : std::max(a, 0.0f);
    }
  }
}

// One direction of an int8 layer: y, h_n, c_n from x (L, N, I). Each thread owns a range of batch rows and, per step,
// projects its rows of x_t (quantized per row, as int8_linear does) into a buffer that stays in cache, then runs the
// recurrent product and the gate math: no (L, N, G*H) projection of all steps is ever written (at B=64, T=256, H=512
// that is 134 MB, whose first-touch page faults cost more than its GEMM).
std::tuple<at::Tensor, at::Tensor, at::Tensor> int8_layer(int64_t kind, const at::Tensor& x, const at::Tensor& wi_packed, const at::Tensor& wi_scale,
                                                          const at::Tensor& wi_colsum, const std::optional<at::Tensor>& bias, const at::Tensor& h0,
                                                          const at::Tensor& c0, const at::Tensor& w_packed, const at::Tensor& w_scale, const at::Tensor& colsum,
                                                          const std::optional<at::Tensor>& b_hn, const std::optional<at::Tensor>& valid, bool reverse) {
  TORCH_CHECK(x.dim() == 3 && x.scalar_type() == at::kFloat && x.is_contiguous(), "int8_layer: x must be a contiguous float32 (L, N, I)");
  TORCH_CHECK(w_packed.scalar_type() == at::kChar && w_packed.dim() == 3 && w_packed.size(2) == 64 && wi_packed.scalar_type() == at::kChar &&
                  wi_packed.dim() == 3 && wi_packed.size(2) == 64,
              "int8_layer: w_packed and wi_packed must be int8 (GHp/16, K4, 64)");
  TORCH_CHECK(h0.scalar_type() == at::kFloat && h0.is_contiguous() && w_scale.is_contiguous() && colsum.scalar_type() == at::kInt &&
                  wi_scale.is_contiguous() && wi_colsum.scalar_type() == at::kInt,
              "int8_layer: bad operand types");
  const int64_t L = x.size(0), N = x.size(1), I = x.size(2), H = h0.size(1);
  const int64_t blocks = w_packed.size(0), K4 = w_packed.size(1), KI4 = wi_packed.size(1), GHp = blocks * 16;
  const int64_t GH = (kind == LSTM ? 4 : kind == GRU ? 3 : 1) * H;
  TORCH_CHECK(GHp >= GH && w_scale.numel() == GHp && colsum.numel() == GHp && K4 * 4 >= H, "int8_layer: W_hh packing does not fit the shapes");
  TORCH_CHECK(wi_packed.size(0) == blocks && wi_scale.numel() == GHp && wi_colsum.numel() == GHp && KI4 * 4 >= I,
              "int8_layer: W_ih packing does not fit the shapes");
  TORCH_CHECK(!bias.has_value() || (bias->numel() == GH && bias->is_contiguous()), "int8_layer: bias must be a contiguous (G*H,)");
  const bool lstm = kind == LSTM;
  auto options = x.options();
  at::Tensor y = rnnkit::pool::empty({L, N, H}, options), h_n = h0.clone(), c_n = lstm ? c0.clone() : at::empty({0}, options);
  const float* x_p = x.data_ptr<float>();
  const float* b = bias.has_value() ? bias->data_ptr<float>() : nullptr;
  const float* bhn = b_hn.has_value() ? b_hn->data_ptr<float>() : nullptr;
  const bool* mask = valid.has_value() ? valid->data_ptr<bool>() : nullptr;
  float* y_p = y.data_ptr<float>();
  float* h_p = h_n.data_ptr<float>();
  float* c_p = lstm ? c_n.data_ptr<float>() : nullptr;
  at::parallel_for(0, N, 4, [&](int64_t begin, int64_t end) {
    const int64_t rows = end - begin;
    std::vector<uint8_t> q(rows * 4 * std::max(K4, KI4));
    std::vector<float> scales(rows), xp(rows * GHp), rec(rows * GHp), h_new(rows * H), c_new(lstm ? rows * H : 0);
    for (int64_t s = 0; s < L; ++s) {
      const int64_t t = reverse ? L - 1 - s : s;
      // x_t W_ih^T + b for this thread's rows
      quantized_product(x_p + (t * N + begin) * I, I, rows, wi_packed, wi_scale, wi_colsum, q.data(), scales.data(), xp.data(), GHp);
      if (b)
        for (int64_t r = 0; r < rows; ++r) {
          float* row = xp.data() + r * GHp;
#pragma omp simd
          for (int64_t j = 0; j < GH; ++j) row[j] += b[j];
        }
      // h_{t-1} W_hh^T
      quantized_product(h_p + begin * H, H, rows, w_packed, w_scale, colsum, q.data(), scales.data(), rec.data(), GHp);
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t n = begin + r;
        float* h = h_p + n * H;
        float* c = lstm ? c_p + n * H : nullptr;
        gates_row(kind, H, xp.data() + r * GHp, rec.data() + r * GHp, bhn, h, c, h_new.data() + r * H, lstm ? c_new.data() + r * H : nullptr);
        float* out = y_p + (t * N + n) * H;
        if (mask && !mask[t * N + n]) {  // padding: the state passes through, the output is zero
          std::fill(out, out + H, 0.0f);
          continue;
        }
        std::copy(h_new.data() + r * H, h_new.data() + (r + 1) * H, h);
        std::copy(h, h + H, out);
        if (lstm) std::copy(c_new.data() + r * H, c_new.data() + (r + 1) * H, c);
      }
    }
  });
  return {y, h_n, c_n};
}

// x W^T + b for x (M, K) float32, each row quantized on the fly; W packed as for int8_layer.
at::Tensor int8_linear(const at::Tensor& x, const at::Tensor& w_packed, const at::Tensor& w_scale, const at::Tensor& colsum,
                       const std::optional<at::Tensor>& bias, int64_t out_features) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat && x.is_contiguous(), "int8_linear: x must be a contiguous float32 (M, K)");
  TORCH_CHECK(w_packed.scalar_type() == at::kChar && w_packed.dim() == 3 && w_packed.size(2) == 64, "int8_linear: w_packed must be int8 (Np/16, K4, 64)");
  const int64_t M = x.size(0), K = x.size(1), blocks = w_packed.size(0), K4 = w_packed.size(1), Np = blocks * 16;
  TORCH_CHECK(K4 * 4 >= K && Np >= out_features && w_scale.numel() == Np && colsum.numel() == Np, "int8_linear: W packing does not fit the shapes");
  at::Tensor out = rnnkit::pool::empty({M, out_features}, x.options());
  const float* x_p = x.data_ptr<float>();
  const float* b = bias.has_value() ? bias->data_ptr<float>() : nullptr;
  float* o = out.data_ptr<float>();
  constexpr int64_t kRows = 64;  // rows per task: their quantized copy and int32 results stay in cache
  at::parallel_for(0, (M + kRows - 1) / kRows, 1, [&](int64_t first, int64_t last) {
    std::vector<uint8_t> q(kRows * 4 * K4);
    std::vector<float> scales(kRows), result(kRows * Np);
    for (int64_t chunk = first; chunk < last; ++chunk) {
      const int64_t r0 = chunk * kRows, rows = std::min(kRows, M - r0);
      quantized_product(x_p + r0 * K, K, rows, w_packed, w_scale, colsum, q.data(), scales.data(), result.data(), Np);
      for (int64_t r = 0; r < rows; ++r) {
        float* dst = o + (r0 + r) * out_features;
        const float* src = result.data() + r * Np;
        for (int64_t j = 0; j < out_features; ++j) dst[j] = src[j] + (b ? b[j] : 0.0f);
      }
    }
  });
  return out;
}

// Autograd kernel: the op is inference only (int8 weights have no gradient); refuse a call autograd would record.
std::tuple<at::Tensor, at::Tensor, at::Tensor> int8_layer_autograd(int64_t kind, const at::Tensor& x, const at::Tensor& wi_packed,
                                                                   const at::Tensor& wi_scale, const at::Tensor& wi_colsum,
                                                                   const std::optional<at::Tensor>& bias, const at::Tensor& h0, const at::Tensor& c0,
                                                                   const at::Tensor& w_packed, const at::Tensor& w_scale, const at::Tensor& colsum,
                                                                   const std::optional<at::Tensor>& b_hn, const std::optional<at::Tensor>& valid, bool reverse) {
  TORCH_CHECK(!at::GradMode::is_enabled() || !(x.requires_grad() || h0.requires_grad() || (c0.defined() && c0.requires_grad())),
              "rnnkit_fused::int8_layer is inference only (int8 weights have no gradient), but an input requires grad; "
              "call it under torch.no_grad(), or train the float32 model");
  static const auto op = c10::Dispatcher::singleton().findSchemaOrThrow("rnnkit_fused::int8_layer", "").typed<decltype(int8_layer)>();
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  return op.call(kind, x, wi_packed, wi_scale, wi_colsum, bias, h0, c0, w_packed, w_scale, colsum, b_hn, valid, reverse);
}

at::Tensor int8_linear_autograd(const at::Tensor& x, const at::Tensor& w_packed, const at::Tensor& w_scale, const at::Tensor& colsum,
                                const std::optional<at::Tensor>& bias, int64_t out_features) {
  TORCH_CHECK(!at::GradMode::is_enabled() || !x.requires_grad(),
              "rnnkit_fused::int8_linear is inference only (int8 weights have no gradient), but its input requires grad; "
              "call it under torch.no_grad(), or train the float32 model");
  static const auto op = c10::Dispatcher::singleton().findSchemaOrThrow("rnnkit_fused::int8_linear", "").typed<decltype(int8_linear)>();
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  return op.call(x, w_packed, w_scale, colsum, bias, out_features);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(rnnkit_fused, m) {
  m.def("int8_layer(int kind, Tensor x, Tensor wi_packed, Tensor wi_scale, Tensor wi_colsum, Tensor? bias, Tensor h0, Tensor c0, Tensor w_packed, "
        "Tensor w_scale, Tensor colsum, Tensor? b_hn, Tensor? valid, bool reverse) -> (Tensor, Tensor, Tensor)");
  m.def("int8_linear(Tensor x, Tensor w_packed, Tensor w_scale, Tensor colsum, Tensor? bias, int out_features) -> Tensor");
}

TORCH_LIBRARY_IMPL(rnnkit_fused, CPU, m) {
  m.impl("int8_layer", &int8_layer);
  m.impl("int8_linear", &int8_linear);
}

TORCH_LIBRARY_IMPL(rnnkit_fused, Autograd, m) {
  m.impl("int8_layer", &int8_layer_autograd);
  m.impl("int8_linear", &int8_linear_autograd);
}
