r"""The GRU cell (Cho et al., 2014), in torch.nn's and cuDNN's variant.

Equations, with gates in torch.nn's order r, z, n::

    r_t = σ(W_ir x_t + b_ir + W_hr h_{t-1} + b_hr)
    z_t = σ(W_iz x_t + b_iz + W_hz h_{t-1} + b_hz)
    n_t = tanh(W_in x_t + b_in + r_t ⊙ (W_hn h_{t-1} + b_hn))
    h_t = (1 - z_t) ⊙ n_t + z_t ⊙ h_{t-1}
    y_t = h_t

A deliberate departure from the paper, kept for torch.nn compatibility: Cho et
al. apply the reset gate before the matrix product, W_hn (r_t ⊙ h_{t-1}); here
it multiplies the product, r_t ⊙ (W_hn h_{t-1} + b_hn). That is what lets all
three recurrent gates come from one matrix product per step.

Shapes:

* ``x_t``: (N, H_in); ``h_t``: (N, H)
* ``weight_ih``: (3H, H_in), ``weight_hh``: (3H, H), biases: (3H,)

Reference loop over ``x`` of shape (L, N, H_in)::

    h = torch.zeros(N, H)
    for x_t in x.unbind(0):
        x_r, x_z, x_n = (x_t @ W_ih.T + b_ih).chunk(3, dim=1)
        h_r, h_z, h_n = (h @ W_hh.T + b_hh).chunk(3, dim=1)
        r, z = (x_r + h_r).sigmoid(), (x_z + h_z).sigmoid()
        n = (x_n + r * h_n).tanh()
        h = (1 - z) * n + z * h
        outputs.append(h)

Initialisation, as torch.nn.GRU: every weight and bias ~ U(-1/√H, 1/√H).

LayerNorm variant (``layer_norm=True`` on the layer; Ba et al., 2016, as in
haste's LayerNormGRU). The input and recurrent projections are each normalised
over all 3H gates with their own gain, then biased; the gate math is unchanged::

    x_r, x_z, x_n = LN(W_ih x_t) ⊙ γ_ih + b_ih
    h_r, h_z, h_n = LN(W_hh h_{t-1}) ⊙ γ_hh + b_hh

γ_ih, γ_hh: (3H,), starting at 1. torch.nn has no such option.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rnnkit.cells.base import CellSpec, CellWeights, RecurrentCell, State, linear, normalized_linear


def gru_step(x_t: Tensor, state: State, w: CellWeights) -> tuple[Tensor, State]:
    return _gru_gates(linear(x_t, w.weight_ih, w.bias_ih), linear(state[0], w.weight_hh, w.bias_hh), state[0])


def layer_norm_gru_project_input(x: Tensor, w: CellWeights) -> Tensor:
    return normalized_linear(x, w.weight_ih, w.layer_norm.gain_ih, w.bias_ih)


def layer_norm_gru_recur(projected_x: Tensor, state: State, w: CellWeights) -> tuple[Tensor, State]:
    projected_h = normalized_linear(state[0], w.weight_hh, w.layer_norm.gain_hh, w.bias_hh)
    return _gru_gates(projected_x, projected_h, state[0])


def layer_norm_gru_step(x_t: Tensor, state: State, w: CellWeights) -> tuple[Tensor, State]:
    return layer_norm_gru_recur(layer_norm_gru_project_input(x_t, w), state, w)


def _gru_gates(projected_x: Tensor, projected_h: Tensor, h: Tensor) -> tuple[Tensor, State]:
    x_r, x_z, x_n = projected_x.chunk(3, dim=-1)
    h_r, h_z, h_n = projected_h.chunk(3, dim=-1)
    r = torch.sigmoid(x_r + h_r)
    z = torch.sigmoid(x_z + h_z)
    n = torch.tanh(x_n + r * h_n)
    h = n + z * (h - n)  # = (1 - z) * n + z * h, one fewer op
    return h, (h,)


GRU = CellSpec(name="gru", gates=3, state_count=1, step=gru_step)
LAYER_NORM_GRU = CellSpec(
    name="layer_norm_gru", gates=3, state_count=1, step=layer_norm_gru_step,
    project_input=layer_norm_gru_project_input, recur=layer_norm_gru_recur,
)  # fmt: skip


class GRUCell(RecurrentCell):
    """Drop-in for :class:`torch.nn.GRUCell`: ``h' = cell(x, h)``.

    Args:
        input_size: H_in, the features of ``x``.
        hidden_size: H, the features of ``h``.
        bias: learn ``bias_ih`` and ``bias_hh``.
    """

    spec = GRU

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device=None, dtype=None) -> None:
        super().__init__(input_size, hidden_size, bias, device=device, dtype=dtype)

    def forward(self, input: Tensor, hx: Tensor | None = None) -> Tensor:
        return self._run(input, None if hx is None else (hx,))[0]
