"""The fused engine under CPU autocast (rnnkit/engine/autocast.py): dtypes as torch.nn's, results and
gradients against the float32 reference within bf16 rounding.

Tolerance: relative error in the Frobenius norm. bf16 keeps 8 significant bits (unit roundoff
2^-9 ≈ 0.002); the plain families land at 0.002-0.007 here (with the per-step products' operands
rounded to bf16 too), so 0.02 is about ten roundoffs. The
LayerNorm LSTM is more sensitive: rounding only x and W_ih to bf16 in a float32 run already moves its
gradients by 0.03-0.06 at these sizes; autocast's may move them 2.5 times that much (measured: 1.2-1.6).
"""

from __future__ import annotations

import copy

import pytest
import torch

import rnnkit
from rnnkit.engine import autocast
from tests.helpers import as_tuple, torch_twin

PLAIN = 0.02
LAYER_NORM_FACTOR = 2.5
FAMILIES = [rnnkit.LSTM, rnnkit.GRU, rnnkit.RNN]


def torch_nn_runs_under_bf16(family) -> bool:
    """torch.nn.LSTM under bf16 autocast needs oneDNN's bf16 LSTM primitive, which a CPU without AVX512-BF16 (AVX2 only)
    lacks: there it raises, and rnnkit's LSTM runs the fused loop instead (tested below), so only float32 is left to compare with."""
    return family is not rnnkit.LSTM or autocast._onednn_lstm_runs_in(torch.bfloat16)


def relative(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual.float() - expected.float()).norm() / expected.float().norm()).item()


def run(layer, x, dtype=torch.bfloat16, **kwargs):
    with torch.autocast("cpu", dtype=dtype):
        out, final = layer(x, **kwargs)
    return out, as_tuple(final)


def loss(out, final) -> torch.Tensor:
    generator = torch.Generator().manual_seed(7)
    return sum((t.float() * torch.randn(t.shape, generator=generator)).sum() for t in (out, *final))


def gradients(layer, x, autocast: bool, **kwargs):
    layer.zero_grad(set_to_none=True)
    x = x.detach().requires_grad_()
    out, final = run(layer, x, **kwargs) if autocast else (lambda o: (o[0], as_tuple(o[1])))(layer(x, **kwargs))
    loss(out, final).backward()
    return out, final, [x.grad, *(p.grad for p in layer.parameters())]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("options", [{}, {"num_layers": 2, "bidirectional": True}])
def test_dtypes_and_values_match_torch_nn_under_autocast(family, options):
    layer = family(8, 16, **options)
    twin = torch_twin(layer)
    x = torch.randn(9, 3, 8)
    with torch.no_grad():
        out, final = run(layer, x)
        reference_out, _ = layer(x)
    assert relative(out, reference_out) < PLAIN  # against float32
    if not torch_nn_runs_under_bf16(family):  # torch.nn raises here; its documented dtypes: bf16 output and state
        assert out.dtype == torch.bfloat16 and [t.dtype for t in final] == [torch.bfloat16] * 2
        return
    with torch.no_grad():
        expected_out, expected_final = run(twin, x)
    assert out.dtype == expected_out.dtype
    assert [t.dtype for t in final] == [t.dtype for t in expected_final]
    assert relative(out, expected_out) < PLAIN  # and against torch.nn under autocast


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("no_amx", ["", "1"], ids=["tiles-where-the-cpu-has-them", "portable"])
def test_gradients_match_float32_within_bf16_rounding(family, no_amx, monkeypatch):
    monkeypatch.setenv("RNNKIT_NO_AMX", no_amx)  # the per-step bf16 products' two paths (tests/test_bf16_products.py)
    layer = family(8, 16, num_layers=2, bidirectional=True)
    x = torch.randn(11, 4, 8)
    out, final, grads = gradients(layer, x, autocast=True)
    reference_out, _, reference_grads = gradients(layer, x, autocast=False)
    assert out.dtype == (torch.float32 if family is rnnkit.GRU else torch.bfloat16)
    assert grads[0].dtype == torch.float32 and all(g.dtype == torch.float32 for g in grads[1:])
    assert relative(out, reference_out) < PLAIN
    for got, want in zip(grads, reference_grads):
        assert relative(got, want) < PLAIN


