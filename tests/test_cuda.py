"""On a CUDA device: the cuDNN dispatch and the compiled Triton kernels against rnnkit's reference engine.

Skipped without a GPU (CPU runs check the same kernels through Triton's interpreter,
tests/test_triton_interpreter.py, and the dispatch rule, tests/test_engine_cudnn.py).
TF32 is off here: the comparison is with float32 arithmetic.
"""

from __future__ import annotations

import pytest
import torch

import rnnkit
from rnnkit import engine
from tests.helpers import as_tuple

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
CUDA = torch.device("cuda")
TOLERANCE = {torch.float64: 1e-9, torch.float32: 1e-4}


@pytest.fixture(autouse=True)
def _exact_float32():
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def compare(layer, twin, x, lengths, dtype):
    results = []
    for module in (layer, twin):
        out, state = module(x, lengths=lengths)
        tensors = [out, *as_tuple(state)]
        generator = torch.Generator().manual_seed(5)  # the same random weights of every element for both
        loss = sum((t * torch.randn(t.shape, generator=generator, dtype=dtype).to(t.device)).sum() for t in tensors)
        results.append([*tensors, *torch.autograd.grad(loss, [x, *module.parameters()])])
    tol = TOLERANCE[dtype]
    for index, (got, want) in enumerate(zip(*results)):
        torch.testing.assert_close(got, want, atol=tol, rtol=tol, msg=lambda m, i=index: f"item {i}: {m}")


@pytest.mark.parametrize("cls, kwargs", [(rnnkit.LSTM, {}), (rnnkit.LSTM, {"proj_size": 3}), (rnnkit.GRU, {}), (rnnkit.RNN, {"nonlinearity": "relu"})])
@pytest.mark.parametrize("lengths", [None, [5, 2, 4]])
def test_cudnn_dispatch_matches_the_reference(cls, kwargs, lengths):
    layer = cls(4, 6, num_layers=2, bidirectional=True, device=CUDA, **kwargs)
    twin = cls(4, 6, num_layers=2, bidirectional=True, device=CUDA, engine="reference", **kwargs)
    twin.load_state_dict(layer.state_dict())
    assert "cuDNN" in engine.describe(layer)
    compare(layer, twin, torch.randn(5, 3, 4, device=CUDA, requires_grad=True), lengths, torch.float32)


def test_cudnn_layers_keep_their_weights_in_one_buffer():
    built_there = rnnkit.LSTM(4, 6, num_layers=2, proj_size=3, device=CUDA)
    moved = rnnkit.GRU(4, 6, bidirectional=True).to(CUDA)
    for layer in (built_there, moved):
        assert len({p.untyped_storage().data_ptr() for p in layer.parameters()}) == 1
        layer(torch.randn(3, 2, 4, device=CUDA))  # no "not part of single contiguous chunk" warning (warnings are errors)


@pytest.mark.parametrize("cls", [rnnkit.LSTM, rnnkit.GRU])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("lengths", [None, [5, 2, 4]])
def test_triton_layer_norm_layers_match_the_reference(cls, dtype, lengths):
    pytest.importorskip("triton")
    layer = cls(4, 40, bidirectional=True, layer_norm=True, device=CUDA, dtype=dtype)  # 40: the gate blocks are masked
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.2 * torch.randn_like(p))
    twin = cls(4, 40, bidirectional=True, layer_norm=True, device=CUDA, dtype=dtype, engine="reference")
    twin.load_state_dict(layer.state_dict())
    assert "Triton" in engine.describe(layer) and "compiled" in engine.describe(layer)
    compare(layer, twin, torch.randn(5, 3, 4, device=CUDA, dtype=dtype, requires_grad=True), lengths, dtype)


@pytest.mark.parametrize("reverse", [False, True])
def test_triton_linear_scan_matches_the_loop_over_many_chunks(reverse):
    pytest.importorskip("triton")
    from rnnkit.ops.triton.scan import linear_scan

    steps, batch, hidden = 1000, 2, 3  # few features: the sequence is cut into chunks
    a = torch.rand(steps, batch, hidden, device=CUDA, dtype=torch.float64, requires_grad=True)
    b = torch.randn(steps, batch, hidden, device=CUDA, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(batch, hidden, device=CUDA, dtype=torch.float64, requires_grad=True)
    h = linear_scan(a, b, h0, reverse)
    state, expected = h0, [None] * steps
    for t in range(steps - 1, -1, -1) if reverse else range(steps):
        state = a[t] * state + b[t]
        expected[t] = state
    expected = torch.stack(expected)
    torch.testing.assert_close(h, expected, atol=1e-10, rtol=1e-10)
    g = torch.randn_like(h)
    for got, want in zip(torch.autograd.grad(h, (a, b, h0), g), torch.autograd.grad(expected, (a, b, h0), g)):
        torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-10)
