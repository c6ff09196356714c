r"""The fused LayerNorm LSTM: one autograd node per layer and direction, with hand-written BPTT.

The cell is haste's LayerNormLSTM (equations in :mod:`rnnkit.cells.lstm`)::

    xp_t  = LN(W_ih x_t) ⊙ γ_ih + b_ih + b_hh         all steps at once, under autograd
    â_t   = LN(a_t),  a_t = h_{t-1} W_hh^T             per step, in the compiled loop
    [i f g o] = [σ σ tanh σ](xp_t + â_t ⊙ γ_hh)
    c_t   = f⊙c_{t-1} + i⊙g,   ĉ_t = LN(c_t),   h_t = o ⊙ tanh(ĉ_t ⊙ γ_c + β_c)

The input side does not depend on the state, so it stays ordinary batched
autograd ops over all steps (as in the hoisted loop): one GEMM, one LayerNorm.
The recurrence is :class:`FusedLayerNormLSTM`, whose forward and backward are
the compiled loop kernels ``layer_norm_lstm_forward/backward`` in
``csrc/fused_loops.cpp``. Backward per step, with ``LN'`` the LayerNorm
gradient ``dv = rstd ⊙ (dv̂ - mean(dv̂) - v̂ ⊙ mean(dv̂ ⊙ v̂))`` over a row::

    dn  = dh_t ⊙ o ⊙ tanh'(ĉγ_c+β_c)        dγ_c += Σ dn⊙ĉ,  dβ_c += Σ dn
    δo  = dh_t ⊙ tanh(ĉγ_c+β_c) ⊙ σ'(o)
    dc  = dc_t + LN'(dn ⊙ γ_c)
    δi, δf, δg as the plain LSTM;  dc_{t-1} = dc ⊙ f
    dxp_t = [δi δf δg δo]                  dγ_hh += Σ dxp_t ⊙ â_t
    da_t  = LN'(dxp_t ⊙ γ_hh),             dh_{t-1} = da_t W_hh

then ``dW_hh = Σ_t da_t^T h_{t-1}`` is one GEMM over all steps, and ``dxp``
flows back into the input side's autograd graph.

It covers the LayerNorm LSTM without ``proj_size``, on CPU float32/float64
when the C++ kernel is built; everything else runs the hoisted loop.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from rnnkit.cells.base import LAYER_NORM_EPS, CellSpec, CellWeights, State
from rnnkit.engine import fused_build
from rnnkit.engine.gemm import linear


class FusedLayerNormLSTM(torch.autograd.Function):
    """The recurrence of one layer and direction, from the projected inputs ``xp`` (L, N, 4H)."""

    @staticmethod
    def forward(ctx, ops, reverse, valid, xp, w_hh, gain_hh, gain_cell, bias_cell, h0, c0):
        # xp is a temporary of run_direction that only this node reads (the LayerNorm that made it
        # saved its input, not its output): the kernel overwrites it with the gate activations,
        # which saves allocating, and page-faulting in, another (L, N, 4H) buffer.
        gates = xp.contiguous()
        y, hs, cs, ahat, chat, rstd = ops.layer_norm_lstm_forward(
            gates, h0.contiguous(), c0.contiguous(), w_hh.contiguous(), gain_hh.contiguous(),
            gain_cell.contiguous(), bias_cell.contiguous(), valid, reverse,
        )  # fmt: skip
        ctx.ops, ctx.reverse = ops, reverse
        ctx.save_for_backward(valid, w_hh, gain_hh, gain_cell, bias_cell, gates, hs, cs, ahat, chat, rstd)
        final = (xp.shape[0], 0)[reverse]
        return y, hs[final].clone(), cs[final].clone()

    @staticmethod
    @once_differentiable
    def backward(ctx, dy, dh_n, dc_n):
        valid, w_hh, gain_hh, gain_cell, bias_cell, gates, hs, cs, ahat, chat, rstd = ctx.saved_tensors
        dxp, da, dh0, dc0, dgain_hh, dgain_cell, dbias_cell = ctx.ops.layer_norm_lstm_backward(
            gates, hs, cs, ahat, chat, rstd, w_hh.contiguous(), gain_hh.contiguous(), gain_cell.contiguous(),
            bias_cell.contiguous(), valid, ctx.reverse, dy, dh_n.contiguous(), dc_n.contiguous(),
        )  # fmt: skip
        length, batch, gate_size = da.shape
        h_prev = hs[ctx.reverse : length + ctx.reverse].reshape(length * batch, hs.shape[2])
        dw_hh = da.view(length * batch, gate_size).t() @ h_prev if ctx.needs_input_grad[4] else None
        return None, None, None, dxp, dw_hh, dgain_hh, dgain_cell, dbias_cell, dh0, dc0


def supports(spec: CellSpec, x: Tensor, weights: CellWeights) -> bool:
    """Whether the compiled LayerNorm LSTM loop covers this call."""
    return (
        spec.name == "layer_norm_lstm"
        and weights.weight_hr is None
        and x.device.type == "cpu"
        and x.dtype in (torch.float32, torch.float64)
        and not torch.is_autocast_enabled("cpu")
        and fused_build.native_loops() is not None
    )


def run_direction(spec: CellSpec, x: Tensor, state: State, weights: CellWeights, valid: Tensor | None, reverse: bool) -> tuple[Tensor, State]:
    """Same contract and results as :func:`rnnkit.engine.reference.run_direction`, for a call :func:`supports` covers."""
    norm = weights.layer_norm
    length, batch, features = x.shape
    projected = linear(x.reshape(length * batch, features), weights.weight_ih, None)
    # spec.project_input's LN(W_ih x)γ_ih + b_ih, plus b_hh, which is added after the recurrent LayerNorm and
    # so folds in here, all as one layer_norm call: each extra op would be another (L, N, 4H) pass and buffer.
    bias = None if weights.bias_ih is None else weights.bias_ih + weights.bias_hh
    xp = F.layer_norm(projected, (projected.shape[1],), norm.gain_ih, bias, LAYER_NORM_EPS).view(length, batch, -1)
    y, h_n, c_n = FusedLayerNormLSTM.apply(
        fused_build.native_loops(), reverse, valid, xp, weights.weight_hh, norm.gain_hh, norm.gain_cell, norm.bias_cell, *state
    )
    return y, (h_n, c_n)
