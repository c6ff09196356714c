// One thread's share of a plain loop's backward step (the Loop struct and its forward are in plain_loop.h): dh from the
// output's gradient, the gate gradients of its units, their rounding for bf16 products, and its columns of dG_t W_hh.
#pragma once

#include "plain_loop.h"

namespace rnnkit::loops {

// dh += dy_t on output columns [q0, q1); with projection, also record dh_t for dW_hr.
template <typename T>
inline void Loop<T>::backward_collect(int64_t t, int64_t q0, int64_t q1) const {
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
template <typename T>
inline void Loop<T>::backward_projection(int64_t t, const Panels<T>& projection) const {
  gemm_panels(!zoned() ? dh : dproj + t * N * Hout, Hout, projection, scratch, H, N, false);
}

// Gate gradients of hidden units [u0, u1). Without projection it also replaces dh with
// the part of dh_{t-1} that bypasses W_hh (GRU: dh⊙z; padding: all of dh; zoneout: m_t dh_t too).
template <typename T>
inline void Loop<T>::backward_gates(int64_t t, int64_t u0, int64_t u1) const {
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
template <typename T>
template <bool kZoned, bool kFlags>
inline void Loop<T>::gate_row(int64_t t, int64_t n, int64_t u0, int64_t u1, const T* m) const {
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
template <typename T>
inline void Loop<T>::round_gate_gradients(int64_t t, int64_t u0, int64_t u1) const {
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
template <typename T>
inline void Loop<T>::backward_projected_bypass(int64_t t, int64_t q0, int64_t q1) const {
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
template <typename T>
inline void Loop<T>::backward_gemm(int64_t t, int64_t q0, int64_t q1, const Panels<T>& recurrent, const Panels<T>& gru_n,
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

}  // namespace rnnkit::loops
