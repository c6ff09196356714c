"""Bad input gets a ValueError naming the argument, what was expected and what was received.

Bad sizes are primes (7, 11, 13) so that they cannot match a real size by accident.
"""

from __future__ import annotations

import re

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import rnnkit


def raises(match: str):
    return pytest.raises(ValueError, match=re.escape(match))


# -- constructors -----------------------------------------------------------

@pytest.mark.parametrize(
    "build,message",
    [
        (lambda: rnnkit.LSTM(5, 0), "hidden_size: expected a positive int, got 0"),
        (lambda: rnnkit.GRU(5, -7), "hidden_size: expected a positive int, got -7"),
        (lambda: rnnkit.RNN(0, 4), "input_size: expected a positive int, got 0"),
        (lambda: rnnkit.RNN(5, 4.5), "hidden_size: expected a positive int, got 4.5"),
        (lambda: rnnkit.LSTM(5, 4, num_layers=0), "num_layers: expected a positive int, got 0"),
        (lambda: rnnkit.GRU(5, 4, dropout=1.5), "dropout: expected a number in [0, 1], got 1.5"),
        (lambda: rnnkit.GRU(5, 4, dropout=-0.1), "dropout: expected a number in [0, 1], got -0.1"),
        (lambda: rnnkit.LSTM(5, 4, proj_size=4), "proj_size: expected an int in [0, hidden_size=4), got 4"),
        (lambda: rnnkit.LSTM(5, 4, proj_size=7), "proj_size: expected an int in [0, hidden_size=4), got 7"),
        (lambda: rnnkit.RNN(5, 4, proj_size=2), "proj_size: expected no value: projections are LSTM-only, not supported by RNN, got 2"),
        (lambda: rnnkit.GRU(5, 4, proj_size=2), "proj_size: expected no value: projections are LSTM-only, not supported by GRU, got 2"),
        (lambda: rnnkit.RNN(5, 4, nonlinearity="sigmoid"), "nonlinearity: expected 'tanh' or 'relu', got 'sigmoid'"),
        (lambda: rnnkit.RNN(5, 4, bias="yes"), "bias: expected a bool, got 'yes'"),
        (lambda: rnnkit.LSTM(5, 4, engine="warp"), "engine: expected one of"),
        (lambda: rnnkit.RNNCell(5, 4, nonlinearity="gelu"), "nonlinearity: expected 'tanh' or 'relu', got 'gelu'"),
        (lambda: rnnkit.GRUCell(5, -3), "hidden_size: expected a non-negative int, got -3"),
        (lambda: rnnkit.LSTMCell(5, 4, proj_size=5), "proj_size: expected an int in [0, hidden_size=4), got 5"),
    ],
)
def test_constructor_errors(build, message):
    with raises(message):
        build()


# -- layer input ------------------------------------------------------------

def test_wrong_feature_size():
    with raises("input: expected last dimension input_size=5, got 11"):
        rnnkit.LSTM(5, 4)(torch.randn(3, 2, 11))


@pytest.mark.parametrize("shape", [(2, 3, 5, 1), (5,)])
def test_wrong_rank(shape):
    with raises(f"input: expected a 3-D tensor (seq_len, batch, features), or 2-D (seq_len, features) when unbatched, got {len(shape)}-D shape {shape}"):
        rnnkit.GRU(5, 4)(torch.randn(shape))


def test_not_a_tensor():
    with raises("input: expected a Tensor or a PackedSequence, got list"):
        rnnkit.RNN(5, 4)([[1.0] * 5])


def test_sequence_length_zero():
    with raises("input: expected a sequence length of at least 1, got 0 (shape (0, 2, 5))"):
        rnnkit.RNN(5, 4)(torch.randn(0, 2, 5))


def test_input_dtype_mismatch():
    with raises("input: expected dtype torch.float32 (the dtype of the layer's parameters), got torch.float64"):
        rnnkit.GRU(5, 4)(torch.randn(3, 2, 5, dtype=torch.float64))


def test_input_device_mismatch():
    with raises("input: expected device cpu (the device of the layer's parameters), got meta"):
        rnnkit.GRU(5, 4)(torch.randn(3, 2, 5, device="meta"))


# -- initial state ----------------------------------------------------------

def test_hx_wrong_layers_times_directions():
    layer = rnnkit.GRU(5, 4, num_layers=2, bidirectional=True)
    with raises("hx: expected shape (4, 2, 4) (num_layers * num_directions, batch, hidden), got (7, 2, 4)"):
        layer(torch.randn(3, 2, 5), torch.randn(7, 2, 4))


def test_hx_wrong_hidden():
    with raises("hx: expected shape (1, 2, 4) (num_layers * num_directions, batch, hidden), got (1, 2, 11)"):
        rnnkit.RNN(5, 4)(torch.randn(3, 2, 5), torch.randn(1, 2, 11))


def test_hx_batch_mismatch():
    with raises("hx: expected batch size 2 to match input, got 13 (shape (1, 13, 4))"):
        rnnkit.RNN(5, 4)(torch.randn(3, 2, 5), torch.randn(1, 13, 4))


def test_hx_rank_for_unbatched_input():
    with raises("hx: expected a 2-D tensor (num_layers * num_directions, hidden) for unbatched input, got 3-D shape (1, 1, 4)"):
        rnnkit.RNN(5, 4)(torch.randn(3, 5), torch.randn(1, 1, 4))