def test_padding_and_projection_under_autocast():
    layer = rnnkit.LSTM(8, 16, proj_size=5)
    x = torch.randn(7, 3, 8)
    lengths = [7, 4, 2]
    out, final, grads = gradients(layer, x, autocast=True, lengths=lengths)
    reference_out, reference_final, reference_grads = gradients(layer, x, autocast=False, lengths=lengths)
    assert out.shape == reference_out.shape and out.dtype == torch.bfloat16
    assert out[4:, 1].abs().max() == 0 and out[2:, 2].abs().max() == 0  # padding stays zero
    for got, want in zip((*final, *grads), (*reference_final, *reference_grads)):
        assert relative(got, want) < PLAIN


@pytest.mark.parametrize("family", [rnnkit.LSTM, rnnkit.GRU])
def test_layer_norm_variants_under_autocast(family):
    layer = family(8, 16, layer_norm=True)
    x = torch.randn(9, 3, 8)
    out, final, grads = gradients(layer, x, autocast=True)
    reference_out, _, reference_grads = gradients(layer, x, autocast=False)
    rounded = copy.deepcopy(layer)  # float32 with only x and W_ih rounded to bf16: the sensitivity of the cell itself
    with torch.no_grad():
        rounded.weight_ih_l0.copy_(rounded.weight_ih_l0.bfloat16().float())
    _, _, rounded_grads = gradients(rounded, x.bfloat16().float(), autocast=False)
    assert out.dtype == (torch.bfloat16 if family is rnnkit.LSTM else torch.float32)
    assert relative(out, reference_out) < PLAIN
    for got, by_rounding, want in zip(grads, rounded_grads, reference_grads):
        assert relative(got, want) < max(PLAIN, LAYER_NORM_FACTOR * relative(by_rounding, want))


def test_float16_autocast_runs_the_lstm_torch_nn_cannot():
    layer = rnnkit.LSTM(8, 16)
    x = torch.randn(6, 2, 8)
    with torch.no_grad():
        out, final = run(layer, x, dtype=torch.float16)
        reference_out, _ = layer(x)
    assert out.dtype == torch.float16 and final[1].dtype == torch.float16
    assert relative(out, reference_out) < 0.005  # fp16 keeps 11 significant bits


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_lstm_inference_without_onednn_s_primitive_runs_the_fused_loop_to_the_same_contract(monkeypatch, dtype):
    from rnnkit.engine import autocast

    layer = rnnkit.LSTM(8, 16)
    x = torch.randn(6, 2, 8)
    with torch.no_grad():
        reference_out, _ = layer(x)
        monkeypatch.setattr(autocast, "_onednn_lstm_runs_in", lambda low: False)  # a CPU whose oneDNN lacks the dtype
        out, final = run(layer, x, dtype=dtype)
    assert out.dtype == dtype and final[0].dtype == dtype and final[1].dtype == dtype  # torch.nn's dtypes under autocast
    assert relative(out, reference_out) < (0.02 if dtype == torch.bfloat16 else 0.005)


