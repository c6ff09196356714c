"""rnnkit's cells against torch.nn's cells: construction, one step, gradients, initialisation."""

from __future__ import annotations

import math

import pytest
import torch

import rnnkit
from tests.helpers import TORCH_CELL, as_tuple, assert_close, weighted_sum

CELLS = [
    pytest.param(rnnkit.RNNCell, {}, id="rnn-tanh"),
    pytest.param(rnnkit.RNNCell, {"nonlinearity": "relu"}, id="rnn-relu"),
    pytest.param(rnnkit.LSTMCell, {}, id="lstm"),
    pytest.param(rnnkit.GRUCell, {}, id="gru"),
]


def _twin(cell, kwargs, dtype):
    twin = TORCH_CELL[type(cell)](cell.input_size, cell.hidden_size, bias=cell.bias, dtype=dtype, **kwargs)
    twin.load_state_dict(cell.state_dict())
    return twin


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("batched", [True, False], ids=["batched", "unbatched"])
@pytest.mark.parametrize("with_hx", [True, False], ids=["hx", "nohx"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("cls,kwargs", CELLS)
def test_cell_matches_torch(cls, kwargs, dtype, with_hx, batched, bias):
    gen = torch.Generator().manual_seed(3)
    torch.manual_seed(3)
    cell = cls(5, 7, bias=bias, dtype=dtype, **kwargs)
    twin = _twin(cell, kwargs, dtype)
    assert [(n, p.shape) for n, p in cell.named_parameters()] == [(n, p.shape) for n, p in twin.named_parameters()]
    batch = (3,) if batched else ()
    x = torch.randn(*batch, 5, generator=gen, dtype=dtype, requires_grad=True)
    state = [torch.randn(*batch, 7, generator=gen, dtype=dtype, requires_grad=True) for _ in range(cell.spec.state_count)]
    hx = None if not with_hx else (state[0] if len(state) == 1 else tuple(state))
    ours, theirs = as_tuple(cell(x, hx)), as_tuple(twin(x, hx))
    for a, b in zip(ours, theirs, strict=True):
        assert a.shape == b.shape
        assert_close(a, b, dtype, "new state")
    leaves = [x, *(state if with_hx else [])]
    g_ours = torch.autograd.grad(weighted_sum(ours, torch.Generator().manual_seed(1)), leaves + list(cell.parameters()))
    g_theirs = torch.autograd.grad(weighted_sum(theirs, torch.Generator().manual_seed(1)), leaves + list(twin.parameters()))
    for a, b in zip(g_ours, g_theirs, strict=True):
        assert_close(a, b, dtype, "gradient")


@pytest.mark.parametrize("size", ["small", "large", "strided"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("batched", [True, False], ids=["batched", "unbatched"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("cls,kwargs", CELLS)
def test_inference_step_matches_the_reference_step_and_torch(cls, kwargs, dtype, batched, bias, size):
    # Under no_grad a cell takes the compiled one-step kernel when it is built; the reference is its own step().
    # Its small products are computed in place, large ones (over 2^18 multiply-adds) and strided inputs by ATen.
    torch.manual_seed(4)
    inputs, hidden, rows = (300, 200, 16) if size == "large" else (5, 7, 3)
    cell = cls(inputs, hidden, bias=bias, dtype=dtype, **kwargs)
    twin = _twin(cell, kwargs, dtype)
    batch = (rows,) if batched else ()
    x = torch.randn(*batch, inputs, dtype=dtype) * 3  # large enough to reach the gates' saturated tails
    if size == "strided":
        x = torch.randn(inputs, rows, dtype=dtype).t()[0 if not batched else slice(None)] * 3
    state = tuple(torch.randn(*batch, hidden, dtype=dtype) for _ in range(cell.spec.state_count))
    hx = state[0] if len(state) == 1 else state
    with torch.no_grad():
        compiled = cell._compiled_step(x, state)
        ours, theirs = as_tuple(cell(x, hx)), as_tuple(twin(x, hx))
        reference = cell.step(x, state)[1]
    if rnnkit.ops.native_loops() is not None:
        assert compiled is not None  # the fast path did run
    for a, b, c in zip(ours, theirs, reference, strict=True):
        assert a.shape == b.shape == c.shape
        assert_close(a, c, dtype, "new state vs step()")
        assert_close(a, b, dtype, "new state vs torch.nn")


def test_inference_step_is_not_taken_where_gradients_are_needed():
    cell = rnnkit.GRUCell(5, 7)
    x, h = torch.randn(2, 5), torch.randn(2, 7)
    assert cell._compiled_step(x, (h,)) is None  # the parameters require grad
    h_next = cell(x, h)
    assert h_next.grad_fn is not None
    with torch.no_grad():
        assert cell(x, h).grad_fn is None
    projected = rnnkit.LSTMCell(5, 7, proj_size=3)
    with torch.no_grad():
        assert projected._compiled_step(x, (torch.randn(2, 3), torch.randn(2, 7))) is None  # no kernel for projections


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_lstm_cell_projection_matches_one_step_of_torch_lstm(dtype):
    # torch.nn.LSTMCell has no proj_size; one step of torch.nn.LSTM with proj_size is the reference.
    torch.manual_seed(5)
    cell = rnnkit.LSTMCell(5, 7, proj_size=3, dtype=dtype)
    layer = torch.nn.LSTM(5, 7, proj_size=3, dtype=dtype)
    layer.load_state_dict({f"{name}_l0": p for name, p in cell.state_dict().items()})
    x, h, c = torch.randn(2, 5, dtype=dtype), torch.randn(2, 3, dtype=dtype), torch.randn(2, 7, dtype=dtype)
    h1, c1 = cell(x, (h, c))
    _, (h_ref, c_ref) = layer(x.unsqueeze(0), (h.unsqueeze(0), c.unsqueeze(0)))
    assert h1.shape == (2, 3) and c1.shape == (2, 7)
    assert_close(h1, h_ref[0], dtype, "h")
    assert_close(c1, c_ref[0], dtype, "c")


@pytest.mark.parametrize(
    "cls,kwargs",
    CELLS + [pytest.param(rnnkit.LSTMCell, {"proj_size": 2}, id="lstm-proj")],
)
def test_cell_gradcheck(cls, kwargs):
    torch.manual_seed(0)
    cell = cls(3, 4, dtype=torch.float64, **kwargs)
    names = [n for n, _ in cell.named_parameters()]
    sizes = cell.spec.state_sizes(4, kwargs.get("proj_size") or 4)
    x = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    state = [torch.randn(2, s, dtype=torch.float64, requires_grad=True) for s in sizes]
    params = [p.detach().clone().requires_grad_() for p in cell.parameters()]

    def step(x, *tensors):
        hx = tensors[: len(sizes)]
        weights = dict(zip(names, tensors[len(sizes) :]))
        return as_tuple(torch.func.functional_call(cell, weights, (x, hx[0] if len(hx) == 1 else hx)))

    assert torch.autograd.gradcheck(step, (x, *state, *params))


@pytest.mark.parametrize("cls,kwargs", CELLS)
def test_cell_step_contract(cls, kwargs):
    """``step`` is ``(x_t, state) -> (y_t, state)`` with y_t the new h, and forward is its torch.nn face."""
    torch.manual_seed(0)
    cell = cls(4, 6, **kwargs)
    x = torch.randn(3, 4)
    state = cell.initial_state(3)
    assert all(torch.count_nonzero(s) == 0 for s in state)
    y, new_state = cell.step(x, state)
    assert torch.equal(y, new_state[0])
    assert all(torch.equal(a, b) for a, b in zip(new_state, as_tuple(cell(x))))


@pytest.mark.parametrize("cls,kwargs", CELLS)
def test_initialisation_is_torch_uniform(cls, kwargs):
    """Every weight ~ U(-1/sqrt(H), 1/sqrt(H)), as torch.nn: check range, mean and variance."""
    torch.manual_seed(0)
    hidden = 100
    cell = cls(50, hidden, **kwargs)
    bound = 1 / math.sqrt(hidden)
    values = torch.cat([p.detach().flatten() for p in cell.parameters()])
    assert values.abs().max() <= bound
    assert values.abs().max() > 0.99 * bound
    assert abs(values.mean().item()) < 0.01 * bound
    assert values.var().item() == pytest.approx(bound**2 / 3, rel=0.03)
