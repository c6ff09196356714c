"""One time step per cell family: ``(x_t, state) -> (y_t, state)``."""

from rnnkit.cells.base import CellSpec, CellWeights, RecurrentCell, State
from rnnkit.cells.gru import GRU as GRU_SPEC, GRUCell
from rnnkit.cells.lstm import LSTM as LSTM_SPEC, LSTMCell
from rnnkit.cells.rnn import RNN_SPECS, RNNCell

__all__ = ["CellSpec", "CellWeights", "GRUCell", "GRU_SPEC", "LSTMCell", "LSTM_SPEC", "RNNCell", "RNN_SPECS", "RecurrentCell", "State"]
