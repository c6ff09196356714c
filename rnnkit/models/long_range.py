"""Small models for the long-range tasks of :mod:`rnnkit.data.synthetic`, under the trainer's contract.

``carry_bias`` starts the LSTM's forget gate or the GRU's update gate open, the
standard remedy (Gers et al., 2000; Jozefowicz et al., 2015) that lets their
gradient reach far back from the first step of training.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnkit import errors
from rnnkit.layers import GRU, LSTM, RNN, RecurrentLayer


LAYERS = {"rnn": RNN, "lstm": LSTM, "gru": GRU}


# The gate whose bias decides how much state carries over, as a chunk of the
# stacked gates: the LSTM's forget gate f in (i, f, g, o), the GRU's update gate z in (r, z, n).
CARRY_GATE = {"lstm": 1, "gru": 1}


def _recurrent_layer(cell: str, input_size: int, hidden_size: int, num_layers: int, carry_bias: float | None,
                     engine: str) -> RecurrentLayer:  # fmt: skip
    if cell not in LAYERS:
        raise errors.fail("cell", f"one of {sorted(LAYERS)}", repr(cell))
    layer = LAYERS[cell](input_size, hidden_size, num_layers=num_layers, batch_first=True, engine=engine)
    if cell in CARRY_GATE and carry_bias is not None:
        open_carry_gate(layer, carry_bias)
    return layer


def open_carry_gate(layer: RecurrentLayer, bias: float) -> None:
    """Set the carry gate's bias of every layer and direction of an LSTM or GRU: ``bias`` in ``bias_ih``, 0 in ``bias_hh``.

    Gers et al. (2000), Jozefowicz et al. (2015): a gate biased open at init
    keeps ∂c_t/∂c_{t-1} = diag(f_t) (GRU: the z_t term of ∂h_t/∂h_{t-1})
    near 1, so gradient reaches far back before training has shaped the gates.
    """
    cell = next((name for name, family in LAYERS.items() if type(layer) is family and name in CARRY_GATE), None)
    if cell is None:
        raise errors.fail("layer", "an rnnkit LSTM or GRU (the families with a carry gate)", type(layer).__name__)
    if not layer.bias:
        raise errors.fail("layer", "a layer with biases (bias=True)", "bias=False")
    hidden_size = layer.hidden_size
    gate = slice(CARRY_GATE[cell] * hidden_size, (CARRY_GATE[cell] + 1) * hidden_size)
    with torch.no_grad():
        for k in range(layer.num_layers):
            for d in range(layer.num_directions):
                weights = layer.cell_weights(k, d)
                weights.bias_ih[gate].fill_(bias)
                weights.bias_hh[gate].zero_()


class AddingModel(nn.Module):
    """Recurrent layer -> linear head on the last step, for :func:`adding_problem`.

    Follows the trainer's contract: ``prediction, state = model(inputs, state)``
    with inputs (N, T, 2) and prediction (N,); ``loss`` is the MSE; ``metrics``
    adds the fraction of predictions within 0.04 of the target.

    Args:
        cell: ``"rnn"`` (Elman, tanh), ``"lstm"`` or ``"gru"``.
        carry_bias: the initial bias of the gate that carries state over, the
            LSTM's forget gate and the GRU's update gate (set in ``bias_ih``,
            zeroed in ``bias_hh``); None keeps torch.nn's U(-1/√H, 1/√H). The
            Elman RNN has no such gate and ignores it.
    """

    TOLERANCE = 0.04

    def __init__(self, cell: str = "lstm", hidden_size: int = 32, num_layers: int = 1, *,
                 carry_bias: float | None = None, engine: str = "auto") -> None:  # fmt: skip
        super().__init__()
        self.rnn = _recurrent_layer(cell, 2, hidden_size, num_layers, carry_bias, engine)
        self.head = nn.Linear(hidden_size, 1)

    def forward(self, inputs: Tensor, state=None):
        outputs, state = self.rnn(inputs, state)
        return self.head(outputs[:, -1]).squeeze(-1), state

    def loss(self, prediction: Tensor, targets: Tensor) -> Tensor:
        return F.mse_loss(prediction, targets)

    def metrics(self, prediction: Tensor, targets: Tensor) -> dict[str, float]:
        return {"accuracy": float(((prediction - targets).abs() < self.TOLERANCE).float().mean())}


class CopyModel(nn.Module):
    """One-hot tokens -> recurrent layer -> per-step logits, for :func:`copy_task`.

    ``loss`` is the cross-entropy over every step; ``metrics`` adds the
    accuracy over the last ``copy_length`` steps, where the symbols are recalled.
    """

    def __init__(self, cell: str = "lstm", hidden_size: int = 64, num_symbols: int = 8, copy_length: int = 10, *,
                 carry_bias: float | None = None, engine: str = "auto") -> None:  # fmt: skip
        super().__init__()
        self.vocab, self.copy_length = num_symbols + 2, copy_length
        self.rnn = _recurrent_layer(cell, self.vocab, hidden_size, 1, carry_bias, engine)
        self.head = nn.Linear(hidden_size, self.vocab)

    def forward(self, tokens: Tensor, state=None):
        outputs, state = self.rnn(F.one_hot(tokens, self.vocab).to(self.head.weight.dtype), state)
        return self.head(outputs), state

    def loss(self, logits: Tensor, targets: Tensor) -> Tensor:
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten())

    def metrics(self, logits: Tensor, targets: Tensor) -> dict[str, float]:
        recalled = logits[:, -self.copy_length :].argmax(-1) == targets[:, -self.copy_length :]
        return {"accuracy": float(recalled.float().mean())}

__all__ = ["AddingModel", "CopyModel", "open_carry_gate"]
