"""The loops' bf16 output under autocast: ``output_dtype=torch.bfloat16`` asks forward_loop and forward_inference
to round y as they write it (no float32 -> bf16 pass over the whole output afterwards), and the autocast
backward reads its rounded h_{t-1} from that output instead of rounding a copy of the states.

The contract is exact: the bf16 output is the float32 one rounded to nearest even, bit for bit, and nothing
else the ops return changes. The weight gradient from the output differs from the copy's only in where the
float32 partial sums are rounded to bf16 (two products instead of one).
"""

from __future__ import annotations

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import rnnkit
from rnnkit import ops
from rnnkit.engine import autocast, fused_loops, transforms
from rnnkit.ops import fakes
from rnnkit.ops.kinds import GRU, LSTM, RNN_TANH

native = ops.native_loops()
needs_native = pytest.mark.skipif(native is None, reason=f"compiled kernels unavailable: {ops.status()}")
GATES = {LSTM: 4, GRU: 3, RNN_TANH: 1}
LOOPS = [pytest.param(native, marks=needs_native, id="native"), pytest.param(fused_loops, id="python")]


def problem(kind, batch, hidden, steps, proj=False, padded=False, bf16_weights=True, inputs=12, seed=0):
    generator = torch.Generator().manual_seed(seed)
    randn = lambda *shape: torch.randn(*shape, generator=generator)  # noqa: E731
    out = 16 if proj else hidden
    weight = (lambda t: t.bfloat16()) if bf16_weights else (lambda t: t)
    return dict(
        kind=kind,
        x=randn(steps, batch, inputs),
        xp=randn(steps, batch, GATES[kind] * hidden),
        w_ih=weight(randn(GATES[kind] * hidden, inputs) / inputs**0.5),
        bias=randn(GATES[kind] * hidden),
        h0=randn(batch, out) * 0.5,
        c0=randn(batch, hidden) if kind == LSTM else torch.empty(0),
        w_hh=weight(randn(GATES[kind] * hidden, out) / out**0.5),
        b_hn=randn(hidden) if kind == GRU else None,
        w_hr=randn(out, hidden) / hidden**0.5 if proj else None,
        valid=torch.rand(steps, batch, generator=generator) > 0.3 if padded else None,
    )


def inference(p, reverse, output_dtype=None):
    return native.forward_inference(p["kind"], p["x"], p["w_ih"], p["bias"], p["h0"], p["c0"], p["w_hh"], p["b_hn"], p["w_hr"], p["valid"], reverse,
                                    output_dtype)  # fmt: skip


def forward(loops, p, reverse, zoneout=None, output_mask=None, output_dtype=None):
    xp = p["xp"].clone()
    result = loops.forward_loop(p["kind"], xp, p["h0"], p["c0"], p["w_hh"], p["b_hn"], p["w_hr"], p["valid"], reverse, zoneout, output_mask,
                                output_dtype)  # fmt: skip
    return xp, result


# (kind, batch, hidden, steps): one chunk of steps; several, the last one short (the inference loop rounds each
# chunk of its float32 output into the bf16 one: 16 and 36 steps a chunk at these sizes); a batch of one
INFERENCE = [(RNN_TANH, 5, 32, 3), (RNN_TANH, 64, 256, 40), (LSTM, 37, 48, 40), (GRU, 3, 64, 7), (LSTM, 1, 32, 5)]


@needs_native
@pytest.mark.parametrize("kind, batch, hidden, steps", INFERENCE)
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("bf16_weights", [True, False], ids=["bf16-products", "float32-products"])
@pytest.mark.parametrize("padded", [False, True])
def test_inference_output_in_bf16_is_the_float32_output_rounded(kind, batch, hidden, steps, reverse, bf16_weights, padded):
    p = problem(kind, batch, hidden, steps, padded=padded, bf16_weights=bf16_weights)
    y, h_n, c_n = inference(p, reverse)
    y_low, h_n_low, c_n_low = inference(p, reverse, torch.bfloat16)
    assert y_low.dtype == torch.bfloat16 and y.dtype == torch.float32
    assert torch.equal(y_low, y.bfloat16())  # round to nearest even, bit for bit
    assert torch.equal(h_n_low, h_n) and torch.equal(c_n_low, c_n)  # the states stay float32, unchanged
    assert torch.equal(inference(p, reverse, torch.float32)[0], y)  # asking for x's own dtype changes nothing


