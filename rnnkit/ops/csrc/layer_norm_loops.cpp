// The LayerNorm LSTM's loops over time, forward and backward (the comment above NormLoop says how they run).
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
  StepBarrier barrier;
  loop.barrier = &barrier;
  run_team(loop.threads, barrier, [&](int tid, int nt) {
    NormLoop<T> mine = loop;
    StepBarrier alone;
    int64_t u0 = 0, u1 = H;
    int rank = 0, ranks = 1;  // the thread's place among those that share rows' statistics
    if (share_rows(mine, N, tid, nt, true, 4 * H * H * int64_t(sizeof(T)), alone)) {
#pragma omp single
      if (backward) own_sums.assign(static_cast<size_t>(nt) * 6 * H, 0.0);  // (the single's barrier publishes it)
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
  for (size_t offset = 0; offset < own_sums.size(); offset += 6 * H) {  // each thread's sums, in thread order
    const double* sums = own_sums.data() + offset;
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
  at::Tensor hs = rnnkit::pool::empty({L + 1, N, H}, xp.options()), cs = rnnkit::pool::empty({L + 1, N, H}, xp.options());
  hs.select(0, reverse ? L : 0).copy_(h0);
  cs.select(0, reverse ? L : 0).copy_(c0);
  at::Tensor y = valid.has_value() ? rnnkit::pool::empty({L, N, H}, xp.options()) : hs.narrow(0, reverse ? 0 : 1, L);  // returned empty, as in forward_loop
  at::Tensor gates = xp, ahat = rnnkit::pool::empty(xp.sizes(), xp.options());
  at::Tensor chat = rnnkit::pool::empty({L, N, H}, xp.options()), rstd = at::empty({L, N, 2}, xp.options());
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
  at::Tensor dgx = rnnkit::pool::empty(gates.sizes(), gates.options()), da = rnnkit::pool::empty(gates.sizes(), gates.options());
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

constexpr char k_layer_norm_lstm_forward[] = "layer_norm_lstm_forward", k_layer_norm_lstm_backward[] = "layer_norm_lstm_backward";

}  // namespace

TORCH_LIBRARY_FRAGMENT(rnnkit_fused, m) {
  m.def("layer_norm_lstm_forward(Tensor(a!) xp, Tensor h0, Tensor c0, Tensor w_hh, Tensor gain_hh, Tensor gain_cell, Tensor bias_cell, Tensor? valid, bool reverse, Tensor? zoneout=None) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("layer_norm_lstm_backward(Tensor gates, Tensor hs, Tensor cs, Tensor ahat, Tensor chat, Tensor rstd, Tensor w_hh, Tensor gain_hh, Tensor gain_cell, Tensor bias_cell, Tensor? valid, bool reverse, Tensor dy, Tensor dh_n, Tensor dc_n, Tensor? zoneout=None) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(rnnkit_fused, CPU, m) {
  m.impl("layer_norm_lstm_forward", &layer_norm_lstm_forward);
  m.impl("layer_norm_lstm_backward", &layer_norm_lstm_backward);
}

TORCH_LIBRARY_IMPL(rnnkit_fused, Autograd, m) {
  m.impl("layer_norm_lstm_forward", &rnnkit::InferenceOnly<decltype(layer_norm_lstm_forward), layer_norm_lstm_forward, k_layer_norm_lstm_forward>::call);
  m.impl("layer_norm_lstm_backward", &rnnkit::InferenceOnly<decltype(layer_norm_lstm_backward), layer_norm_lstm_backward, k_layer_norm_lstm_backward>::call);
}
