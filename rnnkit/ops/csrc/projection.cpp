// The input projection of a whole sequence, x W^T + b, into a pooled buffer (buffer_pool.h).
//
// For an output of 32 MiB or more (rnnkit/engine/gemm.py's rule) the page faults of fresh memory cost
// as much as the GEMM: at config C (16,384 x 128 into 2,048 columns) oneDNN into fresh memory took 80 ms
// and MKL into a reused buffer 50 ms. Neither ATen's oneDNN linear nor torch.addmm can write into a
// buffer the caller keeps, so this op allocates from the pool and runs MKL (at::addmm_out) into it.

#include <ATen/core/Tensor.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/mm.h>
#include <torch/library.h>

#include "buffer_pool.h"
#include "inference_only.h"

#include <optional>

namespace {

at::Tensor projection(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias) {
  TORCH_CHECK(x.dim() == 2 && weight.dim() == 2 && x.size(1) == weight.size(1), "projection: expected x (rows, inner) and weight (outputs, inner), got ",
              x.sizes(), " and ", weight.sizes());
  TORCH_CHECK(x.scalar_type() == weight.scalar_type() && (!bias.has_value() || bias->scalar_type() == x.scalar_type()),
              "projection: x, weight and bias must share a dtype, got ", x.scalar_type(), " and ", weight.scalar_type());
  at::Tensor out = rnnkit::pool::empty({x.size(0), weight.size(0)}, x.options());
  if (bias.has_value()) return at::addmm_out(out, *bias, x, weight.t());
  return at::mm_out(out, x, weight.t());
}

constexpr char k_projection[] = "projection";

}  // namespace

TORCH_LIBRARY_FRAGMENT(rnnkit_fused, m) { m.def("projection(Tensor x, Tensor weight, Tensor? bias) -> Tensor"); }

TORCH_LIBRARY_IMPL(rnnkit_fused, CPU, m) { m.impl("projection", &projection); }

TORCH_LIBRARY_IMPL(rnnkit_fused, Autograd, m) {
  m.impl("projection", &rnnkit::InferenceOnly<decltype(projection), projection, k_projection>::call);
}
