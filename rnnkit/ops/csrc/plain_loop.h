// The plain families' loop over time (RNN, LSTM with its projection, GRU): everything a step needs as raw
// pointers, and one thread's share of a step forward (its backward is in plain_loop_backward.h). The team of threads
// over time is in loop_drivers.h, and csrc/fused_loops.cpp's ops set it up.
#pragma once

#include "bf16_tiles.h"
#include "loop_common.h"

#include <type_traits>

namespace rnnkit::loops {

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

  // Inference with a bf16 output: y is a float32 buffer of the current chunk's steps only, from step y_start,
  // which each thread rounds into the bf16 output once the chunk is done (to_bf16_output).
  int64_t y_start = 0;
  T* output_row(int64_t t, int64_t n) const { return y + ((t - y_start) * N + n) * Hout; }
  // Steps [c0, c1) of y, rows [row0, row1) and columns [p0, p1) (what this thread wrote), rounded into `out` (L, N, H_out).
  void to_bf16_output(uint16_t* out, int64_t c0, int64_t c1, int64_t p0, int64_t p1) const {
    for (int64_t t = c0; t < c1; ++t)
      for (int64_t n = row0; n < row1; ++n) {
        const T* from = output_row(t, n);
        uint16_t* to = out + (t * N + n) * Hout;
#pragma omp simd
        for (int64_t p = p0; p < p1; ++p) to[p] = rnnkit_bf16::to_bf16(float(from[p]));
      }
  }

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
        T* y_row = output_row(t, n);
        if (kind == LSTM) {
          const T* c_prev = cs + (before(t) * N + n) * H;
          T* c_new = cs + (after(t) * N + n) * H;
          for (int64_t u = u0; u < u1; ++u) c_new[u] = c_prev[u];
        }
        if (kind == GRU) {  // unread by backward here, but a result of the op: its value, as the Python loop's, not stale memory
          const T* rec = scratch + n * G * H;
          T* hn_row = hn + (step_slot(t) * N + n) * H;
          for (int64_t u = u0; u < u1; ++u) hn_row[u] = rec[2 * H + u] + (b_hn ? b_hn[u] : T(0));
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
    T* y_row = output_row(t, n);
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
      T* y_row = output_row(t, n);
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

  // ---- backward (defined in plain_loop_backward.h) ----
  void backward_collect(int64_t t, int64_t q0, int64_t q1) const;
  void backward_projection(int64_t t, const Panels<T>& projection) const;
  void backward_gates(int64_t t, int64_t u0, int64_t u1) const;
  template <bool kZoned, bool kFlags>
  void gate_row(int64_t t, int64_t n, int64_t u0, int64_t u1, const T* m) const;
  void round_gate_gradients(int64_t t, int64_t u0, int64_t u1) const;
  void backward_projected_bypass(int64_t t, int64_t q0, int64_t q1) const;
  void backward_gemm(int64_t t, int64_t q0, int64_t q1, const Panels<T>& recurrent, const Panels<T>& gru_n, const rnnkit_bf16::TilePanels& tiles) const;
};

// Thread `tid`'s share of a plain loop (share_rows): whether it runs by rows, its hidden units and its output
// columns. The LSTM projection and AMX tiles keep the split by units: the projection's step needs every unit of a
// row, and AMX writes whole 16-row tiles, which would reach other threads' rows.
struct PlainShare {
  bool by_rows;
  std::pair<int64_t, int64_t> units, outputs;
};

template <typename T>
PlainShare share_plain(Loop<T>& mine, int tid, int nt, StepBarrier& alone) {
  const int64_t weight_bytes = mine.G * mine.H * mine.Hout * int64_t(sizeof(T));
  if (share_rows(mine, mine.N, tid, nt, !mine.proj && !mine.low.amx, weight_bytes, alone)) return {true, {0, mine.H}, {0, mine.Hout}};
  return {false, slice(mine.H, nt, tid), slice(mine.Hout, nt, tid)};
}

// W_hh's columns packed as bf16 tiles for the dot products (bf16 operands; the loop runs them in float32 only).
template <typename T>
rnnkit_bf16::TilePanels low_tiles(const T* base, int64_t row_stride, int64_t col_stride, int64_t K,
                                  const std::vector<std::pair<int64_t, int64_t>>& ranges) {
  if constexpr (std::is_same_v<T, float>)
    return rnnkit_bf16::TilePanels(base, row_stride, col_stride, K, ranges);
  else
    return rnnkit_bf16::TilePanels();
}

}  // namespace rnnkit::loops
