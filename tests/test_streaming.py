"""The streaming path (rnnkit.layers.streaming): one ``stacked_step`` op per length-1 call, its plan, and the op itself."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import rnnkit
from rnnkit.layers import streaming
from tests.helpers import as_tuple

KINDS = [pytest.param(0, id="rnn"), pytest.param(2, id="lstm"), pytest.param(3, id="gru")]
GATES = {0: 1, 2: 4, 3: 3}


@pytest.fixture(autouse=True)
def _built():
    if not rnnkit.ops.load():
        pytest.skip(rnnkit.ops.status())


def _op_args(kind: int, directions: int, layers: int, bias: bool, batch=3, inputs=5, hidden=4):
    torch.manual_seed(kind + 10 * directions + 100 * layers)
    weights = []
    for layer in range(layers):
        width = inputs if layer == 0 else directions * hidden
        for _ in range(directions):
            rows = GATES[kind] * hidden
            weights += [torch.randn(rows, width), torch.randn(rows, hidden)]
            weights += [torch.randn(rows), torch.randn(rows)] if bias else [torch.empty(0), torch.empty(0)]
    cells = layers * directions
    h0, c0 = torch.randn(cells, batch, hidden), torch.randn(cells, batch, hidden)
    return kind, torch.randn(batch, inputs), h0, c0, weights, directions


@pytest.mark.parametrize("sequence", [False, True], ids=["(N,I)", "(1,N,I)"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("directions, layers", [(1, 1), (1, 2), (2, 2)], ids=["1x1", "1x2", "2x2"])
@pytest.mark.parametrize("kind", KINDS)
def test_stacked_step_passes_opcheck_and_equals_the_cells_one_by_one(kind, directions, layers, bias, sequence):
    args = _op_args(kind, directions, layers, bias)
    kind, x, h0, c0, weights, _ = args
    if sequence:  # a length-1 time-major sequence: the output keeps its time dimension
        args = (kind, x[None], h0, c0, weights, directions)
    torch.library.opcheck(torch.ops.rnnkit_fused.stacked_step.default, args, test_utils=("test_schema", "test_faketensor"))
    with torch.no_grad():
        y, h_n, c_n = torch.ops.rnnkit_fused.stacked_step(*args)
    assert y.shape == ((1,) if sequence else ()) + (x.shape[0], directions * h0.shape[2])
    y = y[0] if sequence else y
    with torch.no_grad():
        for layer in range(layers):
            outputs = []
            for direction in range(directions):
                cell = layer * directions + direction
                w_ih, w_hh, b_ih, b_hh = weights[4 * cell : 4 * cell + 4]
                b_ih, b_hh = (b_ih, b_hh) if bias else (None, None)
                h, c = torch.ops.rnnkit_fused.cell_step(kind, x, h0[cell], c0[cell] if kind == 2 else h0[cell], w_ih, w_hh, b_ih, b_hh)
                assert torch.equal(h_n[cell], h)
                assert c_n.numel() == 0 if kind != 2 else torch.equal(c_n[cell], c)
                outputs.append(h)
            x = torch.cat(outputs, dim=1)
    assert torch.equal(y, x)
    assert y.untyped_storage().data_ptr() != h_n.untyped_storage().data_ptr()  # the output never shares the state's memory


def test_stacked_step_refuses_a_sequence_longer_than_one_step():
    kind, x, h0, c0, weights, directions = _op_args(0, 1, 1, True)
    with torch.no_grad(), pytest.raises(RuntimeError, match=r"expected x \(N, I\) or \(1, N, I\).*got \[2, 3, 5\]"):
        torch.ops.rnnkit_fused.stacked_step(kind, torch.stack([x, x]), h0, c0, weights, directions)


def test_stacked_step_refuses_a_weight_that_autograd_would_record():
    kind, x, h0, c0, weights, directions = _op_args(0, 1, 1, True)
    weights[1].requires_grad_(True)  # only a weight inside the list asks for a gradient
    with pytest.raises(RuntimeError, match="rnnkit_fused::stacked_step has no autograd formula"):
        torch.ops.rnnkit_fused.stacked_step(kind, x, h0, c0, weights, directions)


@pytest.mark.parametrize("index, shape, message", [
    (0, (4, 6), r"cell 0's w_ih must be \(16, 5\), got \[4, 6\]"),
    (1, (16, 3), r"cell 0's w_hh must be \(16, 4\), got \[16, 3\]"),
    (2, (7,), r"cell 0's biases must be \(16\), got \[7\]"),
])  # fmt: skip
def test_stacked_step_rejects_weights_of_the_wrong_shape(index, shape, message):
    kind, x, h0, c0, weights, directions = _op_args(2, 1, 1, True)
    weights[index] = torch.randn(shape)
    with torch.no_grad(), pytest.raises(RuntimeError, match=message):
        torch.ops.rnnkit_fused.stacked_step(kind, x, h0, c0, weights, directions)


def _spy_stacked(monkeypatch) -> list:
    calls, stacked = [], streaming._stacked_step
    monkeypatch.setattr(streaming, "_stacked_step", lambda *args: calls.append(1) or stacked(*args))
    return calls


def _general(layer, x, hx):
    """The general path's result for the same call (the streaming path turned off for it)."""
    with torch.no_grad(), pytest.MonkeyPatch.context() as patch:
        patch.setattr(streaming, "inference_step", lambda *args: None)
        return layer(x, hx)


