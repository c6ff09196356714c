"""The layers' regularisers (weight drop, locked dropout, zoneout): meaning, engines, modes, errors and resume."""

from __future__ import annotations

import math

import pytest
import torch

import rnnkit
from rnnkit.config import ConfigError, apply_overrides
from rnnkit.engine import fused, fused_loops, reference
from rnnkit.layers import regularisers
from rnnkit.ops import random_masks
from rnnkit.models import RecurrentConfig
from rnnkit.models.common import make_layer
from tests.helpers import as_tuple, weighted_sum

ALL_ON = dict(weight_drop=0.3, input_dropout=0.2, layer_dropout=0.25, output_dropout=0.15, zoneout=0.35)

VARIANTS = {
    "lstm": lambda **k: rnnkit.LSTM(5, 7, **k),
    "lstm_proj": lambda **k: rnnkit.LSTM(5, 7, proj_size=3, **k),
    "gru": lambda **k: rnnkit.GRU(5, 7, **k),
    "rnn_tanh": lambda **k: rnnkit.RNN(5, 7, **k),
    "rnn_relu": lambda **k: rnnkit.RNN(5, 7, nonlinearity="relu", **k),
    "ln_lstm": lambda **k: rnnkit.LSTM(5, 7, layer_norm=True, **k),
    "ln_gru": lambda **k: rnnkit.GRU(5, 7, layer_norm=True, **k),
    "lstm_wide": lambda **k: rnnkit.LSTM(5, 64, **k),  # 64 units: two threads share the compiled loop
    "gru_wide": lambda **k: rnnkit.GRU(5, 64, **k),
}


def _run(layer, x, hx, lengths, seed):
    """Outputs, final states and every gradient (input, initial state, parameters) of one seeded training call."""
    torch.manual_seed(seed)
    out, final = layer(x, hx, lengths=lengths)
    parts = (out, *as_tuple(final))
    loss = weighted_sum(parts, torch.Generator().manual_seed(1))
    grads = torch.autograd.grad(loss, [x, *as_tuple(hx), *layer.parameters()])
    return parts, grads


def _twins(name, **kwargs):
    """The same layer on the reference and the fused engine, float64, bidirectional, two layers."""
    torch.manual_seed(0)
    ref = VARIANTS[name](num_layers=2, bidirectional=True, dtype=torch.float64, engine="reference", **kwargs)
    fast = VARIANTS[name](num_layers=2, bidirectional=True, dtype=torch.float64, engine="fused", **kwargs)
    fast.load_state_dict(ref.state_dict())
    return ref, fast


def _inputs(layer, lengths=(6, 4, 1)):
    x = torch.randn(max(lengths), len(lengths), 5, dtype=torch.float64, requires_grad=True)
    sizes = layer.spec.state_sizes(layer.hidden_size, layer.proj_size or layer.hidden_size)
    hx = tuple(torch.randn(4, len(lengths), s, dtype=torch.float64, requires_grad=True) for s in sizes)
    return x, hx[0] if len(hx) == 1 else hx


@pytest.mark.parametrize("name", list(VARIANTS))
@pytest.mark.parametrize("padded", [False, True], ids=["full", "padded"])
def test_fused_matches_reference_given_the_same_masks(name, padded):
    ref, fast = _twins(name, **ALL_ON)
    x, hx = _inputs(ref)
    lengths = [6, 4, 1] if padded else None
    expected, expected_grads = _run(ref, x, hx, lengths, seed=7)
    actual, actual_grads = _run(fast, x, hx, lengths, seed=7)
    for a, e in zip((*actual, *actual_grads), (*expected, *expected_grads), strict=True):
        torch.testing.assert_close(a, e, atol=1e-10, rtol=1e-10)
    assert not torch.equal(expected[0], _run(ref, x, hx, lengths, seed=8)[0][0]), "another seed must draw other masks"


