"""The CUDA dispatch to torch's cuDNN kernels, checked on CPU: the rule, and the call it makes.

:func:`rnnkit.engine.cudnn.run_layers` calls ``torch._VF``'s RNN functions, which run on CPU too
(torch's own CPU kernels), so the weights' order, the packing of padded batches and the states'
layout are checked here against the reference engine; on a GPU tests/test_cuda.py checks the rest.
"""

from __future__ import annotations

import pytest
import torch

import rnnkit
from rnnkit import engine
from rnnkit.engine import cudnn, fused
from rnnkit.layers.streaming import final_state
from rnnkit.layers.sequence import to_time_major
from tests.helpers import as_tuple, assert_close

CASES = [
    (rnnkit.LSTM, {}), (rnnkit.LSTM, {"proj_size": 3}), (rnnkit.GRU, {}), (rnnkit.RNN, {"nonlinearity": "relu"}),
    (rnnkit.RNN, {"bias": False}),
]  # fmt: skip


@pytest.mark.parametrize("cls, kwargs", CASES)
@pytest.mark.parametrize("lengths", [None, [4, 2, 3]])
def test_run_layers_is_the_reference(cls, kwargs, lengths):
    layer = cls(5, 7, num_layers=2, bidirectional=True, dtype=torch.float64, **kwargs)
    twin = cls(5, 7, num_layers=2, bidirectional=True, dtype=torch.float64, engine="reference", **kwargs)
    twin.load_state_dict(layer.state_dict())
    x = torch.randn(4, 3, 5, dtype=torch.float64, requires_grad=True)
    hx = tuple(torch.randn_like(s) for s in as_tuple(twin(x)[1]))
    hx = hx if len(hx) == 2 else hx[0]
    want_out, want_state = twin(x, hx, lengths=lengths)
    time_major, valid, layout = to_time_major(x, False, lengths)
    out, finals = cudnn.run_layers(layer, time_major, layer._initial_states(hx, time_major, False), layout.lengths if valid is not None else None)
    assert_close(out, want_out, torch.float64, "output")
    for got, want in zip(as_tuple(final_state(finals, False)), as_tuple(want_state)):
        assert_close(got, want, torch.float64, "final state")
    (dx,) = torch.autograd.grad(out.sum(), x)
    (want_dx,) = torch.autograd.grad(want_out.sum(), x)
    assert_close(dx, want_dx, torch.float64, "input gradient")


def test_the_rule_takes_what_cudnn_computes_exactly():
    for cls, kwargs in CASES:
        assert cudnn.declines(cls(3, 5, **kwargs), "cuda") is None
    assert "CUDA tensors" in cudnn.declines(rnnkit.LSTM(3, 5))  # the parameters' device: CPU here
    assert "engine='fused'" in cudnn.declines(rnnkit.LSTM(3, 5, engine="fused"), "cuda")
    assert "engine='reference'" in cudnn.declines(rnnkit.GRU(3, 5, engine="reference"), "cuda")
    assert "layer_norm_lstm" in cudnn.declines(rnnkit.LSTM(3, 5, layer_norm=True), "cuda")
    probed = rnnkit.GRU(3, 5)
    probed.run_direction = lambda *args, **kwargs: fused.run_direction(*args, **kwargs)
    assert "swapped" in cudnn.declines(probed, "cuda")
    regularised = rnnkit.LSTM(3, 5)
    regularised.zoneout = 0.1  # the regularisers' layer option (issue 14a): rnnkit's kernels
    assert "zoneout" in cudnn.declines(regularised, "cuda")


def test_the_rule_keeps_autocast_and_recorded_programs_with_rnnkit(monkeypatch):
    layer = rnnkit.LSTM(3, 5)
    with monkeypatch.context() as patch:  # CUDA autocast cannot be switched on without a GPU: its query answers yes
        patch.setattr(torch, "is_autocast_enabled", lambda device_type: device_type == "cuda")
        assert "autocast" in cudnn.declines(layer, "cuda")
    monkeypatch.setattr(cudnn.transforms, "recorded", lambda: True)
    assert "recorded" in cudnn.declines(layer, "cuda")


def test_describe_says_which_kernels_run_on_cuda(monkeypatch):
    monkeypatch.setattr(engine, "_device", lambda layer: "cuda")
    assert "torch's cuDNN kernels (torch._VF.lstm, as torch.nn.LSTM on CUDA)" in engine.describe(rnnkit.LSTM(3, 5, proj_size=2))
    assert "torch._VF.rnn_relu" in engine.describe(rnnkit.RNN(3, 5, nonlinearity="relu"))
    assert engine.describe(rnnkit.GRU(3, 5, engine="fused")).startswith("fused pure-PyTorch loop")
    text = engine.describe(rnnkit.GRU(3, 5, layer_norm=True))
    triton_installed = engine.triton_ops.available()
    assert ("fused Triton layer_norm_gru kernels (compiled)" in text) == triton_installed
    assert ("the Triton kernels need the triton package" in text) == (not triton_installed)


def test_cpu_layers_never_take_the_cuda_path(monkeypatch):
    def refuse(*args):
        raise AssertionError("cudnn.run_layers called for a CPU layer")

    monkeypatch.setattr(cudnn, "run_layers", refuse)
    out, _ = rnnkit.LSTM(3, 5)(torch.randn(4, 2, 3))
    assert out.shape == (4, 2, 5)
