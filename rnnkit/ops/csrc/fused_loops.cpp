// The compiled loop kernel of rnnkit's fused engine: the per-step recurrence.
//
// Same contract as rnnkit/engine/fused_loops.py (read its docstring; the math is in
// fused.py). Python does the GEMMs that span all steps; these ops run the loop over
// time, where per-step dispatch overhead is what a Python loop cannot avoid. This file holds the
// ops (their buffers and checks); loop_drivers.h the threads' loop, plain_loop*.h one thread's step.
//
// The whole time loop runs inside one OpenMP region. With a small batch each thread owns a slice of
// hidden units, computes the GEMM columns of exactly those units with the register-blocked kernel
// of loop_common.h (its weight columns packed once per call into contiguous panels), then their gate math,
// and threads meet at one spinning barrier per step (two with an LSTM projection). With 8 or more
// rows per thread each thread runs its own rows alone, without barriers (share_rows). There is no
// per-step dispatch, allocation or fork/join. Measured faster than a library GEMM per step
// (at::mm_out, MKL) at every batch size tried, 1 to 64.
// Only headers needed are included: <torch/extension.h> alone takes ~25 s to compile.

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
#include "loop_drivers.h"
#include "plain_loop.h"

#include <algorithm>
#include <cstring>
#include <optional>
#include <tuple>
#include <type_traits>
#include <vector>

namespace {

using namespace rnnkit::loops;

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
    std::optional<at::Tensor> output_mask, std::optional<at::ScalarType> output_dtype) {
  const int64_t L = xp.size(0), N = xp.size(1), GH = xp.size(2), Hout = h0.size(1);
  // y in bf16 from float32 states (autocast's output): rounded by the loop as it goes, a buffer of its own
  const bool low_output = output_dtype.has_value() && *output_dtype != xp.scalar_type();
  TORCH_CHECK(!low_output || (*output_dtype == at::kBFloat16 && xp.scalar_type() == at::kFloat),
              "forward_loop: output_dtype must be xp's dtype, or bf16 with a float32 xp, got ", *output_dtype, " with ", xp.scalar_type());
  at::Tensor y_low = low_output ? rnnkit::pool::empty({L, N, Hout}, xp.options().dtype(at::kBFloat16)) : at::Tensor();
  const bool proj = w_hr.has_value();
  const int64_t G = kind == LSTM ? 4 : kind == GRU ? 3 : 1, H = GH / G;
  at::Tensor hs = rnnkit::pool::empty({L + 1, N, Hout}, xp.options());
  // Without padding or projection the output is exactly the states it saves: the loop's writes to y
  // land in hs, one (L, N, H) buffer less. Operator outputs must not alias each other (torch.compile
  // and export rely on it), so y is then returned empty and Python takes the output as a view of hs.
  // With an output mask the output differs from the states: a buffer of its own.
  const bool alias = !valid.has_value() && !proj && !output_mask.has_value();
  at::Tensor y = alias ? at::empty({0}, xp.options()).set_(hs.storage(), hs.storage_offset() + (reverse ? 0 : N * Hout), {L, N, Hout}, {N * Hout, Hout, 1})
                       : rnnkit::pool::empty({L, N, Hout}, xp.options());
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
    drive_forward(loop, xp.options(), low_output ? reinterpret_cast<uint16_t*>(y_low.data_ptr<at::BFloat16>()) : nullptr);
  });
  return {low_output ? y_low : alias ? at::empty({0}, xp.options()) : y, hs, cs, hn, hraw};
}

// Steps per chunk of the inference loop: about 256K projected values (1 MB in float32).
int64_t inference_chunk(int64_t N, int64_t GH) { return N * GH == 0 ? 1 : std::max<int64_t>(1, (int64_t(1) << 18) / (N * GH)); }

