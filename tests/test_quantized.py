"""int8 inference (rnnkit/layers/quantized.py, rnnkit/engine/int8.py, csrc/lowp_loops.cpp): against float32,
against the int8 math written out in PyTorch, refusals, the checkpoint round trip and the CLI.

Tolerance against float32: relative error in the Frobenius norm below 0.03 (measured 0.002-0.007:
8-bit weights and activations give about 0.4% per product, and the recurrence does not amplify it
at these sizes). Against the written-out int8 math: float32 rounding only.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

import rnnkit
from rnnkit import ops
from rnnkit.cli.main import main
from rnnkit.engine import int8
from rnnkit.models import load_model, save_model
from tests.helpers import cpu_has

pytestmark = pytest.mark.skipif(not ops.load(), reason="int8 inference needs the compiled kernels: " + ops.status())

INT8 = 0.03
FAMILIES = [rnnkit.LSTM, rnnkit.GRU, rnnkit.RNN]


def relative(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual - expected).norm() / expected.norm()).item()


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("options", [{}, {"num_layers": 2, "bidirectional": True, "batch_first": True}])
def test_layers_match_float32(family, options):
    layer = family(5, 7, **options)  # odd sizes: the kernels pad channels to 16 and inputs to 4
    quantized = rnnkit.quantize_dynamic(layer)
    x = torch.randn(3, 9, 5) if options.get("batch_first") else torch.randn(9, 3, 5)
    with torch.no_grad():
        expected, expected_final = layer(x)
        actual, final = quantized(x)
    assert type(quantized).__name__ == f"Quantized{family.__name__}" and quantized.weight_ih_l0.dtype == torch.int8
    assert relative(actual, expected) < INT8
    for got, want in zip(final if isinstance(final, tuple) else (final,), expected_final if isinstance(expected_final, tuple) else (expected_final,)):
        assert got.dtype == torch.float32 and relative(got, want) < INT8
    assert layer.weight_ih_l0.dtype == torch.float32  # the original is left as it was


def test_relu_rnn_layer_and_cell():
    layer, cell = rnnkit.RNN(4, 9, nonlinearity="relu"), rnnkit.RNNCell(4, 9, nonlinearity="relu")
    x = torch.randn(5, 2, 4)
    with torch.no_grad():
        assert relative(rnnkit.quantize_dynamic(layer)(x)[0], layer(x)[0]) < INT8
        assert relative(rnnkit.quantize_dynamic(cell)(x[0]), cell(x[0])) < INT8


def test_lengths_keep_padding_zero_and_states_at_each_end():
    layer = rnnkit.LSTM(4, 6, num_layers=2)
    quantized = rnnkit.quantize_dynamic(layer)
    x = torch.randn(6, 3, 4)
    with torch.no_grad():
        expected, (h, c) = layer(x, lengths=[6, 3, 1])
        actual, (qh, qc) = quantized(x, lengths=[6, 3, 1])
    assert actual[3:, 1].abs().max() == 0 and actual[1:, 2].abs().max() == 0
    assert relative(actual, expected) < INT8 and relative(qh, h) < INT8 and relative(qc, c) < INT8


def written_out_step(kind: str, cell, x, h, c):
    """One step of the int8 math in PyTorch: per-row symmetric activations, per-channel weights, exact int sums."""

    def product(a, q, scale):
        s = a.abs().amax(1, keepdim=True).clamp_min(1e-30) / 127
        s = torch.where(a.abs().amax(1, keepdim=True) > 0, s, torch.ones_like(s))
        qa = torch.round(a / s)
        return (qa.double() @ q.double().t()).float() * s * scale

    bias = cell.bias_ih + cell.bias_hh if kind != "gru" else None
    xp = product(x, cell.weight_ih, cell.weight_ih_scale)
    rec = product(h, cell.weight_hh, cell.weight_hh_scale)
    if kind == "lstm":
        i, f, g, o = (xp + bias + rec).chunk(4, 1)
        c = f.sigmoid() * c + i.sigmoid() * g.tanh()
        return o.sigmoid() * c.tanh(), c
    if kind == "gru":
        xr, xz, xn = (xp + cell.bias_ih).chunk(3, 1)
        hr, hz, hn = (rec + cell.bias_hh).chunk(3, 1)
        r, z = (xr + hr).sigmoid(), (xz + hz).sigmoid()
        n = (xn + r * hn).tanh()
        return n + z * (h - n), None
    return (xp + bias + rec).tanh(), None


@pytest.mark.parametrize("kind, family", [("lstm", rnnkit.LSTMCell), ("gru", rnnkit.GRUCell), ("rnn", rnnkit.RNNCell)])
def test_cells_compute_exactly_the_int8_math(kind, family):
    cell = rnnkit.quantize_dynamic(family(6, 11))
    x, h, c = torch.randn(4, 6), torch.randn(4, 11), torch.randn(4, 11)
    with torch.no_grad():
        out = cell(x, (h, c)) if kind == "lstm" else cell(x, h)
    expected_h, expected_c = written_out_step(kind, cell, x, h, c)
    torch.testing.assert_close(out[0] if kind == "lstm" else out, expected_h, atol=2e-5, rtol=1e-4)
    if kind == "lstm":
        torch.testing.assert_close(out[1], expected_c, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("kind, family", [("lstm", rnnkit.LSTM), ("gru", rnnkit.GRU), ("rnn", rnnkit.RNN)])
def test_layers_compute_exactly_the_int8_math_step_after_step(kind, family):
    """int8_layer projects each step's inputs inside the loop, per batch row: the same math as the cells, over time,
    in both directions, with batch rows split between threads (rows 0-8) and input and hidden sizes off the padding."""
    layer = rnnkit.quantize_dynamic(family(6, 11, bidirectional=True))
    x = torch.randn(5, 9, 6)
    with torch.no_grad():
        out, _ = layer(x)
    for direction, suffix in enumerate(("_l0", "_l0_reverse")):
        weights = SimpleNamespace(**{name: getattr(layer, name + suffix) for name in
                                     ("weight_ih", "weight_hh", "bias_ih", "bias_hh")},  # fmt: skip
                                  weight_ih_scale=getattr(layer, "weight_ih" + suffix + "_scale"), weight_hh_scale=getattr(layer, "weight_hh" + suffix + "_scale"))
        mine = out[:, :, direction * 11 : (direction + 1) * 11]
        h, c = torch.zeros(9, 11), torch.zeros(9, 11)
        for t in range(5) if direction == 0 else reversed(range(5)):
            expected_h, c = written_out_step(kind, weights, x[t], h, c)
            torch.testing.assert_close(mine[t], expected_h, atol=2e-5, rtol=1e-4)
            h = mine[t]  # the kernel's own h_t next: a last-bit difference could round h to another 8-bit value


def test_linear_heads_only_when_asked_and_other_modules_alone():
    model = nn.Sequential(nn.Embedding(10, 5), rnnkit.GRU(5, 8, batch_first=True), nn.LayerNorm(8))
    head = nn.Linear(8, 3)
    kept = rnnkit.quantize_dynamic(nn.ModuleDict({"body": model, "head": head}))
    assert type(kept["head"]) is nn.Linear and type(kept["body"][0]) is nn.Embedding and type(kept["body"][2]) is nn.LayerNorm
    converted = rnnkit.quantize_dynamic(head, linear=True)
    x = torch.randn(2, 4, 8)
    with torch.no_grad():
        assert relative(converted(x), head(x)) < INT8
    assert converted.weight.dtype == torch.int8


def test_refusals_name_what_cannot_be_converted():
    with pytest.raises(ValueError, match="layer_norm"):
        rnnkit.quantize_dynamic(nn.Sequential(rnnkit.LSTM(3, 4, layer_norm=True)))
    with pytest.raises(ValueError, match="proj_size"):
        rnnkit.quantize_dynamic(rnnkit.LSTM(3, 4, proj_size=2))
    with pytest.raises(ValueError, match="float32"):
        rnnkit.quantize_dynamic(rnnkit.GRU(3, 4, dtype=torch.float64))
    quantized = rnnkit.quantize_dynamic(rnnkit.GRU(3, 4))
    with pytest.raises(ValueError, match="already int8"):
        rnnkit.quantize_dynamic(quantized)
    with pytest.raises(ValueError, match="eval"):
        quantized.train()
    with pytest.raises(RuntimeError, match="inference only"):
        quantized(torch.randn(2, 1, 3, requires_grad=True))
    with pytest.raises(ValueError, match="float32"):
        quantized(torch.randn(2, 1, 3, dtype=torch.float64))


def test_fake_kernels_match_the_int8_kernels():
    q, scale = int8.quantize_weight(torch.randn(12, 5))
    matrix = int8.pack(q, scale)
    x = torch.randn(7, 5)
    torch.library.opcheck(torch.ops.rnnkit_fused.int8_linear, (x, *matrix[:3], torch.randn(12), 12), test_utils=("test_schema", "test_faketensor"))
    x, h0, c0 = torch.randn(4, 3, 5), torch.randn(3, 3), torch.randn(3, 3)
    valid = torch.arange(4).unsqueeze(1) < torch.tensor([4, 2, 1])
    rq, rscale = int8.quantize_weight(torch.randn(12, 3))
    recurrent = int8.pack(rq, rscale)
    torch.library.opcheck(torch.ops.rnnkit_fused.int8_layer, (2, x, *matrix[:3], torch.randn(12), h0, c0, *recurrent[:3], None, valid, True),
                          test_utils=("test_schema", "test_faketensor"))


def test_checkpoint_round_trip_and_cli(tiny_runs, tmp_path, capsys):
    run = tiny_runs["charlm"]
    assert main(["export", str(run), "--quantize", "int8", "--out", str(tmp_path / "int8.safetensors")]) == 0
    model, extra = load_model(tmp_path / "int8.safetensors")
    fresh, _ = load_model(run / "model.safetensors")
    expected = rnnkit.quantize_dynamic(fresh.eval())
    tokens = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        torch.testing.assert_close(model(tokens)[0], expected(tokens)[0], atol=0, rtol=0)  # the same int8 weights, loaded
    assert extra["vocabulary"] and type(model.rnn).__name__.startswith("Quantized")
    save_model(model, tmp_path / "again.safetensors", extra)
    assert load_model(tmp_path / "again.safetensors")[0].rnn.weight_hh_l0.dtype == torch.int8
    assert main(["export", str(run), "--quantize", "int8", "--format", "onnx"]) == 2  # one or the other
    capsys.readouterr()
    assert main(["eval", str(run), "--quantize", "int8"]) == 0
    printed = capsys.readouterr().out
    assert "int8 against float32" in printed and "bits per character" in printed


def test_zoneout_is_refused_and_eval_mode_dropouts_carry_over():
    """Zoneout mixes states in eval mode too (its expectation), which the int8 loop does not do: refused, not dropped."""
    with pytest.raises(ValueError, match=r"LSTM: expected zoneout=0 for int8 inference .* got zoneout=0.2"):
        rnnkit.quantize_dynamic(nn.Sequential(rnnkit.LSTM(3, 4, zoneout=0.2)).eval())
    float_layer = rnnkit.GRU(3, 4, input_dropout=0.3, weight_drop=0.2).eval()
    int8_layer = rnnkit.quantize_dynamic(nn.Sequential(float_layer))[0]
    assert (int8_layer.input_dropout, int8_layer.weight_drop) == (0.3, 0.2)
    x = torch.randn(5, 2, 3)
    torch.testing.assert_close(int8_layer(x)[0], float_layer(x)[0], atol=0.05, rtol=0.05)


@pytest.mark.skipif(not cpu_has("amx_int8"), reason="this CPU has no AMX-INT8: only the VNNI path runs")
@pytest.mark.parametrize("family, hidden, batch", [(rnnkit.LSTM, 48, 37), (rnnkit.GRU, 64, 16), (rnnkit.RNN, 256, 20)])
def test_amx_int8_tiles_give_the_vnni_path_s_results_bit_for_bit(family, hidden, batch, monkeypatch):
    # integer sums are exact in any order; 37 rows: two tiles and a VNNI remainder; 48 units: an odd number of column blocks
    quantized = rnnkit.quantize_dynamic(family(16, hidden))
    x = torch.randn(5, batch, 16)
    outputs = []
    for switch in ("", "1"):
        monkeypatch.setenv("RNNKIT_NO_AMX", switch)
        with torch.no_grad():
            outputs.append(quantized(x)[0])
    assert torch.equal(outputs[0], outputs[1])
    assert outputs[0].abs().sum() > 0


@pytest.mark.skipif(ops.native_loops() is None, reason=f"compiled kernels unavailable: {ops.status()}")
@pytest.mark.parametrize("rows", range(1, 10))
@pytest.mark.parametrize("out_features", [16, 40, 72, 128])
def test_int8_linear_is_the_integer_product_for_every_tile_remainder(rows, out_features):
    # the VNNI product runs register tiles of 4 rows by 4 blocks of 16 columns, with smaller tiles at the edges:
    # 1-9 rows and 1, 3, 5 and 8 column blocks reach every combination of them
    generator = torch.Generator().manual_seed(rows * 1000 + out_features)
    x = torch.randn(rows, 37, generator=generator)
    q, scale = int8.quantize_weight(torch.randn(out_features, 37, generator=generator))
    with torch.no_grad():
        out = int8.linear(x, int8.pack(q, scale), None)
    row_scale = x.abs().amax(1, keepdim=True) / 127
    sums = torch.round(x / row_scale).double() @ q.double().t()  # exact in float64: |sum| < 2^53
    torch.testing.assert_close(out, (sums * row_scale.double() * scale.double()).float(), rtol=1e-6, atol=1e-6)
