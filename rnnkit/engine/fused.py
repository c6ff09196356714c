r"""The fused engine: one autograd node per layer and direction, with hand-written BPTT.

Where the reference engine records every step's ops for autograd, this engine
runs a whole sequence as a single :class:`torch.autograd.Function`:

* forward: the input projections of all steps are **one GEMM** up front,
  ``XP = X W_ih^T + b`` (with ``b = b_ih + b_hh``, except GRU's ``b_hn`` which
  sits inside the reset gate); then per step only the recurrent GEMM
  ``h_{t-1} W_hh^T`` and the fused gate math, run by a loop kernel
  (compiled C++, or the pure-PyTorch fallback, :mod:`rnnkit.engine.fused_loops`);
* backward: the loop kernel walks time backwards producing the gate gradients
  ``dG_t`` of every step; then the gradients of ``W_ih``, ``W_hh``, ``W_hr``,
  the biases and the input are each **one GEMM or sum over all steps**.

Legend (per layer and direction): L steps, N batch, H hidden, H_out output
size (``proj_size`` or H), G gates; ``X`` (L*N, H_in), ``XP``/``dG`` (L*N, G*H),
``H_prev`` (L*N, H_out) the state entering each step; ⊙ elementwise;
``σ' = σ(1-σ)``, ``tanh' = 1-tanh²``; ``dh_t`` is the total gradient reaching
``h_t`` (from ``y_t`` and from step t+1); ``δ`` marks gate pre-activation grads.

Backward through time, per family (all products row-wise over the batch)::

    RNN   h_t = φ(a_t), a_t = xp_t + h_{t-1} W_hh^T
          δa_t = dh_t ⊙ φ'(a_t)               (tanh: 1-h_t², relu: [h_t > 0])
          dh_{t-1} = δa_t W_hh

    LSTM  c_t = f⊙c_{t-1} + i⊙g,  r_t = o⊙tanh(c_t),  h_t = r_t (W_hr^T if projected)
          dr_t = dh_t (W_hr if projected, and dW_hr += dh_t^T r_t)
          dc   = dc_t + dr_t ⊙ o ⊙ tanh'(c_t)
          δi = dc⊙g⊙σ'(i), δf = dc⊙c_{t-1}⊙σ'(f), δg = dc⊙i⊙tanh'(g), δo = dr_t⊙tanh(c_t)⊙σ'(o)
          dc_{t-1} = dc ⊙ f,   dh_{t-1} = [δi δf δg δo] W_hh

    GRU   n = tanh(xn + r⊙hn), hn = h_{t-1} W_hn^T + b_hn, h_t = n + z⊙(h_{t-1} - n)
          δn = dh_t⊙(1-z)⊙tanh'(n),  δz = dh_t⊙(h_{t-1}-n)⊙σ'(z),  δr = δn⊙hn⊙σ'(r)
          dG^x_t = [δr δz δn] (input side),  dG^h_t = [δr δz δn⊙r] (recurrent side)
          dh_{t-1} = dh_t⊙z + dG^h_t W_hh

Then, with every step stacked (dG^h = dG^x = dG except for GRU)::

    dX = dG^x W_ih,  dW_ih = dG^x^T X,  db_ih = Σ dG^x,
    dW_hh = dG^h^T H_prev,  db_hh = Σ dG^h,  dW_hr = dH^T R   (R: the r_t, dH: the dh_t)

Inference (nothing requires a gradient) needs none of the saved history, so on
the compiled path it skips the autograd Function: ``forward_inference`` projects
the inputs a chunk of steps at a time into a cache-sized buffer and keeps two
state slots, allocating nothing of size L besides the output. There, LSTM
calls large enough go to oneDNN's LSTM primitive instead (:func:`onednn_lstm_applies`).

Padding (``valid[t, n]`` False) makes a step the identity on the state: the
kernel zeroes its ``dG`` rows, passes ``dh``/``dc`` through unchanged and drops
the gradient of its (zero) output.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rnnkit import ops
from rnnkit.cells import GRU_SPEC, LSTM_SPEC, RNN_SPECS
from rnnkit.cells.base import CellSpec, CellWeights, State
from rnnkit.engine import autocast, fused_layer_norm, fused_loops, hoisted, reference, scan, transforms
from rnnkit.engine.fused_loops import GRU, KINDS, LSTM, RNN_RELU, RNN_TANH
from rnnkit.engine.gemm import POOLED_MIN_BYTES, linear, matmul, recorded_by_autograd

STEPS = {RNN_TANH: RNN_SPECS["tanh"].step, RNN_RELU: RNN_SPECS["relu"].step, LSTM: LSTM_SPEC.step, GRU: GRU_SPEC.step}

# Argument layouts of FusedRecurrence, for its vmap rule.
_ROLES = (None, None, None, "mask", "seq", "weight", "weight", "weight", "weight", "weight", "state", "state", "seq", "state")


class FusedRecurrence(torch.autograd.Function):
    """One layer and direction of any plain family: ``(y, h_n, c_n, hs, cs, gates, hn, hraw)``.

    Without padding or projection the output is hs's steps: with ``share`` (eager calls)
    ``y`` shares hs's memory, otherwise it is empty and the caller takes it as a view
    (:func:`rnnkit.engine.transforms.output`). The final states are outputs of their own, so
    that their gradients arrive as (N, H) tensors, never scattered into an (L+1, N, H) buffer;
    ``hs`` is differentiable only where the output is its view. ``cs``, ``gates``, ``hn`` and
    ``hraw`` are the backward's internals (see :mod:`rnnkit.engine.fused_loops`). ``zoneout``
    (L, N, H_out) or None: the keep-previous weights of :func:`rnnkit.engine.reference.run_direction`
    (floats, or bool flags), applied per step by the loop kernels. ``output_mask`` (N, H_out) or None: the
    layer's locked dropout on this direction's output, ``y = h * m``, applied as the kernels write y
    (and to dy in backward). Neither gets a gradient.
    How each transform is served is in :mod:`rnnkit.engine.transforms`.
    """

    @staticmethod
    def forward(kind, reverse, share, valid, x, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0, zoneout=None, output_mask=None):
        xp, y, hs, cs, hn, hraw = _forward(kind, loops_for(x), reverse, valid, x, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0, zoneout, output_mask)
        gates = xp if kind in (LSTM, GRU) or _keeps_new_states(zoneout) else xp.new_empty(0)  # RNN's backward needs only hs: free xp now
        if share:
            y = transforms.shared_output(y, hs, reverse)
        return y, *transforms.final_states(hs, cs, reverse, kind == LSTM), hs, cs, gates, hn, hraw

    @staticmethod
    def setup_context(ctx, inputs, output):
        kind, reverse, share, valid, x, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0, *masks = inputs
        zoneout, output_mask = (*masks, None, None)[:2]
        y, _, _, hs, cs, gates, hn, hraw = output
        ctx.kind, ctx.reverse, ctx.view = kind, reverse, valid is None and w_hr is None and output_mask is None and not share
        ctx.mark_non_differentiable(cs, gates, hn, hraw, *(() if ctx.view else (hs,)))
        ctx.set_materialize_grads(False)
        ctx.primals, ctx.valid, ctx.masks = (x, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0), valid, (zoneout, output_mask)  # for jvp
        transforms.keep_output(ctx, y, share)
        ctx.save_for_backward(valid, x, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0, gates, cs, hn, hraw, hs, zoneout, output_mask)

    @staticmethod
    def backward(ctx, d_y, d_hn, d_cn, d_hs, *_internals):
        saved = ctx.saved_tensors  # unpacked once: non-reentrant checkpointing allows no second unpack
        if torch.is_grad_enabled():  # create_graph=True or torch.func: the reference math, differentiable again
            valid, primals, masks = saved[0], saved[1:9], saved[14:16]
            grads = transforms.reference_vjp(_reference(ctx.kind, ctx.reverse, valid, ctx.view, *masks), primals, (d_y, d_hn, d_cn, d_hs))
            return None, None, None, None, *grads, None, None
        with torch.autocast(saved[1].device.type, enabled=False):  # gradients in the forward's precision
            return None, None, None, None, *_backward(ctx, saved, d_y, d_hn, d_cn, d_hs), None, None

    @staticmethod
    def jvp(ctx, _kind, _reverse, _share, _valid, *tangents):
        tangents = tangents[:8]  # the masks have none
        y, h_n, c_n, hs = transforms.reference_jvp(_reference(ctx.kind, ctx.reverse, ctx.valid, ctx.view, *ctx.masks), ctx.primals, tangents)
        return y, h_n, c_n, hs if ctx.view else None, None, None, None, None

    @staticmethod
    def vmap(info, in_dims, *args):
        return transforms.vmap_by_batch(FusedRecurrence.apply, info, in_dims, args, _ROLES)


def _keeps_new_states(zoneout: Tensor | None) -> bool:
    """Whether the RNN's loops keep the new states before zoneout, h̃_t, in its gates for backward: with zoneout weights
    (eval mode's p). With 0/1 flags the states hold h̃_t wherever the step gets a gradient (see fused_loops)."""
    return zoneout is not None and zoneout.dtype != torch.bool


def _reference(kind, reverse, valid, output_is_view, zoneout=None, output_mask=None):
    """FusedRecurrence's differentiable outputs as a function of its tensor inputs, by the cell's own step."""

    def outputs(x, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0):
        state = (h0, c0) if kind == LSTM else (h0,)
        weights = CellWeights(w_ih, w_hh, b_ih, b_hh, w_hr)
        y, h_n, c_n, hs = transforms.reference_outputs(STEPS[kind], weights, x, state, valid, reverse, output_is_view, zoneout)
        return (y if output_mask is None or y.numel() == 0 else y * output_mask), h_n, c_n, hs

    return outputs


def _backward(ctx, saved, d_y, d_hn, d_cn, d_hs):
    """The compiled backward through time: gradients of (x, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0)."""
    valid, x, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0, gates, cs, hn, hraw, hs, zoneout, output_mask = saved
    kind, reverse = ctx.kind, ctx.reverse
    loops = loops_for(x)
    if transforms.output_edited(ctx):  # the output, which is the states, was edited in place: run them once more from h_0
        hs = _forward(kind, loops, reverse, valid, x, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0, zoneout)[2]
    length, batch, _ = x.shape
    dy = transforms.output_gradient(ctx.view, d_y, d_hs, hs, reverse)
    dh_n = h0.new_zeros(h0.shape) if d_hn is None else d_hn
    dc_n = x.new_empty(0) if kind != LSTM else (c0.new_zeros(c0.shape) if d_cn is None else d_cn)
    dgx, dgh_n, dh0, dc0, dproj = loops.backward_loop(
        kind, gates, hs, cs, hn, hraw, w_hh.contiguous(), None if w_hr is None else w_hr.contiguous(), valid, reverse,
        dy, dh_n.contiguous(), dc_n.contiguous(), zoneout, output_mask,
    )  # fmt: skip
    steps = length * batch
    dgx2d = dgx.view(steps, dgx.shape[2])
    need = ctx.needs_input_grad[4:]  # from x on
    dx = linear(dgx2d, w_ih.t(), None).view_as(x) if need[0] else None
    dw_ih = matmul(dgx2d.t(), x.reshape(steps, x.shape[2])) if need[1] else None
    h_prev = hs[reverse : length + reverse].reshape(steps, hs.shape[2])
    # GRU's recurrent-side gradient is [δr δz] (shared with dgx) then δn⊙r (dgh_n).
    recurrent_parts = [dgx2d] if kind != GRU else [dgx2d[:, : 2 * dgh_n.shape[2]], dgh_n.view(steps, dgh_n.shape[2])]
    dw_hh = torch.cat([matmul(part.t(), h_prev) for part in recurrent_parts]) if need[2] else None
    db_ih = db_hh = None
    if b_ih is not None:
        db_ih = dgx2d.sum(0)  # GRU: [δr δz] are the recurrent side's too, so only δn⊙r needs a sum of its own
        db_hh = db_ih.clone() if kind != GRU else torch.cat([db_ih[: recurrent_parts[0].shape[1]], recurrent_parts[1].sum(0)])
    dw_hr = matmul(dproj.view(steps, dproj.shape[2]).t(), hraw.view(steps, hraw.shape[2])) if w_hr is not None and need[5] else None
    return dx, dw_ih, dw_hh, db_ih, db_hh, dw_hr, dh0, dc0 if kind == LSTM else None


def _forward(kind, loops, reverse, valid, x, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0, zoneout=None, output_mask=None):
    """The input projections of every step in one GEMM, then the loop kernel: ``xp`` (now the gates), y, hs, cs, hn, hraw."""
    length, batch, _ = x.shape
    bias, b_hn = _folded_bias(kind, b_ih, b_hh)
    xp = linear(x.reshape(length * batch, x.shape[2]), w_ih, bias).view(length, batch, w_hh.shape[0])
    c0 = x.new_empty(0) if c0 is None else c0.contiguous()
    w_hr = None if w_hr is None else w_hr.contiguous()
    zoneout = None if zoneout is None else zoneout.contiguous()
    output_mask = None if output_mask is None else output_mask.contiguous()
    return xp, *loops.forward_loop(kind, xp, h0.contiguous(), c0, w_hh.contiguous(), b_hn, w_hr, valid, reverse, zoneout, output_mask)


def _folded_bias(kind: int, b_ih: Tensor | None, b_hh: Tensor | None):
    """The bias added to the input projections, and GRU's ``b_hn`` that must stay in the loop."""
    if b_ih is None:
        return None, None
    if kind != GRU:
        return b_ih + b_hh, None
    hidden = b_ih.shape[0] // 3
    folded = torch.cat((b_ih[: 2 * hidden] + b_hh[: 2 * hidden], b_ih[2 * hidden :]))
    return folded, b_hh[2 * hidden :].contiguous()


def loops_for(x: Tensor):
    """The loop kernel for a tensor: compiled C++ for float32/float64 CPU tensors when it built, else pure PyTorch."""
    if x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64):
        native = ops.native_loops()
        if native is not None:
            return native
    return fused_loops


