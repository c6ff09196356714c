// The coefficients of the linear-recurrence families, all steps at once: (a_t, b_t) of
// h_t = a_t * h_{t-1} + b_t from the projected input P = x W_ih^T + b_ih, and their backward.
//
// Contract (the math is in rnnkit/cells/minimal.py, whose functions define the results):
//   scan_coefficients(kind, P (R, G*H), decay_logit (H,) or None) -> (a (R, H), b (R, H))
//   scan_coefficients_backward(kind, P, decay_logit, grad_a, grad_b) -> (grad_P (R, G*H), grad_decay_logit (H,) or empty)
// R = T*N rows, gates in P's columns in the family's order. Python's elementwise version runs
// a dozen passes over memory, forward and backward; these run one, which at long sequences is
// most of a layer's time outside its GEMM.

#include <ATen/core/Tensor.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/sigmoid.h>
#include <torch/library.h>

#include "buffer_pool.h"
#include "inference_only.h"

#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <tuple>
#include <vector>

namespace {

enum Family : int64_t { MINGRU = 0, MINLSTM = 1, RGLRU = 2 };
constexpr double kRgLruC = 8.0;  // De et al. (2024), §2.4

template <typename T>
inline T sigmoid(T v) { return T(1) / (T(1) + std::exp(-v)); }
template <typename T>
inline T g(T v) { return v >= T(0) ? v + T(0.5) : sigmoid(v); }  // minGRU's positive activation
template <typename T>
inline T log_sigmoid(T v) { return std::min(v, T(0)) - std::log1p(std::exp(-std::abs(v))); }
template <typename T>
inline T softplus(T v) { return v > T(20) ? v : std::log1p(std::exp(v)); }  // torch's threshold

int64_t gates_of(int64_t kind) {
  TORCH_CHECK(kind == MINGRU || kind == MINLSTM || kind == RGLRU, "scan_coefficients: expected kind 0 (mingru), 1 (minlstm) or 2 (rglru), got ", kind);
  return kind == MINGRU ? 2 : 3;
}

int64_t hidden_of(int64_t kind, const at::Tensor& projected, const std::optional<at::Tensor>& decay_logit) {
  const int64_t gates = gates_of(kind);
  TORCH_CHECK(projected.dim() == 2 && projected.size(1) % gates == 0, "scan_coefficients: expected P of shape (R, ", gates,
              "*H), got ", projected.sizes());
  const int64_t H = projected.size(1) / gates;
  TORCH_CHECK(kind != RGLRU || (decay_logit.has_value() && decay_logit->dim() == 1 && decay_logit->size(0) == H),
              "scan_coefficients: RG-LRU expects decay_logit of shape (", H, ",)");
  return H;
}

// The rows below read σ of every projected value from `s` (ATen's vectorised sigmoid over all of P, one
// pass): the loops then hold no transcendental call but RG-LRU's exp, and the compiler vectorises them.
// minLSTM's normalised gate f' = σ(log σ(k_f) - log σ(k_i)) is computed as the equal σ_f / (σ_f + σ_i),
// and in the log form only where both sigmoids underflow (the ratio would be 0 / 0).

template <typename T>
inline T tiny() { return std::numeric_limits<T>::min() * T(1e6); }

// (a, b) of one row, over its H features.
template <typename T>
void forward_row(int64_t kind, const T* __restrict__ p, const T* __restrict__ s, const T* __restrict__ decay_rate, int64_t H, T* __restrict__ a,
                 T* __restrict__ b) {
  if (kind == MINGRU) {
    for (int64_t j = 0; j < H; ++j) {
      const T z = s[j], k_h = p[H + j];
      a[j] = T(1) - z;
      b[j] = z * (k_h >= T(0) ? k_h + T(0.5) : s[H + j]);
    }
  } else if (kind == MINLSTM) {
    for (int64_t j = 0; j < H; ++j) {
      const T f = s[j], i = s[H + j], k_h = p[2 * H + j], sum = f + i;
      const T kept = f / (sum > tiny<T>() ? sum : T(1));
      a[j] = kept;
      b[j] = (T(1) - kept) * (k_h >= T(0) ? k_h + T(0.5) : s[2 * H + j]);
    }
    for (int64_t j = 0; j < H; ++j) {
      if (s[j] + s[H + j] > tiny<T>()) continue;
      const T ratio = log_sigmoid(p[j]) - log_sigmoid(p[H + j]);  // log(f / i)
      a[j] = sigmoid(ratio);
      b[j] = sigmoid(-ratio) * g(p[2 * H + j]);
    }
  } else {
    for (int64_t j = 0; j < H; ++j) {
      const T log_a = -T(kRgLruC) * s[j] * decay_rate[j];
      a[j] = std::exp(log_a);
      b[j] = std::sqrt(-std::expm1(T(2) * log_a)) * (s[H + j] * p[2 * H + j]);
    }
  }
}

// ∂P of one row from ∂a, ∂b; RG-LRU also adds this row's share of ∂Λ into decay_grad.
template <typename T>
void backward_row(int64_t kind, const T* __restrict__ p, const T* __restrict__ s, const T* __restrict__ decay_rate,
                  const T* __restrict__ decay_sigmoid, int64_t H, const T* __restrict__ da, const T* __restrict__ db, T* __restrict__ dp,
                  double* __restrict__ decay_grad) {
  if (kind == MINGRU) {  // a = 1 - z, b = z g(k_h)
    for (int64_t j = 0; j < H; ++j) {
      const T z = s[j], k_h = p[H + j], s_h = s[H + j];
      const bool positive = k_h >= T(0);
      dp[j] = (db[j] * (positive ? k_h + T(0.5) : s_h) - da[j]) * z * (T(1) - z);
      dp[H + j] = db[j] * z * (positive ? T(1) : s_h * (T(1) - s_h));
    }
  } else if (kind == MINLSTM) {  // a = σ(r), b = (1 - a) g(k_h), r = log σ(k_f) - log σ(k_i)
    for (int64_t j = 0; j < H; ++j) {
      const T f = s[j], i = s[H + j], k_h = p[2 * H + j], s_h = s[2 * H + j], sum = f + i;
      const bool positive = k_h >= T(0);
      T a = f / (sum > tiny<T>() ? sum : T(1));
      if (!(sum > tiny<T>())) a = sigmoid(log_sigmoid(p[j]) - log_sigmoid(p[H + j]));
      const T d_ratio = (da[j] - db[j] * (positive ? k_h + T(0.5) : s_h)) * a * (T(1) - a);
      dp[j] = d_ratio * (T(1) - f);  // d log σ(v) / dv = σ(-v) = 1 - σ(v)
      dp[H + j] = -d_ratio * (T(1) - i);
      dp[2 * H + j] = db[j] * (T(1) - a) * (positive ? T(1) : s_h * (T(1) - s_h));
    }
  } else {  // log a = -c r softplus(-Λ), a = exp(log a), n = √(1 - a²), b = n i u
    for (int64_t j = 0; j < H; ++j) {
      const T r = s[j], i = s[H + j], u = p[2 * H + j];
      const T log_a = -T(kRgLruC) * r * decay_rate[j];
      const T a = std::exp(log_a), n = std::sqrt(-std::expm1(T(2) * log_a));
      const T d_log_a = da[j] * a - db[j] * i * u * a * a / n;  // dn/d(log a) = -a² / n
      dp[j] = d_log_a * (-T(kRgLruC) * decay_rate[j]) * r * (T(1) - r);
      dp[H + j] = db[j] * n * u * i * (T(1) - i);
      dp[2 * H + j] = db[j] * n * i;
      decay_grad[j] += static_cast<double>(d_log_a * T(kRgLruC) * r * decay_sigmoid[j]);  // d softplus(-Λ)/dΛ = -σ(-Λ)
    }
  }
}

// RG-LRU's per-feature constants: softplus(-Λ) and σ(-Λ).
template <typename T>
void decay_constants(const at::Tensor& decay_logit, std::vector<T>& rate, std::vector<T>& rate_sigmoid) {
  const at::Tensor logit = decay_logit.contiguous();
  const T* lambda = logit.const_data_ptr<T>();
  for (int64_t j = 0; j < logit.size(0); ++j) {
    rate.push_back(softplus(-lambda[j]));
    rate_sigmoid.push_back(sigmoid(-lambda[j]));
  }
}

std::tuple<at::Tensor, at::Tensor> scan_coefficients(int64_t kind, const at::Tensor& projected, const std::optional<at::Tensor>& decay_logit) {
  const int64_t H = hidden_of(kind, projected, decay_logit), rows = projected.size(0), width = projected.size(1);
  const at::Tensor p = projected.contiguous(), sig = at::sigmoid(p);
  at::Tensor a = rnnkit::pool::empty({rows, H}, p.options()), b = rnnkit::pool::empty({rows, H}, p.options());
  AT_DISPATCH_FLOATING_TYPES(p.scalar_type(), "rnnkit_scan_coefficients", [&] {
    std::vector<scalar_t> rate, rate_sigmoid;
    if (kind == RGLRU) decay_constants<scalar_t>(*decay_logit, rate, rate_sigmoid);
    const scalar_t *p_data = p.const_data_ptr<scalar_t>(), *s_data = sig.const_data_ptr<scalar_t>();
    scalar_t *a_data = a.data_ptr<scalar_t>(), *b_data = b.data_ptr<scalar_t>();
    at::parallel_for(0, rows, std::max<int64_t>(1, 8192 / std::max<int64_t>(width, 1)), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) forward_row(kind, p_data + r * width, s_data + r * width, rate.data(), H, a_data + r * H, b_data + r * H);
    });
  });
  return {a, b};
}

