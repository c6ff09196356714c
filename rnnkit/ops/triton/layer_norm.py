"""The LayerNorm LSTM's and GRU's recurrences as Triton ops (the CUDA twins of the C++ loop ops).

Per step: the recurrent GEMM through torch (cuBLAS on CUDA), then one Triton kernel for both
LayerNorms and the gate math (:mod:`rnnkit.ops.triton.layer_norm_kernels`); backward walks time
the other way with one kernel and one GEMM per step. The ops' signatures and outputs are the C++
``layer_norm_lstm_forward/backward``'s (:mod:`rnnkit.ops.fakes`), so that
:class:`rnnkit.engine.fused_layer_norm.FusedLayerNormLSTM` runs either; the GRU's pair serves
:mod:`rnnkit.engine.fused_layer_norm_gru`. Like the C++ ops, the forward overwrites ``xp`` with
the gate activations (its schema says so), and ``y`` comes back empty without padding (it is
then a view of ``hs``, taken by the engine).

Layout: ``hs[t + reverse]`` enters step t and ``hs[t + 1 - reverse]`` leaves it (likewise ``cs``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from rnnkit.cells.base import LAYER_NORM_EPS
from rnnkit.ops import triton as triton_ops


def _steps(length: int, reverse: bool, backward: bool):
    """Time steps in the order a pass visits them: the forward's direction, or the opposite for backward."""
    forward_order = range(length - 1, -1, -1) if reverse else range(length)
    return reversed(forward_order) if backward else forward_order


def _valid_rows(valid: Tensor | None, xp: Tensor) -> Tensor:
    """``valid`` as bytes (Triton loads them as integers); a 1-element placeholder when there is none."""
    return xp.new_ones(1, dtype=torch.uint8) if valid is None else valid.to(torch.uint8).contiguous()


def _states(x: Tensor, h0: Tensor, reverse: bool) -> Tensor:
    """(L+1, N, H) history with the initial state in its slot."""
    length = x.shape[0]
    hs = x.new_empty(length + 1, *h0.shape)
    hs[length if reverse else 0] = h0
    return hs