def supports(spec: CellSpec, weights: CellWeights | None = None) -> bool:
    """Whether the plain fused kernels cover a cell family (see :mod:`rnnkit.engine.fused_layer_norm` for the LayerNorm LSTM)."""
    return spec.name in KINDS and (weights is None or getattr(weights, "layer_norm", None) is None)


def run_direction(
    spec: CellSpec, x: Tensor, state: State, weights: CellWeights, valid: Tensor | None, reverse: bool, zoneout: Tensor | None = None,
    output_mask: Tensor | None = None,
) -> tuple[Tensor, State]:
    """Same contract and results as :func:`rnnkit.engine.reference.run_direction`, plus ``output_mask``.

    Under autocast the GEMMs that span all steps run in the autocast dtype and the recurrence in
    float32 (:mod:`rnnkit.engine.autocast`).
    The linear-recurrence families (minGRU, minLSTM, RG-LRU) run the parallel scan, :mod:`rnnkit.engine.scan`
    (under autocast entirely in float32).

    ``zoneout`` may be bool flags (True: keep the previous state) as well as weights; ``output_mask``
    (N, H_out), optional, is a locked dropout on the output: the result's output is ``y * output_mask``
    (the final state is not masked). The plain families' compiled training path applies both inside
    its loops (no masked copies); every other path gets weights and multiplies the output after.
    """
    plain = supports(spec, weights) and not scan.supports(spec) and not torch.is_autocast_enabled(x.device.type)
    if not plain and zoneout is not None and zoneout.dtype == torch.bool:
        zoneout = zoneout.to(x.dtype)  # the other paths take weights
    if not plain and output_mask is not None:
        y, final = run_direction(spec, x, state, weights, valid, reverse, zoneout)
        return y * output_mask, final
    if scan.supports(spec):
        return scan.run_direction(spec, x, state, weights, valid, reverse, zoneout)
    if torch.is_autocast_enabled(x.device.type):
        return autocast.run_direction(spec, x, state, weights, valid, reverse, zoneout)
    if fused_layer_norm.supports(spec, x, weights):
        return fused_layer_norm.run_direction(spec, x, state, weights, valid, reverse, zoneout)
    if not supports(spec, weights):
        runner = hoisted if hoisted.supports(spec) else reference
        return runner.run_direction(spec, x, state, weights, valid, reverse, *(() if zoneout is None else (zoneout,)))
    kind = KINDS[spec.name]
    stepped = None
    if not transforms.recorded() and x.shape[0] == 1 and valid is None and zoneout is None and output_mask is None:
        stepped = single_step(spec, x[0], state, weights)
    if stepped is not None:
        return stepped[0].unsqueeze(0), (stepped[0].clone(), *stepped[1:])  # the state apart from the output
    h0, c0 = state[0], state[1] if kind == LSTM else None
    args = (kind, x.contiguous(), h0, c0, *weights[:5], valid, reverse, zoneout, output_mask)
    y, h_n, c_n = transforms.call(torch.ops.rnnkit.recurrence, _recurrence, *args)
    return y, (h_n, c_n) if kind == LSTM else (h_n,)