@pytest.mark.parametrize("name", ["lstm_proj", "gru", "rnn_tanh"])
def test_pure_pytorch_loops_match_reference_with_zoneout(name, monkeypatch):
    monkeypatch.setattr(fused, "loops_for", lambda x: fused_loops)
    ref, fast = _twins(name, zoneout=0.4)
    x, hx = _inputs(ref)
    for a, e in zip(sum(_run(fast, x, hx, [6, 4, 1], 3), ()), sum(_run(ref, x, hx, [6, 4, 1], 3), ()), strict=True):
        torch.testing.assert_close(a, e, atol=1e-10, rtol=1e-10)


def test_zoneout_double_backward_matches_reference():
    ref, fast = _twins("lstm", zoneout=0.3, weight_drop=0.2)
    x, hx = _inputs(ref)
    results = []
    for layer in (ref, fast):
        torch.manual_seed(5)
        out, (h, c) = layer(x, hx)
        grads = torch.autograd.grad(weighted_sum((out, h, c), torch.Generator().manual_seed(2)), [x, *layer.parameters()], create_graph=True)
        penalty = sum((g * g).sum() for g in grads)
        results.append(torch.autograd.grad(penalty, [x, *layer.parameters()]))
    for a, e in zip(*results[::-1], strict=True):
        torch.testing.assert_close(a, e, atol=1e-9, rtol=1e-9)


def test_locked_masks_are_shared_across_time_and_weight_masks_across_steps():
    layer = rnnkit.GRU(5, 9, num_layers=2, output_dropout=0.5, layer_dropout=0.5, input_dropout=0.5, weight_drop=0.5, zoneout=0.5)
    seen = []

    def recording(spec, x, state, weights, valid, reverse, zoneout=None):
        seen.append((x.detach(), weights.weight_hh.detach(), zoneout))
        return reference.run_direction(spec, x, state, weights, valid, reverse, zoneout)

    layer.run_direction = recording
    h0 = torch.randn(2, 4, 9)  # not zero: a zoned-out unit then holds a non-zero value, and zeros are dropouts' only
    out, _ = layer(torch.ones(11, 4, 5), h0)
    for tensor in (seen[0][0], seen[1][0], out):  # the masked input, the masked input of layer 2 (only 0 where dropped), the output
        dropped = tensor == 0
        assert dropped.any() and (dropped == dropped[0]).all(), "a locked mask differs between time steps"
    x0 = seen[0][0]
    assert set(x0.unique().tolist()) == {0.0, 2.0}, "kept inputs are scaled by 1/(1-p)"
    for (_, w_hh, zoneout), layer_index in zip(seen, (0, 1)):
        weight = getattr(layer, f"weight_hh_l{layer_index}")
        kept = w_hh != 0
        torch.testing.assert_close(w_hh[kept], 2 * weight.detach()[kept])
        assert 0.3 < kept.double().mean() < 0.7
        assert zoneout.shape == (11, 4, 9) and not (zoneout == zoneout[0]).all(), "zoneout draws a mask per step"
    layer(torch.ones(11, 4, 5), h0)
    assert not torch.equal(seen[0][1], seen[2][1]), "each call draws a new weight mask"


