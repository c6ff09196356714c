"""Shared test utilities: tolerances, torch.nn twins, and state/gradient collection."""

from __future__ import annotations

import pathlib

import torch
from torch import nn

import rnnkit

TOLERANCE = {torch.float32: 1e-5, torch.float64: 1e-10}

TORCH_LAYER = {rnnkit.RNN: nn.RNN, rnnkit.LSTM: nn.LSTM, rnnkit.GRU: nn.GRU}
TORCH_CELL = {rnnkit.RNNCell: nn.RNNCell, rnnkit.LSTMCell: nn.LSTMCell, rnnkit.GRUCell: nn.GRUCell}


def cpu_has(flag: str) -> bool:
    """Whether /proc/cpuinfo lists ``flag`` (e.g. ``amx_bf16``): which kernel paths this machine can run."""
    cpuinfo = pathlib.Path("/proc/cpuinfo")
    return cpuinfo.exists() and flag in cpuinfo.read_text().split()


def assert_close(actual, expected, dtype, what: str) -> None:
    tol = TOLERANCE[dtype]
    torch.testing.assert_close(actual, expected, atol=tol, rtol=tol, msg=lambda m: f"{what}: {m}")


def as_tuple(state) -> tuple:
    return state if isinstance(state, tuple) else (state,)


def torch_twin(layer: nn.Module) -> nn.Module:
    """A torch.nn layer with the same configuration and weights as an rnnkit layer."""
    kwargs = dict(num_layers=layer.num_layers, bias=layer.bias, batch_first=layer.batch_first,
                  dropout=layer.dropout, bidirectional=layer.bidirectional)  # fmt: skip
    if isinstance(layer, rnnkit.RNN):
        kwargs["nonlinearity"] = layer.nonlinearity
    if isinstance(layer, rnnkit.LSTM):
        kwargs["proj_size"] = layer.proj_size
    p = next(layer.parameters())
    twin = TORCH_LAYER[type(layer)](layer.input_size, layer.hidden_size, **kwargs, dtype=p.dtype)
    twin.load_state_dict(layer.state_dict())
    return twin


def weighted_sum(tensors, generator: torch.Generator) -> torch.Tensor:
    """A scalar loss with a random weight per element, so that every gradient entry is checked."""
    total = 0
    for t in tensors:
        w = torch.randn(t.shape, generator=generator, dtype=t.dtype)
        total = total + (t * w).sum()
    return total


def layer_gradcheck(layer: nn.Module, lengths: list[int]) -> bool:
    """torch.autograd.gradcheck of a float64 layer over a (L, N, H_in) input and every parameter."""
    names = [n for n, _ in layer.named_parameters()]
    x = torch.randn(max(lengths), len(lengths), layer.input_size, dtype=torch.float64, requires_grad=True)
    params = [p.detach().clone().requires_grad_() for p in layer.parameters()]

    def run(x, *tensors):
        out, final = torch.func.functional_call(layer, dict(zip(names, tensors)), (x,), {"lengths": lengths})
        return (out, *as_tuple(final))

    return torch.autograd.gradcheck(run, (x, *params))
