"""The torch.nn drop-ins: :class:`RNN`, :class:`LSTM` and :class:`GRU`.

Each fixes the cell family of :class:`~rnnkit.layers.recurrent.RecurrentLayer`
and takes torch.nn's constructor arguments in torch.nn's positional order, then
rnnkit's keyword options, among them the regularisers ``weight_drop``,
``input_dropout``, ``layer_dropout``, ``output_dropout`` and ``zoneout``
(:mod:`rnnkit.layers.regularisers`).
"""

from __future__ import annotations

from rnnkit import errors
from rnnkit.cells.gru import GRU as GRU_SPEC, LAYER_NORM_GRU
from rnnkit.cells.lstm import LAYER_NORM_LSTM, LSTM as LSTM_SPEC
from rnnkit.cells.rnn import RNN_SPECS
from rnnkit.layers.recurrent import RecurrentLayer


def _reject_projection(layer: str, proj_size) -> None:
    if proj_size is not None:
        raise errors.fail("proj_size", f"no value: projections are LSTM-only, not supported by {layer}", repr(proj_size))


class RNN(RecurrentLayer):
    """Elman RNN, a drop-in for :class:`torch.nn.RNN`; see :mod:`rnnkit.cells.rnn` for the math.

    ``h_t = tanh(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)`` (or relu), per layer and direction.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        nonlinearity: str = "tanh",
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        device=None,
        dtype=None,
        *,
        proj_size=None,
        check_finite: bool = False,
        engine: str = "auto",
        **rates: float,
    ) -> None:
        _reject_projection("RNN", proj_size)
        errors.check_nonlinearity(nonlinearity)
        super().__init__(
            RNN_SPECS[nonlinearity], input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
            device=device, dtype=dtype, check_finite=check_finite, engine=engine, **rates,
        )  # fmt: skip
        self.nonlinearity = nonlinearity


class LSTM(RecurrentLayer):
    """LSTM, a drop-in for :class:`torch.nn.LSTM`; see :mod:`rnnkit.cells.lstm` for the math.

    With ``proj_size > 0`` the hidden state is projected to ``proj_size`` by ``weight_hr_l{k}``.
    ``layer_norm=True`` selects the LayerNorm LSTM (haste's LayerNormLSTM), which torch.nn lacks.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        proj_size: int = 0,
        device=None,
        dtype=None,
        *,
        layer_norm: bool = False,
        check_finite: bool = False,
        engine: str = "auto",
        **rates: float,
    ) -> None:
        super().__init__(
            LAYER_NORM_LSTM if layer_norm is True else LSTM_SPEC,
            input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional, proj_size,
            device=device, dtype=dtype, layer_norm=layer_norm, check_finite=check_finite, engine=engine, **rates,
        )  # fmt: skip


class GRU(RecurrentLayer):
    """GRU, a drop-in for :class:`torch.nn.GRU`; see :mod:`rnnkit.cells.gru` for the math.

    ``layer_norm=True`` selects the LayerNorm GRU (haste's LayerNormGRU), which torch.nn lacks.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        device=None,
        dtype=None,
        *,
        proj_size=None,
        layer_norm: bool = False,
        check_finite: bool = False,
        engine: str = "auto",
        **rates: float,
    ) -> None:
        _reject_projection("GRU", proj_size)
        super().__init__(
            LAYER_NORM_GRU if layer_norm is True else GRU_SPEC,
            input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
            device=device, dtype=dtype, layer_norm=layer_norm, check_finite=check_finite, engine=engine, **rates,
        )  # fmt: skip
