"""Fake (meta) kernels of the compiled ops: output shapes without running anything.

torch.compile, torch.export and FakeTensor tracing call these instead of the C++
kernels, which read raw data pointers. Each mirrors its kernel's outputs exactly
(shape, dtype, device), including the empty placeholders a kernel returns for
results a family does not have. Legend: L steps, N batch, H hidden, H_out output
size (``proj_size`` or H), G gates, GH = G*H.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rnnkit.ops.kinds import GRU, LSTM, MINGRU, RGLRU


def _check_time_major(name: str, t: Tensor) -> None:
    torch._check(t.dim() == 3, lambda: f"{name}: expected (L, N, features), got shape {tuple(t.shape)}")


def _check_zoneout(zoneout: Tensor | None, steps: Tensor, state: Tensor) -> None:
    if zoneout is not None:
        expected = (steps.shape[0], steps.shape[1], state.shape[1])
        torch._check(tuple(zoneout.shape) == expected, lambda: f"zoneout: expected shape {expected} (L, N, H_out), got {tuple(zoneout.shape)}")


def _check_output_mask(output_mask: Tensor | None, steps: Tensor, state: Tensor) -> None:
    if output_mask is not None:
        expected = (steps.shape[1], state.shape[1])
        torch._check(tuple(output_mask.shape) == expected, lambda: f"output_mask: expected shape {expected} (N, H_out), got {tuple(output_mask.shape)}")


def check_output_dtype(op: str, output_dtype: torch.dtype | None, like: Tensor) -> bool:
    """Whether the op returns y in bf16 from float32 (the only other dtype it can return); raises for any other, as the
    compiled loops do (the Python loops check with this too)."""
    if output_dtype is None or output_dtype == like.dtype:
        return False
    if output_dtype != torch.bfloat16 or like.dtype != torch.float32:
        raise RuntimeError(f"{op}: output_dtype must be the input's dtype, or bf16 with a float32 input, got {output_dtype} with {like.dtype}")
    return True


def forward_loop(kind, xp, h0, c0, w_hh, b_hn, w_hr, valid, reverse, zoneout=None, output_mask=None, output_dtype=None):
    _check_time_major("xp", xp)
    _check_zoneout(zoneout, xp, h0)
    _check_output_mask(output_mask, xp, h0)
    length, batch, gate_size = xp.shape
    hidden = gate_size // {LSTM: 4, GRU: 3}.get(kind, 1)
    out_size = h0.shape[1]
    aliased = valid is None and w_hr is None and output_mask is None  # y is then a view of hs, taken in Python
    if check_output_dtype("forward_loop", output_dtype, xp):
        y = xp.new_empty(length, batch, out_size, dtype=torch.bfloat16)  # a buffer of its own
    else:
        y = xp.new_empty(0) if aliased else xp.new_empty(length, batch, out_size)
    hs = xp.new_empty(length + 1, batch, out_size)
    cs = xp.new_empty(length + 1, batch, hidden) if kind == LSTM else xp.new_empty(0)
    hn = xp.new_empty(length, batch, hidden) if kind == GRU else xp.new_empty(0)
    hraw = xp.new_empty(length, batch, hidden) if w_hr is not None else xp.new_empty(0)
    return y, hs, cs, hn, hraw


def backward_loop(kind, gates, hs, cs, hn, hraw, w_hh, w_hr, valid, reverse, dy, dh_n, dc_n, zoneout=None, output_mask=None):
    _check_time_major("dy", dy)
    _check_zoneout(zoneout, dy, dh_n)
    _check_output_mask(output_mask, dy, dh_n)
    length, batch, _ = dy.shape
    gate_size = w_hh.shape[0]
    hidden = gate_size // {LSTM: 4, GRU: 3}.get(kind, 1)
    if dy.dtype != hs.dtype and not (dy.dtype == torch.bfloat16 and hs.dtype == torch.float32):
        raise RuntimeError(f"backward_loop: dy must be of the states' dtype (or bf16 with float32 states), got {dy.dtype} with {hs.dtype} states")
    grads = torch.bfloat16 if w_hh.dtype == torch.bfloat16 else hs.dtype  # bf16 products return their rounded operands
    dgx = hs.new_empty(length, batch, gate_size, dtype=grads)
    dgh_n = hs.new_empty(length, batch, hidden, dtype=grads) if kind == GRU else hs.new_empty(0, dtype=grads)
    dc = hs.new_empty(dc_n.shape) if kind == LSTM else hs.new_empty(0)
    dproj = hs.new_empty(length, batch, hs.shape[2]) if w_hr is not None else hs.new_empty(0)
    return dgx, dgh_n, hs.new_empty(dh_n.shape), dc, dproj


def forward_inference(kind, x, w_ih, bias, h0, c0, w_hh, b_hn, w_hr, valid, reverse, output_dtype=None):
    _check_time_major("x", x)
    length, batch, _ = x.shape
    check_output_dtype("forward_inference", output_dtype, x)
    hidden = w_hh.shape[0] // {LSTM: 4, GRU: 3}.get(kind, 1)
    c_n = x.new_empty(batch, hidden) if kind == LSTM else x.new_empty(0)
    return x.new_empty(length, batch, h0.shape[1], dtype=output_dtype or x.dtype), x.new_empty(batch, h0.shape[1]), c_n


def cell_step(kind, x, h, c, w_ih, w_hh, b_ih, b_hh):
    batch = x.shape[0]
    return x.new_empty(batch, h.shape[1]), x.new_empty(batch if kind == LSTM else 0, h.shape[1])


def stacked_step(kind, x, h0, c0, weights, directions):
    cells, batch, hidden = h0.shape
    c_n = h0.new_empty(cells, batch, hidden) if kind == LSTM else x.new_empty(0)
    y = x.new_empty(*x.shape[:-1], directions * hidden)  # x (N, I) or a length-1 sequence (1, N, I)
    return y, h0.new_empty(cells, batch, hidden), c_n


def random_mask(seed, shape, p, below, above, dtype):
    return torch.empty(shape, dtype=dtype)


def layer_norm_lstm_forward(xp, h0, c0, w_hh, gain_hh, gain_cell, bias_cell, valid, reverse, zoneout=None):
    _check_time_major("xp", xp)
    _check_zoneout(zoneout, xp, h0)
    length, batch, gate_size = xp.shape
    hidden = h0.shape[1]
    y = xp.new_empty(length, batch, hidden) if valid is not None else xp.new_empty(0)
    states = (xp.new_empty(length + 1, batch, hidden), xp.new_empty(length + 1, batch, hidden))
    return y, *states, xp.new_empty(length, batch, gate_size), xp.new_empty(length, batch, hidden), xp.new_empty(length, batch, 2)


def layer_norm_lstm_backward(gates, hs, cs, ahat, chat, rstd, w_hh, gain_hh, gain_cell, bias_cell, valid, reverse, dy, dh_n, dc_n, zoneout=None):
    _check_zoneout(zoneout, dy, dh_n)
    return (
        gates.new_empty(gates.shape), gates.new_empty(gates.shape), dh_n.new_empty(dh_n.shape), dc_n.new_empty(dc_n.shape),
        gain_hh.new_empty(gain_hh.shape), gain_cell.new_empty(gain_cell.shape), bias_cell.new_empty(bias_cell.shape),
    )  # fmt: skip


def linear_scan(a, b, h0, reverse, chunks):
    torch._check(a.dim() == 2, lambda: f"a: expected (T, F), got shape {tuple(a.shape)}")
    return a.new_empty(a.shape)


def linear_scan_backward(a, h, h0, grad_h, reverse, chunks):
    return a.new_empty(a.shape), a.new_empty(a.shape), h0.new_empty(h0.shape)


def scan_coefficients(kind, projected, decay_logit):
    hidden = projected.shape[1] // (2 if kind == MINGRU else 3)
    return projected.new_empty(projected.shape[0], hidden), projected.new_empty(projected.shape[0], hidden)


def scan_coefficients_backward(kind, projected, decay_logit, grad_a, grad_b):
    hidden = projected.shape[1] // (2 if kind == MINGRU else 3)
    return projected.new_empty(projected.shape), projected.new_empty(hidden if kind == RGLRU else 0)


def int8_layer(kind, x, wi_packed, wi_scale, wi_colsum, bias, h0, c0, w_packed, w_scale, colsum, b_hn, valid, reverse):
    _check_time_major("x", x)
    length, batch, _ = x.shape
    hidden = h0.shape[1]
    c_n = x.new_empty(batch, hidden) if kind == LSTM else x.new_empty(0)
    return x.new_empty(length, batch, hidden), x.new_empty(batch, hidden), c_n


def int8_linear(x, w_packed, w_scale, colsum, bias, out_features):
    torch._check(x.dim() == 2, lambda: f"x: expected (rows, features), got shape {tuple(x.shape)}")
    return x.new_empty(x.shape[0], out_features)


def projection(x, weight, bias):
    torch._check(x.dim() == 2 and weight.dim() == 2, lambda: f"projection: expected 2-D x and weight, got {tuple(x.shape)} and {tuple(weight.shape)}")
    return x.new_empty(x.shape[0], weight.shape[0])


def pooled_empty(size, dtype):
    return torch.empty(size, dtype=dtype)


KERNELS = (forward_loop, backward_loop, forward_inference, cell_step, stacked_step, random_mask, layer_norm_lstm_forward, layer_norm_lstm_backward,
           linear_scan, linear_scan_backward, scan_coefficients, scan_coefficients_backward, int8_layer, int8_linear,
           projection, pooled_empty)


def register_fakes() -> None:
    """Register every fake kernel with its op (once the library is loaded: the ops must exist)."""
    for fake in KERNELS:
        torch.library.register_fake(f"rnnkit_fused::{fake.__name__}", fake)