# The layer passes a locked dropout mask after a layer to engines that declare this (regularisers.fused_mask).
run_direction.fuses_output_mask = True


def _recurrence(kind, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, valid, reverse, zoneout=None, output_mask=None):
    """``rnnkit::recurrence``: one layer and direction, ``(y, h_n, c_n)`` (c_n empty but for the LSTM).

    Without autograd on the compiled path it runs the inference kernel, which keeps no
    history (and has no zoneout: with zoneout, :class:`FusedRecurrence` runs; the output mask
    is then applied after it); otherwise :class:`FusedRecurrence`. The op is composite (its kernel
    runs these Python calls), so a trace records it as one node and decides between the two at run time.
    """
    loops = loops_for(x)
    if zoneout is None and isinstance(loops, ops.NativeLoops) and not recorded_by_autograd(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr):
        y, h_n, c_n = _infer(kind, loops, x, h0, c0, CellWeights(w_ih, w_hh, b_ih, b_hh, w_hr), valid, reverse)
        return (y if output_mask is None else y * output_mask), h_n, c_n
    aliased = valid is None and w_hr is None and output_mask is None
    share = transforms.shares_output(aliased)
    y, h_n, c_n, hs, *_ = FusedRecurrence.apply(kind, reverse, share, valid, x, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0, zoneout, output_mask)
    return transforms.output(y, hs, reverse, aliased and not share), h_n, c_n


