"""The loop kernels' per-step products with bf16 operands (rnnkit/ops/csrc/bf16_tiles.h), what bf16 autocast runs.

Definition: forward ``bf16(h_{t-1}) bf16(W_hh)^T``, backward ``bf16(dG_t) bf16(W_hh)``, float32 sums. Over many
steps two correct implementations drift apart by whole bf16 steps (a float32 sum that differs in its last bit can
round to the neighbouring bf16 value at the next step), so the kernels are checked one step at a time, where the
only freedom left is the order of float32 sums (~1e-7): against the definition written with torch ops, and, on a
CPU with AMX-BF16 or AVX512-BF16, its hardware dot products against the portable path (``RNNKIT_NO_AMX=1``).
"""

from __future__ import annotations

import pytest
import torch

import rnnkit
from rnnkit import ops
from rnnkit.engine import autocast, fused, fused_loops
from rnnkit.ops.kinds import GRU, LSTM, RNN_TANH
from tests.helpers import cpu_has

native = ops.native_loops()
needs_native = pytest.mark.skipif(native is None, reason=f"compiled kernels unavailable: {ops.status()}")
GATES = {LSTM: 4, GRU: 3, RNN_TANH: 1}
# (N, H): one tile row and column block; odd tile counts both ways; H not a multiple of 16 (no AMX: portable);
# one row (AVX512-BF16 then runs eight or four column blocks at a time)
SHAPES = [(5, 32), (37, 48), (16, 64), (3, 20), (1, 128)]
SUMS = 3e-6  # relative: float32 sums in another order


def relative(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual - expected).abs().max() / expected.abs().max()).item()


def problem(kind, batch, hidden, steps=1, proj=False, padded=False, seed=0):
    generator = torch.Generator().manual_seed(seed)
    out = 16 if proj else hidden
    randn = lambda *shape: torch.randn(*shape, generator=generator)  # noqa: E731
    return dict(
        kind=kind,
        xp=randn(steps, batch, GATES[kind] * hidden),
        h0=randn(batch, out) * 0.5,
        c0=randn(batch, hidden) if kind == LSTM else torch.empty(0),
        w_hh=(randn(GATES[kind] * hidden, out) / out**0.5).bfloat16(),
        b_hn=randn(hidden) if kind == GRU else None,
        w_hr=randn(out, hidden) / hidden**0.5 if proj else None,
        valid=torch.rand(steps, batch, generator=generator) > 0.3 if padded else None,
    )


def forward(loops, p, reverse=False, w_hh=None):
    xp = p["xp"].clone()
    w = p["w_hh"] if w_hh is None else w_hh
    result = loops.forward_loop(p["kind"], xp, p["h0"], p["c0"], w, p["b_hn"], p["w_hr"], p["valid"], reverse)
    return xp, result


# (a padded batch of one may have no valid row at the step, and nothing to check)
CASES = [(kind, shape, proj, padded) for kind in GATES for shape in SHAPES for proj in (False, True) for padded in (False, True)
         if (not proj or kind == LSTM) and not (padded and shape[0] == 1)]


@needs_native
@pytest.mark.parametrize("kind, shape, proj, padded", CASES)
@pytest.mark.parametrize("reverse", [False, True])
def test_one_step_forward_is_the_product_of_rounded_operands(kind, shape, proj, padded, reverse):
    p = problem(kind, *shape, proj=proj, padded=padded)
    _, (_, hs, cs, _, _) = forward(native, p, reverse)
    _, (_, want_hs, want_cs, _, _) = forward(fused_loops, p, reverse)  # the definition, in torch ops
    after = 0 if reverse else 1
    assert relative(hs[after], want_hs[after]) < SUMS
    if kind == LSTM:
        assert relative(cs[after], want_cs[after]) < SUMS
    _, (_, unrounded, _, _, _) = forward(native, p, reverse, w_hh=p["w_hh"].float())  # float32 h: visibly different
    assert relative(unrounded[after], hs[after]) > 1e-4


