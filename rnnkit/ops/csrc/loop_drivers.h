// The team of threads that runs a plain family's loop over time (csrc/plain_loop.h has one thread's share of a step):
// training's forward and backward, and inference, which projects the inputs a chunk of steps at a time inside the loop.
// The whole time loop runs inside one OpenMP region: each thread owns a slice of hidden units (meeting the others at a
// spinning barrier per step) or, with 8 or more batch rows per thread, its own rows (no barrier at all; share_rows).
#pragma once

#include "plain_loop_backward.h"

#include <ATen/core/TensorBody.h>

#include <optional>
#include <type_traits>
#include <utility>
#include <vector>

namespace rnnkit::loops {

// Runs body(mine, share, team) on each thread of a team: `mine` is the thread's own copy of `loop` (it moves its own
// chunk_start, rows and barrier), `share` its part of every step (share_plain), `team` the barrier all threads meet at
// (mine.barrier is that one, or the thread's own where it runs its own rows).
template <typename T, typename Body>
void run_plain_team(const Loop<T>& loop, const Body& body) {
  StepBarrier barrier;
  run_team(thread_count(loop.H), barrier, [&](int tid, int nt) {
    Loop<T> mine = loop;
    mine.barrier = &barrier;
    StepBarrier alone;  // a thread that runs its own rows meets no one
    const PlainShare share = share_plain(mine, tid, nt, alone);
    body(mine, share, barrier);
  });
}

// With `y_low` set, each thread also rounds its part of each step's output into y_low (L, N, H_out) in bf16 once the
// step is done, while it is in cache (see drive_inference).
template <typename T>
void drive_forward(const Loop<T>& loop, const at::TensorOptions& options, uint16_t* y_low = nullptr) {
  const int64_t L = loop.L, H = loop.H, Hout = loop.Hout, G = loop.G;
  run_plain_team(loop, [&](Loop<T>& mine, const PlainShare& share, StepBarrier& barrier) {
    const auto [u0, u1] = share.units;
    const auto [p0, p1] = share.outputs;
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
    for (int64_t s = 0; s < L; ++s) {
      const int64_t t = loop.reverse ? L - 1 - s : s;
      mine.forward_step(t, u0, u1, p0, p1, recurrent, projection, tiles);
      if (y_low) mine.to_bf16_output(y_low, t, t + 1, p0, p1);
    }
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
// With `y_low` set, shared.y holds one chunk of steps and each thread rounds what it wrote into y_low (L, N, H_out) in
// bf16 after each chunk, while it is in cache: a separate float32 -> bf16 pass over the whole output reads and writes it
// all again (at B=64, T=256, H=512: 7.7 of an Elman RNN's 34 ms under autocast).
template <typename T>
void drive_inference(const Loop<T>& shared, const T* x, int64_t I, const T* w_ih, const T* bias, int64_t chunk,
                     const at::TensorOptions& options, const uint16_t* x_tiles = nullptr, int64_t x_width = 0, uint16_t* y_low = nullptr) {
  const int64_t L = shared.L, N = shared.N, H = shared.H, Hout = shared.Hout, G = shared.G, GH = G * H;
  run_plain_team(shared, [&](Loop<T>& loop, const PlainShare& share, StepBarrier& barrier) {
    const bool by_rows = share.by_rows;
    const auto [u0, u1] = share.units;
    const auto [p0, p1] = share.outputs;
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
      if (y_low) loop.y_start = c0;
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
      if (y_low) loop.to_bf16_output(y_low, c0, c1, p0, p1);
    }
  });
}

template <typename T>
void drive_backward(const Loop<T>& loop, const at::TensorOptions& options) {
  const int64_t L = loop.L, H = loop.H, Hout = loop.Hout, G = loop.G;
  run_plain_team(loop, [&](Loop<T>& mine, const PlainShare& share, StepBarrier& barrier) {
    const auto [u0, u1] = share.units;
    const auto [q0, q1] = share.outputs;
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

}  // namespace rnnkit::loops