_LIBRARY = torch.library.Library("rnnkit", "FRAGMENT")
_LIBRARY.define(
    "recurrence(int kind, Tensor x, Tensor h0, Tensor? c0, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh, "
    "Tensor? w_hr, Tensor? valid, bool reverse, Tensor? zoneout=None, Tensor? output_mask=None) -> (Tensor, Tensor, Tensor)"
)
_LIBRARY.impl("recurrence", _recurrence, "CompositeImplicitAutograd")


# For LSTM inference oneDNN's fused LSTM primitive (what torch.nn.LSTM runs on CPU) beats the
# compiled loop once batch x hidden reaches 1024 (its per-step GEMM runs closer to peak); below
# that the loop is as fast or faster (B=1, H=128: 1.1-1.4x). Measured on the idle 2-core AMD EPYC
# for batch 1-64, hidden 128-512.
ONEDNN_LSTM_MIN_BATCH_HIDDEN = 1024
# Except where the output is 32 MiB or more and W_hh at most 4 MiB: oneDNN writes that output into fresh pages every
# call (glibc's mmap threshold is at most 32 MiB), the loop into a pooled buffer (rnnkit/ops/csrc/buffer_pool.h). There
# the loop measured faster, in alternating processes: 64 x 256 steps, H=512 217-225 ms against 228-243; 32 x 512,
# H=512 211 against 230; 32 x 1024, H=256 113 against 139. With a larger W_hh oneDNN's GEMM stays ahead (16 x 512,
# H=1024: 448-470 against 404-415); below 32 MiB too (32 x 100, H=512: 45-46 against 41).
LOOP_MIN_OUTPUT_BYTES = POOLED_MIN_BYTES  # the same threshold as the pooled projection's, for the same reason
LOOP_MAX_W_HH_BYTES = 4 << 20


