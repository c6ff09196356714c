"""One time step per cell family: ``(x_t, state) -> (y_t, state)``."""

from rnnkit.cells.base import CellSpec, CellWeights, RecurrentCell, State
from rnnkit.cells.gru import GRU as GRU_SPEC, GRUCell
from rnnkit.cells.lstm import LSTM as LSTM_SPEC, LSTMCell
from rnnkit.cells.minimal import LINEAR_RECURRENCE_SPECS, MinGRUCell, MinLSTMCell, RGLRUCell
from rnnkit.cells.rnn import RNN_SPECS, RNNCell

__all__ = [
    "CellSpec", "CellWeights", "GRUCell", "GRU_SPEC", "LINEAR_RECURRENCE_SPECS", "LSTMCell", "LSTM_SPEC", "MinGRUCell", "MinLSTMCell",
    "RGLRUCell", "RNNCell", "RNN_SPECS", "RecurrentCell", "State",
]  # fmt: skip
