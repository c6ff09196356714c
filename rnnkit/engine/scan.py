r"""The scan engine: the linear-recurrence families (minGRU, minLSTM, RG-LRU) in parallel over time.

For a spec with ``coefficients`` (:mod:`rnnkit.cells.minimal`) one layer and direction is

1. the projections of all steps, **one GEMM**: ``P = X W_ih^T + b_ih``, X (L*N, H_in), P (L*N, G*H);
2. the coefficients of every step at once, elementwise: ``(a, b) = coefficients(P)``, each (L, N, H);
3. padding (``valid`` False) made the identity: a = 1, b = 0, so the state is held past a
   sequence's end; the reverse direction flips a and b in time and flips the result back;
4. :func:`linear_scan` of h_t = a_t ⊙ h_{t-1} + b_t from h0; outputs zeroed at padding.

:func:`linear_scan` is chunked (docs/design/parallel-scan.md): T is padded to K chunks of C
steps (C = ⌈√T⌉), the recurrence runs over the C positions of all chunks at once from a zero
start, keeping the running product of a; a loop over the K chunk boundaries carries the true
state; one fused step adds it in. That is C + K ≈ 2√T sequential elementwise ops instead of
T, exact for any T (no power-of-two restriction), with no division and no logarithm (stable
where a_t underflows, no positivity needed). Backward is autograd's through the same plain
ops: double backward, torch.func and ``torch.compile(fullgraph=True)`` work. Under a trace or
torch.compile both Python loops are unrolled (C + K steps), so a program is specialised on T.

Results are the reference engine's (the per-step loop) up to rounding, which the tests hold
to 1e-10 in float64 and 1e-5 in float32.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from rnnkit.cells.base import CellSpec, CellWeights, State
from rnnkit.engine.gemm import linear


def supports(spec: CellSpec) -> bool:
    """Whether the scan covers a family: those whose step is a linear recurrence (``spec.coefficients``)."""
    return spec.coefficients is not None


def run_direction(spec: CellSpec, x: Tensor, state: State, weights: CellWeights, valid: Tensor | None, reverse: bool) -> tuple[Tensor, State]:
    """Same contract and results as :func:`rnnkit.engine.reference.run_direction`.

    Under autocast the recurrence runs in float32, as the fused engine's: the state is carried
    through every step, where low precision compounds.
    """
    if not supports(spec):
        raise ValueError(f"engine scan: expected a linear-recurrence family (mingru, minlstm, rglru), got {spec.name!r}")
    if torch.is_autocast_enabled(x.device.type):
        with torch.autocast(x.device.type, enabled=False):
            return run_direction(spec, _to_float32(x), tuple(_to_float32(s) for s in state), weights, valid, reverse)
    length, batch, features = x.shape
    projected = linear(x.reshape(length * batch, features), weights.weight_ih, weights.bias_ih)
    a, b = spec.coefficients(projected.view(length, batch, -1), weights)
    keep = None if valid is None else valid.unsqueeze(-1)
    if keep is not None:
        a = torch.where(keep, a, torch.ones((), dtype=a.dtype, device=a.device))
        b = torch.where(keep, b, torch.zeros((), dtype=b.dtype, device=b.device))
    if reverse:
        h = linear_scan(a.flip(0), b.flip(0), state[0]).flip(0)
        final = h[0]
    else:
        h = linear_scan(a, b, state[0])
        final = h[-1]
    y = h if keep is None else torch.where(keep, h, torch.zeros((), dtype=h.dtype, device=h.device))
    return y, (final,)


def linear_scan(a: Tensor, b: Tensor, h0: Tensor, chunk_size: int | None = None) -> Tensor:
    """All states of ``h_t = a_t ⊙ h_{t-1} + b_t`` for t = 0..T-1, from ``h_{-1} = h0``.

    Args:
        a, b: (T, *S) coefficients; h0: (*S).
        chunk_size: C, the steps per chunk; ⌈√T⌉ if None (it minimises the C + ⌈T/C⌉ sequential steps).

    Returns:
        (T, *S), the state after every step. The reference loop it equals::

            h = h0
            for t in range(T):
                h = a[t] * h + b[t]
                out[t] = h
    """
    steps = a.shape[0]
    if chunk_size is None:
        chunk_size = math.isqrt(steps - 1) + 1 if steps > 1 else 1  # ⌈√T⌉
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size: expected a positive int, got {chunk_size!r}")
    chunks = -(-steps // chunk_size)
    padding = chunks * chunk_size - steps
    if padding:  # identity steps at the end: exact for any T
        a = torch.cat([a, a.new_ones(padding, *a.shape[1:])])
        b = torch.cat([b, b.new_zeros(padding, *b.shape[1:])])
    a_steps = a.reshape(chunks, chunk_size, *a.shape[1:]).unbind(1)  # C tensors of (K, *S)
    b_steps = b.reshape(chunks, chunk_size, *b.shape[1:]).unbind(1)
    # Level 1: every chunk from a zero start, all chunks at once; `decay` is the product of a since the chunk began.
    local, decay = [b_steps[0]], [a_steps[0]]
    for a_j, b_j in zip(a_steps[1:], b_steps[1:]):
        local.append(torch.addcmul(b_j, a_j, local[-1]))
        decay.append(a_j * decay[-1])
    # Level 2: the true state entering each chunk, one step per chunk boundary.
    chunk_ends, chunk_decays = local[-1].unbind(0), decay[-1].unbind(0)
    starts = [h0]
    for end, end_decay in zip(chunk_ends[:-1], chunk_decays[:-1]):
        starts.append(torch.addcmul(end, end_decay, starts[-1]))
    # Every step at once: h = local + decay ⊙ (the state entering its chunk).
    h = torch.addcmul(torch.stack(local, 1), torch.stack(decay, 1), torch.stack(starts).unsqueeze(1))
    return h.reshape(chunks * chunk_size, *h.shape[2:])[:steps]


def _to_float32(t: Tensor) -> Tensor:
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t