// Inference over a whole sequence from the raw input: returns (y, h_n, c_n), c_n empty but for the LSTM.
std::tuple<at::Tensor, at::Tensor, at::Tensor> forward_inference(
    int64_t kind, at::Tensor x, at::Tensor w_ih, std::optional<at::Tensor> bias, at::Tensor h0, at::Tensor c0,
    at::Tensor w_hh, std::optional<at::Tensor> b_hn, std::optional<at::Tensor> w_hr, std::optional<at::Tensor> valid,
    bool reverse, std::optional<at::ScalarType> output_dtype) {
  const int64_t L = x.size(0), N = x.size(1), I = x.size(2), GH = w_hh.size(0), Hout = h0.size(1);
  const bool proj = w_hr.has_value();
  const int64_t G = kind == LSTM ? 4 : kind == GRU ? 3 : 1, H = GH / G;
  const int64_t chunk = std::max<int64_t>(1, std::min(L, inference_chunk(N, GH)));
  // y in bf16 from a float32 x: the loop writes each chunk of steps to `y_values` and rounds it into y (drive_inference)
  const bool low_output = output_dtype.has_value() && *output_dtype != x.scalar_type();
  TORCH_CHECK(!low_output || (*output_dtype == at::kBFloat16 && x.scalar_type() == at::kFloat),
              "forward_inference: output_dtype must be x's dtype, or bf16 with a float32 x, got ", *output_dtype, " with ", x.scalar_type());
  at::Tensor y = rnnkit::pool::empty({L, N, Hout}, x.options().dtype(low_output ? at::kBFloat16 : x.scalar_type()));
  at::Tensor y_values = low_output ? at::empty({chunk, N, Hout}, x.options()) : y;
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
    // the last chunk's tiles start at row c0 * N and may run 15 rows past L * N: zero rows to spare. From the pool (paged
    // in), zeroing only the padding: at::zeros of a fresh buffer spends longer on first-touch page faults than the copy.
    const int64_t tile_rows = rnnkit_bf16::round_up(L * N, 16) + 16;
    x_tiles = rnnkit::pool::empty({tile_rows, x_width}, x.options().dtype(at::kBFloat16));
    x_tiles.narrow(0, 0, L * N).narrow(1, 0, I).copy_(x.reshape({L * N, I}));
    x_tiles.narrow(0, L * N, tile_rows - L * N).zero_();
    if (x_width > I) x_tiles.narrow(0, 0, L * N).narrow(1, I, x_width - I).zero_();
  }
  at::Tensor projected = at::empty({low.dot ? rnnkit_bf16::round_up(chunk * N, 16) : chunk * N, GH}, x.options());
  at::Tensor scratch = at::empty({low.dot ? low.rows : N, GH}, x.options());
  at::Tensor valid_t = ptr_source(valid), b_hn_t = ptr_source(b_hn), bias_t = ptr_source(bias);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "rnnkit_fused_inference", [&] {
    auto loop = forward_state<scalar_t>(kind, G, proj, reverse, valid_t, projected, y_values, hs, cs, hn, hraw, low.weights, b_hn_t, w_hr, scratch);
    loop.L = L;  // y_values may hold one chunk of steps
    loop.history = false;
    set_low(loop, low);
    drive_inference(loop, x_values.const_data_ptr<scalar_t>(), I, w_ih_values.const_data_ptr<scalar_t>(), data_or_null<scalar_t>(bias_t),
                    chunk, x.options(), low.dot ? reinterpret_cast<const uint16_t*>(x_tiles.const_data_ptr<at::BFloat16>()) : nullptr, x_width,
                    low_output ? reinterpret_cast<uint16_t*>(y.data_ptr<at::BFloat16>()) : nullptr);
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
  at::Tensor dgx = rnnkit::pool::empty({kept, N, GH}, gates.options());
  at::Tensor dgh_n = empty_like_or_none(gates, {kept, N, H}, kind == GRU);
  at::Tensor dgx_bf16 = low.on ? rnnkit::pool::empty({L, N, GH}, gates.options().dtype(at::kBFloat16)) : at::Tensor();
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

constexpr char k_forward_loop[] = "forward_loop", k_forward_inference[] = "forward_inference", k_backward_loop[] = "backward_loop";

}  // namespace

TORCH_LIBRARY(rnnkit_fused, m) {
  m.def("forward_loop(int kind, Tensor(a!) xp, Tensor h0, Tensor c0, Tensor w_hh, Tensor? b_hn, Tensor? w_hr, Tensor? valid, bool reverse, Tensor? zoneout=None, Tensor? output_mask=None, ScalarType? output_dtype=None) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("forward_inference(int kind, Tensor x, Tensor w_ih, Tensor? bias, Tensor h0, Tensor c0, Tensor w_hh, Tensor? b_hn, Tensor? w_hr, Tensor? valid, bool reverse, ScalarType? output_dtype=None) -> (Tensor, Tensor, Tensor)");
  m.def("backward_loop(int kind, Tensor gates, Tensor hs, Tensor cs, Tensor hn, Tensor hraw, Tensor w_hh, Tensor? w_hr, Tensor? valid, bool reverse, Tensor dy, Tensor dh_n, Tensor dc_n, Tensor? zoneout=None, Tensor? output_mask=None) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(rnnkit_fused, CPU, m) {
  m.impl("forward_loop", &forward_loop);
  m.impl("forward_inference", &forward_inference);
  m.impl("backward_loop", &backward_loop);
}

// The kernels have no derivatives of their own: rnnkit/engine differentiates whole sequences
// around them (autograd.Functions with hand-written backward through time). Their Autograd kernel
// refuses a call that autograd would have to record, rather than let gradients stop silently.
TORCH_LIBRARY_IMPL(rnnkit_fused, Autograd, m) {
  m.impl("forward_loop", &rnnkit::InferenceOnly<decltype(forward_loop), forward_loop, k_forward_loop>::call);
  m.impl("forward_inference", &rnnkit::InferenceOnly<decltype(forward_inference), forward_inference, k_forward_inference>::call);
  m.impl("backward_loop", &rnnkit::InferenceOnly<decltype(backward_loop), backward_loop, k_backward_loop>::call);
}
