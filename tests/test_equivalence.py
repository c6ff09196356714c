"""The acceptance test: rnnkit's layers and cells against torch.nn's.

Every combination of num_layers 1-3, bidirectional, batch_first, bias,
proj_size (LSTM) or nonlinearity (RNN), input layout (tensor, packed,
``lengths=``, unbatched) and ``hx`` given or not, in float32 and float64, on
every engine. Sizes, lengths and values are drawn from a seed per case.
Outputs, final states and the gradients of the input, the initial states and
every parameter must match within 1e-5 (float32) and 1e-10 (float64).
"""

from __future__ import annotations

import itertools
import random
import zlib

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import rnnkit
from rnnkit.engine import ENGINES
from tests.helpers import as_tuple, assert_close, torch_twin, weighted_sum

LAYOUTS = ("tensor", "packed", "lengths", "unbatched")


def _cases():
    variants = {rnnkit.RNN: ("tanh", "relu"), rnnkit.LSTM: ("no-proj", "proj"), rnnkit.GRU: ("plain",)}
    for family, options in variants.items():
        for num_layers, bidirectional, batch_first, bias, option, layout, with_hx in itertools.product(
            (1, 2, 3), (False, True), (False, True), (True, False), options, LAYOUTS, (False, True)
        ):
            name = f"{family.__name__}-L{num_layers}-{'bi' if bidirectional else 'uni'}-{'bf' if batch_first else 'tf'}-{'bias' if bias else 'nobias'}-{option}-{layout}-{'hx' if with_hx else 'nohx'}"
            yield pytest.param(family, num_layers, bidirectional, batch_first, bias, option, layout, with_hx, id=name)


CASES = list(_cases())


def _build(family, num_layers, bidirectional, batch_first, bias, option, rng, dtype, engine):
    input_size, hidden_size = rng.randint(1, 6), rng.randint(2, 7)
    kwargs = dict(num_layers=num_layers, bias=bias, batch_first=batch_first, bidirectional=bidirectional, dtype=dtype, engine=engine)
    if family is rnnkit.RNN:
        kwargs["nonlinearity"] = option
    if option == "proj":
        kwargs["proj_size"] = rng.randint(1, hidden_size - 1)
    return family(input_size, hidden_size, **kwargs)


def _initial_state(layer, batch, unbatched, gen, dtype):
    stacked = layer.num_layers * (2 if layer.bidirectional else 1)
    sizes = [layer.proj_size or layer.hidden_size] + ([layer.hidden_size] if isinstance(layer, rnnkit.LSTM) else [])
    shape = (stacked,) if unbatched else (stacked, batch)
    parts = [torch.randn(*shape, s, generator=gen, dtype=dtype).requires_grad_() for s in sizes]
    return parts


@pytest.mark.parametrize("engine", sorted(ENGINES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("family,num_layers,bidirectional,batch_first,bias,option,layout,with_hx", CASES)
def test_layer_matches_torch(family, num_layers, bidirectional, batch_first, bias, option, layout, with_hx, dtype, engine):
    seed = zlib.crc32(repr((family.__name__, num_layers, bidirectional, batch_first, bias, option, layout, with_hx)).encode())
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    ours = _build(family, num_layers, bidirectional, batch_first, bias, option, rng, dtype, engine)
    theirs = torch_twin(ours)

    batch, seq_len = rng.randint(1, 4), rng.randint(1, 6)
    unbatched = layout == "unbatched"
    shape = (seq_len, ours.input_size) if unbatched else ((batch, seq_len) if batch_first else (seq_len, batch)) + (ours.input_size,)
    x = torch.randn(shape, generator=gen, dtype=dtype, requires_grad=True)
    lengths = [rng.randint(1, seq_len) for _ in range(batch)]
    state = _initial_state(ours, batch, unbatched, gen, dtype) if with_hx else None
    hx = None if state is None else (state[0] if len(state) == 1 else tuple(state))

    def run(layer, use_lengths_kwarg):
        if layout in ("packed", "lengths"):
            packed = pack_padded_sequence(x, lengths, batch_first=batch_first, enforce_sorted=False)
            if use_lengths_kwarg and layout == "lengths":
                out, final = layer(x, hx, lengths=lengths)
            else:
                out, final = layer(packed, hx)
                if layout == "lengths":
                    out, _ = pad_packed_sequence(out, batch_first=batch_first, total_length=seq_len)
                else:
                    out = out.data
        else:
            out, final = layer(x, hx)
        return out, as_tuple(final)

    out_ours, final_ours = run(ours, use_lengths_kwarg=True)
    out_theirs, final_theirs = run(theirs, use_lengths_kwarg=False)
    assert out_ours.shape == out_theirs.shape
    assert_close(out_ours, out_theirs, dtype, "output")
    for i, (a, b) in enumerate(zip(final_ours, final_theirs, strict=True)):
        assert_close(a, b, dtype, f"final state {i}")

    leaves = [x, *(state or [])]
    grads = {}
    for name, layer, out, final in (("ours", ours, out_ours, final_ours), ("theirs", theirs, out_theirs, final_theirs)):
        loss = weighted_sum([out, *final], torch.Generator().manual_seed(seed + 1))
        params = [p for _, p in sorted(layer.named_parameters())]
        grads[name] = torch.autograd.grad(loss, leaves + params)
    names = ["input"] + [f"hx[{i}]" for i in range(len(state or []))] + [n for n, _ in sorted(ours.named_parameters())]
    for name, a, b in zip(names, grads["ours"], grads["theirs"], strict=True):
        assert_close(a, b, dtype, f"gradient of {name}")
