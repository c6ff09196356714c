"""The per-step recurrence of the fused engine, in pure PyTorch (the fallback).

:mod:`rnnkit.engine.fused` does every product that spans all time steps as one
GEMM and hands the recurrence itself (one small GEMM and the gate math per
step) to a *loop kernel*. There are two loop kernels with one contract: the
compiled one in ``csrc/fused_loops.cpp`` (the LayerNorm LSTM's in
``csrc/layer_norm_loops.cpp``) and this one, which runs wherever PyTorch runs
(CUDA included) and is used when the C++ build is unavailable.

Contract (time-indexed buffers; ``before = t + reverse``, ``after = t + 1 - reverse``
index the state history, so that a step always reads ``hs[before]`` and writes
``hs[after]`` whichever direction the loop runs)::

    forward_loop(kind, xp, h0, c0, w_hh, b_hn, w_hr, valid, reverse, zoneout=None, output_mask=None, output_dtype=None)
        -> y (L,N,H_out), hs (L+1,N,H_out), cs (L+1,N,H), hn (L,N,H), hraw (L,N,H)
           (y is empty without padding, projection and output mask: the output is then hs's steps, a view taken by the caller;
            with output_dtype bf16 and a float32 xp, y is always a bf16 tensor of its own, the output rounded)
    backward_loop(kind, gates, hs, cs, hn, hraw, w_hh, w_hr, valid, reverse, dy, dh_n, dc_n, zoneout=None, output_mask=None)
        -> dgx (L,N,G*H), dgh_n (L,N,H), dh0 (N,H_out), dc0 (N,H), dproj (L,N,H_out)

``xp`` holds the input projections on entry and is overwritten with the gate
activations the backward pass needs (``gates``; RNN needs none and passes an
empty tensor, but with zoneout it keeps the new states before zoneout, h̃_t, there); ``dy`` may have any strides; ``dgh_n`` is GRU's
recurrent-side gradient of the n gate, ``δn⊙r`` (its r and z parts equal
``dgx``'s); unused results are empty tensors. The equations are in :mod:`rnnkit.engine.fused`.

``zoneout`` (L, N, H_out), optional: keep-previous weights ``m_t``. A valid step's new hidden
state (after the projection, if any) becomes ``h_t = h̃_t + m_t ⊙ (h_{t-1} - h̃_t)``, and it is
also the output. Backward then splits the total gradient ``dh_t``: ``(1 - m_t) ⊙ dh_t`` goes into
the step (the gates, or the projection), ``m_t ⊙ dh_t`` straight to ``dh_{t-1}``. The mask is floats
(eval mode's constant p) or bool flags (training's masks: a quarter of the memory), read as ``m_t`` 0/1.

``w_hh`` in bf16 while the rest is float32 (what :mod:`rnnkit.engine.autocast` passes under bf16
autocast): every per-step product runs with bf16 operands and float32 sums, ``bf16(h_{t-1}) W_hh^T``
forward and ``bf16(dG_t) W_hh`` backward (GRU: ``[bf16(dgx_rz), bf16(δn⊙r)]``); states, gates and
``dh`` stay float32; ``backward_loop`` then returns ``dgx`` and ``dgh_n`` rounded to bf16, the
operands its products used. The compiled loop does this with AMX-BF16 tiles where the CPU has them, else with
AVX512-BF16's dot products (see ``csrc/bf16_tiles.h``); the results differ from this loop's only in the order of
float32 sums.

``output_mask`` (N, H_out), optional: a locked dropout mask on the output, the same at every step:
``y_t = h_t ⊙ m`` (the states keep ``h_t``), and backward adds ``dy_t ⊙ m`` to ``dh_t``. It is what
``(y ⊙ m)`` then autograd's product would compute, without a masked copy of the output or of its gradient.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rnnkit.ops.fakes import check_output_dtype
from rnnkit.ops.kinds import GRU, KINDS, LSTM, RNN_RELU, RNN_TANH  # noqa: F401 - KINDS re-exported


def _empty(like: Tensor) -> Tensor:
    return like.new_empty(0)


def _low_operands(w_hh: Tensor, dtype: torch.dtype) -> tuple[torch.dtype | None, Tensor]:
    """A W_hh of lower precision than the loop's (bf16 under autocast) asks for per-step products with operands
    rounded to it and sums in the loop's dtype: ``(that dtype, W_hh in the loop's dtype)``; else ``(None, W_hh)``."""
    return (None, w_hh) if w_hh.dtype == dtype else (w_hh.dtype, w_hh.to(dtype))


def _rounded(operand: Tensor, low: torch.dtype | None) -> Tensor:
    return operand if low is None else operand.to(low).to(operand.dtype)


def forward_loop(kind, xp, h0, c0, w_hh, b_hn, w_hr, valid, reverse, zoneout=None, output_mask=None, output_dtype=None):
    length, batch, _ = xp.shape
    out_size = h0.shape[1]
    hidden = w_hh.shape[0] // {RNN_TANH: 1, RNN_RELU: 1, LSTM: 4, GRU: 3}[kind]
    aliased = valid is None and w_hr is None and output_mask is None  # the output is then hs's steps: returned empty, as the C++ kernel does
    low_output = check_output_dtype("forward_loop", output_dtype, xp)  # y then a bf16 tensor of its own, made at the end
    y = _empty(xp) if aliased else xp.new_empty(length, batch, out_size)
    hs = xp.new_empty(length + 1, batch, out_size)
    hs[length if reverse else 0] = h0
    cs = xp.new_empty(length + 1, batch, hidden) if kind == LSTM else _empty(xp)
    if kind == LSTM:
        cs[length if reverse else 0] = c0
    hn = xp.new_empty(length, batch, hidden) if kind == GRU else _empty(xp)
    hraw = xp.new_empty(length, batch, hidden) if w_hr is not None else _empty(xp)
    low, w_hh = _low_operands(w_hh, xp.dtype)
    w_hh_t = w_hh.t()
    order = range(length - 1, -1, -1) if reverse else range(length)
    for t in order:
        before, after = t + reverse, t + 1 - reverse
        h_prev = hs[before]
        recurrent = _rounded(h_prev, low) @ w_hh_t
        gates = xp[t]
        if kind == LSTM:
            i, f, g, o = (gates + recurrent).chunk(4, dim=1)
            i, f, g, o = i.sigmoid(), f.sigmoid(), g.tanh(), o.sigmoid()
            c_new = f * cs[before] + i * g
            h_new = o * c_new.tanh()
            gates.copy_(torch.cat((i, f, g, o), dim=1))
            if w_hr is not None:
                hraw[t] = h_new
                h_new = h_new @ w_hr.t()
        elif kind == GRU:
            x_r, x_z, x_n = gates.chunk(3, dim=1)
            h_r, h_z, h_n = recurrent.chunk(3, dim=1)
            r, z = (x_r + h_r).sigmoid(), (x_z + h_z).sigmoid()
            hn[t] = h_n if b_hn is None else h_n + b_hn
            n = (x_n + r * hn[t]).tanh()
            h_new = n + z * (h_prev - n)
            gates.copy_(torch.cat((r, z, n), dim=1))
        else:
            pre = gates + recurrent
            h_new = pre.tanh() if kind == RNN_TANH else pre.relu()
            if zoneout is not None and zoneout.dtype != torch.bool:  # backward's tanh'/relu' need h̃, which hs will not hold
                gates.copy_(h_new)  # (0/1 flags: hs holds h̃ wherever m = 0, and where m = 1 the step gets no gradient)
        if zoneout is not None:
            h_new = h_new + zoneout[t] * (h_prev - h_new)
        if valid is not None:
            keep = valid[t].unsqueeze(1)
            y[t] = torch.where(keep, h_new, 0.0)
            h_new = torch.where(keep, h_new, h_prev)
            if kind == LSTM:
                c_new = torch.where(keep, c_new, cs[before])
        elif not aliased:
            y[t] = h_new
        if output_mask is not None:
            y[t] *= output_mask
        hs[after] = h_new
        if kind == LSTM:
            cs[after] = c_new
    if low_output:
        y = ((hs[:-1] if reverse else hs[1:]) if aliased else y).to(output_dtype)
    return y, hs, cs, hn, hraw


def backward_loop(kind, gates, hs, cs, hn, hraw, w_hh, w_hr, valid, reverse, dy, dh_n, dc_n, zoneout=None, output_mask=None):
    if dy.dtype == torch.bfloat16 and hs.dtype == torch.float32:  # the output's gradient under bf16 autocast
        dy = dy.float()
    if dy.dtype != hs.dtype:
        raise RuntimeError(f"backward_loop: dy must be of the states' dtype (or bf16 with float32 states), got {dy.dtype} with {hs.dtype} states")
    length, batch, _ = dy.shape
    gate_size = w_hh.shape[0]
    low, w_hh = _low_operands(w_hh, dy.dtype)
    dgx = dy.new_empty(length, batch, gate_size)  # RNN passes no gates: its backward reads hs
    dgh_n = dy.new_empty(length, batch, gate_size // 3) if kind == GRU else _empty(dy)
    dproj = dy.new_empty(dy.shape) if w_hr is not None else _empty(dy)
    dh = dh_n.clone()
    dc = dc_n.clone() if kind == LSTM else _empty(dy)
    order = range(length) if reverse else range(length - 1, -1, -1)
    for t in order:
        before, after = t + reverse, t + 1 - reverse
        keep = valid[t].unsqueeze(1) if valid is not None else None
        dy_t = dy[t] if output_mask is None else dy[t] * output_mask
        dh = dh + (dy_t if keep is None else torch.where(keep, dy_t, 0.0))
        direct = None  # the part of dh_{t-1} that does not go through W_hh
        dh_total = dh  # what a padded step passes through
        if zoneout is not None:
            direct = zoneout[t] * dh
            dh = dh - direct  # (1 - m) dh, in one op less
        if kind == LSTM:
            dh_raw = dh
            if w_hr is not None:
                dproj[t] = dh if keep is None else torch.where(keep, dh, 0.0)
                dh_raw = dh @ w_hr
            i, f, g, o = gates[t].chunk(4, dim=1)
            tanh_c = cs[after].tanh()
            dc_total = dc + dh_raw * o * (1 - tanh_c * tanh_c)
            grads = (dc_total * g * i * (1 - i), dc_total * cs[before] * f * (1 - f), dc_total * i * (1 - g * g), dh_raw * tanh_c * o * (1 - o))
            dgx[t] = torch.cat(grads, dim=1)
            dc_prev = dc_total * f
            dc = dc_prev if keep is None else torch.where(keep, dc_prev, dc)
        elif kind == GRU:
            r, z, n = gates[t].chunk(3, dim=1)
            d_n_pre = dh * (1 - z) * (1 - n * n)
            d_z_pre = dh * (hs[before] - n) * z * (1 - z)
            d_r_pre = d_n_pre * hn[t] * r * (1 - r)
            dgx[t] = torch.cat((d_r_pre, d_z_pre, d_n_pre), dim=1)
            dgh_n[t] = d_n_pre * r
            direct = dh * z if direct is None else direct + dh * z
        else:
            h = hs[after] if zoneout is None or zoneout.dtype == torch.bool else gates[t]
            dgx[t] = dh * (1 - h * h) if kind == RNN_TANH else dh * (h > 0)
        if keep is not None:
            dgx[t] = torch.where(keep, dgx[t], 0.0)
            if kind == GRU:
                dgh_n[t] = torch.where(keep, dgh_n[t], 0.0)
        if kind == GRU:
            shared = 2 * dgh_n.shape[2]
            dh_prev = _rounded(dgx[t][:, :shared], low) @ w_hh[:shared] + _rounded(dgh_n[t], low) @ w_hh[shared:]
        else:
            dh_prev = _rounded(dgx[t], low) @ w_hh
        if direct is not None:
            dh_prev = dh_prev + direct
        dh = dh_prev if keep is None else torch.where(keep, dh_prev, dh_total)
    if low is not None:  # the rounded gate gradients the products used, as the compiled loop returns them
        return dgx.to(low), dgh_n.to(low), dh, dc, dproj
    return dgx, dgh_n, dh, dc, dproj
