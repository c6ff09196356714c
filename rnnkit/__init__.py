"""rnnkit: recurrent neural networks implemented in PyTorch tensor math.

The cells and layers are drop-ins for torch.nn's: same arguments, same
parameter names, same results, plus ``lengths=``, ``check_finite=`` and a
choice of execution ``engine=``. Beside them, the linear recurrences minGRU, minLSTM and RG-LRU
(``MinGRU``, ``MinLSTM``, ``RGLRU`` and their cells) with the same API, scanned in parallel over time.
"""

from rnnkit.cells import GRUCell, LSTMCell, MinGRUCell, MinLSTMCell, RGLRUCell, RNNCell
from rnnkit.engine.onnx_export import translation_table as onnx_translation_table
from rnnkit.layers import GRU, LSTM, RGLRU, RNN, MinGRU, MinLSTM, RecurrentLayer
from rnnkit.layers.quantized import quantize_dynamic

__version__ = "0.1.0"

__all__ = [
    "GRU", "GRUCell", "LSTM", "LSTMCell", "MinGRU", "MinGRUCell", "MinLSTM", "MinLSTMCell", "RGLRU", "RGLRUCell", "RNN", "RNNCell",
    "RecurrentLayer", "__version__", "onnx_translation_table", "quantize_dynamic",
]  # fmt: skip
