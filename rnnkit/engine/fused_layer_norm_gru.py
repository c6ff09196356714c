r"""The fused LayerNorm GRU: one autograd node per layer and direction, on the Triton loop ops.

The cell is haste's LayerNormGRU (equations in :mod:`rnnkit.cells.gru`)::

    xp_t = LN(W_ih x_t) ⊙ γ_ih + b_ih                 all steps at once: one GEMM, one LayerNorm
    â_t  = LN(a_t),  a_t = h_{t-1} W_hh^T             per step: cuBLAS, then one Triton kernel
    [h_r h_z h_n] = â_t ⊙ γ_hh + b_hh
    r = σ(x_r + h_r),  z = σ(x_z + h_z),  n = tanh(x_n + r ⊙ h_n),  h_t = n + z ⊙ (h_{t-1} - n)

Backward per step (``LN'`` as in :mod:`rnnkit.engine.fused_layer_norm`)::

    δn = dh_t ⊙ (1-z) ⊙ tanh'(n),  δz = dh_t ⊙ (h_{t-1}-n) ⊙ σ'(z),  δr = δn ⊙ h_n ⊙ σ'(r)
    dxp_t = [δr δz δn],  dhp_t = [δr δz δn⊙r]     dγ_hh += Σ dhp_t ⊙ â_t,  db_hh += Σ dhp_t
    da_t = LN'(dhp_t ⊙ γ_hh),  dh_{t-1} = dh_t ⊙ z + da_t W_hh

then ``dW_hh = Σ_t da_t^T h_{t-1}`` is one GEMM, and ``dxp`` goes through ATen's LayerNorm
backward and two GEMMs. The loop ops are :mod:`rnnkit.ops.triton.layer_norm`'s, so this runs
where they do (CUDA; CPU under ``TRITON_INTERPRET=1``); elsewhere the LayerNorm GRU runs the
hoisted loop. Transforms (double backward, jvp, vmap) as :mod:`rnnkit.engine.transforms` says.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rnnkit.cells.base import LAYER_NORM_EPS, CellSpec, CellWeights, LayerNormWeights, State
from rnnkit.cells.gru import layer_norm_gru_step
from rnnkit.engine import transforms
from rnnkit.engine.gemm import linear

_ROLES = (None, None, "mask", "seq", *["weight"] * 6, "state")


def _loops():
    from rnnkit.ops.triton.layer_norm import LOOPS  # imports triton: only where the ops run

    return LOOPS


class FusedLayerNormGRU(torch.autograd.Function):
    """One layer and direction: ``(y, h_n, hs, *internals)``, as :class:`rnnkit.engine.fused_layer_norm.FusedLayerNormLSTM`.

    Inputs: ``reverse, share, valid, x, w_ih, b_ih, b_hh, gain_ih, w_hh, gain_hh, h0``.
    """

    @staticmethod
    def forward(reverse, share, valid, x, w_ih, b_ih, b_hh, gain_ih, w_hh, gain_hh, h0):
        y, hs, *internals = _forward(reverse, valid, x, w_ih, b_ih, b_hh, gain_ih, w_hh, gain_hh, h0)
        y = transforms.shared_output(y, hs, reverse) if share else y
        return y, hs[0 if reverse else -1].clone(), hs, *internals

    @staticmethod
    def setup_context(ctx, inputs, output):
        reverse, share, valid, *primals = inputs
        y, _, hs, *internals = output
        ctx.reverse, ctx.view = reverse, valid is None and not share
        ctx.mark_non_differentiable(*internals, *(() if ctx.view else (hs,)))
        ctx.set_materialize_grads(False)
        ctx.primals, ctx.valid = tuple(primals), valid
        transforms.keep_output(ctx, y, share)
        ctx.save_for_backward(valid, *primals, *internals, hs)

    @staticmethod
    def backward(ctx, d_y, d_hn, d_hs, *_internals):
        saved = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True or torch.func: the reference math, differentiable again
            grads = transforms.reference_vjp(_reference(ctx.reverse, saved[0], ctx.view), saved[1:9], (d_y, d_hn, None, d_hs))
            return None, None, None, *grads
        return None, None, None, *_backward(ctx, saved, d_y, d_hn, d_hs)

    @staticmethod
    def jvp(ctx, _reverse, _share, _valid, *tangents):
        y, h_n, _, hs = transforms.reference_jvp(_reference(ctx.reverse, ctx.valid, ctx.view), ctx.primals, tangents)
        return y, h_n, hs if ctx.view else None, *[None] * 7

    @staticmethod
    def vmap(info, in_dims, *args):
        return transforms.vmap_by_batch(FusedLayerNormGRU.apply, info, in_dims, args, _ROLES)


def _forward(reverse, valid, x, w_ih, b_ih, b_hh, gain_ih, w_hh, gain_hh, h0):
    length, batch, features = x.shape
    projected = linear(x.reshape(length * batch, features), w_ih, None)
    xp, mean, rstd_in = torch.native_layer_norm(projected, (projected.shape[1],), gain_ih, b_ih, LAYER_NORM_EPS)
    y, hs, ahat, hn, rstd = _loops().layer_norm_gru_forward(
        xp.view(length, batch, -1), h0.contiguous(), w_hh.contiguous(), gain_hh.contiguous(),
        None if b_hh is None else b_hh.contiguous(), valid, reverse,
    )  # fmt: skip
    return y, hs, xp.view(length, batch, -1), ahat, hn, rstd, projected, mean, rstd_in


def _reference(reverse, valid, output_is_view):
    """FusedLayerNormGRU's differentiable outputs ``(y, h_n, c_n (empty), hs)`` by the cell's own step."""

    def outputs(x, w_ih, b_ih, b_hh, gain_ih, w_hh, gain_hh, h0):
        weights = CellWeights(w_ih, w_hh, b_ih, b_hh, None, LayerNormWeights(gain_ih, gain_hh))
        return transforms.reference_outputs(layer_norm_gru_step, weights, x, (h0,), valid, reverse, output_is_view)

    return outputs


def _backward(ctx, saved, d_y, d_hn, d_hs):
    """Gradients of (x, w_ih, b_ih, b_hh, gain_ih, w_hh, gain_hh, h0)."""
    valid, x, w_ih, b_ih, b_hh, gain_ih, w_hh, gain_hh, h0, gates, ahat, hn, rstd, projected, mean, rstd_in, hs = saved
    if transforms.output_edited(ctx):  # the shared output (the states) was edited in place: run them once more
        _, hs, gates, ahat, hn, rstd, *_ = _forward(ctx.reverse, valid, x, w_ih, b_ih, b_hh, gain_ih, w_hh, gain_hh, h0)
    length, batch, _ = x.shape
    dy = transforms.output_gradient(ctx.view, d_y, d_hs, hs, ctx.reverse)
    dh_n = h0.new_zeros(h0.shape) if d_hn is None else d_hn
    dxp, da, dh0, dgain_hh, db_hh = _loops().layer_norm_gru_backward(
        gates, hs, ahat, hn, rstd, w_hh.contiguous(), gain_hh.contiguous(), valid, ctx.reverse, dy, dh_n.contiguous()
    )
    steps = length * batch
    h_prev = hs[ctx.reverse : length + ctx.reverse].reshape(steps, hs.shape[2])
    need = ctx.needs_input_grad[3:]  # from x on
    dw_hh = da.view(steps, da.shape[2]).t() @ h_prev if need[5] else None
    d_projected, dgain_ih, db_ih = torch.ops.aten.native_layer_norm_backward(
        dxp.view(steps, -1), projected, [projected.shape[1]], mean, rstd_in, gain_ih, b_ih, [True, need[4], b_ih is not None]
    )
    dx = linear(d_projected, w_ih.t(), None).view_as(x) if need[0] else None
    dw_ih = d_projected.t() @ x.reshape(steps, x.shape[2]) if need[1] else None
    return dx, dw_ih, db_ih, db_hh if b_hh is not None else None, dgain_ih, dw_hh, dgain_hh, dh0


def run_direction(spec: CellSpec, x: Tensor, state: State, weights: CellWeights, valid: Tensor | None, reverse: bool) -> tuple[Tensor, State]:
    """Same contract and results as :func:`rnnkit.engine.reference.run_direction`, where the Triton ops run."""
    norm = weights.layer_norm
    args = (x, state[0], weights.weight_ih, weights.weight_hh, weights.bias_ih, weights.bias_hh, norm.gain_ih, norm.gain_hh, valid, reverse)
    y, h_n = transforms.call(torch.ops.rnnkit.layer_norm_gru, _layer_norm_gru, *args)
    return y, (h_n,)


def _layer_norm_gru(x, h0, w_ih, w_hh, b_ih, b_hh, gain_ih, gain_hh, valid, reverse):
    """``rnnkit::layer_norm_gru``: one layer and direction, ``(y, h_n)``."""
    share = transforms.shares_output(valid is None)
    y, h_n, hs, *_ = FusedLayerNormGRU.apply(reverse, share, valid, x.contiguous(), w_ih, b_ih, b_hh, gain_ih, w_hh, gain_hh, h0)
    return transforms.output(y, hs, reverse, valid is None and not share), h_n


_LIBRARY = torch.library.Library("rnnkit", "FRAGMENT")
_LIBRARY.define(
    "layer_norm_gru(Tensor x, Tensor h0, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh, Tensor gain_ih, "
    "Tensor gain_hh, Tensor? valid, bool reverse) -> (Tensor, Tensor)"
)
_LIBRARY.impl("layer_norm_gru", _layer_norm_gru, "CompositeImplicitAutograd")
