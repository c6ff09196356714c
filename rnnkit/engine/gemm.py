"""The GEMMs that span all time steps: ``x W^T + b`` with the faster library for the shape.

The rule, fixed and never a timing taken at run time (so that two runs compute the same numbers):

* ``x W^T + b`` (the input projection) and ``dG W`` (the input gradient), float32 on CPU, eager,
  not recorded by autograd:

  - an output of 32 MiB or more: MKL into a buffer of rnnkit's pool (the ``projection`` op,
    ``csrc/projection.cpp``). glibc gives a block that large fresh pages every time (its mmap
    threshold is at most 32 MiB), and their faults cost as much as the GEMM: config C's LSTM
    projection (16,384 x 128 into 2,048) took 80 ms by oneDNN into fresh memory, 85 ms by MKL into
    fresh memory and 50 ms by MKL into a reused buffer (2-core AMD EPYC);
  - else oneDNN's matmul when the product has at least 2^26 (67 M) FLOPs;
  - else MKL (``torch.addmm``);
* weight gradients ``dG^T X``: always MKL (:func:`matmul`), which reads the transposed operands in
  place, where oneDNN needs dG^T copied (the step's largest tensor); with that copy oneDNN is
  0.26-0.58x MKL's speed at every shape of configs A-C;
* everything else (float64, autograd-recorded products, torch.export, and under torch.compile all
  but the pooled products of static shape): ``torch.addmm``.

Measured by ``python -m benchmarks.gemm_routing`` (docs/benchmarks-gemm.md), 2-core Intel Xeon,
configs A-C of ``benchmarks.run`` for each family: oneDNN is 1.03-1.69x faster than MKL at every
product of 105 MFLOP or more (configs B and C), and 0.49-1.43x below 33 MFLOP (config A). An
earlier sweep on an AMD EPYC had found oneDNN behind below an inner dimension of 128; this Intel
machine has no such edge (config B's K=64 projections: 1.25-1.69x), so the rule is FLOPs alone.
Those timings wrote into fresh memory both ways; the pooled rule above came later.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rnnkit import ops
from rnnkit.ops import recorded_by_autograd


def matmul(a: Tensor, b: Tensor) -> Tensor:
    """A weight gradient ``a @ b``: MKL, which handles the transposed operands without a copy (module docstring)."""
    return a @ b


def mkldnn_linear(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, weight.contiguous(), bias, "none", [], "")


def addmm_linear(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    return x @ weight.t() if bias is None else torch.addmm(bias, x, weight.t())


# See the module docstring: the smallest product that goes to oneDNN, and the smallest output that goes to the pool.
ONEDNN_MIN_FLOPS = 1 << 26
POOLED_MIN_BYTES = 32 << 20


def onednn_picked(rows: int, inner: int, outputs: int) -> bool:
    """Whether the shape rule sends a float32 product (rows, inner) x (inner, outputs) to oneDNN."""
    return 2 * rows * inner * outputs >= ONEDNN_MIN_FLOPS


def linear(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``x W^T + b`` into a pooled buffer, by oneDNN or by MKL (torch.addmm), whichever the shape rule above picks.

    oneDNN takes float32 only, and its op has no autograd formula (gradients would silently
    stop there), so a product that autograd records always goes to torch.addmm. The pooled
    projection is an op with a fake kernel, so torch.compile keeps it where the shapes are static;
    otherwise, under torch.compile and torch.export the product is addmm: inductor chooses its own GEMM
    for it, and its lowering of the oneDNN op expects prepacked weights.
    """
    # The shape rule last, and only on concrete sizes: under torch.export the shapes are symbolic, and comparing them
    # would add a guard on the batch (`rows * inner * outputs >= 2^25`) that export then fails to print (an AssertionError
    # out of torch).
    if x.device.type == "cpu" and x.dtype == torch.float32 and not torch.compiler.is_exporting() and not recorded_by_autograd(x, weight, bias):
        rows, inner = x.shape
        outputs = weight.shape[0]
        if isinstance(rows, int) and isinstance(outputs, int) and rows * outputs * x.element_size() >= POOLED_MIN_BYTES:
            native = ops.native_loops()
            if native is not None:
                return native.projection(x, weight, bias)
        if _eager_mkldnn() and onednn_picked(rows, inner, outputs):
            return mkldnn_linear(x, weight, bias)
    return addmm_linear(x, weight, bias)


def _eager_mkldnn() -> bool:
    return torch.backends.mkldnn.is_available() and not (torch.compiler.is_compiling() or torch.compiler.is_exporting())
