"""Layers: one generic driver of time, direction, lengths and stacking."""

from rnnkit.layers.families import GRU, LSTM, RNN
from rnnkit.layers.recurrent import RecurrentLayer

__all__ = ["GRU", "LSTM", "RNN", "RecurrentLayer"]