def onednn_lstm_applies(x: Tensor, weights: CellWeights, valid: Tensor | None) -> bool:
    """Whether an LSTM inference call goes to oneDNN's LSTM primitive: float32 CPU, no padding, no proj_size, large enough."""
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and valid is None
        and weights.weight_hr is None
        and torch.backends.mkldnn.is_available()
        and torch.backends.mkldnn.enabled
        and x.shape[1] * weights.weight_hh.shape[1] >= ONEDNN_LSTM_MIN_BATCH_HIDDEN
        and not _loop_output_pooled(x, weights)
    )


def _loop_output_pooled(x: Tensor, weights: CellWeights) -> bool:
    """Whether an LSTM inference call is large enough in output and small enough in W_hh for the loop (above);
    only on concrete sizes, so that a compiled graph with symbolic ones adds no guard on the length."""
    length, batch, hidden = x.shape[0], x.shape[1], weights.weight_hh.shape[1]
    if not all(isinstance(size, int) for size in (length, batch, hidden)):
        return False
    size = x.element_size()
    return length * batch * hidden * size >= LOOP_MIN_OUTPUT_BYTES and weights.weight_hh.numel() * size <= LOOP_MAX_W_HH_BYTES


def _onednn_lstm(x: Tensor, h0: Tensor, c0: Tensor, weights: CellWeights, reverse: bool) -> tuple[Tensor, Tensor, Tensor]:
    hidden = weights.weight_hh.shape[1]
    b_ih, b_hh = weights.bias_ih, weights.bias_hh
    if b_ih is None:
        b_ih = b_hh = x.new_zeros(4 * hidden)
    y, h_n, c_n, _ = torch.mkldnn_rnn_layer(
        x.contiguous(), weights.weight_ih.contiguous(), weights.weight_hh.contiguous(), b_ih, b_hh, h0.contiguous(), c0.contiguous(),
        reverse, [], _ONEDNN_LSTM_MODE, hidden, 1, True, False, False, False,
    )  # fmt: skip
    return y, h_n, c_n


