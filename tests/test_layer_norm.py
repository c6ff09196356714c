"""The LayerNorm LSTM and GRU (``layer_norm=True``), which torch.nn lacks.

With no torch.nn twin, the references here are an independent loop that
normalises with explicit mean and variance, and properties that only a
correct normalisation has.
"""

from __future__ import annotations

import pytest
import torch

import rnnkit
from rnnkit import ops as fused_build
from rnnkit.engine import ENGINES, fused_layer_norm, gemm
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


CASES = [(5, False, True, None), (64, True, True, [6, 3, 1, 5]), (70, False, False, [2, 6, 6, 4]), (96, True, True, None)]


def _outputs_and_gradients(layer, x, hx, lengths, dtype):
    inputs = [t.to(dtype).clone().requires_grad_() for t in (x, *hx)]
    output, (h_n, c_n) = layer(inputs[0], tuple(inputs[1:]), lengths=lengths)
    weights = torch.linspace(-1, 1, output.numel(), dtype=dtype).view_as(output)
    loss = (output * weights).sum() + (h_n * h_n).sum() + (c_n * c_n).sum()
    return [output, h_n, c_n, *torch.autograd.grad(loss, inputs + list(layer.parameters()))]


@pytest.mark.parametrize("case", range(len(CASES)))
def test_compiled_loop_matches_reference_with_every_option(case, monkeypatch):
    """The fused LayerNorm LSTM kernel against the reference loop: outputs, states and every gradient.

    Hidden sizes of 64 and more split the units over two threads, which then
    combine their LayerNorm statistics; lengths exercise padding. float64 must
    agree to 1e-10. In float32 outputs and states agree to 1e-5. Gradients
    pass through two LayerNorms per step, whose 1/std amplifies rounding: the
    float32 reference itself is up to ~6e-5 off the float64 result, so they
    agree to 1e-4, and each must be about as accurate on average as the reference
    (mean error against float64 within 2.5x). The ratio depends on the CPU the
    kernel is compiled for (-march=native): 1.5x held on AMD EPYC; on Intel Xeon
    the LayerNorm gains' gradients of case 1 reach 1.9x, at 7e-7 absolute.
    """
    if fused_build.native_loops() is None:
        pytest.skip(fused_build.status())
    calls = []
    kernel = fused_layer_norm.FusedLayerNormLSTM.apply
    monkeypatch.setattr(fused_layer_norm.FusedLayerNormLSTM, "apply", lambda *a: calls.append(1) or kernel(*a))
    hidden, bidirectional, bias, lengths = CASES[case]
    torch.manual_seed(case)
    layers = {}
    for engine, dtype in (("reference", torch.float64), ("fused", torch.float64), ("reference", torch.float32), ("fused", torch.float32)):
        layers[engine, dtype] = rnnkit.LSTM(7, hidden, num_layers=2, bidirectional=bidirectional, bias=bias, layer_norm=True, engine=engine, dtype=dtype)
    _randomize_norm_parameters(layers["reference", torch.float64])
    for layer in layers.values():
        layer.load_state_dict(layers["reference", torch.float64].state_dict())
    stacked = 2 * (1 + bidirectional)
    x, hx = torch.randn(6, 4, 7, dtype=torch.float64), (torch.randn(stacked, 4, hidden, dtype=torch.float64), torch.randn(stacked, 4, hidden, dtype=torch.float64))
    results = {key: _outputs_and_gradients(layer, x, hx, lengths, key[1]) for key, layer in layers.items()}
    truth = results["reference", torch.float64]
    for index, (expected, actual) in enumerate(zip(truth, results["fused", torch.float64], strict=True)):
        torch.testing.assert_close(actual, expected, atol=1e-10, rtol=1e-10, msg=lambda m, i=index: f"float64 item {i}: {m}")
    for index, (exact, expected, actual) in enumerate(zip(truth, results["reference", torch.float32], results["fused", torch.float32], strict=True)):
        tol = 1e-5 if index < 3 else 1e-4
        torch.testing.assert_close(actual, expected, atol=tol, rtol=tol, msg=lambda m, i=index: f"float32 item {i}: {m}")
        reference_error, fused_error = ((t.double() - exact).abs().mean().item() for t in (expected, actual))
        assert fused_error <= 2.5 * reference_error + 1e-7, f"float32 item {index}: mean error {fused_error:.2e} against the reference's {reference_error:.2e}"
    assert len(calls) == 2 * stacked  # float64 and float32: every layer and direction ran the kernel


