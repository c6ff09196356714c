// The linear scan of the minGRU, minLSTM and RG-LRU families: h_t = a_t * h_{t-1} + b_t.
//
// Contract (rnnkit/engine/scan.py has the math and differentiates around this op):
//   a, b: (T, F) contiguous; h0: (F,); the result h: (T, F), every state, with
//   forward:  h_t = a_t * h_{t-1} + b_t for t = 0..T-1, h_{-1} = h0;
//   reverse:  h_t = a_t * h_{t+1} + b_t for t = T-1..0, h_T = h0.
// linear_scan_backward: the gradients (∂a, ∂b, ∂h0) from g = ∂L/∂h. The total gradient of every
// state is a scan in the other direction, δ_t = g_t + a_{t+1} δ_{t+1} (forward direction; its
// mirror for reverse), then ∂a_t = δ_t h_{t-1}, ∂b_t = δ_t, ∂h0 = a_0 δ_0: one scan, one pass.
//
// Work is split two ways. Features are independent, so threads take contiguous slices of F and
// each runs the sequential recurrence over its slice, the inner loop vectorised over features:
// one pass over memory. When F is too narrow to give every thread a slice (B = 1 and a small H),
// time is chunked as well (K chunks): every chunk is scanned from a zero start keeping the running
// product of a, the true states entering the chunks are carried across the K chunk ends, and a
// last pass adds each chunk's carry times the running product. Both orders of summation are exact
// in exact arithmetic and agree with the step loop to rounding (tested to 1e-10 in float64).

#include <ATen/core/Tensor.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include "buffer_pool.h"
#include "inference_only.h"

#include <algorithm>
#include <cstdint>
#include <tuple>
#include <vector>

namespace {

// Features per thread below which time is chunked too: a narrower slice leaves threads idle.
constexpr int64_t kMinSliceFeatures = 128;
// Below this many states a scan runs on one thread: waking a second costs more than it saves.
constexpr int64_t kMinParallelStates = 1 << 16;

template <typename scalar_t>
struct Scan {
  const scalar_t* a;
  const scalar_t* b;
  scalar_t* h;
  int64_t T, F;
  bool reverse;
  // The step at time t reads the coefficient of time t + lag: 0 for the forward scan; ±1 for the
  // gradient's scan, whose coefficient at t is the a of the step after t. Out of range it is 0
  // (only ever at the very first step, where it multiplies the zero start).
  int64_t lag = 0;

  int64_t at(int64_t step) const { return reverse ? T - 1 - step : step; }  // the time index of the step-th step
  const scalar_t* coefficients(int64_t t) const { return t + lag >= 0 && t + lag < T ? a + (t + lag) * F : nullptr; }

  // Steps [begin, end) over features [f0, f1), from `state` (updated in place), writing h. With
  // `decay`, also the running product of a over those steps (the decay of a zero-start chunk).
  void run(int64_t begin, int64_t end, int64_t f0, int64_t f1, scalar_t* state, scalar_t* decay) const {
    for (int64_t step = begin; step < end; ++step) {
      const int64_t t = at(step), row = t * F;
      const scalar_t* a_t = coefficients(t);
      const scalar_t* b_t = b + row;
      scalar_t* h_t = h + row;
      if (a_t == nullptr) {
        for (int64_t f = f0; f < f1; ++f) state[f - f0] = h_t[f] = b_t[f];
        if (decay != nullptr) std::fill(decay, decay + (f1 - f0), scalar_t(0));
        continue;
      }
      if (decay != nullptr) {
        for (int64_t f = f0; f < f1; ++f) decay[f - f0] *= a_t[f];
      }
      for (int64_t f = f0; f < f1; ++f) {
        const scalar_t next = a_t[f] * state[f - f0] + b_t[f];
        state[f - f0] = next;
        h_t[f] = next;
      }
    }
  }