def one_step_backward(loops, p, seed=1, w_hh=None):
    """A step's backward after the forward of ``p`` (bf16 products); ``w_hh`` replaces the backward's W_hh."""
    xp, (_, hs, cs, hn, hraw) = forward(native, p)
    generator = torch.Generator().manual_seed(seed)
    batch, out = p["h0"].shape
    dy = torch.randn(1, batch, out, generator=generator)
    dh_n = torch.randn(batch, out, generator=generator)
    dc_n = torch.randn(p["c0"].shape, generator=generator) if p["kind"] == LSTM else torch.empty(0)
    gates = xp if p["kind"] in (LSTM, GRU) else xp.new_empty(0)
    grads = loops.backward_loop(p["kind"], gates, hs, cs, hn, hraw, p["w_hh"] if w_hh is None else w_hh, None, None, False, dy, dh_n, dc_n)
    return grads, gates, dh_n + dy[0]


@needs_native
@pytest.mark.parametrize("kind", list(GATES))
@pytest.mark.parametrize("shape", SHAPES)
def test_one_step_backward_is_the_product_of_rounded_gate_gradients(kind, shape):
    p = problem(kind, *shape)
    (dgx, dgh_n, dh0, _, _), gates, dh = one_step_backward(native, p)
    (dgx32, dgh_n32, dh0_32, _, _), _, _ = one_step_backward(native, p, w_hh=p["w_hh"].float())  # float32 products
    assert dgx.dtype == torch.bfloat16 and torch.equal(dgx, dgx32.bfloat16())  # the rounded gate gradients, returned
    weights = p["w_hh"].float()
    hidden = shape[1]
    operand = torch.cat((dgx[0, :, : 2 * hidden], dgh_n[0]), dim=1) if kind == GRU else dgx[0]  # GRU: [dG_r, dG_z, δn⊙r]
    if kind == GRU:
        assert torch.equal(dgh_n, dgh_n32.bfloat16())
    bypass = dh * gates[0, :, hidden : 2 * hidden] if kind == GRU else 0  # the part that skips W_hh: dh ⊙ z
    assert relative(dh0, operand.float() @ weights + bypass) < SUMS
    assert relative(dh0, dh0_32) > 1e-4  # float32 operands: visibly different


@needs_native
@pytest.mark.skipif(not (cpu_has("amx_bf16") or cpu_has("avx512_bf16")), reason="this CPU has no bf16 dot products: only the portable path runs")
@pytest.mark.parametrize("kind", list(GATES))
@pytest.mark.parametrize("shape", [(37, 48), (1, 128)])
def test_hardware_dot_products_agree_with_the_portable_path_and_really_ran(kind, shape, monkeypatch):
    projected, plain = problem(kind, *shape, proj=kind == LSTM), problem(kind, *shape)
    results = {}
    for switch in ("", "1"):
        monkeypatch.setenv("RNNKIT_NO_AMX", switch)
        _, forward_result = forward(native, projected)
        backward_result = one_step_backward(native, plain)[0]
        results[switch] = (forward_result[1][1], backward_result[2])
    for hardware, portable in zip(results[""], results["1"]):
        assert relative(hardware, portable) < SUMS
    assert not all(torch.equal(a, b) for a, b in zip(results[""], results["1"]))  # other sums: the dot products did run


@needs_native
def test_a_bf16_w_hh_needs_float32_everything_else():
    p = problem(LSTM, 4, 16)
    with pytest.raises(RuntimeError, match="bf16.*float32"):
        native.forward_loop(LSTM, p["xp"].double(), p["h0"].double(), p["c0"].double(), p["w_hh"], None, None, None, False)