@pytest.mark.parametrize("batch", [4, 17], ids=["units", "rows"])
def test_compiled_loop_on_two_threads_matches_reference(batch):
    """Two threads split 4 rows by hidden units (combining each row's statistics) and 17 rows by rows (each thread
    alone, its gain gradients added after): both give the float64 reference's outputs and gradients, with padding
    and zoneout's eval-mode weights."""
    if fused_build.native_loops() is None:
        pytest.skip(fused_build.status())
    torch.manual_seed(batch)
    reference = rnnkit.LSTM(7, 64, num_layers=2, bidirectional=True, layer_norm=True, zoneout=0.3, engine="reference", dtype=torch.float64)
    fused = rnnkit.LSTM(7, 64, num_layers=2, bidirectional=True, layer_norm=True, zoneout=0.3, dtype=torch.float64)
    _randomize_norm_parameters(reference)
    fused.load_state_dict(reference.state_dict())
    x, hx = torch.randn(6, batch, 7, dtype=torch.float64), (torch.randn(4, batch, 64, dtype=torch.float64), torch.randn(4, batch, 64, dtype=torch.float64))
    lengths = [6, 3, 1, 5, 2, 6, 4, 1, 6, 2, 3, 5, 6, 1, 4, 6, 2][:batch]
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        expected, actual = (_outputs_and_gradients(layer.eval(), x, hx, lengths, torch.float64) for layer in (reference, fused))
    finally:
        torch.set_num_threads(previous)
    for index, (e, a) in enumerate(zip(expected, actual, strict=True)):
        torch.testing.assert_close(a, e, atol=1e-10, rtol=1e-10, msg=lambda m, i=index: f"item {i}: {m}")


def test_input_side_gradients_at_a_size_where_the_projection_would_use_onednn():
    # 512 rows x 128 inputs x 1024 gates is above the oneDNN threshold of gemm.linear; oneDNN's op has no
    # autograd formula, so the input side (recorded by autograd) must still produce x's and W_ih's gradients.
    # Compared as the float32 test above: each result as close to the float64 reference, on average, as the
    # float32 reference is (a missing gradient would be off by its whole size).
    torch.manual_seed(11)
    layers = {(engine, dtype): rnnkit.LSTM(128, 256, layer_norm=True, engine=engine, dtype=dtype)
              for engine, dtype in (("reference", torch.float64), ("reference", torch.float32), ("fused", torch.float32))}  # fmt: skip
    for layer in layers.values():
        layer.load_state_dict(layers["reference", torch.float64].state_dict())
    x, hx = torch.randn(32, 16, 128, dtype=torch.float64), (torch.zeros(1, 16, 256, dtype=torch.float64),) * 2
    assert gemm.onednn_picked(32 * 16, 128, 4 * 256)
    truth, expected, actual = (_outputs_and_gradients(layer, x, hx, None, key[1]) for key, layer in layers.items())
    for index, (exact, e, a) in enumerate(zip(truth, expected, actual, strict=True)):
        reference_error, fused_error = ((t.double() - exact).abs().mean().item() for t in (e, a))
        assert fused_error <= 1.5 * reference_error + 1e-7, f"item {index}: mean error {fused_error:.2e} against the reference's {reference_error:.2e}"


def test_layer_norm_lstm_without_the_kernel_runs_the_hoisted_loop(monkeypatch):
    monkeypatch.setattr(fused_build, "native_loops", lambda: None)
    layer = rnnkit.LSTM(3, 5, layer_norm=True, engine="fused", dtype=torch.float64)
    monkeypatch.setattr(fused_layer_norm.FusedLayerNormLSTM, "apply", lambda *a: pytest.fail("the kernel ran without a build"))
    x = torch.randn(4, 2, 3, dtype=torch.float64)
    assert_close(layer(x)[0], _reference_lstm(layer, x)[0], torch.float64, "output")