  // Adds decay(step) * carry to the states of steps [begin, end), decay recomputed as it goes.
  void fix_up(int64_t begin, int64_t end, int64_t f0, int64_t f1, const scalar_t* carry) const {
    std::vector<scalar_t> carried(carry, carry + (f1 - f0));  // carry times the product of a so far
    for (int64_t step = begin; step < end; ++step) {
      const int64_t t = at(step);
      const scalar_t* a_t = coefficients(t);  // never null here: only the first step of all can be out of range
      scalar_t* h_t = h + t * F;
      for (int64_t f = f0; f < f1; ++f) {
        carried[f - f0] *= a_t[f];
        h_t[f] += carried[f - f0];
      }
    }
  }
};

template <typename scalar_t>
void scan_features(const Scan<scalar_t>& scan, const scalar_t* h0) {
  at::parallel_for(0, scan.F, kMinSliceFeatures, [&](int64_t f0, int64_t f1) {
    std::vector<scalar_t> state(h0 + f0, h0 + f1);
    scan.run(0, scan.T, f0, f1, state.data(), nullptr);
  });
}

template <typename scalar_t>
void scan_chunks(const Scan<scalar_t>& scan, const scalar_t* h0, int64_t chunks) {
  const int64_t T = scan.T, F = scan.F, size = (T + chunks - 1) / chunks;
  chunks = (T + size - 1) / size;
  std::vector<scalar_t> ends(chunks * F), decays(chunks * F, scalar_t(1));
  // 1. Every chunk on its own, the first from h0 (so it is final), the others from zero.
  at::parallel_for(0, chunks, 1, [&](int64_t k0, int64_t k1) {
    for (int64_t k = k0; k < k1; ++k) {
      scalar_t* state = ends.data() + k * F;
      if (k == 0) std::copy(h0, h0 + F, state); else std::fill(state, state + F, scalar_t(0));
      scan.run(k * size, std::min(T, (k + 1) * size), 0, F, state, k == 0 ? nullptr : decays.data() + k * F);
    }
  });
  // 2. The true state entering chunk k: carried across the chunk ends, in order.
  std::vector<scalar_t> carries(chunks * F, scalar_t(0));
  for (int64_t k = 1; k < chunks; ++k) {
    const scalar_t* previous = k == 1 ? ends.data() : carries.data() + (k - 1) * F;
    scalar_t* carry = carries.data() + k * F;
    if (k == 1) {
      std::copy(previous, previous + F, carry);
    } else {
      const scalar_t* end = ends.data() + (k - 1) * F;
      const scalar_t* decay = decays.data() + (k - 1) * F;
      for (int64_t f = 0; f < F; ++f) carry[f] = end[f] + decay[f] * previous[f];
    }
  }
  // 3. Each later chunk's states get their carry, decayed step by step.
  at::parallel_for(1, chunks, 1, [&](int64_t k0, int64_t k1) {
    for (int64_t k = k0; k < k1; ++k) scan.fix_up(k * size, std::min(T, (k + 1) * size), 0, F, carries.data() + k * F);
  });
}

void check_scan(const char* op, const at::Tensor& a, const at::Tensor& b, const at::Tensor& h0, int64_t chunks) {
  TORCH_CHECK(a.dim() == 2 && b.sizes() == a.sizes(), op, ": expected tensors of one shape (T, F), got ", a.sizes(), " and ", b.sizes());
  TORCH_CHECK(h0.dim() == 1 && h0.size(0) == a.size(1), op, ": expected h0 of shape (F,) = (", a.size(1), ",), got ", h0.sizes());
  TORCH_CHECK(a.scalar_type() == b.scalar_type() && a.scalar_type() == h0.scalar_type(), op, ": expected one dtype, got ",
              a.scalar_type(), ", ", b.scalar_type(), ", ", h0.scalar_type());
  TORCH_CHECK(chunks >= 0, op, ": expected chunks >= 0 (0: chosen here), got ", chunks);
}

template <typename scalar_t>
void run_scan(const Scan<scalar_t>& scan, const scalar_t* h0, int64_t chunks) {
  if (scan.T == 0 || scan.F == 0) return;
  if (chunks == 0) {  // time chunks only where feature slices cannot keep every thread busy
    const int64_t threads = at::get_num_threads();
    const bool narrow = scan.F < threads * kMinSliceFeatures && scan.T * scan.F >= kMinParallelStates;
    chunks = narrow ? std::min<int64_t>(threads, scan.T) : 1;
  }
  chunks = std::min(chunks, scan.T);
  if (chunks <= 1) scan_features(scan, h0);
  else scan_chunks(scan, h0, chunks);
}

at::Tensor linear_scan(const at::Tensor& a, const at::Tensor& b, const at::Tensor& h0, bool reverse, int64_t chunks) {
  check_scan("linear_scan", a, b, h0, chunks);
  const at::Tensor a_c = a.contiguous(), b_c = b.contiguous(), h0_c = h0.contiguous();
  at::Tensor h = rnnkit::pool::empty(a_c.sizes(), a_c.options());
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "rnnkit_linear_scan", [&] {
    const Scan<scalar_t> scan{a_c.const_data_ptr<scalar_t>(), b_c.const_data_ptr<scalar_t>(), h.data_ptr<scalar_t>(), a.size(0), a.size(1), reverse};
    run_scan(scan, h0_c.const_data_ptr<scalar_t>(), chunks);
  });
  return h;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> linear_scan_backward(const at::Tensor& a, const at::Tensor& h, const at::Tensor& h0,
                                                                    const at::Tensor& grad_h, bool reverse, int64_t chunks) {
  check_scan("linear_scan_backward", a, grad_h, h0, chunks);
  TORCH_CHECK(h.sizes() == a.sizes() && h.scalar_type() == a.scalar_type(), "linear_scan_backward: expected h like a, got ", h.sizes());
  const at::Tensor a_c = a.contiguous(), h_c = h.contiguous(), h0_c = h0.contiguous(), g_c = grad_h.contiguous();
  at::Tensor grad_a = rnnkit::pool::empty(a_c.sizes(), a_c.options()), grad_b = rnnkit::pool::empty(a_c.sizes(), a_c.options()), grad_h0 = at::zeros(h0_c.sizes(), h0_c.options());
  const int64_t T = a.size(0), F = a.size(1);
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "rnnkit_linear_scan_backward", [&] {
    // δ (into grad_b): the scan in the other direction, its coefficient at t the a of the step after t.
    Scan<scalar_t> totals{a_c.const_data_ptr<scalar_t>(), g_c.const_data_ptr<scalar_t>(), grad_b.data_ptr<scalar_t>(), T, F, !reverse};
    totals.lag = reverse ? -1 : 1;
    const std::vector<scalar_t> zero(F, scalar_t(0));
    run_scan(totals, zero.data(), chunks);
    const scalar_t *a_p = a_c.const_data_ptr<scalar_t>(), *h_p = h_c.const_data_ptr<scalar_t>(), *h0_p = h0_c.const_data_ptr<scalar_t>();
    const scalar_t* delta = grad_b.const_data_ptr<scalar_t>();
    scalar_t* da = grad_a.data_ptr<scalar_t>();
    at::parallel_for(0, T, std::max<int64_t>(1, 4096 / std::max<int64_t>(F, 1)), [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t previous = reverse ? t + 1 : t - 1;  // the step whose state step t reads
        const scalar_t* h_prev = previous >= 0 && previous < T ? h_p + previous * F : h0_p;
        for (int64_t f = 0; f < F; ++f) da[t * F + f] = delta[t * F + f] * h_prev[f];
      }
    });
    if (T > 0) {
      const int64_t first = reverse ? T - 1 : 0;  // the step that reads h0
      scalar_t* dh0 = grad_h0.data_ptr<scalar_t>();
      for (int64_t f = 0; f < F; ++f) dh0[f] = a_p[first * F + f] * delta[first * F + f];
    }
  });
  return {grad_a, grad_b, grad_h0};
}

constexpr char k_linear_scan[] = "linear_scan", k_linear_scan_backward[] = "linear_scan_backward";

}  // namespace

TORCH_LIBRARY_FRAGMENT(rnnkit_fused, m) {
  m.def("linear_scan(Tensor a, Tensor b, Tensor h0, bool reverse, int chunks) -> Tensor");
  m.def("linear_scan_backward(Tensor a, Tensor h, Tensor h0, Tensor grad_h, bool reverse, int chunks) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(rnnkit_fused, CPU, m) {
  m.impl("linear_scan", &linear_scan);
  m.impl("linear_scan_backward", &linear_scan_backward);
}

TORCH_LIBRARY_IMPL(rnnkit_fused, Autograd, m) {
  m.impl("linear_scan", &rnnkit::InferenceOnly<decltype(linear_scan), linear_scan, k_linear_scan>::call);
  m.impl("linear_scan_backward", &rnnkit::InferenceOnly<decltype(linear_scan_backward), linear_scan_backward, k_linear_scan_backward>::call);
}