@pytest.mark.parametrize("family", [rnnkit.LSTM, rnnkit.GRU, rnnkit.RNN])
def test_bf16_autocast_hands_the_loops_w_hh_in_bf16_both_ways(family, monkeypatch):
    loops = fused.loops_for(torch.empty(0))
    seen = []

    class Spy:
        def forward_loop(self, kind, xp, h0, c0, w_hh, *rest):
            seen.append(("forward", w_hh.dtype))
            return loops.forward_loop(kind, xp, h0, c0, w_hh, *rest)

        def backward_loop(self, kind, gates, hs, cs, hn, hraw, w_hh, *rest):
            seen.append(("backward", w_hh.dtype))
            return loops.backward_loop(kind, gates, hs, cs, hn, hraw, w_hh, *rest)

    monkeypatch.setattr(fused, "loops_for", lambda x: Spy())
    monkeypatch.setattr(autocast, "_onednn_lstm_runs_in", lambda low: False)
    layer = family(4, 8)
    x = torch.randn(5, 2, 4, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = layer(x)
    out.float().sum().backward()
    assert seen == [("forward", torch.bfloat16), ("backward", torch.bfloat16)]
    seen.clear()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.float16):  # fp16 keeps a float32 recurrence
        layer(x)
    assert seen == [("forward", torch.float32)]


@needs_native
@pytest.mark.parametrize("kind", list(GATES))
def test_opcheck_with_a_bf16_w_hh(kind):
    p = problem(kind, 5, 32, steps=3)
    forward_args = (kind, p["xp"].clone(), p["h0"], p["c0"], p["w_hh"], p["b_hn"], None, None, False)
    torch.library.opcheck(torch.ops.rnnkit_fused.forward_loop.default, forward_args)
    xp, (_, hs, cs, hn, hraw) = forward(native, p)
    gates = xp if kind in (LSTM, GRU) else xp.new_empty(0)
    dc_n = torch.randn(p["c0"].shape) if kind == LSTM else torch.empty(0)
    backward_args = (kind, gates, hs, cs, hn, hraw, p["w_hh"], None, None, False, torch.randn(3, 5, 32), torch.randn(5, 32), dc_n)
    torch.library.opcheck(torch.ops.rnnkit_fused.backward_loop.default, backward_args)


@pytest.mark.parametrize("loops", [pytest.param(native, marks=needs_native, id="native"), pytest.param(fused_loops, id="python")])
@pytest.mark.parametrize("kind", list(GATES))
@pytest.mark.parametrize("w_dtype", [torch.bfloat16, torch.float32])
def test_backward_reads_a_bf16_dy_in_place_with_the_float32_results(loops, kind, w_dtype):
    # under bf16 autocast the LSTM's and the RNN's output, so its gradient, is bf16: the loop widens it row by row
    p = problem(kind, 5, 32, steps=4, padded=True)
    w_hh = p["w_hh"].to(w_dtype)
    xp, (_, hs, cs, hn, hraw) = forward(loops, p, w_hh=w_hh)
    gates = xp if kind in (LSTM, GRU) else xp.new_empty(0)
    dc_n = torch.randn(p["c0"].shape) if kind == LSTM else torch.empty(0)
    dy = torch.randn(4, 5, 64)[:, :, ::2].bfloat16()  # strided, as a gradient may come
    args = (kind, gates, hs, cs, hn, hraw, w_hh, None, p["valid"], False)
    dh_n = torch.randn(5, 32)
    got = loops.backward_loop(*args, dy, dh_n, dc_n)
    want = loops.backward_loop(*args, dy.float(), dh_n, dc_n)
    for a, b in zip(got, want):
        assert a.dtype == b.dtype and torch.equal(a, b)  # widening bf16 is exact: the same numbers, bit for bit
    assert got[2].dtype == torch.float32
    with pytest.raises(RuntimeError, match="dy must be of the states' dtype"):
        loops.backward_loop(*args, dy.half(), dh_n, dc_n)


@needs_native
def test_opcheck_of_backward_with_a_bf16_dy():
    p = problem(LSTM, 5, 32, steps=3)
    xp, (_, hs, cs, hn, hraw) = forward(native, p)
    args = (LSTM, xp, hs, cs, hn, hraw, p["w_hh"], None, None, False, torch.randn(3, 5, 32).bfloat16(), torch.randn(5, 32), torch.randn(5, 32))
    torch.library.opcheck(torch.ops.rnnkit_fused.backward_loop.default, args)