@needs_native
@pytest.mark.parametrize("reverse", [False, True])
def test_inference_output_in_bf16_with_a_projection(reverse):
    p = problem(LSTM, 6, 32, 9, proj=True, padded=True)
    y, h_n, c_n = inference(p, reverse)
    y_low, h_n_low, c_n_low = inference(p, reverse, torch.bfloat16)
    assert torch.equal(y_low, y.bfloat16()) and torch.equal(h_n_low, h_n) and torch.equal(c_n_low, c_n)


FORWARD = [(kind, proj, padded) for kind in GATES for proj in (False, True) for padded in (False, True) if not proj or kind == LSTM]


@pytest.mark.parametrize("loops", LOOPS)
@pytest.mark.parametrize("kind, proj, padded", FORWARD)
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("masks", [False, True], ids=["plain", "zoneout-and-output-mask"])
def test_forward_loop_output_in_bf16_is_the_float32_output_rounded(loops, kind, proj, padded, reverse, masks):
    p = problem(kind, 5, 32, 6, proj=proj, padded=padded)
    out = p["h0"].shape[1]
    zoneout = torch.rand(6, 5, out, generator=torch.Generator().manual_seed(1)) < 0.3 if masks else None
    output_mask = (torch.rand(5, out, generator=torch.Generator().manual_seed(2)) > 0.2).float() / 0.8 if masks else None
    xp, (y, hs, cs, hn, hraw) = forward(loops, p, reverse, zoneout, output_mask)
    xp_low, (y_low, *rest) = forward(loops, p, reverse, zoneout, output_mask, torch.bfloat16)
    aliased = p["valid"] is None and p["w_hr"] is None and output_mask is None
    expected = transforms.output(y, hs, reverse, aliased)
    assert y_low.dtype == torch.bfloat16 and y_low.shape == expected.shape
    assert torch.equal(y_low, expected.bfloat16())
    for got, want in zip((xp_low, *rest), (xp, hs, cs, hn, hraw)):  # everything else as without it, bit for bit
        assert torch.equal(got, want)


@pytest.mark.parametrize("loops", LOOPS)
def test_forward_loop_refuses_an_output_dtype_it_cannot_write(loops):
    p = problem(RNN_TANH, 2, 16, 3)
    with pytest.raises(RuntimeError, match="output_dtype must be"):
        forward(loops, p, False, output_dtype=torch.float16)
    p64 = dict(p, xp=p["xp"].double(), h0=p["h0"].double(), w_hh=p["w_hh"].double())
    with pytest.raises(RuntimeError, match="output_dtype must be"):
        forward(loops, p64, False, output_dtype=torch.bfloat16)  # bf16 only from float32


@needs_native
def test_inference_refuses_an_output_dtype_it_cannot_write():
    p = problem(GRU, 2, 16, 3)
    with pytest.raises(RuntimeError, match="output_dtype must be"):
        inference(p, False, torch.float16)


def test_fake_kernels_give_the_output_dtype_and_refuse_the_same():
    p = problem(LSTM, 2, 16, 3)
    with FakeTensorMode() as mode:
        fake = {k: mode.from_tensor(v) if isinstance(v, torch.Tensor) else v for k, v in p.items()}
        y, *_ = fakes.forward_loop(LSTM, fake["xp"], fake["h0"], fake["c0"], fake["w_hh"], None, None, None, False, None, None, torch.bfloat16)
        assert y.dtype == torch.bfloat16 and tuple(y.shape) == (3, 2, 16)
        y, *_ = fakes.forward_inference(LSTM, fake["x"], fake["w_ih"], fake["bias"], fake["h0"], fake["c0"], fake["w_hh"], None, None, None, False,
                                        torch.bfloat16)  # fmt: skip
        assert y.dtype == torch.bfloat16
        with pytest.raises(RuntimeError, match="output_dtype must be"):
            fakes.forward_loop(LSTM, fake["xp"], fake["h0"], fake["c0"], fake["w_hh"], None, None, None, False, None, None, torch.float16)