std::tuple<at::Tensor, at::Tensor> scan_coefficients_backward(int64_t kind, const at::Tensor& projected, const std::optional<at::Tensor>& decay_logit,
                                                              const at::Tensor& grad_a, const at::Tensor& grad_b) {
  const int64_t H = hidden_of(kind, projected, decay_logit), rows = projected.size(0), width = projected.size(1);
  TORCH_CHECK(grad_a.sizes() == at::IntArrayRef({rows, H}) && grad_b.sizes() == grad_a.sizes(),
              "scan_coefficients_backward: expected grad_a and grad_b of shape (", rows, ", ", H, "), got ", grad_a.sizes(), " and ", grad_b.sizes());
  const at::Tensor p = projected.contiguous(), sig = at::sigmoid(p), da = grad_a.contiguous(), db = grad_b.contiguous();
  at::Tensor dp = rnnkit::pool::empty(p.sizes(), p.options());
  at::Tensor d_decay = kind == RGLRU ? at::empty({H}, p.options()) : at::empty({0}, p.options());
  AT_DISPATCH_FLOATING_TYPES(p.scalar_type(), "rnnkit_scan_coefficients_backward", [&] {
    std::vector<scalar_t> rate, rate_sigmoid;
    if (kind == RGLRU) decay_constants<scalar_t>(*decay_logit, rate, rate_sigmoid);
    const scalar_t *s_data = sig.const_data_ptr<scalar_t>();
    const scalar_t *p_data = p.const_data_ptr<scalar_t>(), *da_data = da.const_data_ptr<scalar_t>(), *db_data = db.const_data_ptr<scalar_t>();
    scalar_t* dp_data = dp.data_ptr<scalar_t>();
    // ∂Λ sums over rows: per-block partial sums in double, added in block order, so the result is deterministic.
    const int64_t grain = std::max<int64_t>(1, 8192 / std::max<int64_t>(width, 1));
    const int64_t blocks = (rows + grain - 1) / grain;
    std::vector<double> partial(kind == RGLRU ? blocks * H : 0, 0.0);
    at::parallel_for(0, blocks, 1, [&](int64_t k0, int64_t k1) {
      for (int64_t k = k0; k < k1; ++k) {
        double* sums = kind == RGLRU ? partial.data() + k * H : nullptr;
        for (int64_t r = k * grain; r < std::min(rows, (k + 1) * grain); ++r) {
          backward_row(kind, p_data + r * width, s_data + r * width, rate.data(), rate_sigmoid.data(), H, da_data + r * H, db_data + r * H, dp_data + r * width, sums);
        }
      }
    });
    if (kind == RGLRU) {
      scalar_t* out = d_decay.data_ptr<scalar_t>();
      for (int64_t j = 0; j < H; ++j) {
        double total = 0.0;
        for (int64_t k = 0; k < blocks; ++k) total += partial[k * H + j];
        out[j] = static_cast<scalar_t>(total);
      }
    }
  });
  return {dp, d_decay};
}

constexpr char k_scan_coefficients[] = "scan_coefficients", k_scan_coefficients_backward[] = "scan_coefficients_backward";

}  // namespace

TORCH_LIBRARY_FRAGMENT(rnnkit_fused, m) {
  m.def("scan_coefficients(int kind, Tensor projected, Tensor? decay_logit) -> (Tensor, Tensor)");
  m.def("scan_coefficients_backward(int kind, Tensor projected, Tensor? decay_logit, Tensor grad_a, Tensor grad_b) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(rnnkit_fused, CPU, m) {
  m.impl("scan_coefficients", &scan_coefficients);
  m.impl("scan_coefficients_backward", &scan_coefficients_backward);
}

TORCH_LIBRARY_IMPL(rnnkit_fused, Autograd, m) {
  m.impl("scan_coefficients", &rnnkit::InferenceOnly<decltype(scan_coefficients), scan_coefficients, k_scan_coefficients>::call);
  m.impl("scan_coefficients_backward",
         &rnnkit::InferenceOnly<decltype(scan_coefficients_backward), scan_coefficients_backward, k_scan_coefficients_backward>::call);
}
