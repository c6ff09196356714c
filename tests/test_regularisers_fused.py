"""The regularisers inside the fused loops: the output's locked mask (``output_mask``) and zoneout's 0/1 flags.

The layer hands the fused engine the locked dropout mask after a layer (the output's, or ``layer_dropout``'s) so
that the loops apply it as they write y and as backward reads dy, and zoneout's training masks as bool flags. These
tests check that each is what the reference defines with the same masks, at the op, Function and layer levels.
"""

from __future__ import annotations

import itertools

import pytest
import torch

import rnnkit
from rnnkit.engine import fused, fused_loops, onnx_export, reference
from rnnkit.ops.kinds import GRU, LSTM, RNN_RELU, RNN_TANH
from tests.helpers import as_tuple, weighted_sum

KINDS = {"rnn_tanh": RNN_TANH, "rnn_relu": RNN_RELU, "lstm": LSTM, "gru": GRU}
GATES = {RNN_TANH: 1, RNN_RELU: 1, LSTM: 4, GRU: 3}


def _native():
    if not rnnkit.ops.load():
        pytest.skip(rnnkit.ops.status())
    return rnnkit.ops.native_loops()


def _loop_inputs(kind, proj=False, padded=False, length=6, batch=3, hidden=32, dtype=torch.float64):
    """Random inputs of forward_loop: xp, h0, c0, w_hh, b_hn, w_hr, valid; and zoneout flags, an output mask."""
    g = torch.Generator().manual_seed(kind * 10 + proj * 2 + padded)
    out = 5 if proj else hidden
    rand = lambda *shape: torch.randn(*shape, generator=g, dtype=dtype)  # noqa: E731
    xp, h0 = rand(length, batch, GATES[kind] * hidden), rand(batch, out)
    c0 = rand(batch, hidden) if kind == LSTM else torch.empty(0, dtype=dtype)
    w_hh, b_hn = rand(GATES[kind] * hidden, out) * 0.3, rand(hidden) if kind == GRU else None
    w_hr = rand(out, hidden) * 0.3 if proj else None
    valid = torch.arange(length).unsqueeze(1) < torch.tensor([length, 4, 1] * batch)[:batch] if padded else None
    flags = torch.rand(length, batch, out, generator=g) < 0.4
    mask = (torch.rand(batch, out, generator=g) > 0.3).to(dtype) / 0.7
    return (xp, h0, c0, w_hh, b_hn, w_hr, valid), flags, mask


CASES = [(name, proj, padded) for name, proj, padded in itertools.product(KINDS, (False, True), (False, True)) if not proj or name == "lstm"]


@pytest.fixture(params=[(1, 3, 32), (2, 17, 64)], ids=["one-thread", "two-threads"])
def team(request):
    """(batch, hidden) for the loops, run by a team of one or of two: with 17 rows, two threads split the rows
    (without projection) or the hidden units (with it)."""
    threads, batch, hidden = request.param
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    yield batch, hidden
    torch.set_num_threads(previous)


@pytest.mark.parametrize("name, proj, padded", CASES)
def test_loops_with_flags_and_output_mask_are_the_weights_and_a_product(name, proj, padded, team):
    """The compiled loops with bool zoneout flags give the float weights' results bit for bit; with an output mask, the
    output is the unmasked output times the mask and dh gets dy times the mask (what autograd's product gives); the
    pure-PyTorch loops agree."""
    native, kind = _native(), KINDS[name]
    batch, hidden = team
    (xp, h0, c0, w_hh, b_hn, w_hr, valid), flags, mask = _loop_inputs(kind, proj, padded, batch=batch, hidden=hidden)
    dy = torch.randn(xp.shape[0], xp.shape[1], h0.shape[1], dtype=xp.dtype)
    results = {}
    for loops, zone, out_mask in itertools.product((native, fused_loops), (flags, flags.to(xp.dtype)), (None, mask)):
        gates = xp.clone()
        y, hs, cs, hn, hraw = loops.forward_loop(kind, gates, h0, c0, w_hh, b_hn, w_hr, valid, False, zone, out_mask)
        y = hs[1:] if y.numel() == 0 else y
        keep = gates if kind != RNN_TANH and kind != RNN_RELU or zone.dtype != torch.bool else gates.new_empty(0)
        grads = loops.backward_loop(kind, keep, hs, cs, hn, hraw, w_hh, w_hr, valid, False, dy, h0 * 0.5, c0 * 0.5, zone, out_mask)
        results[loops is native, zone.dtype == torch.bool, out_mask is not None] = (y, hs, cs, *grads)
    for native_loops in (True, False):
        plain, flagged = results[native_loops, False, False], results[native_loops, True, False]
        assert all(map(torch.equal, plain, flagged)), "flags must give the weights' bits"
        masked = results[native_loops, True, True]
        torch.testing.assert_close(masked[0], plain[0] * mask, rtol=0, atol=0)
        assert all(map(torch.equal, masked[1:3], plain[1:3])), "the states are not masked"
    # the output mask's backward is the backward of the unmasked output with dy * mask
    gates = xp.clone()
    _, hs, cs, hn, hraw = native.forward_loop(kind, gates, h0, c0, w_hh, b_hn, w_hr, valid, False, flags.to(xp.dtype))
    expected = native.backward_loop(kind, gates, hs, cs, hn, hraw, w_hh, w_hr, valid, False, dy * mask, h0 * 0.5, c0 * 0.5, flags.to(xp.dtype))
    for a, e in zip(results[True, True, True][3:], expected, strict=True):
        torch.testing.assert_close(a, e, rtol=1e-14, atol=1e-14)
    for a, e in zip(results[False, True, True], results[True, True, True], strict=True):
        torch.testing.assert_close(a, e, rtol=1e-12, atol=1e-12)


