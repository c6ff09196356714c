r"""The linear scan of minGRU, minLSTM and RG-LRU as a Triton op: ``rnnkit_fused::triton_linear_scan``.

Forward (a, b: (T, N, H); h0: (N, H); h: (T, N, H))::

    reverse=False:  h_t = a_t ⊙ h_{t-1} + b_t,  t = 0..T-1,   h_{-1} = h0
    reverse=True:   h_t = a_t ⊙ h_{t+1} + b_t,  t = T-1..0,   h_T  = h0

Backward, with g = dL/dh and ``next(t)`` the step after t in the scan's direction
(t+1 forward, t-1 in reverse), ``prev(t)`` the one before, ``first`` the first step::

    dh_t = g_t + a_{next(t)} ⊙ dh_{next(t)}       a scan of g in the other direction
    da_t = dh_t ⊙ h_{prev(t)}   (h_{prev(first)} = h0),   db_t = dh_t,   dh0 = a_first ⊙ dh_first

The backward scan is the same op on shifted coefficients, so the gradient is itself
differentiable: double backward works, and costs one more scan. Kernels and their chunking:
:mod:`rnnkit.ops.triton.scan_kernels`.

Readable equivalent::

    h, out = h0, []
    for t in (reversed(range(T)) if reverse else range(T)):
        h = a[t] * h + b[t]
        out.append(h)
    h = torch.stack(out[::-1] if reverse else out)
"""

from __future__ import annotations

import torch
from torch import Tensor

from rnnkit import errors
from rnnkit.ops import triton as triton_ops

BLOCK = 128  # features per program: one per thread of 4 warps
# Programs to aim for (a few per SM of a large GPU); fewer features, more chunks of time.
TARGET_PROGRAMS = 1024
MIN_CHUNK = 32  # shorter chunks would spend more time on the carries than on the scan


def chunk_length(steps: int, features: int, block: int = BLOCK) -> int:
    """Steps per chunk: the whole sequence where the features alone give enough programs."""
    feature_blocks = -(-features // block)
    chunks = max(1, min(TARGET_PROGRAMS // feature_blocks, -(-steps // MIN_CHUNK)))
    return max(1, -(-steps // chunks))


def _check(a: Tensor, b: Tensor, h0: Tensor) -> None:
    torch._check(a.dim() == 3, lambda: f"a: expected (T, N, H), got shape {tuple(a.shape)}")
    torch._check(b.shape == a.shape, lambda: f"b: expected shape {tuple(a.shape)} (the shape of a), got {tuple(b.shape)}")
    torch._check(h0.shape == a.shape[1:], lambda: f"h0: expected shape {tuple(a.shape[1:])} (N, H), got {tuple(h0.shape)}")


@torch.library.custom_op("rnnkit_fused::triton_linear_scan", mutates_args=())
def _linear_scan(a: Tensor, b: Tensor, h0: Tensor, reverse: bool, chunk: int) -> Tensor:
    _check(a, b, h0)
    steps, features = a.shape[0], a.shape[1] * a.shape[2]
    h = torch.empty_like(a, memory_format=torch.contiguous_format)
    if steps == 0 or features == 0:
        return h
    kernels = triton_ops.kernels("scan", a)
    a, b, h0 = a.contiguous(), b.contiguous(), h0.contiguous()
    chunk = chunk or chunk_length(steps, features)
    chunks = -(-steps // chunk)
    feature_blocks = -(-features // BLOCK)
    options = triton_ops.launch_options(BLOCK)
    carries = h0
    if chunks > 1:
        prod = a.new_empty(chunks, features)
        last = a.new_empty(chunks, features)
        kernels.chunk_summaries[(feature_blocks, chunks)](a, b, prod, last, steps, features, chunk, REVERSE=reverse, BLOCK=BLOCK, **options)
        carries = a.new_empty(chunks, features)
        kernels.chunk_carries[(feature_blocks,)](h0, prod, last, carries, features, chunks, BLOCK=BLOCK, **options)
    kernels.chunk_scan[(feature_blocks, chunks)](a, b, carries, h, steps, features, chunk, REVERSE=reverse, BLOCK=BLOCK, **options)
    return h


@_linear_scan.register_fake
def _(a, b, h0, reverse, chunk):
    _check(a, b, h0)
    return torch.empty_like(a, memory_format=torch.contiguous_format)


def _setup_context(ctx, inputs, output):
    a, _, h0, reverse, chunk = inputs
    ctx.reverse, ctx.chunk = reverse, chunk
    ctx.save_for_backward(a, h0, output)


def _backward(ctx, g):
    a, h0, h = ctx.saved_tensors
    if a.shape[0] == 0:
        return torch.zeros_like(a), torch.zeros_like(a), torch.zeros_like(h0), None, None
    one = torch.ones_like(a[:1])
    if ctx.reverse:  # next(t) = t-1: coefficients a_{t-1}; prev(t) = t+1; the first step is T-1
        shifted, h_prev, first = torch.cat((one, a[:-1])), torch.cat((h[1:], h0.unsqueeze(0))), -1
    else:
        shifted, h_prev, first = torch.cat((a[1:], one)), torch.cat((h0.unsqueeze(0), h[:-1])), 0
    dh = _linear_scan(shifted, g, torch.zeros_like(h0), not ctx.reverse, ctx.chunk)
    return dh * h_prev, dh, a[first] * dh[first], None, None


_linear_scan.register_autograd(_backward, setup_context=_setup_context)


def linear_scan(a: Tensor, b: Tensor, h0: Tensor, reverse: bool = False, *, chunk: int = 0) -> Tensor:
    """``h`` (T, N, H) of the linear scan (module docstring) through the Triton kernels, with autograd.

    Args:
        a, b: (T, N, H) coefficients and inputs; h0: (N, H) the state before the first step.
        reverse: scan from t = T-1 down to 0.
        chunk: steps per chunk of time; 0 picks :func:`chunk_length`. The result does not
            depend on it beyond rounding.

    CUDA tensors, or CPU tensors with ``TRITON_INTERPRET=1`` (:mod:`rnnkit.ops.triton`); float32/float64.
    """
    for name, tensor in (("a", a), ("b", b), ("h0", h0)):
        if not isinstance(tensor, Tensor):
            raise errors.fail(name, "a Tensor", type(tensor).__name__)
        triton_ops.check_floating(name, tensor)
        errors.check_like(name, tensor, a, "a")
    if a.dim() != 3:
        raise errors.fail("a", "a 3-D tensor (T, N, H)", f"shape {tuple(a.shape)}")
    errors.check_shape("b", b, tuple(a.shape), "(T, N, H), the shape of a")
    errors.check_shape("h0", h0, tuple(a.shape[1:]), "(N, H)")
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 0:
        raise errors.fail("chunk", "a non-negative int (0: automatic)", repr(chunk))
    return _linear_scan(a, b, h0, bool(reverse), chunk)


__all__ = ["chunk_length", "linear_scan"]