def inference_problem(kind, batch, hidden, steps, inputs=12, seed=3):
    generator = torch.Generator().manual_seed(seed)
    randn = lambda *shape: torch.randn(*shape, generator=generator)  # noqa: E731
    p = problem(kind, batch, hidden, steps=steps, seed=seed)
    p.update(x=randn(steps, batch, inputs), w_ih=(randn(GATES[kind] * hidden, inputs) / inputs**0.5).bfloat16(), bias=randn(GATES[kind] * hidden))
    return p


def inference(p, reverse=False):
    return native.forward_inference(p["kind"], p["x"], p["w_ih"], p["bias"], p["h0"], p["c0"], p["w_hh"], p["b_hn"], None, None, reverse)


@needs_native
@pytest.mark.parametrize("kind", list(GATES))
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("no_amx", ["", "1"])
def test_inference_with_bf16_weights_rounds_the_projections_operands_too(kind, shape, reverse, no_amx, monkeypatch):
    monkeypatch.setenv("RNNKIT_NO_AMX", no_amx)
    p = inference_problem(kind, *shape, steps=1)
    y, h_n, _ = inference(p, reverse)
    rounded = lambda t: t.bfloat16().float()  # noqa: E731
    xp = rounded(p["x"]) @ rounded(p["w_ih"]).t() + p["bias"]  # float32 sums of exact products, then the bias
    _, (_, want_hs, _, _, _) = forward(fused_loops, dict(p, xp=xp), reverse)
    assert relative(y[0], want_hs[0 if reverse else 1]) < SUMS
    assert torch.equal(y[0], h_n)


@needs_native
@pytest.mark.parametrize("kind", list(GATES))
def test_inference_over_many_steps_stays_within_bf16_of_the_training_loop(kind):
    # 40 steps, 37 rows: chunks of steps whose rows are not whole tiles; the two paths round differently (the training
    # path's projections come from a bf16 GEMM, rounded), so they agree to bf16's precision, not to float32's
    p = inference_problem(kind, 37, 48, steps=40)
    y, _, _ = inference(p)
    xp = (p["x"].bfloat16().reshape(-1, 12) @ p["w_ih"].t()).float().reshape(40, 37, -1) + p["bias"]
    _, (_, hs, _, _, _) = forward(native, dict(p, xp=xp))
    assert relative(y, hs[1:]) < 0.02


@needs_native
@pytest.mark.parametrize("kind", list(GATES))
@pytest.mark.parametrize("weights", [torch.bfloat16, torch.float32])
def test_opcheck_of_inference(kind, weights):
    p = inference_problem(kind, 5, 32, steps=3)  # 3 steps: the final states come from slot 1 of two
    w_ih, w_hh = p["w_ih"].to(weights), p["w_hh"].to(weights)
    args = (kind, p["x"], w_ih, p["bias"], p["h0"], p["c0"], w_hh, p["b_hn"], None, None, False)
    torch.library.opcheck(torch.ops.rnnkit_fused.forward_inference.default, args)


@needs_native
def test_inference_refuses_mixed_weight_dtypes():
    p = inference_problem(LSTM, 4, 16, steps=2)
    with pytest.raises(RuntimeError, match="both be bf16"):
        native.forward_inference(LSTM, p["x"], p["w_ih"].float(), p["bias"], p["h0"], p["c0"], p["w_hh"], None, None, None, False)


@needs_native
@pytest.mark.parametrize("family", [rnnkit.GRU, rnnkit.RNN])
def test_bf16_autocast_inference_runs_every_product_in_bf16_without_history(family, monkeypatch):
    seen = []
    real = ops.NativeLoops.forward_inference

    def spy(self, kind, x, w_ih, bias, h0, c0, w_hh, *rest):
        seen.append((w_ih.dtype, w_hh.dtype))
        return real(self, kind, x, w_ih, bias, h0, c0, w_hh, *rest)

    monkeypatch.setattr(ops.NativeLoops, "forward_inference", spy)
    layer = family(4, 16)
    x = torch.randn(5, 2, 4)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = layer(x)
    assert seen == [(torch.bfloat16, torch.bfloat16)]
    assert ((out.float() - layer(x)[0]).norm() / layer(x)[0].norm()).item() < 0.02  # against float32
