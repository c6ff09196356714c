"""The GEMMs that span all time steps: ``x W^T + b`` with the faster library for the shape.

On this kind of CPU (AMD, AVX-512) MKL takes its AVX2 path while oneDNN's
matmul uses AVX-512, so oneDNN wins on large products and MKL on small ones.
The choice is a fixed rule of the shape (see :func:`linear`), never a timing
taken at run time, so that two runs compute the same numbers.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rnnkit.ops import recorded_by_autograd


def matmul(a: Tensor, b: Tensor) -> Tensor:
    """A weight gradient ``a @ b`` (MKL handles the transposed operands without a copy)."""
    return a @ b


def mkldnn_linear(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, weight.contiguous(), bias, "none", [], "")


def addmm_linear(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    return x @ weight.t() if bias is None else torch.addmm(bias, x, weight.t())


# oneDNN's matmul beats MKL's addmm on this kind of CPU once the product is large and its inner
# dimension wide enough to feed AVX-512; below that its per-call setup costs more than it saves.
# Thresholds from a sweep of the engine's shapes (configs A-C and the tasks'), idle 2-core AMD EPYC:
# oneDNN 1.1-1.7x faster at K >= 128 and >= 16 MFLOP, 0.3-0.9x on smaller or narrower products.
ONEDNN_MIN_INNER = 128
ONEDNN_MIN_FLOPS = 1 << 24


def onednn_picked(rows: int, inner: int, outputs: int) -> bool:
    """Whether the shape rule sends a float32 product (rows, inner) x (inner, outputs) to oneDNN."""
    return inner >= ONEDNN_MIN_INNER and 2 * rows * inner * outputs >= ONEDNN_MIN_FLOPS


def linear(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``x W^T + b`` by oneDNN or MKL (torch.addmm), whichever the shape rule above picks.

    oneDNN takes float32 only, and its op has no autograd formula (gradients would silently
    stop there), so a product that autograd records always goes to torch.addmm. Under
    torch.compile the product is addmm too: inductor chooses its own GEMM for it, and its
    lowering of this oneDNN op expects prepacked weights.
    """
    rows, inner = x.shape
    if onednn_picked(rows, inner, weight.shape[0]) and not recorded_by_autograd(x, weight, bias) and x.device.type == "cpu" and x.dtype == torch.float32 and _eager_mkldnn():
        return mkldnn_linear(x, weight, bias)
    return addmm_linear(x, weight, bias)


def _eager_mkldnn() -> bool:
    return torch.backends.mkldnn.is_available() and not torch.compiler.is_compiling()