_ONEDNN_LSTM_MODE = 2  # ATen's RNN mode numbering: 0 relu, 1 tanh, 2 LSTM, 3 GRU


def _infer(kind, loops, x, h0, c0, weights, valid, reverse):
    """Inference with the compiled kernel: the same math as :class:`FusedRecurrence`'s forward, keeping no history."""
    if kind == LSTM and onednn_lstm_applies(x, weights, valid):
        return _onednn_lstm(x, h0, c0, weights, reverse)
    bias, b_hn = _folded_bias(kind, weights.bias_ih, weights.bias_hh)
    w_hr = None if weights.weight_hr is None else weights.weight_hr.contiguous()
    y, h_n, c_n = loops.forward_inference(
        kind, x.contiguous(), weights.weight_ih.contiguous(), bias, h0.contiguous(), x.new_empty(0) if c0 is None else c0.contiguous(),
        weights.weight_hh.contiguous(), b_hn, w_hr, valid, reverse,
    )  # fmt: skip
    return y, h_n, c_n


def single_step(spec: CellSpec, x: Tensor, state: State, weights: CellWeights) -> State | None:
    """The new state after one step of x (N, H_in) through the compiled one-step kernel, or None where it does not apply
    (see :func:`rnnkit.ops.single_step`); only where :func:`loops_for` picks the compiled kernels."""
    native = loops_for(x)
    return ops.single_step(spec.name, x, state, weights, native) if isinstance(native, ops.NativeLoops) else None


def step_kernel(spec: CellSpec, weight: Tensor):
    """``(kind, kernel)`` of the compiled stacked one-step kernel for a family whose weights are like ``weight``
    (see :func:`rnnkit.ops.step_kernel`), or None; only where :func:`loops_for` picks the compiled kernels. For a
    caller that checks its conditions once and steps many times."""
    native = loops_for(weight)
    return ops.step_kernel(spec.name, weight.dtype) if isinstance(native, ops.NativeLoops) else None
