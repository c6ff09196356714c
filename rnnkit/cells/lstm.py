r"""The LSTM cell (Hochreiter & Schmidhuber, 1997; forget gate of Gers et al., 2000).

Equations, with gates in torch.nn's order i, f, g, o::

    i_t = σ(W_ii x_t + b_ii + W_hi h_{t-1} + b_hi)
    f_t = σ(W_if x_t + b_if + W_hf h_{t-1} + b_hf)
    g_t = tanh(W_ig x_t + b_ig + W_hg h_{t-1} + b_hg)
    o_t = σ(W_io x_t + b_io + W_ho h_{t-1} + b_ho)
    c_t = f_t ⊙ c_{t-1} + i_t ⊙ g_t
    h_t = o_t ⊙ tanh(c_t)
    h_t = W_hr h_t                      (only when proj_size > 0; Sak et al., 2014)
    y_t = h_t

Shapes, with H_out = proj_size if set, else H:

* ``x_t``: (N, H_in); ``h_t``: (N, H_out); ``c_t``: (N, H)
* ``weight_ih``: (4H, H_in), ``weight_hh``: (4H, H_out), biases: (4H,)
* ``weight_hr``: (H_out, H), only with proj_size

Reference loop over ``x`` of shape (L, N, H_in)::

    h, c = torch.zeros(N, H_out), torch.zeros(N, H)
    for x_t in x.unbind(0):
        i, f, g, o = (x_t @ W_ih.T + b_ih + h @ W_hh.T + b_hh).chunk(4, dim=1)
        c = f.sigmoid() * c + i.sigmoid() * g.tanh()
        h = o.sigmoid() * c.tanh()
        if proj_size: h = h @ W_hr.T
        outputs.append(h)

Initialisation, as torch.nn.LSTM: every weight and bias ~ U(-1/√H, 1/√H).
torch.nn.LSTMCell has no ``proj_size``; rnnkit's adds it, with torch.nn.LSTM's meaning.

LayerNorm variant (``layer_norm=True`` on the layer; Ba et al., 2016, §3.1, as
in haste's LayerNormLSTM). The input and recurrent projections are normalised
separately over all 4H gates, each with its own gain (biases are added after,
so they play the role of LayerNorm's shift), and the cell state is normalised
before the output nonlinearity. The carried c_t stays unnormalised::

    gates = LN(W_ih x_t) ⊙ γ_ih + b_ih + LN(W_hh h_{t-1}) ⊙ γ_hh + b_hh
    c_t = f_t ⊙ c_{t-1} + i_t ⊙ g_t
    h_t = o_t ⊙ tanh(LN(c_t) ⊙ γ_c + β_c)

γ_ih, γ_hh: (4H,); γ_c, β_c: (H,). Gains start at 1 and β_c at 0.
torch.nn has no such option; there is no torch.nn twin to test against.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from rnnkit.cells.base import LAYER_NORM_EPS, CellSpec, CellWeights, RecurrentCell, State, linear, normalized_linear


def lstm_step(x_t: Tensor, state: State, w: CellWeights) -> tuple[Tensor, State]:
    h, c = state
    gates = linear(x_t, w.weight_ih, w.bias_ih) + linear(h, w.weight_hh, w.bias_hh)
    return _lstm_update(gates, c, w, normalize_cell=lambda c: c)


def layer_norm_lstm_project_input(x: Tensor, w: CellWeights) -> Tensor:
    return normalized_linear(x, w.weight_ih, w.layer_norm.gain_ih, w.bias_ih)


def layer_norm_lstm_recur(projected_x: Tensor, state: State, w: CellWeights) -> tuple[Tensor, State]:
    h, c = state
    norm = w.layer_norm
    gates = projected_x + normalized_linear(h, w.weight_hh, norm.gain_hh, w.bias_hh)
    return _lstm_update(gates, c, w, lambda c: F.layer_norm(c, c.shape[-1:], norm.gain_cell, norm.bias_cell, LAYER_NORM_EPS))


def layer_norm_lstm_step(x_t: Tensor, state: State, w: CellWeights) -> tuple[Tensor, State]:
    return layer_norm_lstm_recur(layer_norm_lstm_project_input(x_t, w), state, w)


def _lstm_update(gates: Tensor, c: Tensor, w: CellWeights, normalize_cell) -> tuple[Tensor, State]:
    i, f, g, o = gates.chunk(4, dim=-1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    h = torch.sigmoid(o) * torch.tanh(normalize_cell(c))
    if w.weight_hr is not None:
        h = h @ w.weight_hr.t()
    return h, (h, c)


LSTM = CellSpec(name="lstm", gates=4, state_count=2, step=lstm_step)
LAYER_NORM_LSTM = CellSpec(
    name="layer_norm_lstm", gates=4, state_count=2, step=layer_norm_lstm_step,
    project_input=layer_norm_lstm_project_input, recur=layer_norm_lstm_recur,
)  # fmt: skip


class LSTMCell(RecurrentCell):
    """Drop-in for :class:`torch.nn.LSTMCell`: ``h', c' = cell(x, (h, c))``.

    Args:
        input_size: H_in, the features of ``x``.
        hidden_size: H, the features of ``c``.
        bias: learn ``bias_ih`` and ``bias_hh``.
        proj_size: if > 0, project ``h`` to this size with ``weight_hr`` (must be < H).
    """

    spec = LSTM

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, proj_size: int = 0, device=None, dtype=None) -> None:
        super().__init__(input_size, hidden_size, bias, proj_size, device=device, dtype=dtype)

    def forward(self, input: Tensor, hx: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor]:
        h, c = self._run(input, hx)
        return h, c