@needs_native
@pytest.mark.parametrize("kind", list(GATES))
def test_opcheck_with_a_bf16_output(kind):
    p = problem(kind, 5, 32, 3)
    forward_args = (kind, p["xp"].clone(), p["h0"], p["c0"], p["w_hh"], p["b_hn"], None, None, False, None, None, torch.bfloat16)
    torch.library.opcheck(torch.ops.rnnkit_fused.forward_loop.default, forward_args)
    inference_args = (kind, p["x"], p["w_ih"], p["bias"], p["h0"], p["c0"], p["w_hh"], p["b_hn"], None, None, False, torch.bfloat16)
    torch.library.opcheck(torch.ops.rnnkit_fused.forward_inference.default, inference_args)


def train(layer, x, edit_output=False):
    layer.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = layer(x)
    if edit_output:
        out.add_(1.0)  # torch.nn lets a caller edit the output in place before backward
    else:
        out = out + 1.0
    generator = torch.Generator().manual_seed(5)
    (out.float() * torch.randn(out.shape, generator=generator)).sum().backward()
    return [p.grad.clone() for p in layer.parameters()]


def relative(actual, expected):
    return ((actual - expected).norm() / expected.norm()).item()


@needs_native
@pytest.mark.parametrize("family", [rnnkit.RNN, rnnkit.LSTM])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_weight_gradient_from_the_bf16_output_matches_the_rounded_copy_of_the_states(family, bidirectional, monkeypatch):
    used = []
    times = autocast.RoundedStates.times
    monkeypatch.setattr(autocast.RoundedStates, "times", lambda self, part: used.append(self.reverse) or times(self, part))
    torch.manual_seed(0)
    layer = family(8, 32, bidirectional=bidirectional)
    x = torch.randn(7, 4, 8)
    from_output = train(layer, x)
    assert sorted(used) == ([False, True] if bidirectional else [False])  # every direction read the rounded output
    monkeypatch.setattr(transforms, "output_edited", lambda ctx: True)  # the other path: a rounded copy of the states
    used.clear()
    from_copy = train(layer, x)
    assert used == []
    for got, want in zip(from_output, from_copy):
        assert relative(got, want) < 4e-3  # bf16 rounding of partial sums, not of the operands (those are equal)


@needs_native
def test_an_output_edited_in_place_is_not_read_as_the_states(monkeypatch):
    used = []
    times = autocast.RoundedStates.times
    monkeypatch.setattr(autocast.RoundedStates, "times", lambda self, part: used.append(1) or times(self, part))
    torch.manual_seed(0)
    layer = rnnkit.RNN(8, 32)
    x = torch.randn(7, 4, 8)
    expected = train(layer, x)
    used.clear()
    edited = train(layer, x, edit_output=True)  # out + 1 in place: h + 1 would be the wrong h_{t-1}
    assert used == []
    for got, want in zip(edited, expected):
        assert relative(got, want) < 4e-3


@needs_native
@pytest.mark.parametrize("family", [rnnkit.GRU, rnnkit.LSTM])
def test_no_rounded_output_where_it_is_not_the_states(family, monkeypatch):
    # the GRU returns float32 under autocast; padding makes the output differ from the states
    used = []
    monkeypatch.setattr(autocast.RoundedStates, "times", lambda self, part: used.append(1))
    layer = family(8, 16)
    x = torch.randn(5, 3, 8)
    lengths = torch.tensor([5, 3, 2])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = layer(x, lengths=lengths) if family is rnnkit.LSTM else layer(x)
    out.float().sum().backward()
    assert used == []
