"""The LayerNorm LSTM's and GRU's Triton kernels through the interpreter, against the reference engine.

Under ``TRITON_INTERPRET=1`` the fused engine runs the LayerNorm families on CPU with the Triton
loop ops (:func:`rnnkit.engine.fused_layer_norm.loops_for`), so these are the layers themselves.
"""

from __future__ import annotations

import pytest
import torch

import rnnkit
from rnnkit import engine
from rnnkit.engine import fused_layer_norm
from rnnkit.ops.triton import layer_norm as triton_layer_norm
from tests.helpers import as_tuple, weighted_sum

TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-4}  # float32: LayerNorm of short rows conditions gradients poorly


def perturbed_pair(cls, dtype, **kwargs):
    """The layer on the auto engine and its reference twin, with gains and biases away from their initial 1 and 0."""
    layer = cls(3, 5, layer_norm=True, dtype=dtype, **kwargs)
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.2 * torch.randn_like(p))
    twin = cls(3, 5, layer_norm=True, dtype=dtype, engine="reference", **kwargs)
    twin.load_state_dict(layer.state_dict())
    return layer, twin


def run(layer, x, lengths, generator_seed=3):
    out, state = layer(x, lengths=lengths)
    loss = weighted_sum([out, *as_tuple(state)], torch.Generator().manual_seed(generator_seed))
    return [out, *as_tuple(state)], torch.autograd.grad(loss, [x, *layer.parameters()])


@pytest.mark.parametrize("cls", [rnnkit.LSTM, rnnkit.GRU])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("bidirectional, lengths", [(False, None), (True, [3, 1])])
def test_layer_norm_layers_match_the_reference(cls, dtype, bidirectional, lengths):
    layer, twin = perturbed_pair(cls, dtype, bidirectional=bidirectional)
    assert "Triton" in engine.describe(layer) and "interpreter" in engine.describe(layer)
    x = torch.randn(3, 2, 3, dtype=dtype, requires_grad=True)
    outputs, grads = run(layer, x, lengths)
    want_outputs, want_grads = run(twin, x, lengths)
    tol = TOLERANCE[dtype]
    for index, (got, want) in enumerate(zip(outputs + list(grads), want_outputs + list(want_grads))):
        torch.testing.assert_close(got, want, atol=tol, rtol=tol, msg=lambda m, i=index: f"item {i}: {m}")


@pytest.mark.parametrize("cls", [rnnkit.LSTM, rnnkit.GRU])
def test_double_backward_matches_the_reference(cls):
    layer, twin = perturbed_pair(cls, torch.float64)
    x = torch.randn(2, 2, 3, dtype=torch.float64, requires_grad=True)
    results = []
    for module in (layer, twin):
        (dx,) = torch.autograd.grad(module(x)[0].square().sum(), x, create_graph=True)
        results.append(torch.autograd.grad(dx.square().sum(), [x, *module.parameters()]))
    for got, want in zip(*results):
        torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-10)


def test_bias_free_gru_and_the_loops_chosen():
    gru, twin = perturbed_pair(rnnkit.GRU, torch.float64, bias=False)
    x = torch.randn(2, 2, 3, dtype=torch.float64)
    torch.testing.assert_close(gru(x)[0], twin(x)[0], atol=1e-10, rtol=1e-10)
    assert fused_layer_norm.loops_for(x) is triton_layer_norm.LOOPS


def _lstm_loop_args(dtype=torch.float32, valid=None):
    length, batch, hidden = 3, 2, 5
    return (
        torch.randn(length, batch, 4 * hidden, dtype=dtype), torch.randn(batch, hidden, dtype=dtype), torch.randn(batch, hidden, dtype=dtype),
        torch.randn(4 * hidden, hidden, dtype=dtype), torch.rand(4 * hidden, dtype=dtype) + 0.5, torch.rand(hidden, dtype=dtype) + 0.5,
        torch.randn(hidden, dtype=dtype), valid, False,
    )  # fmt: skip


def test_opcheck_of_the_loop_ops():
    checks = ("test_schema", "test_faketensor")
    for valid in (None, torch.tensor([[True, True], [True, False], [False, False]])):
        args = _lstm_loop_args(valid=valid)
        torch.library.opcheck(torch.ops.rnnkit_fused.triton_layer_norm_lstm_forward, args, test_utils=checks)
        xp, h0, c0, w_hh, gain_hh, gain_cell, bias_cell, valid, reverse = args
        _, hs, cs, ahat, chat, rstd = torch.ops.rnnkit_fused.triton_layer_norm_lstm_forward(xp, *args[1:])
        backward_args = (xp, hs, cs, ahat, chat, rstd, w_hh, gain_hh, gain_cell, bias_cell, valid, reverse, torch.randn(3, 2, 5), torch.randn(2, 5), torch.randn(2, 5))
        torch.library.opcheck(torch.ops.rnnkit_fused.triton_layer_norm_lstm_backward, backward_args, test_utils=checks)
        gru_xp, w_gru, gain_gru = torch.randn(3, 2, 15), torch.randn(15, 5), torch.rand(15) + 0.5
        gru_args = (gru_xp, h0, w_gru, gain_gru, torch.randn(15), valid, True)
        torch.library.opcheck(torch.ops.rnnkit_fused.triton_layer_norm_gru_forward, gru_args, test_utils=checks)
        _, hs, ahat, hn, rstd = torch.ops.rnnkit_fused.triton_layer_norm_gru_forward(gru_xp, *gru_args[1:])
        gru_backward_args = (gru_xp, hs, ahat, hn, rstd, w_gru, gain_gru, valid, True, torch.randn(3, 2, 5), torch.randn(2, 5))
        torch.library.opcheck(torch.ops.rnnkit_fused.triton_layer_norm_gru_backward, gru_backward_args, test_utils=checks)
