r"""int8 inference for the plain families: per-output-channel int8 weights, activations quantized on the fly.

For one layer and direction (legend as :mod:`rnnkit.engine.fused`), both products by the
compiled kernel of ``csrc/lowp_loops.cpp`` (op ``int8_layer``; ``int8_linear`` is its projection alone)::

    per step, each thread for its own batch rows:
        XP_t = int8(x_t) W8_ih^T * s_n * σ_j + b                       x_t quantized per row, as h below
        s_n = max|h_{t-1,n}| / 127,  q = round(h_{t-1} / s)           each batch row its own scale
        R   = (q W8_hh^T) * s_n * σ_j                                int8 x int8 -> int32 (AVX-512 VNNI), dequantized
        gates, c_t, h_t from XP_t + R in float32                     the state is float32 throughout

Weights: ``W8 = round(W / σ_j)`` with ``σ_j = max_k |W_jk| / 127`` per output channel (row) j,
symmetric, zero point 0; activations (x, h) symmetric per row, to the full 8 bits: VNNI
accumulates in 32 bits, so nothing saturates (the portable kernel, without VNNI, too).
torch.ao's dynamic quantization differs: one scale per tensor, activations in 7 bits.

Biases (``b = b_ih + b_hh`` folded as in the fused engine, GRU's ``b_hn`` kept apart) stay float32.
The kernels need the compiled library; without it, int8 inference raises (there is no slow
fallback that would hide the cost).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from rnnkit import errors, ops
from rnnkit.cells.base import CellSpec, State
from rnnkit.engine.fused import _folded_bias
from rnnkit.engine.fused_loops import KINDS, LSTM


def quantize_weight(weight: Tensor) -> tuple[Tensor, Tensor]:
    """Symmetric per-output-channel int8: ``(W8 (int8, like W), σ (float32, one per row))`` with W ≈ W8 σ."""
    weight = weight.detach().float()
    scale = (weight.abs().amax(dim=1) / 127).clamp_min(torch.finfo(torch.float32).tiny)
    return torch.round(weight / scale[:, None]).clamp(-127, 127).to(torch.int8), scale


class Int8Matrix(NamedTuple):
    """A weight (out, in) in the kernels' layout: packed int8, σ and the channel sums, padded to 16 channels."""

    packed: Tensor
    scale: Tensor
    sums: Tensor
    out_features: int


def pack(q: Tensor, scale: Tensor) -> Int8Matrix:
    """An :class:`Int8Matrix` from int8 rows and their scales (as :func:`quantize_weight` makes them)."""
    packed, sums = pack_recurrent(q)
    padded_scale = F.pad(scale.float(), (0, packed.shape[0] * 16 - scale.shape[0])).contiguous()
    return Int8Matrix(packed, padded_scale, sums, q.shape[0])


def linear(x: Tensor, weight: Int8Matrix, bias: Tensor | None) -> Tensor:
    """``x W^T + b`` with W int8 and each row of x (..., K) float32 quantized on the fly."""
    rows = x.reshape(-1, x.shape[-1]).contiguous()
    out = _native().int8_linear(rows, weight.packed, weight.scale, weight.sums, bias, weight.out_features)
    return out.view(*x.shape[:-1], weight.out_features)


def _native():
    if ops.native_loops() is None:
        raise RuntimeError(f"int8 inference needs rnnkit's compiled kernels, which are unavailable: {ops.status()}")
    return torch.ops.rnnkit_fused


def pack_recurrent(q: Tensor) -> tuple[Tensor, Tensor]:
    """W8 (GH, K) int8 in the kernels' layout, (GHp/16, K4, 64): 16 output channels by 4 inputs per 64 bytes,
    GH padded to a multiple of 16 and K to one of 4 with zeros; and each channel's sum (int32, GHp)."""
    rows, inner = q.shape
    padded = F.pad(q, (0, -inner % 4, 0, -rows % 16))
    blocks, groups = padded.shape[0] // 16, padded.shape[1] // 4
    packed = padded.view(blocks, 16, groups, 4).permute(0, 2, 1, 3).contiguous().view(blocks, groups, 64)
    return packed, padded.sum(dim=1, dtype=torch.int32)


class Int8Direction(NamedTuple):
    """What one layer and direction needs at run time, derived from the stored int8 weights and scales."""

    input_side: Int8Matrix
    bias: Tensor | None  # the folded input-side bias
    recurrent: Int8Matrix
    b_hn: Tensor | None  # GRU's recurrent bias of the n gate


def prepare(kind: int, w_ih: Tensor, s_ih: Tensor, w_hh: Tensor, s_hh: Tensor, b_ih: Tensor | None, b_hh: Tensor | None) -> Int8Direction:
    """An :class:`Int8Direction` from stored int8 weights (``w_*``), their scales (``s_*``) and float biases."""
    bias, b_hn = _folded_bias(kind, b_ih, b_hh)
    contiguous = [None if b is None else b.detach().float().contiguous() for b in (bias, b_hn)]
    return Int8Direction(pack(w_ih, s_ih), contiguous[0], pack(w_hh, s_hh), contiguous[1])


def run_direction(spec: CellSpec, x: Tensor, state: State, weights: Int8Direction, valid: Tensor | None, reverse: bool) -> tuple[Tensor, State]:
    """Same contract as :func:`rnnkit.engine.reference.run_direction`, inference only, float32 CPU tensors."""
    if x.dtype != torch.float32 or x.device.type != "cpu":
        raise errors.fail("input", "a float32 CPU tensor for an int8 layer (rnnkit.quantize_dynamic)", f"{x.dtype} on {x.device}")
    kind = KINDS[spec.name]
    h0 = state[0].contiguous()
    c0 = state[1].contiguous() if kind == LSTM else x.new_empty(0)
    inputs, recurrent = weights.input_side, weights.recurrent
    y, h_n, c_n = _native().int8_layer(kind, x.contiguous(), inputs.packed, inputs.scale, inputs.sums, weights.bias, h0, c0, recurrent.packed,
                                       recurrent.scale, recurrent.sums, weights.b_hn, None if valid is None else valid.contiguous(), reverse)  # fmt: skip
    return y, (h_n, c_n) if kind == LSTM else (h_n,)