def test_loop_ops_with_masks_pass_opcheck_and_refuse_wrong_shapes():
    _native()
    (xp, h0, c0, w_hh, b_hn, w_hr, valid), flags, mask = _loop_inputs(LSTM, padded=True, dtype=torch.float32)
    mask = mask.float()
    forward = torch.ops.rnnkit_fused.forward_loop
    args = (LSTM, xp, h0, c0, w_hh, b_hn, w_hr, valid, False, flags, mask)
    torch.library.opcheck(forward, args, test_utils=("test_schema", "test_faketensor"))
    y, hs, cs, hn, hraw = forward(*args)
    assert y.shape == (6, 3, 32)
    back = (LSTM, xp, hs, cs, hn, hraw, w_hh, w_hr, valid, False, torch.randn(6, 3, 32), h0, c0, flags, mask)
    torch.library.opcheck(torch.ops.rnnkit_fused.backward_loop, back, test_utils=("test_schema", "test_faketensor"))
    with pytest.raises(RuntimeError, match=r"output_mask: expected a contiguous \(N, H_out\) = \(3, 32\) mask"):
        forward(LSTM, xp.clone(), h0, c0, w_hh, b_hn, w_hr, valid, False, flags, mask[:2])
    with pytest.raises(RuntimeError, match=r"zoneout: expected a contiguous \(L, N, H_out\) = \(6, 3, 32\) mask"):
        forward(LSTM, xp.clone(), h0, c0, w_hh, b_hn, w_hr, valid, False, flags[:, :2], mask)
    with pytest.raises(RuntimeError, match="expected scalar type Float but found Double"):
        forward(LSTM, xp.clone(), h0, c0, w_hh, b_hn, w_hr, valid, False, flags.double(), mask)


@pytest.mark.parametrize("kind", [RNN_TANH, GRU, LSTM])
def test_fused_function_with_masks_passes_gradcheck_and_its_second_order_is_the_reference(kind):
    """FusedRecurrence with bool zoneout flags and an output mask: gradcheck (first order, the compiled backward), and
    create_graph=True (the reference math again) gives the same first-order gradients."""
    _native()
    (xp, h0, c0, w_hh, b_hn, w_hr, valid), flags, mask = _loop_inputs(kind, hidden=4, length=4)
    x = torch.randn(4, 3, 2, dtype=torch.float64, requires_grad=True)
    w_ih = torch.randn(GATES[kind] * 4, 2, dtype=torch.float64, requires_grad=True)
    w_hh, h0 = w_hh.requires_grad_(), h0.requires_grad_()
    b_ih, b_hh = (torch.randn(GATES[kind] * 4, dtype=torch.float64, requires_grad=True) for _ in range(2))
    c0 = c0.requires_grad_() if kind == LSTM else None

    def run(x, w_ih, w_hh, b_ih, b_hh, h0, *c):
        y, h_n, c_n, *_ = fused.FusedRecurrence.apply(kind, False, False, None, x, w_ih, w_hh, b_ih, b_hh, None, h0, c[0] if c else None, flags, mask)
        return (y, h_n, c_n) if kind == LSTM else (y, h_n)

    inputs = (x, w_ih, w_hh, b_ih, b_hh, h0, *(() if c0 is None else (c0,)))
    assert torch.autograd.gradcheck(run, inputs)
    loss = lambda outs: weighted_sum(outs, torch.Generator().manual_seed(4))  # noqa: E731
    first = torch.autograd.grad(loss(run(*inputs)), inputs)
    second = torch.autograd.grad(loss(run(*inputs)), inputs, create_graph=True)
    for a, e in zip(second, first, strict=True):
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-10)


def _layer_run(layer, x, seed, lengths=None):
    torch.manual_seed(seed)
    out, final = layer(x, lengths=lengths)
    parts = (out, *as_tuple(final))
    return parts, torch.autograd.grad(weighted_sum(parts, torch.Generator().manual_seed(1)), [x, *layer.parameters()])