def test_autocast_refuses_second_derivative_and_torch_func():
    layer = rnnkit.GRU(4, 6)
    x = torch.randn(3, 2, 4, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = layer(x)
    (grad,) = torch.autograd.grad(out.sum(), x, create_graph=True)  # first order is fine
    with pytest.raises(RuntimeError):  # the gradient of a first-order-only backward cannot be differentiated
        torch.autograd.grad(grad.sum(), x)

    def f(inputs):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return layer(inputs)[0].sum()

    with pytest.raises(NotImplementedError, match="autocast"):
        torch.func.grad(f)(x.detach())


def test_state_carried_between_calls_mixes_dtypes_as_torch_nn_allows():
    layer = rnnkit.LSTM(4, 6)
    x = torch.randn(5, 2, 4)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        _, state = layer(x[:3])
        assert state[0].dtype == torch.bfloat16
        out, _ = layer(x[3:], state)  # float32 input, bf16 state: autocast casts them, as torch.nn.LSTM accepts
        twin_out, _ = torch_twin(layer)(x[3:], state) if torch_nn_runs_under_bf16(rnnkit.LSTM) else layer(x[3:], tuple(t.float() for t in state))
    assert relative(out, twin_out) < PLAIN
    with pytest.raises(ValueError, match="dtype"):  # outside autocast the dtypes must agree
        layer(x[3:], state)


@pytest.mark.parametrize("no_amx", ["", "1"], ids=["tiles-where-the-cpu-has-them", "portable"])
@pytest.mark.parametrize("options", [{"proj_size": 5}, {"proj_size": 16}, {}], ids=["proj5", "proj16", "plain"])
def test_lstm_inference_with_padding_or_projection_under_autocast(options, no_amx, monkeypatch):
    # the LSTMs oneDNN's primitive does not take: the fused inference loop with every product in bf16
    monkeypatch.setenv("RNNKIT_NO_AMX", no_amx)
    layer = rnnkit.LSTM(8, 32, **options)
    x = torch.randn(7, 3, 8)
    lengths = [7, 4, 2]
    with torch.no_grad():
        out, final = run(layer, x, lengths=lengths)
        reference_out, reference_final = layer(x, lengths=lengths)
    assert out.dtype == torch.bfloat16 and out.shape == reference_out.shape
    assert out[4:, 1].abs().max() == 0 and out[2:, 2].abs().max() == 0  # padding stays zero
    for got, want in zip((out, *final), (reference_out, *as_tuple(reference_final))):
        assert relative(got, want) < PLAIN


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_products_in_blocks_of_rows_give_the_one_block_results(family, dtype, monkeypatch):
    # large problems run the products over all steps a block of rows at a time (autocast.ROWS_PER_BLOCK);
    # forced here on a small one, with a last block shorter than the others
    layer = family(8, 16)
    x = torch.randn(9, 3, 8)
    results = {}
    for blocked in (False, True):
        monkeypatch.setattr(autocast, "BLOCKED_BYTES", 0 if blocked else 1 << 40)
        monkeypatch.setattr(autocast, "ROWS_PER_BLOCK", 5)
        layer.zero_grad(set_to_none=True)
        inputs = x.clone().requires_grad_()
        out, final = run(layer, inputs, dtype=dtype)
        loss(out, final).backward()
        results[blocked] = [out, *final, inputs.grad, *(p.grad for p in layer.parameters())]
    for blocked, single in zip(results[True], results[False]):
        assert relative(blocked, single) < 1e-3  # blocks sum their bf16/fp16-rounded partial weight gradients in float32
    assert torch.equal(results[True][0], results[False][0])  # the projections themselves are the same, bit for bit


def test_column_sums_of_a_low_precision_matrix_in_blocks(monkeypatch):
    # the bias gradients: float32 sums of bf16 gate gradients, a block of rows at a time through one float32 buffer
    part = torch.randn(23, 6).bfloat16()
    monkeypatch.setattr(autocast, "BLOCKED_BYTES", 0)
    monkeypatch.setattr(autocast, "ROWS_PER_BLOCK", 4)  # six blocks, the last of three rows
    sums = autocast._column_sums(part)
    assert sums.dtype == torch.float32
    torch.testing.assert_close(sums, part.double().sum(0).float(), rtol=1e-6, atol=1e-6)
    monkeypatch.setattr(autocast, "BLOCKED_BYTES", 1 << 40)
    assert torch.equal(autocast._column_sums(part), part.sum(0, dtype=torch.float32))


def twin_run(twin, x, dtype):
    """torch.nn's layer under autocast, or a skip where this CPU's oneDNN has no LSTM in ``dtype`` and torch.nn raises."""
    try:
        return run(twin, x, dtype=dtype)
    except RuntimeError:
        if isinstance(twin, torch.nn.LSTM) and not autocast._onednn_lstm_runs_in(dtype):
            pytest.skip(f"torch.nn.LSTM under {dtype} autocast raises on this CPU: nothing to compare with")
        raise


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_training_on_a_transposed_input_batch_first_or_a_view(family, dtype):
    # x in the projections' dtype is kept for backward's dG^T X, which reads it as (L·N, I): contiguous whatever x was
    layer = family(8, 16, batch_first=True)
    x = torch.randn(3, 9, 8)  # (N, L, I): time-major inside is a transposed view
    out, _, grads = gradients(layer, x, autocast=True, dtype=dtype)
    reference_out, _, reference_grads = gradients(layer, x, autocast=False)
    assert out.shape == (3, 9, 16)
    for got, want in zip(grads, reference_grads):
        assert relative(got, want) < PLAIN
    time_major = family(8, 16)
    view = torch.randn(3, 9, 8).transpose(0, 1)
    _, _, view_grads = gradients(time_major, view, autocast=True, dtype=dtype)
    _, _, view_reference = gradients(time_major, view.contiguous(), autocast=False)
    for got, want in zip(view_grads, view_reference):
        assert relative(got, want) < PLAIN


@pytest.mark.parametrize("family, options", [(rnnkit.LSTM, {}), (rnnkit.LSTM, {"proj_size": 5}), (rnnkit.GRU, {}), (rnnkit.RNN, {})])
def test_bf16_parameters_under_bf16_autocast_as_torch_nn(family, options):
    # the biases, GRU's b_hn and W_hr reach the float32 loops in float32 whatever the parameters' dtype
    layer = family(8, 16, **options)
    twin = torch_twin(layer)
    layer, twin = layer.to(torch.bfloat16), twin.to(torch.bfloat16)
    x = torch.randn(9, 3, 8)
    with torch.no_grad():
        out, final = run(layer, x)
        reference_out, reference_final = twin_run(twin, x, torch.bfloat16)
    assert [t.dtype for t in (out, *final)] == [t.dtype for t in (reference_out, *reference_final)]
    assert relative(out, reference_out) < PLAIN
    out, _, grads = gradients(layer, x, autocast=True)
    twin.zero_grad(set_to_none=True)
    twin_out, twin_final = twin_run(twin, x.clone().requires_grad_(), torch.bfloat16)
    loss(twin_out, twin_final).backward()
    reference_grads = [None, *(p.grad for p in twin.parameters())]
    for got, want in zip(grads[1:], reference_grads[1:]):
        assert got.dtype == want.dtype == torch.bfloat16 and relative(got, want) < 3 * PLAIN  # bf16 gradients both


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_lstm_dtypes_with_proj_size_and_packed_input_are_torch_nn_s(dtype):
    # torch.nn returns c_n in float32 with proj_size, and everything in float32 for a PackedSequence (lstm.data is not
    # on CPU autocast's lower-precision list)
    from torch.nn.utils.rnn import pack_padded_sequence

    for layer, make_input in [(rnnkit.LSTM(8, 16, proj_size=5), lambda x: x), (rnnkit.LSTM(8, 16), lambda x: pack_padded_sequence(x, [9, 6, 2]))]:
        twin = torch_twin(layer)
        x = torch.randn(9, 3, 8)
        for grad in (False, True):
            with torch.set_grad_enabled(grad):
                out, final = run(layer, make_input(x), dtype=dtype)
                expected_out, expected_final = twin_run(twin, make_input(x), dtype)
            out, expected_out = getattr(out, "data", out), getattr(expected_out, "data", expected_out)
            assert [t.dtype for t in (out, *final)] == [t.dtype for t in (expected_out, *expected_final)]
            assert relative(out, expected_out) < PLAIN
