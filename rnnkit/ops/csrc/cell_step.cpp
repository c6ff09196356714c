// One step of a cell without autograd (`cell_step`), and the same step written into given outputs, which
// csrc/stacked_step.cpp calls once per (layer, direction) of a streaming call.
#include <ATen/core/Tensor.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/linear.h>
#include <ATen/ops/zeros.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/grad_mode.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <torch/library.h>

#include "inference_only.h"
#include "loop_common.h"

#include <optional>
#include <tuple>
#include <vector>

namespace {

using namespace rnnkit::loops;

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

constexpr char k_cell_step[] = "cell_step";

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

TORCH_LIBRARY_FRAGMENT(rnnkit_fused, m) {
  m.def("cell_step(int kind, Tensor x, Tensor h, Tensor c, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(rnnkit_fused, CPU, m) { m.impl("cell_step", &cell_step); }

TORCH_LIBRARY_IMPL(rnnkit_fused, Autograd, m) {
  m.impl("cell_step", &rnnkit::InferenceOnly<decltype(cell_step), cell_step, k_cell_step>::call);
}