@torch.library.custom_op("rnnkit_fused::triton_layer_norm_lstm_forward", mutates_args=("xp",))
def layer_norm_lstm_forward(
    xp: Tensor, h0: Tensor, c0: Tensor, w_hh: Tensor, gain_hh: Tensor, gain_cell: Tensor, bias_cell: Tensor, valid: Tensor | None,
    reverse: bool, zoneout: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The C++ op's outputs; ``zoneout`` (L, N, 2H), optional: ``[m_h m_c]`` per step, 1 where a unit keeps its state."""
    kernels = triton_ops.kernels("layer_norm", xp)
    zoneout = None if zoneout is None else zoneout.contiguous()
    length, batch, _ = xp.shape
    hidden = h0.shape[1]
    hs, cs = _states(xp, h0, reverse), _states(xp, c0, reverse)
    y = xp.new_empty(length, batch, hidden) if valid is not None else xp.new_empty(0)
    ahat, chat, rstd = torch.empty_like(xp), xp.new_empty(length, batch, hidden), xp.new_empty(length, batch, 2)
    rows = _valid_rows(valid, xp)
    block = triton_ops.block_size(hidden)
    a = xp.new_empty(batch, 4 * hidden)
    w_t = w_hh.t()
    for t in _steps(length, reverse, backward=False):
        before, after = t + reverse, t + 1 - reverse
        torch.mm(hs[before], w_t, out=a)
        kernels.lstm_forward_step[(batch,)](
            xp[t], a, hs[before], cs[before], hs[after], cs[after], y[t] if valid is not None else hs[after], ahat[t], chat[t],
            rstd[t], rows[t] if valid is not None else rows, gain_hh, gain_cell, bias_cell, rows if zoneout is None else zoneout[t],
            hidden, LAYER_NORM_EPS, HAS_VALID=valid is not None, HAS_ZONEOUT=zoneout is not None, BLOCK=block, **triton_ops.launch_options(block),
        )  # fmt: skip
    return y, hs, cs, ahat, chat, rstd


@layer_norm_lstm_forward.register_fake
def _(xp, h0, c0, w_hh, gain_hh, gain_cell, bias_cell, valid, reverse, zoneout=None):
    from rnnkit.ops import fakes

    return fakes.layer_norm_lstm_forward(xp, h0, c0, w_hh, gain_hh, gain_cell, bias_cell, valid, reverse)[:3] + _lstm_saved(xp, h0)


def _lstm_saved(xp, h0):
    length, batch, _ = xp.shape
    return torch.empty_like(xp), xp.new_empty(length, batch, h0.shape[1]), xp.new_empty(length, batch, 2)


@torch.library.custom_op("rnnkit_fused::triton_layer_norm_lstm_backward", mutates_args=())
def layer_norm_lstm_backward(
    gates: Tensor, hs: Tensor, cs: Tensor, ahat: Tensor, chat: Tensor, rstd: Tensor, w_hh: Tensor, gain_hh: Tensor,
    gain_cell: Tensor, bias_cell: Tensor, valid: Tensor | None, reverse: bool, dy: Tensor, dh_n: Tensor, dc_n: Tensor,
    zoneout: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``(dxp, da, dh0, dc0, dgain_hh, dgain_cell, dbias_cell)``; ``da`` the gradient of ``h_{t-1} W_hh^T`` per step;
    ``zoneout`` the forward's masks."""
    kernels = triton_ops.kernels("layer_norm", gates)
    zoneout = None if zoneout is None else zoneout.contiguous()
    length, batch, _ = gates.shape
    hidden = hs.shape[2]
    dgx, da, d_normed = torch.empty_like(gates), torch.empty_like(gates), torch.empty_like(chat)
    dh, dc = dh_n.clone(memory_format=torch.contiguous_format), dc_n.clone(memory_format=torch.contiguous_format)
    dy = dy.contiguous()
    rows = _valid_rows(valid, gates)
    block = triton_ops.block_size(hidden)
    for t in _steps(length, reverse, backward=True):
        kernels.lstm_backward_step[(batch,)](
            gates[t], cs[t + reverse], ahat[t], chat[t], rstd[t], dy[t], rows[t] if valid is not None else rows,
            gain_hh, gain_cell, bias_cell, dh, dc, dgx[t], da[t], d_normed[t], rows if zoneout is None else zoneout[t], hidden,
            HAS_VALID=valid is not None, HAS_ZONEOUT=zoneout is not None, BLOCK=block, **triton_ops.launch_options(block),
        )  # fmt: skip
        dh.addmm_(da[t], w_hh)  # dh_{t-1}: the kernel left the part that skips W_hh (padded rows: all of dh)
    dgain_hh = (dgx * ahat).sum((0, 1))
    return dgx, da, dh, dc, dgain_hh, (d_normed * chat).sum((0, 1)), d_normed.sum((0, 1))


@layer_norm_lstm_backward.register_fake
def _(gates, hs, cs, ahat, chat, rstd, w_hh, gain_hh, gain_cell, bias_cell, valid, reverse, dy, dh_n, dc_n, zoneout=None):
    from rnnkit.ops import fakes

    return fakes.layer_norm_lstm_backward(gates, hs, cs, ahat, chat, rstd, w_hh, gain_hh, gain_cell, bias_cell, valid, reverse, dy, dh_n, dc_n)


@torch.library.custom_op("rnnkit_fused::triton_layer_norm_gru_forward", mutates_args=("xp",))
def layer_norm_gru_forward(
    xp: Tensor, h0: Tensor, w_hh: Tensor, gain_hh: Tensor, b_hh: Tensor | None, valid: Tensor | None, reverse: bool,
    zoneout: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``(y, hs, ahat, hn, rstd)``; ``xp`` (L, N, 3H) = LN(W_ih x)γ_ih + b_ih comes back as the gates [r z n];
    ``zoneout`` (L, N, H), optional: 1 where a unit keeps its state."""
    kernels = triton_ops.kernels("layer_norm", xp)
    zoneout = None if zoneout is None else zoneout.contiguous()
    length, batch, _ = xp.shape
    hidden = h0.shape[1]
    hs = _states(xp, h0, reverse)
    y = xp.new_empty(length, batch, hidden) if valid is not None else xp.new_empty(0)
    ahat, hn, rstd = _gru_saved(xp, h0)
    rows = _valid_rows(valid, xp)
    block = triton_ops.block_size(hidden)
    a = xp.new_empty(batch, 3 * hidden)
    w_t = w_hh.t()
    for t in _steps(length, reverse, backward=False):
        before, after = t + reverse, t + 1 - reverse
        torch.mm(hs[before], w_t, out=a)
        kernels.gru_forward_step[(batch,)](
            xp[t], a, hs[before], hs[after], y[t] if valid is not None else hs[after], ahat[t], hn[t], rstd[t],
            rows[t] if valid is not None else rows, gain_hh, gain_hh if b_hh is None else b_hh, rows if zoneout is None else zoneout[t],
            hidden, LAYER_NORM_EPS, HAS_VALID=valid is not None, HAS_BIAS=b_hh is not None, HAS_ZONEOUT=zoneout is not None,
            BLOCK=block, **triton_ops.launch_options(block),
        )  # fmt: skip
    return y, hs, ahat, hn, rstd


def _gru_saved(xp, h0):
    length, batch, _ = xp.shape
    return torch.empty_like(xp), xp.new_empty(length, batch, h0.shape[1]), xp.new_empty(length, batch)


@layer_norm_gru_forward.register_fake
def _(xp, h0, w_hh, gain_hh, b_hh, valid, reverse, zoneout=None):
    length, batch, _ = xp.shape
    torch._check(xp.dim() == 3, lambda: f"xp: expected (L, N, 3H), got shape {tuple(xp.shape)}")
    y = xp.new_empty(length, batch, h0.shape[1]) if valid is not None else xp.new_empty(0)
    return y, xp.new_empty(length + 1, batch, h0.shape[1]), *_gru_saved(xp, h0)


@torch.library.custom_op("rnnkit_fused::triton_layer_norm_gru_backward", mutates_args=())
def layer_norm_gru_backward(
    gates: Tensor, hs: Tensor, ahat: Tensor, hn: Tensor, rstd: Tensor, w_hh: Tensor, gain_hh: Tensor, valid: Tensor | None,
    reverse: bool, dy: Tensor, dh_n: Tensor, zoneout: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``(dxp, da, dh0, dgain_hh, db_hh)``; ``da`` the gradient of ``h_{t-1} W_hh^T`` per step."""
    kernels = triton_ops.kernels("layer_norm", gates)
    zoneout = None if zoneout is None else zoneout.contiguous()
    length, batch, _ = gates.shape
    hidden = hs.shape[2]
    dgx, dgh, da = torch.empty_like(gates), torch.empty_like(gates), torch.empty_like(gates)
    dh = dh_n.clone(memory_format=torch.contiguous_format)
    dy = dy.contiguous()
    rows = _valid_rows(valid, gates)
    block = triton_ops.block_size(hidden)
    for t in _steps(length, reverse, backward=True):
        kernels.gru_backward_step[(batch,)](
            gates[t], hs[t + reverse], ahat[t], hn[t], rstd[t], dy[t], rows[t] if valid is not None else rows, gain_hh,
            dh, dgx[t], dgh[t], da[t], rows if zoneout is None else zoneout[t], hidden,
            HAS_VALID=valid is not None, HAS_ZONEOUT=zoneout is not None, BLOCK=block, **triton_ops.launch_options(block),
        )  # fmt: skip
        dh.addmm_(da[t], w_hh)  # the kernel left dh_t ⊙ z (valid rows) or dh_t (padded ones)
    return dgx, da, dh, (dgh * ahat).sum((0, 1)), dgh.sum((0, 1))


@layer_norm_gru_backward.register_fake
def _(gates, hs, ahat, hn, rstd, w_hh, gain_hh, valid, reverse, dy, dh_n, zoneout=None):
    return torch.empty_like(gates), torch.empty_like(gates), dh_n.new_empty(dh_n.shape), gain_hh.new_empty(gain_hh.shape), gain_hh.new_empty(gain_hh.shape)


class TritonLoops:
    """The LayerNorm loop ops under the names :mod:`rnnkit.engine.fused_layer_norm` calls on the C++ library."""

    layer_norm_lstm_forward = staticmethod(torch.ops.rnnkit_fused.triton_layer_norm_lstm_forward)
    layer_norm_lstm_backward = staticmethod(torch.ops.rnnkit_fused.triton_layer_norm_lstm_backward)
    layer_norm_gru_forward = staticmethod(torch.ops.rnnkit_fused.triton_layer_norm_gru_forward)
    layer_norm_gru_backward = staticmethod(torch.ops.rnnkit_fused.triton_layer_norm_gru_backward)


LOOPS = TritonLoops()
