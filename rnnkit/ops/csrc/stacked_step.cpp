// One time step through every layer and direction of a stacked layer, for streaming inference:
// `stacked_step` takes the layer's stacked state and returns its output and new state in one call,
// so that a length-1 call costs one op instead of a few tensor ops per (layer, direction).
// Math (rnnkit/layers/streaming.py): for layer k and direction d, (h', c')_kd = cell_step(x_k, h_kd, c_kd),
// x_{k+1} = [h'_k0 h'_k1]; the output is x after the last layer.
#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <cstring>
#include <tuple>

#include "inference_only.h"

namespace rnnkit {
void cell_step_into_cpu(int64_t kind, const at::Tensor& x, const at::Tensor& h, const at::Tensor& c, const at::Tensor& w_ih,
                        const at::Tensor& w_hh, const std::optional<at::Tensor>& b_ih, const std::optional<at::Tensor>& b_hh,
                        at::Tensor& h_out, at::Tensor& c_out);  // csrc/cell_step.cpp
}

namespace {

constexpr int64_t kLstm = 2, kGru = 3;  // rnnkit/ops/kinds.py

// cell_step reads the weights by the sizes of x and h, so a weight of another shape (a parameter replaced by
// hand) must fail here rather than be read out of bounds.
void check_cell(int64_t cell, int64_t gates, int64_t inputs, int64_t hidden, const at::Tensor& w_ih, const at::Tensor& w_hh,
                const std::optional<at::Tensor>& b_ih, const std::optional<at::Tensor>& b_hh) {
  const int64_t rows = gates * hidden;
  TORCH_CHECK(w_ih.dim() == 2 && w_ih.size(0) == rows && w_ih.size(1) == inputs, "stacked_step: cell ", cell, "'s w_ih must be (",
              rows, ", ", inputs, "), got ", w_ih.sizes());
  TORCH_CHECK(w_hh.dim() == 2 && w_hh.size(0) == rows && w_hh.size(1) == hidden, "stacked_step: cell ", cell, "'s w_hh must be (",
              rows, ", ", hidden, "), got ", w_hh.sizes());
  TORCH_CHECK(b_ih.has_value() == b_hh.has_value(), "stacked_step: cell ", cell, " has one bias without the other");
  for (const auto* bias : {&b_ih, &b_hh})
    TORCH_CHECK(!bias->has_value() || ((*bias)->dim() == 1 && (*bias)->size(0) == rows), "stacked_step: cell ", cell,
                "'s biases must be (", rows, "), got ", (*bias)->sizes());
}

// A list argument cannot hold None cheaply: a layer without bias passes empty tensors in the biases' places.
std::optional<at::Tensor> bias_or_none(const at::Tensor& bias) {
  return bias.numel() == 0 && bias.dim() == 1 ? std::nullopt : std::optional<at::Tensor>(bias);
}

// x (N, I), or a length-1 sequence (1, N, I); h0, c0 (cells, N, H) with cells = layers * directions (c0 read only by the
// LSTM); weights: per cell, in order, w_ih, w_hh, b_ih, b_hh (without bias, 1-D empty tensors in the biases' places).
// Returns y (N, directions * H), or (1, N, directions * H) for a sequence, h_n and c_n (cells, N, H; c_n empty unless
// LSTM). y never shares memory with h_n.
std::tuple<at::Tensor, at::Tensor, at::Tensor> stacked_step(int64_t kind, at::Tensor x, at::Tensor h0, at::Tensor c0,
                                                            at::TensorList weights, int64_t directions) {
  TORCH_CHECK(kind >= 0 && kind <= kGru, "stacked_step: kind must be 0..3, got ", kind);
  const bool lstm = kind == kLstm;
  const int64_t gates = lstm ? 4 : kind == kGru ? 3 : 1;
  TORCH_CHECK(directions == 1 || directions == 2, "stacked_step: directions must be 1 or 2, got ", directions);
  const bool sequence = x.dim() == 3;  // a length-1 sequence (1, N, I): y comes back as (1, N, D*H)
  TORCH_CHECK((x.dim() == 2 || (sequence && x.size(0) == 1)) && h0.dim() == 3 && x.size(-2) == h0.size(1),
              "stacked_step: expected x (N, I) or (1, N, I) and h0 (cells, N, H), got ", x.sizes(), " and ", h0.sizes());
  const int64_t cells = h0.size(0), N = h0.size(1), H = h0.size(2);
  TORCH_CHECK(cells % directions == 0 && static_cast<int64_t>(weights.size()) == 4 * cells,
              "stacked_step: expected 4 weights for each of the ", cells, " cells, got ", weights.size());
  TORCH_CHECK(!lstm || c0.sizes() == h0.sizes(), "stacked_step: c0 must have h0's shape ", h0.sizes(), ", got ", c0.sizes());
  // Each cell writes its new state straight into its slice of h_n (and c_n), so nothing is stacked afterwards.
  // A one-direction layer's last cell writes into y instead, which is then copied into h_n: y never shares h_n's memory.
  at::Tensor h_n = at::empty({cells, N, H}, x.options());
  at::Tensor c_n = lstm ? at::empty({cells, N, H}, x.options()) : at::empty({0}, x.options());
  at::Tensor y = directions == 1 ? at::empty({N, H}, x.options()) : at::Tensor();
  at::Tensor input = sequence ? x.select(0, 0) : x, no_state;
  for (int64_t layer = 0; layer < cells / directions; ++layer) {
    const bool last = layer + 1 == cells / directions;
    for (int64_t direction = 0; direction < directions; ++direction) {
      const int64_t cell = layer * directions + direction;
      const at::Tensor h = h0.select(0, cell);
      const at::Tensor &w_ih = weights[4 * cell], &w_hh = weights[4 * cell + 1];
      const std::optional<at::Tensor> b_ih = bias_or_none(weights[4 * cell + 2]), b_hh = bias_or_none(weights[4 * cell + 3]);
      check_cell(cell, gates, input.size(1), H, w_ih, w_hh, b_ih, b_hh);
      at::Tensor h_out = last && directions == 1 ? y : h_n.select(0, cell);
      at::Tensor c_out = lstm ? c_n.select(0, cell) : no_state;
      rnnkit::cell_step_into_cpu(kind, input, h, lstm ? c0.select(0, cell) : h, w_ih, w_hh, b_ih, b_hh, h_out, c_out);
    }
    if (directions == 2)
      input = at::cat({h_n.select(0, 2 * layer), h_n.select(0, 2 * layer + 1)}, 1);
    else if (!last)
      input = h_n.select(0, layer);
  }
  if (directions == 1) {
    std::memcpy(static_cast<char*>(h_n.data_ptr()) + (cells - 1) * y.nbytes(), y.const_data_ptr(), y.nbytes());  // both fresh, contiguous
  } else {
    y = input;  // the last layer's cat: memory of its own
  }
  return {sequence ? y.unsqueeze(0) : y, h_n, c_n};
}

constexpr char k_stacked_step[] = "stacked_step";

}  // namespace

TORCH_LIBRARY_FRAGMENT(rnnkit_fused, m) {
  m.def("stacked_step(int kind, Tensor x, Tensor h0, Tensor c0, Tensor[] weights, int directions) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(rnnkit_fused, CPU, m) { m.impl("stacked_step", &stacked_step); }

TORCH_LIBRARY_IMPL(rnnkit_fused, Autograd, m) {
  m.impl("stacked_step", &rnnkit::InferenceOnly<decltype(stacked_step), stacked_step, k_stacked_step>::call);
}