@pytest.mark.parametrize("cls", [rnnkit.RNN, rnnkit.GRU, rnnkit.LSTM])
@pytest.mark.parametrize("dropout", [0.0, 0.4], ids=["locked-only", "with-torch-dropout"])
def test_layer_hands_the_mask_after_a_layer_to_the_fused_engine_in_the_same_draw_order(cls, dropout):
    """With torch.nn's dropout off the fused engine gets both locked masks (layer_dropout's and the output's) and applies
    them itself; with it on, layer_dropout's stays with the layer (dropout draws between). Either way the results are
    the reference engine's with the same seed."""
    rates = dict(weight_drop=0.3, input_dropout=0.2, layer_dropout=0.25, output_dropout=0.35, zoneout=0.3)
    torch.manual_seed(0)
    ref = cls(5, 6, num_layers=2, bidirectional=True, dropout=dropout, dtype=torch.float64, engine="reference", **rates)
    fast = cls(5, 6, num_layers=2, bidirectional=True, dropout=dropout, dtype=torch.float64, **rates)
    fast.load_state_dict(ref.state_dict())
    seen = []
    engine = fast.run_direction

    def recording(*args, output_mask=None, **kwargs):
        seen.append(output_mask)
        return engine(*args, output_mask=output_mask, **kwargs)

    recording.fuses_output_mask = True
    fast.run_direction = recording
    x = torch.randn(7, 3, 5, dtype=torch.float64, requires_grad=True)
    for lengths in (None, [7, 4, 1]):
        seen.clear()
        expected, actual = _layer_run(ref, x, 9, lengths), _layer_run(fast, x, 9, lengths)
        for a, e in zip((*actual[0], *actual[1]), (*expected[0], *expected[1]), strict=True):
            torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-10)
        fused_layers = [mask is not None for mask in seen]
        assert fused_layers == [dropout == 0] * 2 + [True] * 2
        assert seen[-1].shape == (3, 6) and not torch.equal(seen[-1], seen[-2]), "each direction gets its columns of the mask"


def test_the_mask_is_not_handed_over_under_autocast_or_to_an_engine_that_does_not_declare_it():
    layer = rnnkit.GRU(5, 6, output_dropout=0.5)
    seen = []

    def recording(spec, x, state, weights, valid, reverse, **kwargs):
        seen.append(kwargs)
        return reference.run_direction(spec, x, state, weights, valid, reverse, **kwargs)

    layer.run_direction = recording
    out, _ = layer(torch.ones(4, 3, 5))
    assert seen == [{}] and ((out == 0) == (out == 0)[0]).all() and (out == 0).any()
    recording.fuses_output_mask = True
    seen.clear()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        layer(torch.ones(4, 3, 5))
    assert seen == [{}]


@pytest.mark.parametrize("cls", [rnnkit.RNN, rnnkit.GRU, rnnkit.LSTM])
def test_zoneout_backward_under_autocast_is_the_float32_one(cls):
    """The RNN's zoneout under autocast keeps h̃ for backward (its gates buffer was empty there, and backward read it)."""
    torch.manual_seed(0)
    layer = cls(5, 64, zoneout=0.5, output_dropout=0.3)
    x = torch.randn(8, 3, 5)
    grads = []
    for low in (False, True):
        torch.manual_seed(7)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=low):
            out, _ = layer(x)
        grads.append(torch.autograd.grad(out.float().sum(), list(layer.parameters())))
    for low, exact in zip(*grads[::-1], strict=True):
        assert (low - exact).norm() / exact.norm() < 0.02


def test_other_paths_multiply_the_output_after_and_take_zoneout_weights():
    """Paths without the mask in their loops (scan families, LayerNorm variants, autocast, inference) give y * mask."""
    torch.manual_seed(0)
    x = torch.randn(5, 3, 4, dtype=torch.float64)
    flags = torch.rand(5, 3, 6) < 0.5
    mask = (torch.rand(3, 6) < 0.5).double() * 2
    for layer in (rnnkit.GRU(4, 6, layer_norm=True, dtype=torch.float64), rnnkit.LSTM(4, 6, layer_norm=True, dtype=torch.float64)):
        weights, state = layer.cell_weights(0, 0), tuple(torch.zeros(3, s, dtype=torch.float64) for s in layer.spec.state_sizes(6, 6))
        y, final = fused.run_direction(layer.spec, x, state, weights, None, False, flags, mask)
        y_ref, final_ref = reference.run_direction(layer.spec, x, state, weights, None, False, flags.double())
        torch.testing.assert_close(y, y_ref * mask)
        torch.testing.assert_close(final[0], final_ref[0])
    layer = rnnkit.GRU(4, 6, dtype=torch.float64)
    with torch.no_grad():  # the inference kernel (no zoneout): the product after it
        y, _ = fused.run_direction(layer.spec, x, (torch.zeros(3, 6, dtype=torch.float64),), layer.cell_weights(0, 0), None, True, None, mask)
        y_ref, _ = reference.run_direction(layer.spec, x, (torch.zeros(3, 6, dtype=torch.float64),), layer.cell_weights(0, 0), None, True)
    torch.testing.assert_close(y, y_ref * mask)


def test_export_translations_refuse_an_output_mask():
    with pytest.raises(ValueError, match="call model.eval"):
        onnx_export._translation(GRU, *([None] * 9), False, None, torch.ones(1, 1))