@pytest.mark.parametrize("family", [rnnkit.RNN, rnnkit.LSTM, rnnkit.GRU])
def test_plain_layers_take_one_stacked_call_and_layer_norm_takes_the_cells(family, monkeypatch):
    calls = _spy_stacked(monkeypatch)
    x = torch.randn(1, 2, 5)
    with torch.no_grad():
        family(5, 4, num_layers=2, bidirectional=True, bias=False)(x)
        assert len(calls) == 1
        if family is not rnnkit.RNN:
            family(5, 4, layer_norm=True)(x)
            assert len(calls) == 1
        family(5, 4, num_layers=2, dropout=0.5).train()(x)  # dropout between layers is drawn between the cells
        assert len(calls) == 1
        family(5, 4, num_layers=2, dropout=0.5).eval()(x)
        assert len(calls) == 2


def test_a_replaced_parameter_makes_a_new_plan(monkeypatch):
    torch.manual_seed(3)
    layer = rnnkit.GRU(5, 4).eval()
    x, h = torch.randn(1, 2, 5), torch.randn(1, 2, 4)
    with torch.no_grad():
        before, _ = layer(x, h)
        plan = layer.__dict__["_step_plan"]
        layer(x, h)
        assert layer.__dict__["_step_plan"] is plan  # kept while the parameters are the same objects
        layer.weight_hh_l0 = nn.Parameter(torch.randn(12, 4))
        after, h_n = layer(x, h)
    assert layer.__dict__["_step_plan"] is not plan
    assert not torch.equal(before, after)
    general, general_h_n = _general(layer, x, h)
    assert torch.equal(after, general) and torch.equal(h_n, general_h_n)


def test_functional_call_steps_with_the_parameters_it_was_given():
    """torch.func.functional_call swaps tensors into the parameter registry (no setattr): the plan must notice."""
    torch.manual_seed(4)
    layer, other = rnnkit.LSTM(5, 4, num_layers=2).eval(), rnnkit.LSTM(5, 4, num_layers=2).eval()
    x = torch.randn(1, 3, 5)
    with torch.no_grad():
        own, _ = layer(x)
        swapped, (h_n, c_n) = torch.func.functional_call(layer, dict(other.named_parameters()), (x,))
        again, _ = layer(x)
        expected, (want_h, want_c) = _general(other, x, None)
    assert torch.equal(swapped, expected) and torch.equal(h_n, want_h) and torch.equal(c_n, want_c)
    assert torch.equal(again, own)


