"""The LayerNorm LSTM and GRU (``layer_norm=True``), which torch.nn lacks.

With no torch.nn twin, the references here are an independent loop that
normalises with explicit mean and variance, and properties that only a
correct normalisation has.
"""

from __future__ import annotations

import pytest
import torch

import rnnkit
from rnnkit.engine import ENGINES
from tests.helpers import as_tuple, assert_close, layer_gradcheck

ENGINE_NAMES = sorted(ENGINES)
EPS = 1e-5


def _normalize(v, gain, bias=None):
    mean = v.mean(-1, keepdim=True)
    var = ((v - mean) ** 2).mean(-1, keepdim=True)
    out = (v - mean) / torch.sqrt(var + EPS) * gain
    return out if bias is None else out + bias


def _reference_lstm(layer, x):
    p = dict(layer.named_parameters())
    h = x.new_zeros(x.shape[1], layer.hidden_size)
    c = torch.zeros_like(h)
    outputs = []
    for x_t in x:
        gates = (
            _normalize(x_t @ p["weight_ih_l0"].T, p["ln_gain_ih_l0"]) + p["bias_ih_l0"]
            + _normalize(h @ p["weight_hh_l0"].T, p["ln_gain_hh_l0"]) + p["bias_hh_l0"]
        )  # fmt: skip
        i, f, g, o = gates.chunk(4, 1)
        c = f.sigmoid() * c + i.sigmoid() * g.tanh()
        h = o.sigmoid() * _normalize(c, p["ln_gain_cell_l0"], p["ln_bias_cell_l0"]).tanh()
        outputs.append(h)
    return torch.stack(outputs), (h, c)


def _reference_gru(layer, x):
    p = dict(layer.named_parameters())
    h = x.new_zeros(x.shape[1], layer.hidden_size)
    outputs = []
    for x_t in x:
        x_r, x_z, x_n = (_normalize(x_t @ p["weight_ih_l0"].T, p["ln_gain_ih_l0"]) + p["bias_ih_l0"]).chunk(3, 1)
        h_r, h_z, h_n = (_normalize(h @ p["weight_hh_l0"].T, p["ln_gain_hh_l0"]) + p["bias_hh_l0"]).chunk(3, 1)
        r, z = (x_r + h_r).sigmoid(), (x_z + h_z).sigmoid()
        n = (x_n + r * h_n).tanh()
        h = (1 - z) * n + z * h
        outputs.append(h)
    return torch.stack(outputs), (h,)


def _randomize_norm_parameters(layer):
    with torch.no_grad():
        for name, p in layer.named_parameters():
            if name.startswith("ln_"):
                p.copy_(torch.randn_like(p))


@pytest.mark.parametrize("engine", ENGINE_NAMES)
@pytest.mark.parametrize("family,reference", [(rnnkit.LSTM, _reference_lstm), (rnnkit.GRU, _reference_gru)], ids=["lstm", "gru"])
def test_matches_independent_reference(family, reference, engine):
    layer = family(3, 5, layer_norm=True, dtype=torch.float64, engine=engine)
    _randomize_norm_parameters(layer)
    x = torch.randn(6, 4, 3, dtype=torch.float64)
    out, final = layer(x)
    ref_out, ref_final = reference(layer, x)
    assert_close(out, ref_out, torch.float64, "output")
    for a, b in zip(as_tuple(final), ref_final, strict=True):
        assert_close(a[0], b, torch.float64, "final state")


@pytest.mark.parametrize("engine", ENGINE_NAMES)
@pytest.mark.parametrize("family", [rnnkit.LSTM, rnnkit.GRU], ids=["lstm", "gru"])
def test_output_is_invariant_to_weight_scale(family, engine):
    """LayerNorm removes the scale of each projection: scaling W_ih and W_hh changes (almost) nothing.

    Not exactly nothing: eps = 1e-5 is added to variances that are tiny in the
    first steps, where h is near zero, so allow 2e-3 against a change > 0.1
    without LayerNorm.
    """
    layer = family(4, 6, num_layers=2, layer_norm=True, dtype=torch.float64, engine=engine)
    plain = family(4, 6, num_layers=2, dtype=torch.float64, engine=engine)
    x = torch.randn(7, 3, 4, dtype=torch.float64)
    before, _ = layer(x)
    plain.load_state_dict({k: v for k, v in layer.state_dict().items() if not k.startswith("ln_")})
    plain_before, _ = plain(x)
    with torch.no_grad():
        for name, p in layer.named_parameters():
            if name.startswith(("weight_ih", "weight_hh")):
                p.mul_(8.0)
        for name, p in plain.named_parameters():
            if name.startswith(("weight_ih", "weight_hh")):
                p.mul_(8.0)
    after, _ = layer(x)
    plain_after, _ = plain(x)
    torch.testing.assert_close(after, before, atol=2e-3, rtol=0)
    assert (plain_after - plain_before).abs().max() > 0.1  # without LayerNorm the scale matters


@pytest.mark.parametrize("engine", ENGINE_NAMES)
@pytest.mark.parametrize("family,kwargs", [(rnnkit.LSTM, {}), (rnnkit.LSTM, {"proj_size": 2}), (rnnkit.GRU, {})], ids=["lstm", "lstm-proj", "gru"])
def test_gradcheck(family, kwargs, engine):
    layer = family(2, 4, num_layers=2, bidirectional=True, layer_norm=True, dtype=torch.float64, engine=engine, **kwargs)
    _randomize_norm_parameters(layer)
    assert layer_gradcheck(layer, lengths=[4, 1, 3])


@pytest.mark.parametrize("engine", ENGINE_NAMES)
@pytest.mark.parametrize("family", [rnnkit.LSTM, rnnkit.GRU], ids=["lstm", "gru"])
def test_streaming(family, engine):
    layer = family(3, 5, num_layers=2, layer_norm=True, engine=engine)
    x = torch.randn(9, 2, 3)
    full, full_state = layer(x)
    first, state = layer(x[:4])
    second, state = layer(x[4:], state)
    torch.testing.assert_close(torch.cat([first, second]), full, atol=1e-6, rtol=1e-6)
    for a, b in zip(as_tuple(state), as_tuple(full_state), strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)


def test_parameters_and_initialisation():
    layer = rnnkit.LSTM(3, 5, bidirectional=True, layer_norm=True)
    shapes = {n: tuple(p.shape) for n, p in layer.named_parameters()}
    assert shapes["ln_gain_ih_l0"] == (20,) and shapes["ln_gain_hh_l0_reverse"] == (20,)
    assert shapes["ln_gain_cell_l0"] == (5,) and shapes["ln_bias_cell_l0_reverse"] == (5,)
    assert torch.equal(layer.ln_gain_ih_l0, torch.ones(20)) and torch.count_nonzero(layer.ln_bias_cell_l0) == 0
    gru = rnnkit.GRU(3, 5, layer_norm=True)
    assert {n for n in dict(gru.named_parameters()) if n.startswith("ln_")} == {"ln_gain_ih_l0", "ln_gain_hh_l0"}
    assert not any(n.startswith("ln_") for n, _ in rnnkit.LSTM(3, 5).named_parameters())


def test_layer_norm_must_be_bool():
    with pytest.raises(ValueError, match="layer_norm: expected a bool, got 'yes'"):
        rnnkit.GRU(3, 5, layer_norm="yes")
