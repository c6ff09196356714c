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


def _zoned_reference(family, xp, h0, c0, w_hh, gain_hh, gain_cell, bias_cell, b_hh, masks, reverse):
    """The step kernels' recurrence with zoneout, by the cells' own step math: the last state and the output."""
    from rnnkit.cells.base import CellWeights, LayerNormWeights
    from rnnkit.cells.gru import layer_norm_gru_recur
    from rnnkit.cells.lstm import layer_norm_lstm_recur

    weights = CellWeights(None, w_hh, None, b_hh, None, LayerNormWeights(None, gain_hh, gain_cell, bias_cell))
    state, outputs = ((h0, c0) if family == "lstm" else (h0,)), [None] * xp.shape[0]
    recur = layer_norm_lstm_recur if family == "lstm" else layer_norm_gru_recur
    for t in range(xp.shape[0] - 1, -1, -1) if reverse else range(xp.shape[0]):
        _, new = recur(xp[t], state, weights)
        keeps = masks[t].chunk(len(state), dim=-1)  # [m_h m_c] for the LSTM
        state = tuple(m * old + (1 - m) * fresh for m, old, fresh in zip(keeps, state, new))
        outputs[t] = state[0]
    return torch.stack(outputs), state


@pytest.mark.parametrize("family", ["lstm", "gru"])
def test_zoneout_masks_match_the_cells_step_with_zoneout(family):
    length, batch, hidden, reverse = 3, 2, 5, family == "gru"
    dtype = torch.float64
    gates = 4 if family == "lstm" else 3
    leaves = dict(
        xp=torch.randn(length, batch, gates * hidden, dtype=dtype), h0=torch.randn(batch, hidden, dtype=dtype),
        c0=torch.randn(batch, hidden, dtype=dtype), w_hh=0.3 * torch.randn(gates * hidden, hidden, dtype=dtype),
        gain_hh=torch.rand(gates * hidden, dtype=dtype) + 0.5, gain_cell=torch.rand(hidden, dtype=dtype) + 0.5,
        bias_cell=torch.randn(hidden, dtype=dtype), b_hh=torch.randn(gates * hidden, dtype=dtype),
    )  # fmt: skip
    if family == "lstm":
        leaves["b_hh"] = None  # the LSTM's b_hh is folded into xp
    else:
        del leaves["c0"], leaves["gain_cell"], leaves["bias_cell"]
    for leaf in leaves.values():
        if leaf is not None:
            leaf.requires_grad_()
    masks = (torch.rand(length, batch, (2 if family == "lstm" else 1) * hidden) < 0.4).to(dtype)
    dy = torch.randn(length, batch, hidden, dtype=dtype)
    full = {"c0": None, "gain_cell": None, "bias_cell": None, **leaves}
    want_y, want_state = _zoned_reference(family, *(full[k] for k in ("xp", "h0", "c0", "w_hh", "gain_hh", "gain_cell", "bias_cell", "b_hh")), masks, reverse)
    loss = (want_y * dy).sum()
    names = [k for k, v in leaves.items() if v is not None]
    want = dict(zip(names, torch.autograd.grad(loss, [leaves[k] for k in names])))
    ops = triton_layer_norm.LOOPS
    with torch.no_grad():
        x = leaves["xp"].detach().clone()
        zeros = torch.zeros(batch, hidden, dtype=dtype)
        if family == "lstm":
            args = [leaves[k].detach() for k in ("h0", "c0", "w_hh", "gain_hh", "gain_cell", "bias_cell")]
            _, hs, cs, ahat, chat, rstd = ops.layer_norm_lstm_forward(x, *args, None, reverse, masks)
            dxp, da, dh0, dc0, dgain_hh, dgain_cell, dbias_cell = ops.layer_norm_lstm_backward(
                x, hs, cs, ahat, chat, rstd, *args[2:], None, reverse, dy, zeros, zeros, masks
            )
            got = {"xp": dxp, "h0": dh0, "c0": dc0, "gain_hh": dgain_hh, "gain_cell": dgain_cell, "bias_cell": dbias_cell}
        else:
            args = [leaves[k].detach() for k in ("h0", "w_hh", "gain_hh", "b_hh")]
            _, hs, ahat, hn, rstd = ops.layer_norm_gru_forward(x, *args, None, reverse, masks)
            dxp, da, dh0, dgain_hh, db_hh = ops.layer_norm_gru_backward(x, hs, ahat, hn, rstd, args[1], args[2], None, reverse, dy, zeros, masks)
            got = {"xp": dxp, "h0": dh0, "gain_hh": dgain_hh, "b_hh": db_hh}
        h_prev = hs[1:] if reverse else hs[:-1]
        got["w_hh"] = torch.einsum("tng,tnh->gh", da, h_prev)  # dW_hh = Σ_t da_t^T h_{t-1}
    torch.testing.assert_close(hs[:-1] if reverse else hs[1:], want_y.detach(), atol=1e-10, rtol=1e-10)
    for name in names:
        torch.testing.assert_close(got[name], want[name], atol=1e-10, rtol=1e-10, msg=lambda m, n=name: f"d{n}: {m}")
