r"""The fused LayerNorm LSTM: one autograd node per layer and direction, with hand-written BPTT.

The cell is haste's LayerNormLSTM (equations in :mod:`rnnkit.cells.lstm`)::

    xp_t  = LN(W_ih x_t) ⊙ γ_ih + b_ih + b_hh         all steps at once: one GEMM, one LayerNorm
    â_t   = LN(a_t),  a_t = h_{t-1} W_hh^T             per step, in the compiled loop
    [i f g o] = [σ σ tanh σ](xp_t + â_t ⊙ γ_hh)
    c_t   = f⊙c_{t-1} + i⊙g,   ĉ_t = LN(c_t),   h_t = o ⊙ tanh(ĉ_t ⊙ γ_c + β_c)

The input side does not depend on the state, so it runs over all steps at once.
The recurrence's forward and backward are the compiled loop kernels
``layer_norm_lstm_forward/backward`` (:mod:`rnnkit.ops`), inside
:class:`FusedLayerNormLSTM`. Backward per step, with ``LN'`` the LayerNorm
gradient ``dv = rstd ⊙ (dv̂ - mean(dv̂) - v̂ ⊙ mean(dv̂ ⊙ v̂))`` over a row::

    dn  = dh_t ⊙ o ⊙ tanh'(ĉγ_c+β_c)        dγ_c += Σ dn⊙ĉ,  dβ_c += Σ dn
    δo  = dh_t ⊙ tanh(ĉγ_c+β_c) ⊙ σ'(o)
    dc  = dc_t + LN'(dn ⊙ γ_c)
    δi, δf, δg as the plain LSTM;  dc_{t-1} = dc ⊙ f
    dxp_t = [δi δf δg δo]                  dγ_hh += Σ dxp_t ⊙ â_t
    da_t  = LN'(dxp_t ⊙ γ_hh),             dh_{t-1} = da_t W_hh

then ``dW_hh = Σ_t da_t^T h_{t-1}`` is one GEMM over all steps, and ``dxp`` goes
through ATen's LayerNorm backward and two GEMMs to the input side's gradients.

It covers the LayerNorm LSTM without ``proj_size``, in float32/float64: on CPU with the C++
kernel built, and on CUDA with the Triton ops of :mod:`rnnkit.ops.triton.layer_norm` (same
signatures, one fused kernel per step around cuBLAS's GEMM). The LayerNorm GRU's Triton path is
:mod:`rnnkit.engine.fused_layer_norm_gru`. Everything else runs the hoisted loop. Zoneout
(keep-previous weights ``m_t`` on ``h``) is applied in the loop after ``h̃_t``;
backward sends ``(1-m_t) dh_t`` into the step and ``m_t dh_t`` to ``dh_{t-1}``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rnnkit import ops
from rnnkit.ops import triton as triton_ops
from rnnkit.cells.base import LAYER_NORM_EPS, CellSpec, CellWeights, LayerNormWeights, State
from rnnkit.cells.lstm import layer_norm_lstm_step
from rnnkit.engine import fused_layer_norm_gru, hoisted, transforms
from rnnkit.engine.gemm import linear

_ROLES = (None, None, "mask", "seq", *["weight"] * 8, "state", "state", "seq")


class FusedLayerNormLSTM(torch.autograd.Function):
    """One layer and direction: ``(y, h_n, c_n, hs, cs, *internals)``, as :class:`rnnkit.engine.fused.FusedRecurrence`.

    Inputs: ``reverse, share, valid, x, w_ih, b_ih, b_hh, gain_ih, w_hh, gain_hh, gain_cell, bias_cell, h0, c0, zoneout``
    (zoneout: (L, N, H) keep-previous weights or None, see :func:`rnnkit.engine.reference.run_direction`).
    The input side, ``LN(x W_ih^T) γ_ih + b_ih + b_hh``, runs here too (its backward is
    ATen's LayerNorm backward and two GEMMs), so that the higher-order path can recompute
    everything from x. How each transform is served is in :mod:`rnnkit.engine.transforms`.
    """

    @staticmethod
    def forward(reverse, share, valid, x, w_ih, b_ih, b_hh, gain_ih, w_hh, gain_hh, gain_cell, bias_cell, h0, c0, zoneout=None):
        y, hs, cs, *internals = _forward(reverse, valid, x, w_ih, b_ih, b_hh, gain_ih, w_hh, gain_hh, gain_cell, bias_cell, h0, c0, zoneout)
        y = transforms.shared_output(y, hs, reverse) if share else y
        return y, *transforms.final_states(hs, cs, reverse, True), hs, cs, *internals

    @staticmethod
    def setup_context(ctx, inputs, output):
        reverse, share, valid, *primals = inputs
        zoneout = primals.pop() if len(primals) == 12 else None
        y, _, _, hs, cs, *internals = output
        ctx.reverse, ctx.view = reverse, valid is None and not share
        ctx.mark_non_differentiable(cs, *internals, *(() if ctx.view else (hs,)))
        ctx.set_materialize_grads(False)
        ctx.primals, ctx.valid, ctx.zoneout = tuple(primals), valid, zoneout  # for jvp; all saved for backward anyway
        transforms.keep_output(ctx, y, share)
        ctx.save_for_backward(valid, *primals, cs, *internals, hs, zoneout)

    @staticmethod
    def backward(ctx, d_y, d_hn, d_cn, d_hs, *_internals):
        saved = ctx.saved_tensors  # unpacked once: non-reentrant checkpointing allows no second unpack
        if torch.is_grad_enabled():  # create_graph=True or torch.func: the reference math, differentiable again
            grads = transforms.reference_vjp(_reference(ctx.reverse, saved[0], ctx.view, saved[-1]), saved[1:12], (d_y, d_hn, d_cn, d_hs))
            return None, None, None, *grads, None
        return None, None, None, *_backward(ctx, saved, d_y, d_hn, d_cn, d_hs), None

    @staticmethod
    def jvp(ctx, _reverse, _share, _valid, *tangents):
        tangents = tangents[:11]  # the zoneout masks have none
        y, h_n, c_n, hs = transforms.reference_jvp(_reference(ctx.reverse, ctx.valid, ctx.view, ctx.zoneout), ctx.primals, tangents)
        return y, h_n, c_n, hs if ctx.view else None, *[None] * 8

    @staticmethod
    def vmap(info, in_dims, *args):
        return transforms.vmap_by_batch(FusedLayerNormLSTM.apply, info, in_dims, args, _ROLES)


def _forward(reverse, valid, x, w_ih, b_ih, b_hh, gain_ih, w_hh, gain_hh, gain_cell, bias_cell, h0, c0, zoneout=None):
    length, batch, features = x.shape
    projected = linear(x.reshape(length * batch, features), w_ih, None)
    # LN(W_ih x)γ_ih + b_ih, plus b_hh, which is added after the recurrent LayerNorm and so folds in here, as one
    # layer_norm call: each extra op would be another (L, N, 4H) pass and buffer.
    bias = None if b_ih is None else b_ih + b_hh
    xp, mean, rstd_in = torch.native_layer_norm(projected, (projected.shape[1],), gain_ih, bias, LAYER_NORM_EPS)
    # The kernel overwrites xp, which only it reads, with the gate activations: no other (L, N, 4H) buffer to fault in.
    y, hs, cs, ahat, chat, rstd = loops_for(x).layer_norm_lstm_forward(
        xp.view(length, batch, -1), h0.contiguous(), c0.contiguous(), w_hh.contiguous(), gain_hh.contiguous(),
        gain_cell.contiguous(), bias_cell.contiguous(), valid, reverse, _loop_masks(x, zoneout),
    )  # fmt: skip
    return y, hs, cs, xp.view(length, batch, -1), ahat, chat, rstd, projected, mean, rstd_in


def _reference(reverse, valid, output_is_view, zoneout=None):
    """FusedLayerNormLSTM's differentiable outputs as a function of its tensor inputs, by the cell's own step."""

    def outputs(x, w_ih, b_ih, b_hh, gain_ih, w_hh, gain_hh, gain_cell, bias_cell, h0, c0):
        weights = CellWeights(w_ih, w_hh, b_ih, b_hh, None, LayerNormWeights(gain_ih, gain_hh, gain_cell, bias_cell))
        return transforms.reference_outputs(layer_norm_lstm_step, weights, x, (h0, c0), valid, reverse, output_is_view, zoneout)

    return outputs


def _backward(ctx, saved, d_y, d_hn, d_cn, d_hs):
    """The compiled backward: gradients of (x, w_ih, b_ih, b_hh, gain_ih, w_hh, gain_hh, gain_cell, bias_cell, h0, c0)."""
    valid, x, w_ih, b_ih, b_hh, gain_ih, w_hh, gain_hh, gain_cell, bias_cell, h0, c0, cs, gates, ahat, chat, rstd, projected, mean, rstd_in, hs, zoneout = saved
    if transforms.output_edited(ctx):  # the output, which is the states, was edited in place: run them once more from h_0
        _, hs, cs, gates, ahat, chat, rstd, *_ = _forward(ctx.reverse, valid, x, w_ih, b_ih, b_hh, gain_ih, w_hh, gain_hh, gain_cell, bias_cell, h0, c0, zoneout)
    length, batch, _ = x.shape
    dy = transforms.output_gradient(ctx.view, d_y, d_hs, hs, ctx.reverse)
    dh_n = h0.new_zeros(h0.shape) if d_hn is None else d_hn
    dc_n = c0.new_zeros(c0.shape) if d_cn is None else d_cn
    dxp, da, dh0, dc0, dgain_hh, dgain_cell, dbias_cell = loops_for(x).layer_norm_lstm_backward(
        gates, hs, cs, ahat, chat, rstd, w_hh.contiguous(), gain_hh.contiguous(), gain_cell.contiguous(),
        bias_cell.contiguous(), valid, ctx.reverse, dy, dh_n.contiguous(), dc_n.contiguous(), _loop_masks(x, zoneout),
    )  # fmt: skip
    steps = length * batch
    h_prev = hs[ctx.reverse : length + ctx.reverse].reshape(steps, hs.shape[2])
    need = ctx.needs_input_grad[3:]  # from x on
    dw_hh = da.view(steps, da.shape[2]).t() @ h_prev if need[5] else None
    bias = None if b_ih is None else b_ih + b_hh
    d_projected, dgain_ih, dbias = torch.ops.aten.native_layer_norm_backward(
        dxp.view(steps, -1), projected, [projected.shape[1]], mean, rstd_in, gain_ih, bias, [True, need[4], bias is not None]
    )
    dx = linear(d_projected, w_ih.t(), None).view_as(x) if need[0] else None
    dw_ih = d_projected.t() @ x.reshape(steps, x.shape[2]) if need[1] else None
    db = (dbias, dbias.clone()) if bias is not None else (None, None)
    return dx, dw_ih, *db, dgain_ih, dw_hh, dgain_hh, dgain_cell, dbias_cell, dh0, dc0


def loops_for(x: Tensor):
    """The LayerNorm loop ops for a tensor: Triton's where they run (CUDA; CPU under ``TRITON_INTERPRET=1``,
    see :mod:`rnnkit.ops.triton`), else the C++ library's (CPU), else None."""
    if triton_ops.runs_on(x):
        from rnnkit.ops.triton import layer_norm as triton_layer_norm  # imports triton: only where it runs

        return triton_layer_norm.LOOPS
    return ops.native_loops() if x.device.type == "cpu" else None