def test_a_parameter_of_the_wrong_shape_fails_instead_of_being_read_out_of_bounds():
    layer = rnnkit.LSTM(5, 4).eval()
    layer.weight_ih_l0 = nn.Parameter(torch.randn(16, 3))
    with torch.no_grad(), pytest.raises(RuntimeError, match=r"w_ih must be \(16, 5\), got \[16, 3\]"):
        layer(torch.randn(1, 2, 5))


@pytest.mark.parametrize("layout", ["time-major", "batch-first", "batch-first, one row", "unbatched"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_stacked_path_equals_the_general_path_without_bias(layout, dtype, monkeypatch):
    calls = _spy_stacked(monkeypatch)
    torch.manual_seed(5)
    layer = rnnkit.LSTM(5, 4, num_layers=2, bidirectional=True, bias=False, batch_first=layout.startswith("batch-first"), dtype=dtype).eval()
    batch = 1 if layout == "batch-first, one row" else 3
    shape = {"time-major": (1, 3, 5), "unbatched": (1, 5)}.get(layout, (batch, 1, 5))
    state_shape = (4, 4) if layout == "unbatched" else (4, batch, 4)
    x, hx = torch.randn(shape, dtype=dtype), (torch.randn(state_shape, dtype=dtype), torch.randn(state_shape, dtype=dtype))
    with torch.no_grad():
        out, state = layer(x, hx)
    assert len(calls) == 1
    general_out, general_state = _general(layer, x, hx)
    assert out.shape == general_out.shape and torch.equal(out, general_out)
    for a, b in zip(as_tuple(state), as_tuple(general_state), strict=True):
        assert a.shape == b.shape and torch.equal(a, b)


def test_a_dtype_change_makes_a_new_plan(monkeypatch):
    """``.double()`` keeps the parameters' identities but not their dtype: the plan is dropped, so streaming takes
    the stacked op in float64 too, with the general path's result."""
    calls = _spy_stacked(monkeypatch)
    torch.manual_seed(6)
    layer = rnnkit.RNN(5, 4).eval()
    with torch.no_grad():
        layer(torch.randn(1, 2, 5))
        layer.double()
        x = torch.randn(1, 2, 5, dtype=torch.float64)
        out, h_n = layer(x)
    assert len(calls) == 2 and out.dtype == torch.float64
    general, general_h_n = _general(layer, x, None)
    assert torch.equal(out, general) and torch.equal(h_n, general_h_n)


def test_vmap_of_a_streaming_call_takes_the_general_path():
    """Under torch.func.vmap the step op has no batching rule: the call takes the engine's path, which has one."""
    torch.manual_seed(7)
    layer, reference = rnnkit.GRU(5, 4).eval(), rnnkit.GRU(5, 4, engine="reference").eval()
    reference.load_state_dict(layer.state_dict())
    x = torch.randn(3, 1, 2, 5)
    with torch.no_grad():
        out = torch.func.vmap(lambda step: layer(step)[0])(x)
        expected = torch.stack([reference(step)[0] for step in x])
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("family", [rnnkit.LSTM, rnnkit.GRU, rnnkit.RNN])
def test_a_layer_pickles_and_copies_after_single_steps(family):
    # the single-step path caches a plan holding the compiled op, which cannot be pickled: pickle, torch.save and
    # deepcopy leave the cache out
    import copy
    import io
    import pickle

    layer = family(4, 5)
    x = torch.randn(1, 3, 4)
    with torch.no_grad():
        expected = layer(x)[0]
    for restored in (pickle.loads(pickle.dumps(layer)), copy.deepcopy(layer)):
        with torch.no_grad():
            assert torch.equal(restored(x)[0], expected)  # the copy steps as the original, its plan rebuilt
    torch.save(layer, io.BytesIO())  # a whole module, as users checkpoint one (rnnkit's own checkpoints are safetensors)
    restored = pickle.loads(pickle.dumps(layer))
    assert "_step_plan" not in restored.__dict__ and "_step_plan" in layer.__dict__  # the original keeps its cache
