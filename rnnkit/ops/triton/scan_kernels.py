"""Triton kernels of the linear scan ``h_t = a_t ⊙ h_{t-1} + b_t``, chunked over time.

Legend: T steps, F = N*H features (each scanned on its own), C chunks of ``chunk`` steps.
Step ``s`` of a scan is time ``t = s`` forward and ``t = T-1-s`` in reverse. Three passes:

1. :func:`chunk_summaries` (grid: feature blocks x C): each chunk's scan from h = 0, kept
   only at its end, ``last_c``, with the product of its coefficients, ``prod_c = Π a_t``;
2. :func:`chunk_carries` (grid: feature blocks): the state entering each chunk,
   ``carry_0 = h0``, ``carry_{c+1} = prod_c ⊙ carry_c + last_c``; C steps, not T;
3. :func:`chunk_scan` (grid: feature blocks x C): every chunk's scan again from its carry,
   writing h. With one chunk this is the whole scan, from h0.

Each pass reads a and b once, and only the last writes a full-size tensor. Parallel over
features and chunks: a long sequence of few features still fills the GPU.

Kernels call only Triton builtins and each other: the same source runs compiled and through
Triton's interpreter.
"""

import triton
import triton.language as tl


@triton.jit
def _coefficients(a_ptr, b_ptr, s, T, F, features, inside, REVERSE: tl.constexpr):
    """Scan step s's a and b (the identity step, a = 1 and b = 0, past F), and their offsets."""
    t = T - 1 - s if REVERSE else s
    offsets = t.to(tl.int64) * F + features
    return tl.load(a_ptr + offsets, mask=inside, other=1.0), tl.load(b_ptr + offsets, mask=inside, other=0.0), offsets


@triton.jit
def chunk_summaries(a_ptr, b_ptr, prod_ptr, last_ptr, T, F, chunk, REVERSE: tl.constexpr, BLOCK: tl.constexpr):
    block, c = tl.program_id(0), tl.program_id(1)
    features = block * BLOCK + tl.arange(0, BLOCK)
    inside = features < F
    h = tl.zeros([BLOCK], dtype=a_ptr.dtype.element_ty)
    prod = h + 1.0
    start = c * chunk
    for s in range(start, tl.minimum(start + chunk, T)):
        a, b, offsets = _coefficients(a_ptr, b_ptr, s, T, F, features, inside, REVERSE)
        h = a * h + b
        prod = prod * a
    tl.store(prod_ptr + c * F + features, prod, mask=inside)
    tl.store(last_ptr + c * F + features, h, mask=inside)


@triton.jit
def chunk_carries(h0_ptr, prod_ptr, last_ptr, carry_ptr, F, chunks, BLOCK: tl.constexpr):
    features = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    inside = features < F
    h = tl.load(h0_ptr + features, mask=inside, other=0.0)
    for c in range(0, chunks):
        tl.store(carry_ptr + c * F + features, h, mask=inside)
        prod = tl.load(prod_ptr + c * F + features, mask=inside, other=1.0)
        last = tl.load(last_ptr + c * F + features, mask=inside, other=0.0)
        h = prod * h + last


@triton.jit
def chunk_scan(a_ptr, b_ptr, carry_ptr, h_ptr, T, F, chunk, REVERSE: tl.constexpr, BLOCK: tl.constexpr):
    block, c = tl.program_id(0), tl.program_id(1)
    features = block * BLOCK + tl.arange(0, BLOCK)
    inside = features < F
    h = tl.load(carry_ptr + c * F + features, mask=inside, other=0.0)
    start = c * chunk
    for s in range(start, tl.minimum(start + chunk, T)):
        a, b, offsets = _coefficients(a_ptr, b_ptr, s, T, F, features, inside, REVERSE)
        h = a * h + b
        tl.store(h_ptr + offsets, h, mask=inside)
