"""rnnkit: recurrent neural networks implemented in PyTorch tensor math.

The cells and layers are drop-ins for torch.nn's: same arguments, same
parameter names, same results, plus ``lengths=``, ``check_finite=`` and a
choice of execution ``engine=``.
"""

from rnnkit.cells import GRUCell, LSTMCell, RNNCell
from rnnkit.engine.onnx_export import translation_table as onnx_translation_table
from rnnkit.layers import GRU, LSTM, RNN, RecurrentLayer
from rnnkit.layers.quantized import quantize_dynamic

__version__ = "0.1.0"

__all__ = ["GRU", "GRUCell", "LSTM", "LSTMCell", "RNN", "RNNCell", "RecurrentLayer", "__version__", "onnx_translation_table", "quantize_dynamic"]
