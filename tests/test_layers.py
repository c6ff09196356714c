"""Layer behaviour beyond one-call equivalence: streaming, edge cases, state dicts, gradcheck."""

from __future__ import annotations

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import rnnkit
from rnnkit.engine import ENGINES
from rnnkit.layers import recurrent, streaming
from tests.helpers import as_tuple, assert_close, layer_gradcheck, torch_twin

FAMILIES = [
    pytest.param(rnnkit.RNN, {}, id="rnn-tanh"),
    pytest.param(rnnkit.RNN, {"nonlinearity": "relu"}, id="rnn-relu"),
    pytest.param(rnnkit.LSTM, {}, id="lstm"),
    pytest.param(rnnkit.LSTM, {"proj_size": 3}, id="lstm-proj"),
    pytest.param(rnnkit.GRU, {}, id="gru"),
]
ENGINE_NAMES = sorted(ENGINES)


@pytest.mark.parametrize("engine", ENGINE_NAMES)
@pytest.mark.parametrize("batch_first", [False, True], ids=["tf", "bf"])
@pytest.mark.parametrize("family,kwargs", FAMILIES)
def test_streaming_in_chunks_equals_one_call(family, kwargs, batch_first, engine):
    torch.manual_seed(11)
    layer = family(5, 7, num_layers=2, batch_first=batch_first, engine=engine, **kwargs)
    x = torch.randn(3, 17, 5) if batch_first else torch.randn(17, 3, 5)
    time_dim = 1 if batch_first else 0
    full_out, full_state = layer(x)

    state, pieces = None, []
    for chunk in torch.split(x, [1, 5, 4, 7], dim=time_dim):
        out, state = layer(chunk, state)
        pieces.append(out)
    torch.testing.assert_close(torch.cat(pieces, dim=time_dim), full_out, atol=1e-6, rtol=1e-6)
    for a, b in zip(as_tuple(state), as_tuple(full_state), strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("engine", ENGINE_NAMES)
@pytest.mark.parametrize("family,kwargs", FAMILIES)
def test_streaming_with_lengths_holds_finished_sequences(family, kwargs, engine):
    """A sequence that ended in an earlier chunk keeps its state when later chunks are all padding for it."""
    torch.manual_seed(12)
    layer = family(4, 6, engine=engine, **kwargs)
    x = torch.randn(8, 2, 4)
    full_out, full_state = layer(x, lengths=[8, 3])
    out1, state = layer(x[:4], lengths=[4, 3])
    # The second sequence has no step left in chunk 2: run it with the first only and compare its held state.
    out2, state2 = layer(x[4:, :1], tuple(s[:, :1] for s in as_tuple(state)) if isinstance(state, tuple) else state[:, :1])
    torch.testing.assert_close(torch.cat([out1[:, :1], out2]), full_out[:, :1], atol=1e-6, rtol=1e-6)
    for a, b, held in zip(as_tuple(state2), as_tuple(full_state), as_tuple(state), strict=True):
        torch.testing.assert_close(a[:, 0], b[:, 0], atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(held[:, 1], b[:, 1], atol=1e-6, rtol=1e-6)
    assert torch.count_nonzero(full_out[3:, 1]) == 0


@pytest.mark.parametrize("engine", ENGINE_NAMES)
@pytest.mark.parametrize("family,kwargs", FAMILIES)
def test_layer_gradcheck(family, kwargs, engine):
    torch.manual_seed(0)
    layer = family(2, 4, num_layers=2, bidirectional=True, dtype=torch.float64, engine=engine, **kwargs)
    assert layer_gradcheck(layer, lengths=[4, 2, 1])


@pytest.mark.parametrize("engine", ENGINE_NAMES)
@pytest.mark.parametrize("family,kwargs", FAMILIES)
def test_batch_size_zero_forward_and_backward(family, kwargs, engine):
    layer = family(3, 5, num_layers=2, bidirectional=True, engine=engine, **kwargs)
    x = torch.randn(4, 0, 3, requires_grad=True)
    out, final = layer(x)
    assert out.shape == (4, 0, 2 * (layer.proj_size or 5))
    assert all(s.shape[1] == 0 for s in as_tuple(final))
    (out.sum() + sum(s.sum() for s in as_tuple(final))).backward()
    assert x.grad.shape == x.shape
    assert all(p.grad is not None and torch.count_nonzero(p.grad) == 0 for p in layer.parameters())


@pytest.mark.parametrize("engine", ENGINE_NAMES)
@pytest.mark.parametrize("family,kwargs", FAMILIES)
def test_sequence_length_one_matches_torch(family, kwargs, engine):
    torch.manual_seed(1)
    layer = family(3, 5, num_layers=2, bidirectional=True, engine=engine, **kwargs)
    x = torch.randn(1, 4, 3)
    out, final = layer(x)
    ref_out, ref_final = torch_twin(layer)(x)
    assert_close(out, ref_out, torch.float32, "output")
    for a, b in zip(as_tuple(final), as_tuple(ref_final), strict=True):
        assert_close(a, b, torch.float32, "final state")


@pytest.mark.parametrize("family,kwargs", FAMILIES)
def test_state_dict_loads_both_ways_with_torch(family, kwargs):
    torch.manual_seed(2)
    ours = family(3, 5, num_layers=3, bidirectional=True, **kwargs)
    theirs = torch_twin(ours)
    assert [(n, p.shape) for n, p in ours.named_parameters()] == [(n, p.shape) for n, p in theirs.named_parameters()]
    fresh_torch = type(theirs)(3, 5, num_layers=3, bidirectional=True, **kwargs)
    fresh_torch.load_state_dict(ours.state_dict())
    fresh_ours = family(3, 5, num_layers=3, bidirectional=True, **kwargs)
    fresh_ours.load_state_dict(theirs.state_dict())
    for a, b in zip(fresh_torch.state_dict().values(), fresh_ours.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert [[tuple(p.shape) for p in group] for group in ours.all_weights] == [[tuple(p.shape) for p in group] for group in theirs.all_weights]


@pytest.mark.parametrize("engine", ENGINE_NAMES)
def test_lengths_accepts_list_and_any_integer_tensor(engine):
    torch.manual_seed(3)
    layer = rnnkit.GRU(3, 4, bidirectional=True, engine=engine)
    x = torch.randn(6, 3, 3)
    expected = layer(x, lengths=[6, 2, 4])
    for lengths in (torch.tensor([6, 2, 4]), torch.tensor([6, 2, 4], dtype=torch.int32), (6, 2, 4)):
        got = layer(x, lengths=lengths)
        assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])


@pytest.mark.parametrize("engine", ENGINE_NAMES)
def test_lengths_zero_the_padding_and_ignore_its_values(engine):
    torch.manual_seed(4)
    layer = rnnkit.LSTM(3, 4, num_layers=2, bidirectional=True, engine=engine)
    x = torch.randn(5, 2, 3)
    noisy = x.clone()
    noisy[2:, 1] = 1e6  # padding content must not leak into outputs or states
    out_a, state_a = layer(x, lengths=[5, 2])
    out_b, state_b = layer(noisy, lengths=[5, 2])
    assert torch.equal(out_a, out_b)
    assert all(torch.equal(a, b) for a, b in zip(state_a, state_b))
    assert torch.count_nonzero(out_a[2:, 1]) == 0
    assert torch.count_nonzero(out_a[:2, 1]) > 0


def test_dropout_between_layers_in_training_only():
    torch.manual_seed(5)
    layer = rnnkit.LSTM(3, 8, num_layers=2, dropout=0.5)
    x = torch.randn(6, 4, 3)
    layer.eval()
    eval_out, _ = layer(x)
    ref_out, _ = torch_twin(layer).eval()(x)
    assert_close(eval_out, ref_out, torch.float32, "eval output")
    layer.train()
    train_a, _ = layer(x)
    train_b, _ = layer(x)
    assert not torch.allclose(train_a, eval_out)
    assert not torch.allclose(train_a, train_b)


def test_dropout_with_one_layer_warns_like_torch():
    with pytest.warns(UserWarning, match="non-zero dropout expects num_layers greater than 1"):
        rnnkit.GRU(3, 4, num_layers=1, dropout=0.3)


def test_packed_output_keeps_input_order():
    torch.manual_seed(6)
    layer = rnnkit.RNN(3, 4)
    x = torch.randn(5, 3, 3)
    packed = pack_padded_sequence(x, [2, 5, 3], enforce_sorted=False)
    out, _ = layer(packed)
    assert torch.equal(out.batch_sizes, packed.batch_sizes)
    assert torch.equal(out.sorted_indices, packed.sorted_indices)
    assert torch.equal(out.unsorted_indices, packed.unsorted_indices)


def test_check_finite_ignores_padding_and_passes_clean_input():
    layer = rnnkit.RNN(3, 4, check_finite=True)
    x = torch.randn(5, 2, 3)
    x[3:, 0] = float("nan")
    out, _ = layer(x, lengths=[3, 5])
    assert torch.isfinite(out).all()


def test_public_api_is_declared():
    assert set(rnnkit.__all__) >= {"RNN", "LSTM", "GRU", "RNNCell", "LSTMCell", "GRUCell"}
    assert all(hasattr(rnnkit, name) for name in rnnkit.__all__)


@pytest.mark.parametrize("batch_first", [False, True], ids=["time-major", "batch-first"])
@pytest.mark.parametrize("engine", ENGINE_NAMES)
@pytest.mark.parametrize("family,kwargs", FAMILIES)
def test_output_may_be_modified_in_place_before_backward_like_torch(family, kwargs, engine, batch_first):
    """torch.nn's RNN and GRU allow ``out += residual``-style edits before backward; so do all of rnnkit's layers.

    The fused engine's output shares memory with the states its backward reads; an edit makes it recompute them.
    """
    torch.manual_seed(0)
    layer = family(3, 5, engine=engine, batch_first=batch_first, **kwargs)
    x = torch.randn(4, 2, 3, requires_grad=True)
    out, _ = layer(x)
    out.mul_(2.0)
    out.sum().backward()
    expected = torch.autograd.grad(2.0 * layer(x)[0].sum(), [x, *layer.parameters()])
    for actual, wanted in zip([x.grad, *(p.grad for p in layer.parameters())], expected, strict=True):
        torch.testing.assert_close(actual, wanted)


# -- one step per call without autograd: RecurrentLayer._inference_step -----------------------------

STEP_FAMILIES = [
    *FAMILIES,
    pytest.param(rnnkit.LSTM, {"layer_norm": True}, id="lstm-ln"),
    pytest.param(rnnkit.GRU, {"layer_norm": True}, id="gru-ln"),
]
STEP_LAYOUTS = ["time-major", "batch-first", "unbatched"]
STEP_SHAPES = [
    pytest.param({}, id="1x1"),
    pytest.param({"num_layers": 2, "dropout": 0.5}, id="2x1"),
    pytest.param({"num_layers": 2, "bidirectional": True}, id="2x2"),
]


def _general_path_only(monkeypatch):
    monkeypatch.setattr(rnnkit.RecurrentLayer, "_inference_step", lambda self, input, hx: None)


def _count_one_steps(monkeypatch) -> list:
    """Spy on the streaming path: the returned list gets one entry per layer call that the path served."""
    calls, step = [], streaming.inference_step

    def spy(*args, **kwargs):
        result = step(*args, **kwargs)
        if result is not None:
            calls.append(1)
        return result

    monkeypatch.setattr(streaming, "inference_step", spy)
    return calls


def _step_input(layout: str, batch: int, features: int, dtype=torch.float32):
    if layout == "unbatched":
        return torch.randn(1, features, dtype=dtype)
    return torch.randn(batch, 1, features, dtype=dtype) if layout == "batch-first" else torch.randn(1, batch, features, dtype=dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("layout", STEP_LAYOUTS)
@pytest.mark.parametrize("shape", STEP_SHAPES)
@pytest.mark.parametrize("family,kwargs", STEP_FAMILIES)
def test_inference_step_equals_general_path_while_streaming(family, kwargs, shape, layout, dtype, monkeypatch):
    """Streaming one step per call under no_grad: the fast path gives bit-identical outputs and states to the
    general path (same kernel), and matches the reference engine; the state is carried from call to call."""
    torch.manual_seed(21)
    layer = family(5, 6, batch_first=layout == "batch-first", dtype=dtype, **shape, **kwargs).eval()
    reference = family(5, 6, batch_first=layout == "batch-first", dtype=dtype, engine="reference", **shape, **kwargs).eval()
    reference.load_state_dict(layer.state_dict())
    steps = [_step_input(layout, 3, 5, dtype) * 2 for _ in range(4)]
    calls = _count_one_steps(monkeypatch)
    fast, state = [], None
    with torch.no_grad():
        for x in steps:
            out, state = layer(x, state)
            fast.append((out, as_tuple(state)))
    assert len(calls) == len(steps)  # the fast path ran every step

    _general_path_only(monkeypatch)
    state, ref_state = None, None
    with torch.no_grad():
        for x, (fast_out, fast_state) in zip(steps, fast, strict=True):
            out, state = layer(x, state)
            ref_out, ref_state = reference(x, ref_state)
            assert fast_out.shape == out.shape == ref_out.shape
            assert torch.equal(fast_out, out)
            assert_close(fast_out, ref_out, dtype, "output vs reference engine")
            for a, b, r in zip(fast_state, as_tuple(state), as_tuple(ref_state), strict=True):
                assert a.shape == b.shape == r.shape
                assert torch.equal(a, b)
                assert_close(a, r, dtype, "state vs reference engine")
    assert len(calls) == len(steps)  # and not on the general path


@pytest.mark.parametrize("layout", STEP_LAYOUTS)
@pytest.mark.parametrize("family,kwargs", FAMILIES)
def test_inference_step_from_zero_state_matches_torch(family, kwargs, layout):
    torch.manual_seed(22)
    layer = family(5, 6, num_layers=2, bidirectional=True, batch_first=layout == "batch-first", **kwargs)
    x = _step_input(layout, 3, 5)
    with torch.no_grad():
        out, final = layer(x)
        ref_out, ref_final = torch_twin(layer)(x)
    assert_close(out, ref_out, torch.float32, "output")
    for a, b in zip(as_tuple(final), as_tuple(ref_final), strict=True):
        assert_close(a, b, torch.float32, "final state")


def test_inference_step_dropout_between_layers_draws_like_the_general_path(monkeypatch):
    torch.manual_seed(23)
    layer = rnnkit.GRU(5, 8, num_layers=3, dropout=0.5).train()
    x, h = torch.randn(1, 4, 5), torch.randn(3, 4, 8)
    calls = _count_one_steps(monkeypatch)
    with torch.no_grad():
        torch.manual_seed(7)
        fast = layer(x, h)
        assert len(calls) == 1
        _general_path_only(monkeypatch)
        torch.manual_seed(7)
        general = layer(x, h)
        eval_out = layer.eval()(x, h)
    assert torch.equal(fast[0], general[0]) and torch.equal(fast[1], general[1])
    assert not torch.equal(fast[0], eval_out[0])  # dropout did apply


@pytest.mark.parametrize("layout", STEP_LAYOUTS)
@pytest.mark.parametrize("family", [rnnkit.LSTM, rnnkit.GRU])
def test_inference_step_state_is_not_a_view_of_the_output(family, layout):
    layer = family(5, 6)
    with torch.no_grad():
        out, state = layer(_step_input(layout, 2, 5))
        before = [s.clone() for s in as_tuple(state)]
        out.add_(1.0)
    assert all(torch.equal(a, b) for a, b in zip(before, as_tuple(state), strict=True))


def _bad_step_calls():
    """(layer, input, hx, expected message) for bad input of one time step."""
    gru, lstm = rnnkit.GRU(5, 4, num_layers=2, bidirectional=True), rnnkit.LSTM(5, 4)
    x = torch.randn(1, 2, 5)
    return [
        (lstm, torch.randn(1, 2, 11), None, "input: expected last dimension input_size=5, got 11"),
        (gru, torch.randn(1, 2, 5, dtype=torch.float64), None, "input: expected dtype torch.float32 (the dtype of the layer's parameters), got torch.float64"),
        (gru, torch.randn(1, 2, 5, device="meta"), None, "input: expected device cpu (the device of the layer's parameters), got meta"),
        (gru, x, torch.randn(7, 2, 4), "hx: expected shape (4, 2, 4) (num_layers * num_directions, batch, hidden), got (7, 2, 4)"),
        (gru, x, torch.randn(4, 2, 11), "hx: expected shape (4, 2, 4) (num_layers * num_directions, batch, hidden), got (4, 2, 11)"),
        (gru, x, torch.randn(4, 13, 4), "hx: expected batch size 2 to match input, got 13 (shape (4, 13, 4))"),
        (gru, x, torch.randn(4, 4), "hx: expected a 3-D tensor (num_layers * num_directions, batch, hidden) for batched input, got 2-D shape (4, 4)"),
        (gru, torch.randn(1, 5), torch.randn(4, 1, 4), "hx: expected a 2-D tensor (num_layers * num_directions, hidden) for unbatched input, got 3-D shape (4, 1, 4)"),
        (gru, torch.randn(1, 5), torch.randn(7, 4), "hx: expected shape (4, 4) (num_layers * num_directions, hidden), got (7, 4)"),
        (gru, x, torch.randn(4, 2, 4, dtype=torch.float64), "hx: expected dtype torch.float32 (the dtype of input), got torch.float64"),
        (gru, x, torch.randn(4, 2, 4, device="meta"), "hx: expected device cpu (the device of input), got meta"),
        (gru, x, (torch.randn(4, 2, 4),), "hx: expected a Tensor h_0, got tuple"),
        (lstm, x, torch.randn(1, 2, 4), "hx: expected a tuple (h_0, c_0) of two Tensors, got Tensor"),
        (lstm, x, (torch.randn(1, 2, 4), None), "hx: expected a tuple (h_0, c_0) of two Tensors, got tuple"),
        (lstm, x, (torch.randn(1, 2, 4), torch.randn(1, 2, 7)), "hx[1] (c_0): expected shape (1, 2, 4) (num_layers * num_directions, batch, hidden), got (1, 2, 7)"),
        (lstm, x, (torch.randn(1, 2, 4, dtype=torch.float64), torch.randn(1, 2, 4)), "hx[0] (h_0): expected dtype torch.float32 (the dtype of input), got torch.float64"),
    ]


@pytest.mark.parametrize("case", range(len(_bad_step_calls())))
def test_inference_step_rejects_bad_input_with_the_general_paths_error(case, monkeypatch):
    layer, x, hx, message = _bad_step_calls()[case]
    with torch.no_grad():
        with pytest.raises(ValueError) as fast:
            layer(x, hx)
        assert any(entry.name == "_inference_step" for entry in fast.traceback)  # raised on the fast path
        _general_path_only(monkeypatch)
        with pytest.raises(ValueError) as general:
            layer(x, hx)
    assert str(fast.value) == str(general.value) == message


def test_inference_step_leaves_other_calls_to_the_general_path(monkeypatch):
    """Sequences, lengths, autograd, check_finite, autocast and a swapped-in engine take the general path."""
    calls = _count_one_steps(monkeypatch)
    layer = rnnkit.LSTM(5, 6)
    step = torch.randn(1, 2, 5)
    with torch.no_grad():
        layer(step)
        assert len(calls) == 1
        layer(torch.randn(2, 2, 5))
        layer(step, lengths=[1, 1])
        rnnkit.LSTM(5, 6, check_finite=True)(step)
        rnnkit.LSTM(5, 6, engine="reference")(step)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out, _ = layer(step)
        assert out.dtype == torch.bfloat16  # the engine's autocast path, torch.nn.LSTM's dtype
    out, _ = layer(step)
    assert out.requires_grad
    assert len(calls) == 1


def test_inference_step_reads_a_weight_swapped_for_a_plain_tensor():
    """Weight dropout (AWD-LSTM) replaces a parameter by a plain tensor attribute; every call must read it anew."""
    torch.manual_seed(24)
    layer = rnnkit.LSTM(5, 6)
    x, c_0 = torch.randn(1, 2, 5), torch.randn(1, 2, 6)
    h_a, h_b = torch.randn(1, 2, 6), torch.randn(1, 2, 6)
    with torch.no_grad():
        before, _ = layer(x, (h_a, c_0))
        del layer._parameters["weight_hh_l0"]
        layer.weight_hh_l0 = torch.zeros(24, 6)
        swapped, _ = layer(x, (h_a, c_0))
        other_h, _ = layer(x, (h_b, c_0))
    assert not torch.equal(before, swapped)
    assert torch.equal(swapped, other_h)  # with W_hh = 0 the step ignores h_0
