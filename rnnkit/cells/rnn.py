r"""The Elman RNN cell.

Equations (Elman, 1990), with :math:`\sigma` = tanh or relu::

    h_t = σ(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)
    y_t = h_t

The output projection y = W_hy h of the textbook Elman network is a separate
linear layer in rnnkit's models, as in torch.nn, so the cell returns h_t.

Shapes:

* ``x_t``: (N, H_in) or (H_in,)
* ``h_t``: (N, H) or (H,)
* ``weight_ih``: (H, H_in), ``weight_hh``: (H, H), ``bias_ih``/``bias_hh``: (H,)

Reference loop over a sequence ``x`` of shape (L, N, H_in)::

    h = torch.zeros(N, H)
    outputs = []
    for x_t in x.unbind(0):
        h = torch.tanh(x_t @ W_ih.T + b_ih + h @ W_hh.T + b_hh)
        outputs.append(h)
    y = torch.stack(outputs)

Initialisation, as torch.nn.RNNCell: every weight and bias ~ U(-1/√H, 1/√H).
"""

from __future__ import annotations

import torch
from torch import Tensor

from rnnkit import errors
from rnnkit.cells.base import CellSpec, CellWeights, RecurrentCell, State, linear


def _pre_activation(x_t: Tensor, h: Tensor, w: CellWeights) -> Tensor:
    return linear(x_t, w.weight_ih, w.bias_ih) + linear(h, w.weight_hh, w.bias_hh)


def rnn_tanh_step(x_t: Tensor, state: State, w: CellWeights) -> tuple[Tensor, State]:
    h = torch.tanh(_pre_activation(x_t, state[0], w))
    return h, (h,)


def rnn_relu_step(x_t: Tensor, state: State, w: CellWeights) -> tuple[Tensor, State]:
    h = torch.relu(_pre_activation(x_t, state[0], w))
    return h, (h,)


RNN_TANH = CellSpec(name="rnn_tanh", gates=1, state_count=1, step=rnn_tanh_step)
RNN_RELU = CellSpec(name="rnn_relu", gates=1, state_count=1, step=rnn_relu_step)
RNN_SPECS = {"tanh": RNN_TANH, "relu": RNN_RELU}


class RNNCell(RecurrentCell):
    """Drop-in for :class:`torch.nn.RNNCell`: ``h' = cell(x, h)``.

    Args:
        input_size: H_in, the features of ``x``.
        hidden_size: H, the features of ``h``.
        bias: learn ``bias_ih`` and ``bias_hh``.
        nonlinearity: ``"tanh"`` or ``"relu"``.
    """

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, nonlinearity: str = "tanh", device=None, dtype=None) -> None:
        errors.check_nonlinearity(nonlinearity)
        self.nonlinearity = nonlinearity
        self.spec = RNN_SPECS[nonlinearity]
        super().__init__(input_size, hidden_size, bias, device=device, dtype=dtype)

    def forward(self, input: Tensor, hx: Tensor | None = None) -> Tensor:
        return self._run(input, None if hx is None else (hx,))[0]

    def extra_repr(self) -> str:
        s = super().extra_repr()
        return s if self.nonlinearity == "tanh" else f"{s}, nonlinearity={self.nonlinearity!r}"