def _loop_masks(x: Tensor, zoneout: Tensor | None) -> Tensor | None:
    """The loop ops' zoneout masks. The layer's are (L, N, H), on h only (c is never zoned out); the Triton
    LSTM ops take ``[m_h m_c]`` (L, N, 2H), so c's half is zeros there: every unit takes its new c."""
    if zoneout is None or not triton_ops.runs_on(x):
        return zoneout
    return torch.cat([zoneout, torch.zeros_like(zoneout)], -1)


def supports(spec: CellSpec, x: Tensor, weights: CellWeights) -> bool:
    """Whether a compiled LayerNorm loop covers this call: float32/float64 without proj_size or autocast, on CPU
    with the C++ library built, or where the Triton kernels run (:func:`loops_for`)."""
    return (
        spec.name in ("layer_norm_lstm", "layer_norm_gru")
        and weights.weight_hr is None
        and x.dtype in (torch.float32, torch.float64)
        and not torch.is_autocast_enabled(x.device.type)
        and (spec.name == "layer_norm_lstm" or triton_ops.runs_on(x))  # the GRU has no C++ loop
        and loops_for(x) is not None
    )


def run_direction(
    spec: CellSpec, x: Tensor, state: State, weights: CellWeights, valid: Tensor | None, reverse: bool, zoneout: Tensor | None = None
) -> tuple[Tensor, State]:
    """Same contract and results as :func:`rnnkit.engine.reference.run_direction`, for a call :func:`supports` covers."""
    if spec.name == "layer_norm_gru":
        if zoneout is not None:  # the Triton GRU Function takes no masks: the hoisted loop applies them
            return hoisted.run_direction(spec, x, state, weights, valid, reverse, zoneout)
        return fused_layer_norm_gru.run_direction(spec, x, state, weights, valid, reverse)
    norm = weights.layer_norm
    h0, c0 = state
    args = (x, h0, c0, weights.weight_ih, weights.weight_hh, weights.bias_ih, weights.bias_hh, norm.gain_ih, norm.gain_hh, norm.gain_cell, norm.bias_cell, valid, reverse)
    args += () if zoneout is None else (zoneout.contiguous(),)
    y, h_n, c_n = transforms.call(torch.ops.rnnkit.layer_norm_lstm, _layer_norm_lstm, *args)
    return y, (h_n, c_n)


def _layer_norm_lstm(x, h0, c0, w_ih, w_hh, b_ih, b_hh, gain_ih, gain_hh, gain_cell, bias_cell, valid, reverse, zoneout=None):
    """``rnnkit::layer_norm_lstm``: one layer and direction, ``(y, h_n, c_n)``."""
    share = transforms.shares_output(valid is None)
    y, h_n, c_n, hs, *_ = FusedLayerNormLSTM.apply(reverse, share, valid, x.contiguous(), w_ih, b_ih, b_hh, gain_ih, w_hh, gain_hh, gain_cell, bias_cell, h0, c0, zoneout)
    return transforms.output(y, hs, reverse, valid is None and not share), h_n, c_n


_LIBRARY = torch.library.Library("rnnkit", "FRAGMENT")
_LIBRARY.define(
    "layer_norm_lstm(Tensor x, Tensor h0, Tensor c0, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh, Tensor gain_ih, "
    "Tensor gain_hh, Tensor gain_cell, Tensor bias_cell, Tensor? valid, bool reverse, Tensor? zoneout=None) -> (Tensor, Tensor, Tensor)"
)
_LIBRARY.impl("layer_norm_lstm", _layer_norm_lstm, "CompositeImplicitAutograd")