def test_lstm_h0_projected_size():
    layer = rnnkit.LSTM(5, 4, proj_size=2)
    with raises("hx[0] (h_0): expected shape (1, 3, 2) (num_layers * num_directions, batch, hidden), got (1, 3, 4)"):
        layer(torch.randn(2, 3, 5), (torch.randn(1, 3, 4), torch.randn(1, 3, 4)))


def test_lstm_c0_shape_per_direction():
    layer = rnnkit.LSTM(5, 4, bidirectional=True)
    with raises("hx[1] (c_0): expected shape (2, 3, 4) (num_layers * num_directions, batch, hidden), got (1, 3, 4)"):
        layer(torch.randn(2, 3, 5), (torch.randn(2, 3, 4), torch.randn(1, 3, 4)))


def test_lstm_hx_must_be_a_pair():
    with raises("hx: expected a tuple (h_0, c_0) of two Tensors, got Tensor"):
        rnnkit.LSTM(5, 4)(torch.randn(2, 3, 5), torch.randn(1, 3, 4))


def test_hx_dtype_mismatch():
    with raises("hx: expected dtype torch.float32 (the dtype of input), got torch.float64"):
        rnnkit.GRU(5, 4)(torch.randn(3, 2, 5), torch.randn(1, 2, 4, dtype=torch.float64))


def test_hx_device_mismatch():
    with raises("hx: expected device cpu (the device of input), got meta"):
        rnnkit.GRU(5, 4)(torch.randn(3, 2, 5), torch.randn(1, 2, 4, device="meta"))


# -- lengths ----------------------------------------------------------------

@pytest.mark.parametrize(
    "lengths,message",
    [
        ([3, 7], "lengths: expected values <= the sequence length 3, got 7 at batch index 1"),
        ([0, 2], "lengths: expected values >= 1, got 0 at batch index 0"),
        ([-2, 2], "lengths: expected values >= 1, got -2 at batch index 0"),
        ([3, 2, 1], "lengths: expected 2 values, one per sequence in the batch, got 3 values"),
        (torch.tensor([2.0, 3.0]), "lengths: expected an integer tensor, got dtype torch.float32"),
        (torch.tensor([[2, 3]]), "lengths: expected a 1-D tensor of one length per sequence, got shape (1, 2)"),
        ([2.5, 3], "lengths: expected a list of ints, got [2.5, 3]"),
        (3, "lengths: expected a list of ints or a 1-D integer tensor, got int"),
    ],
)
def test_bad_lengths(lengths, message):
    with raises(message):
        rnnkit.LSTM(5, 4)(torch.randn(3, 2, 5), lengths=lengths)


def test_lengths_with_packed_input():
    packed = pack_padded_sequence(torch.randn(3, 2, 5), [3, 2])
    with raises("lengths: expected None when input is a PackedSequence (it carries its own lengths), got a value"):
        rnnkit.GRU(5, 4)(packed, lengths=[3, 2])


# -- check_finite ---------------------------------------------------------------

@pytest.mark.parametrize("value,kind", [(float("nan"), "NaN"), (float("inf"), "Inf")])
def test_check_finite_names_batch_and_step(value, kind):
    x = torch.randn(5, 4, 3)
    x[3, 2, 1] = value
    with raises(f"input: expected finite values (check_finite=True), got {kind} at batch index 2, time step 3"):
        rnnkit.LSTM(3, 4, check_finite=True)(x)


def test_check_finite_batch_first_reports_original_axes():
    x = torch.randn(4, 5, 3)
    x[1, 4, 0] = float("nan")
    with raises("got NaN at batch index 1, time step 4"):
        rnnkit.GRU(3, 4, batch_first=True, check_finite=True)(x)


def test_check_finite_initial_state():
    h0 = torch.zeros(2, 3, 4)
    h0[1, 2, 0] = float("inf")
    with raises("hx: expected finite values (check_finite=True), got Inf at batch index 2, layer*direction index 1"):
        rnnkit.RNN(3, 4, num_layers=2, check_finite=True)(torch.randn(5, 3, 3), h0)


def test_non_finite_input_passes_silently_without_the_option():
    x = torch.full((2, 1, 3), float("nan"))
    out, _ = rnnkit.RNN(3, 4)(x)
    assert torch.isnan(out).all()


# -- cells ------------------------------------------------------------------

def test_cell_wrong_feature_size():
    with raises("input: expected last dimension input_size=5, got shape (2, 11)"):
        rnnkit.GRUCell(5, 4)(torch.randn(2, 11))


def test_cell_wrong_rank():
    with raises("input: expected a 1-D (unbatched) or 2-D (batched) tensor, got 3-D shape (1, 2, 5)"):
        rnnkit.RNNCell(5, 4)(torch.randn(1, 2, 5))


def test_cell_hx_batch_mismatch():
    with raises("hx: expected shape (2, 4) (batch, hidden), got (13, 4)"):
        rnnkit.GRUCell(5, 4)(torch.randn(2, 5), torch.randn(13, 4))


def test_cell_cx_shape():
    with raises("cx: expected shape (2, 4) (batch, hidden), got (2, 7)"):
        rnnkit.LSTMCell(5, 4)(torch.randn(2, 5), (torch.randn(2, 4), torch.randn(2, 7)))


def test_cell_dtype_mismatch():
    with raises("input: expected dtype torch.float32 (the dtype of the cell's parameters), got torch.float64"):
        rnnkit.LSTMCell(5, 4)(torch.randn(2, 5, dtype=torch.float64))
