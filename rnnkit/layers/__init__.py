"""Layers: one generic driver of time, direction, lengths and stacking."""

from rnnkit.layers.families import GRU, LSTM, RNN
from rnnkit.layers.minimal import RGLRU, MinGRU, MinLSTM
from rnnkit.layers.recurrent import RecurrentLayer

__all__ = ["GRU", "LSTM", "MinGRU", "MinLSTM", "RGLRU", "RNN", "RecurrentLayer"]