def test_expectations_are_preserved():
    """Each kept value is scaled so that the mean over masks is the value itself; zoneout's eval step is its training
    step's mean. Tolerances: 6 standard errors of the sample mean at a fixed seed."""
    torch.manual_seed(0)
    p, n = 0.3, 400_000
    ones = torch.ones(1, n, 1, dtype=torch.float64)
    dropped = regularisers.locked_dropout(ones, p, training=True)
    std_error = math.sqrt(p / (1 - p) / n)  # the std of Bernoulli(1-p)/(1-p) is sqrt(p/(1-p))
    assert abs(dropped.mean().item() - 1) < 6 * std_error
    weight = torch.randn(300, 40, dtype=torch.float64)
    weights = rnnkit.cells.CellWeights(None, weight, None, None, None)
    draws = torch.stack([regularisers.drop_weights(weights, p, True).weight_hh for _ in range(200)])
    assert (draws.mean(0) - weight).abs().max() < 6 * math.sqrt(p / (1 - p) / 200) * weight.abs().max()
    # zoneout: one step is linear in its mask, so eval mode (m = p) is exactly the mean of training over masks
    layer = rnnkit.LSTM(3, 6, zoneout=p, dtype=torch.float64)
    x, h0 = torch.randn(1, 1, 3, dtype=torch.float64), torch.randn(1, 1, 6, dtype=torch.float64)
    state = (h0.expand(1, n // 40, 6).contiguous(), torch.zeros(1, n // 40, 6, dtype=torch.float64))
    with torch.no_grad():
        sampled = layer(x.expand(1, n // 40, 3), state)[0].mean(1)
        layer.eval()
        expected = layer(x, (h0, torch.zeros_like(h0)))[0][:, 0]
        layer.zoneout = 0.0
        new = layer(x, (h0, torch.zeros_like(h0)))[0][:, 0]
    torch.testing.assert_close(expected, p * h0[0] + (1 - p) * new)
    spread = (h0[0] - new).abs() * math.sqrt(p * (1 - p) / (n // 40))
    assert ((sampled - expected).abs() <= 6 * spread + 1e-12).all()


def test_seeded_determinism():
    layer = rnnkit.LSTM(5, 16, num_layers=2, **ALL_ON)
    x = torch.randn(8, 3, 5)
    runs = []
    for seed in (11, 11, 12):
        torch.manual_seed(seed)
        out, _ = layer(x)
        runs.append(out)
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])


@pytest.mark.parametrize("cls", [rnnkit.LSTM, rnnkit.GRU, rnnkit.RNN])
def test_eval_mode_is_identity_for_dropouts_and_zero_rates_change_nothing(cls):
    torch.manual_seed(0)
    plain = cls(5, 8, num_layers=2, bidirectional=True)
    dropouts = {name: rate for name, rate in ALL_ON.items() if name != "zoneout"}
    regularised = cls(5, 8, num_layers=2, bidirectional=True, **dropouts)
    regularised.load_state_dict(plain.state_dict())
    x = torch.randn(7, 2, 5)
    plain.eval()
    regularised.eval()
    (out, final), (expected_out, expected_final) = regularised(x), plain(x)
    assert torch.equal(out, expected_out) and all(map(torch.equal, as_tuple(final), as_tuple(expected_final)))
    plain.train()
    off = cls(5, 8, num_layers=2, bidirectional=True, **dict.fromkeys(ALL_ON, 0.0))
    off.load_state_dict(plain.state_dict())
    torch.manual_seed(3)
    expected = plain(x)[0]
    torch.manual_seed(3)
    assert torch.equal(off(x)[0], expected)
    with torch.no_grad():  # streaming: the one-step kernel path is still taken with the rates at 0
        assert off._inference_step(x[:1], None) is not None and regularised.train()._inference_step(x[:1], None) is None


@pytest.mark.parametrize("name", ["weight_drop", "input_dropout", "layer_dropout", "output_dropout", "zoneout"])
@pytest.mark.parametrize("bad", [1.0, -0.1, True, "0.1", 1.7])
def test_bad_rates_are_refused_naming_the_argument(name, bad):
    with pytest.raises(ValueError, match=rf"^{name}: expected a float in \[0, 1\)"):
        rnnkit.GRU(3, 5, **{name: bad})
    layer = rnnkit.GRU(3, 5)
    with pytest.raises(ValueError, match=rf"^{name}: expected a float in \[0, 1\)"):
        setattr(layer, name, bad)
    assert getattr(layer, name) == 0.0
    with pytest.raises(ValueError, match=rf"rnn.{name}: expected a float in \[0, 1\)"):
        RecurrentConfig(**{name: bad})


def test_config_fields_build_the_layer_and_take_overrides():
    config = apply_overrides(RecurrentConfig(cell="gru", num_layers=2), ["zoneout=0.1", "weight_drop=0.5", "layer_dropout=0.2"])
    layer = make_layer(config, 4)
    assert (layer.zoneout, layer.weight_drop, layer.layer_dropout, layer.input_dropout) == (0.1, 0.5, 0.2, 0.0)
    with pytest.raises(ConfigError):
        apply_overrides(config, ["zoneout=often"])


@pytest.mark.filterwarnings("ignore:`torch.jit.trace:DeprecationWarning")
def test_recording_in_training_mode_is_refused_and_layer_norm_zoneout_says_so():
    layer = rnnkit.LSTM(3, 5, weight_drop=0.2)
    x = torch.randn(4, 2, 3)
    with pytest.raises(ValueError, match="weight_drop=0.2 in training mode cannot be traced or exported.*model.eval"):
        torch.jit.trace(layer, (x,))
    with pytest.raises(ValueError, match="cannot be traced or exported"):
        torch.export.export(layer, (x,))
    layer.eval()
    traced = torch.jit.trace(layer, (x,))  # eval mode: weight drop is the identity, nothing random is recorded
    torch.testing.assert_close(traced(x)[0], layer(x)[0])
    ln = rnnkit.GRU(3, 5, layer_norm=True, zoneout=0.2).eval()
    with pytest.raises(ValueError, match="zoneout: the LayerNorm variants"):
        torch.jit.trace(ln, (x,))


def test_fake_kernels_match_with_zoneout():
    if not rnnkit.ops.load():
        pytest.skip(rnnkit.ops.status())
    length, batch, hidden = 4, 3, 5
    xp, h0, c0 = torch.randn(length, batch, 4 * hidden), torch.randn(batch, hidden), torch.randn(batch, hidden)
    w_hh, zone = torch.randn(4 * hidden, hidden), torch.rand(length, batch, hidden).round()
    args = (2, xp, h0, c0, w_hh, None, None, None, False, zone)
    torch.library.opcheck(torch.ops.rnnkit_fused.forward_loop, args, test_utils=("test_schema", "test_faketensor"))
    _, hs, cs, hn, hraw = torch.ops.rnnkit_fused.forward_loop(*args)
    back = (2, xp, hs, cs, hn, hraw, w_hh, None, None, False, torch.randn(length, batch, hidden), h0, c0, zone)
    torch.library.opcheck(torch.ops.rnnkit_fused.backward_loop, back, test_utils=("test_schema", "test_faketensor"))


def test_exact_resume_with_regularisers(tmp_path):
    from rnnkit.training.callbacks import read_metrics
    from tests.support.resumable_run import build

    def regularised(run_dir):
        trainer, data = build(str(run_dir))
        for name, rate in ALL_ON.items():
            setattr(trainer.model.rnn, name, rate)
        return trainer, data

    def losses(run_dir):
        return [(r["step"], r["split"], r["loss"]) for r in read_metrics(run_dir / "metrics.csv")]

    trainer, (train, val) = regularised(tmp_path / "whole")
    trainer.fit(train, val)
    trainer, (train, val) = regularised(tmp_path / "split")
    trainer.config.max_steps = 7
    trainer.fit(train, val)
    resumed, (train, val) = regularised(tmp_path / "split")
    resumed.resume(tmp_path / "split" / "checkpoint.safetensors")
    resumed.fit(train, val)
    assert losses(tmp_path / "split") == losses(tmp_path / "whole")  # string-exact
    plain, (train, val) = build(str(tmp_path / "plain"))
    plain.fit(train, val)
    assert losses(tmp_path / "plain") != losses(tmp_path / "whole"), "the regularisers must change training"


@pytest.mark.parametrize("cls", [rnnkit.LSTM, rnnkit.GRU, rnnkit.RNN])
def test_zoneout_is_applied_under_autocast(cls):
    """Under bf16 autocast the zoneout masks reach the loop: the result is the float32 one with the same masks (to bf16
    rounding), and differs from the same layer without zoneout, so the masks cannot be dropped silently."""
    torch.manual_seed(0)
    layer = cls(5, 16, num_layers=2, zoneout=0.5, input_dropout=0.2)
    plain = cls(5, 16, num_layers=2)
    plain.load_state_dict(layer.state_dict())
    x = torch.randn(8, 3, 5)

    def outputs(module, low):
        torch.manual_seed(7)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=low):
            out, _ = module(x, lengths=[8, 5, 2])
        return out.float()

    exact, low, without = outputs(layer, False), outputs(layer, True), outputs(plain, True)
    assert (low - exact).norm() / exact.norm() < 0.02
    assert (low - without).norm() / without.norm() > 0.1


# -- the masks' generator (rnnkit.ops.random_masks) -------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.bool], ids=["f32", "f64", "bf16", "bool"])
@pytest.mark.parametrize("shape, p", [((100, 32, 256), 0.1), ((7, 3), 0.5), ((1000,), 0.0), ((33, 5), 0.999), ((4, 0, 2), 0.3)])
def test_compiled_mask_op_draws_the_same_bits_as_its_pytorch_twin(shape, p, dtype):
    if not rnnkit.ops.load():
        pytest.skip(rnnkit.ops.status())
    for seed in (0, 1, (1 << 63) - 1, 0x1234_5678_9ABC_DEF0):
        seed_tensor = torch.tensor(seed)
        made = random_masks.random_mask(seed_tensor, shape, p, 0.0, 1 / (1 - p), dtype, torch.device("cpu"))
        twin = random_masks.twin_mask(seed_tensor, shape, p, 0.0, 1 / (1 - p), dtype)
        assert made.shape == twin.shape == shape and made.dtype == twin.dtype == dtype
        assert torch.equal(made, twin)
    torch.library.opcheck(torch.ops.rnnkit_fused.random_mask.default, (5, list(shape), p, 1.0, 0.0, dtype), test_utils=("test_schema", "test_faketensor"))


def test_mask_rate_is_p_and_its_elements_are_independent_of_their_neighbours():
    """P(below) within 6 standard errors of p, for each p; and a neighbour's draw says nothing of the next one's
    (the four pair frequencies of consecutive elements match p^2, p(1-p), ... within 6 standard errors)."""
    n = 1 << 20
    for p in (0.05, 0.3, 0.5, 0.9):
        mask = random_masks.twin_mask(torch.tensor(987654321), (n,), p, 1.0, 0.0, torch.float64)
        assert abs(mask.mean().item() - p) < 6 * math.sqrt(p * (1 - p) / n)
        both = (mask[:-1] * mask[1:]).mean().item()
        assert abs(both - p * p) < 6 * math.sqrt(p * p * (1 - p * p) / n)
    one, other = (random_masks.twin_mask(torch.tensor(seed), (n,), 0.5, 1.0, 0.0, torch.float64) for seed in (987654321, 987654322))
    agree = (other == one).double().mean().item()  # the next seed: independent, so they agree half the time
    assert abs(agree - 0.5) < 6 * math.sqrt(0.25 / n)


def test_masks_follow_torch_manual_seed_and_refuse_too_many_elements():
    torch.manual_seed(3)
    first = regularisers.bernoulli((50, 4), 0.4, torch.empty(0))
    torch.manual_seed(3)
    assert torch.equal(first, regularisers.bernoulli((50, 4), 0.4, torch.empty(0)))
    assert not torch.equal(first, regularisers.bernoulli((50, 4), 0.4, torch.empty(0)))  # the seed was drawn: a new mask
    with pytest.raises(ValueError, match="random_mask: expected at most 2\\^32 elements, got 4294967297"):
        random_masks.twin_mask(torch.tensor(1), ((1 << 32) + 1,), 0.5, 1.0, 0.0, torch.float32)


def test_compiled_training_step_draws_the_eager_masks():
    """torch.compile traces the masks' PyTorch twin and its seed draw without a graph break; with the same seed the
    compiled step's output and gradients are the eager step's (aot_eager: the random draws run as eager ones)."""
    torch.manual_seed(0)
    layer = rnnkit.GRU(5, 8, num_layers=2, **ALL_ON)
    x = torch.randn(6, 3, 5)
    results = []
    for module in (layer, torch.compile(layer, backend="aot_eager", fullgraph=True)):
        layer.zero_grad(set_to_none=True)
        torch.manual_seed(5)
        out, h_n = module(x)
        (out.sum() + h_n.sum()).backward()
        results.append((out.detach(), layer.weight_hh_l0.grad.clone(), layer.weight_ih_l1.grad.clone()))
    for eager, compiled in zip(*results, strict=True):
        torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-6)
