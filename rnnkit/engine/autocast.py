r"""The fused engine under autocast: low-precision GEMMs, a float32 recurrence.

Under ``torch.autocast`` (CPU bf16 or fp16, or any device's) a layer call of the
fused engine lands here (:func:`run_direction`). What runs in which precision:

========================================  ===========================================
input projections ``X W_ih^T``             the autocast dtype (bf16/fp16 GEMM, fp32 accumulation)
input gradient ``dG W_ih``                 the autocast dtype
weight gradients ``dG^T X``, ``dG^T H``    the autocast dtype, returned in float32 (the parameters' dtype)
per-step products ``h W_hh^T``, ``dG W_hh``  bf16 operands, float32 sums, in the compiled loop (bf16 only;
                                           fp16 keeps them float32)
state ``h``, ``c``, the gate math, ``dh``  float32
bias sums, LayerNorm                       float32
========================================  ===========================================

The per-step products round only their operands: ``h_{t-1}`` is rounded to bf16 as
the GEMM reads it, while the state the next step adds to stays float32, so the
rounding does not compound the way a bf16 state (torch.nn's oneDNN LSTM) does. At
B=32, T=100, H=256 the output's relative error against float32 is 0.003 for each
family, at or below torch.nn's under the same autocast. Where the CPU has AMX-BF16
the loop runs these products on its tiles, else where it has AVX512-BF16 with its
``VDPBF16PS`` dot products (``csrc/bf16_tiles.h``); elsewhere the same rounded
products run in float32, so the function is the same on every machine up to the
order of float32 sums.

Returned dtypes are torch.nn's under the same autocast: the LSTM and the Elman RNN
return output and states in the autocast dtype (under bf16 the loops write the output in
bf16 themselves, and training's backward reads its rounded h_{t-1} from it), the GRU in float32 (ATen's autocast
lists ``lstm`` and ``rnn_tanh``/``rnn_relu`` for lower precision and not ``gru``);
the LayerNorm variants follow their family. Like torch.nn, an LSTM with ``proj_size`` returns ``c_n``
in float32, and a packed LSTM (the layer's business) returns float32 throughout. LSTM inference without padding or
``proj_size`` runs oneDNN's LSTM primitive in the autocast dtype, which is what
torch.nn.LSTM runs there; it keeps ``c`` in float32 and rounds ``h`` per step.

Gradients are first-order (the compiled BPTT in float32 between low-precision
GEMMs); a second derivative or a torch.func transform under autocast raises.
"""

from __future__ import annotations

import dataclasses
import functools

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from rnnkit import ops
from rnnkit.cells.base import CellSpec, CellWeights, State
from rnnkit.engine import fused, reference, transforms
from rnnkit.engine.fused_loops import GRU, KINDS, LSTM
from rnnkit.ops import recorded_by_autograd


def output_dtype(spec: CellSpec, low: torch.dtype) -> torch.dtype:
    """The dtype torch.nn's peer returns under autocast to ``low``: float32 for the GRU family, else ``low``."""
    return torch.float32 if spec.name in ("gru", "layer_norm_gru") else low


def run_direction(spec: CellSpec, x: Tensor, state: State, weights: CellWeights, valid: Tensor | None, reverse: bool,
                  zoneout: Tensor | None = None) -> tuple[Tensor, State]:  # fmt: skip
    """Same contract as :func:`rnnkit.engine.reference.run_direction`, under autocast (see the module docstring).

    ``zoneout`` (L, N, H), the per-step keep masks of :mod:`rnnkit.layers.regularisers`, is applied in float32 in the loop.
    """
    device = x.device.type
    low = torch.get_autocast_dtype(device)
    if transforms.functorch_active() or transforms.recorded():
        raise NotImplementedError(
            "rnnkit's fused engine under autocast runs eagerly only: torch.func transforms, torch.compile, torch.export "
            "and tracing of a layer under autocast are not supported; call it without autocast, or use engine='reference'"
        )
    out = output_dtype(spec, low)
    with torch.autocast(device, enabled=False):
        state32 = tuple(s.float() for s in state)
        if spec.name in KINDS and weights.layer_norm is None:
            y, final = _plain(KINDS[spec.name], x, state32, weights, valid, reverse, low, zoneout)
        elif spec.project_input is not None and spec.recur is not None:
            y, final = _layer_norm(spec, x, state32, weights, valid, reverse, low, zoneout)
        else:
            raise NotImplementedError(f"rnnkit's fused engine has no autocast path for the cell {spec.name!r}")
    if weights.weight_hr is not None:  # torch.nn.LSTM with proj_size returns c_n in float32 under autocast
        return y.to(out), (final[0].to(out), final[1].float())
    return y.to(out), tuple(s.to(out) for s in final)


# Large products over all steps run a block of rows at a time through one reused low-precision buffer, which the
# float32 result then reads while it is in cache: a whole (L·N, G·H) low-precision intermediate is a fresh allocation,
# and its first-touch page faults cost more than its GEMM (C LSTM, 2-core Xeon: 86 -> 62 ms for the projections).
# Below BLOCKED_BYTES of intermediate one block is faster (B GRU, 4.9 MB: 1.6 ms against 1.9 ms in blocks); above it,
# blocks win even where the intermediate is paged in already: at C (T=256, B=64, H=512) the Elman RNN's 16 MB product
# plus its float32 bias sum took 13 ms in one block, and its bf16 training step went from 101-109 to 93 ms in blocks.
ROWS_PER_BLOCK = 1024
BLOCKED_BYTES = 8 << 20


def _blocks(rows: int, columns: int, low: torch.dtype):
    """``(start, stop)`` row ranges: blocks of ROWS_PER_BLOCK when the (rows, columns) intermediate is large, else one."""
    size = rows if rows * columns * low.itemsize < BLOCKED_BYTES else ROWS_PER_BLOCK
    return [(start, min(rows, start + size)) for start in range(0, rows, size)]


def _empty(like: Tensor, shape: tuple[int, ...], dtype: torch.dtype) -> Tensor:
    """A large buffer for eager CPU code: from the kernels' pool, whose memory is reused and already paged in."""
    if type(like) is torch.Tensor and like.device.type == "cpu" and not transforms.recorded():  # not a fake or wrapped tensor
        return ops.pooled_empty(shape, dtype)
    return like.new_empty(shape, dtype=dtype)


def _copy(t: Tensor, dtype: torch.dtype) -> Tensor:
    """``t.to(dtype)`` as a tensor of its own (a copy even where the dtype is t's), into a pooled buffer."""
    return _empty(t, tuple(t.shape), dtype).copy_(t)


def _low_matmul(a: Tensor, b: Tensor, low: torch.dtype) -> Tensor:
    """A weight gradient ``a @ b`` as a GEMM in ``low``, returned in float32."""
    return torch.mm(a.to(low), b.to(low)).float()


def _projections(kind: int, x: Tensor, weights: CellWeights, low: torch.dtype) -> tuple[Tensor, Tensor | None]:
    """``X W_ih^T + b`` of every step (L, N, G*H) in float32 from a low-precision GEMM, and GRU's ``b_hn``
    (x in any floating dtype; one already in ``low`` is not copied)."""
    length, batch, features = x.shape
    bias, b_hn = _float32_biases(kind, weights)
    rows = length * batch
    x_low, w_low = x.reshape(rows, features).to(low), weights.weight_ih.to(low).t()
    blocks = _blocks(rows, w_low.shape[1], low)
    xp = _empty(x, (rows, w_low.shape[1]), torch.float32)
    block = x_low.new_empty(ROWS_PER_BLOCK, w_low.shape[1]) if len(blocks) > 1 else None
    for start, stop in blocks:
        product = torch.mm(x_low[start:stop], w_low, out=None if block is None else block[: stop - start])
        if bias is None:
            xp[start:stop].copy_(product)
        else:
            torch.add(product, bias, out=xp[start:stop])
    return xp.view(length, batch, -1), b_hn


def _plain(kind, x, state, weights, valid, reverse, low, zoneout=None):
    h0, c0 = state[0].contiguous(), state[1].contiguous() if kind == LSTM else x.new_empty(0, dtype=torch.float32)
    w = weights
    y_dtype = torch.float32 if kind == GRU else low  # the output's dtype in torch.nn's peer (output_dtype's rule, by kind)
    if not recorded_by_autograd(x, *state, *w[:5]):
        if kind == LSTM and zoneout is None and _onednn_lstm_applies(x, w, valid, low):
            low_weights = CellWeights(*(None if t is None else t.to(low) for t in w[:5]))
            y, h_n, c_n = fused._onednn_lstm(x.to(low), h0.to(low), c0.to(low), low_weights, reverse)
            return y, (h_n, c_n)
        native = fused.loops_for(h0)
        if low == torch.bfloat16 and zoneout is None and isinstance(native, ops.NativeLoops):  # every product in bf16, no history
            bias, b_hn = _float32_biases(kind, w)
            y, h_n, c_n = native.forward_inference(kind, x.float().contiguous(), _recurrent_weight(w.weight_ih, low), bias, h0, c0,
                                                   _recurrent_weight(w.weight_hh, low), b_hn, _float32(w.weight_hr), valid, reverse,
                                                   y_dtype)  # the loop writes the output in its final dtype  # fmt: skip
            return y, (h_n, c_n) if kind == LSTM else (h_n,)
        xp, b_hn = _projections(kind, x, w, low)
        y, hs, cs, _, _ = fused.loops_for(xp).forward_loop(kind, xp, h0, c0, _recurrent_weight(w.weight_hh, low), b_hn, _float32(w.weight_hr), valid, reverse,
                                                           _float32(zoneout))  # fmt: skip
        y = transforms.output(y, hs, reverse, valid is None and w.weight_hr is None)
        h_n, c_n = transforms.final_states(hs, cs, reverse, kind == LSTM)
        return y, (h_n, c_n) if kind == LSTM else (h_n,)
    y, h_n, c_n = AutocastRecurrence.apply(kind, reverse, valid, low, x, *w[:5], h0, c0 if kind == LSTM else None, _float32(zoneout),
                                           y_dtype)  # y in the layer's dtype: no float32 copy  # fmt: skip
    return y, (h_n, c_n) if kind == LSTM else (h_n,)


def _onednn_lstm_applies(x: Tensor, weights: CellWeights, valid: Tensor | None, low: torch.dtype) -> bool:
    return (x.device.type == "cpu" and valid is None and weights.weight_hr is None and torch.backends.mkldnn.is_available()
            and torch.backends.mkldnn.enabled and _onednn_lstm_runs_in(low))  # fmt: skip


@functools.cache
def _onednn_lstm_runs_in(dtype: torch.dtype) -> bool:
    """Whether this CPU's oneDNN has an LSTM primitive in ``dtype``: fp16 needs AVX512-FP16 or AMX-FP16, which many
    CPUs lack (an AMD EPYC of this project's has bf16 only; there torch.nn.LSTM under fp16 autocast raises). Without one,
    the layer runs the fused loop, whose contract under autocast is the same (low-precision GEMMs, float32 state)."""
    tiny = torch.zeros(1, 1, 1, dtype=dtype)
    weights, bias = torch.zeros(4, 1, dtype=dtype), torch.zeros(4, dtype=dtype)
    try:
        fused._onednn_lstm(tiny, tiny[0], tiny[0], CellWeights(weights, weights, bias, bias, None), False)
    except RuntimeError:
        return False
    return True


def _recurrent_weight(w_hh: Tensor, low: torch.dtype) -> Tensor:
    """W_hh as the loop kernels take it: in bf16 under bf16 autocast, which asks them for per-step products with bf16
    operands (see :mod:`rnnkit.engine.fused_loops`); in float32 otherwise (fp16 keeps a float32 recurrence)."""
    return w_hh.to(torch.bfloat16).contiguous() if low == torch.bfloat16 else w_hh.contiguous()


def _float32(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.float().contiguous()


def _float32_biases(kind: int, weights: CellWeights) -> tuple[Tensor | None, Tensor | None]:
    """The folded bias and GRU's ``b_hn`` in float32, as the loops read them, whatever the parameters' dtype."""
    return tuple(_float32(b) for b in fused._folded_bias(kind, weights.bias_ih, weights.bias_hh))


class AutocastRecurrence(torch.autograd.Function):
    """One layer and direction of a plain family under autocast: ``(y, h_n, c_n)``, y in ``y_dtype``, the states in float32.

    Inputs ``kind, reverse, valid, low, x, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0, zoneout, y_dtype`` (h0, c0 in float32;
    x in any floating dtype, its gradient in the same). The equations of the backward are
    :mod:`rnnkit.engine.fused`'s; the GEMMs run with operands in ``low`` (the per-step ones too, for bf16).
    """

    @staticmethod
    def forward(ctx, kind, reverse, valid, low, x, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0, zoneout=None, y_dtype=torch.float32):
        weights = CellWeights(w_ih, w_hh, b_ih, b_hh, w_hr)
        x_low = x.to(low, memory_format=torch.contiguous_format)  # once: the projections read it, and backward's dG^T X (a view)
        xp, b_hn = _projections(kind, x_low, weights, low)
        c0 = x.new_empty(0, dtype=torch.float32) if c0 is None else c0
        rounded_output = y_dtype == torch.bfloat16 and low == torch.bfloat16  # the loop writes y in bf16 as it goes
        y, hs, cs, hn, hraw = fused.loops_for(xp).forward_loop(kind, xp, h0, c0, _recurrent_weight(w_hh, low), b_hn, _float32(w_hr), valid, reverse,
                                                               zoneout, None, torch.bfloat16 if rounded_output else None)  # fmt: skip
        if not rounded_output:
            y = transforms.output(y, hs, reverse, valid is None and w_hr is None)
            y = _copy(y, y_dtype)  # an output of its own, not a view of a saved tensor
        # Without padding or projection that y is bf16(h_t) of every step: backward's rounded h_{t-1} but for h_0, read
        # from it unless the caller has since edited it in place
        transforms.keep_output(ctx, y, rounded_output and valid is None and w_hr is None)
        h_n, c_n = transforms.final_states(hs, cs, reverse, kind == LSTM)
        gates = xp if kind in (LSTM, GRU) or zoneout is not None else xp.new_empty(0)  # the RNN's zoneout keeps h̃ there
        ctx.kind, ctx.reverse, ctx.low, ctx.x_dtype = kind, reverse, low, x.dtype
        ctx.save_for_backward(valid, x_low, w_ih, w_hh, b_ih, w_hr, gates, hs, cs, hn, hraw, zoneout)
        ctx.mark_non_differentiable(*(() if kind == LSTM else (c_n,)))
        return y, h_n, c_n

    @staticmethod
    @once_differentiable  # a second derivative through it raises (PyTorch's error), never silently drops terms
    def backward(ctx, d_y, d_hn, d_cn):
        valid, x_low, w_ih, w_hh, b_ih, w_hr, gates, hs, cs, hn, hraw, zoneout = ctx.saved_tensors
        kind, reverse, low = ctx.kind, ctx.reverse, ctx.low
        length, batch, features = x_low.shape
        # a bf16 dy goes to the loop as it is (read in place); fp16 is widened here
        dy = hs.new_zeros(length, batch, hs.shape[2]) if d_y is None else d_y if d_y.dtype == torch.bfloat16 else d_y.float()
        dh_n = hs.new_zeros(hs.shape[1:]) if d_hn is None else d_hn.float().contiguous()
        dc_n = hs.new_empty(0) if kind != LSTM else (cs.new_zeros(cs.shape[1:]) if d_cn is None else d_cn.float().contiguous())
        dgx, dgh_n, dh0, dc0, dproj = fused.loops_for(hs).backward_loop(
            kind, gates, hs, cs, hn, hraw, _recurrent_weight(w_hh, low), _float32(w_hr), valid, reverse, dy, dh_n, dc_n, zoneout
        )
        steps = length * batch
        dgx2d = dgx.view(steps, dgx.shape[2])
        need = ctx.needs_input_grad[4:]  # from x on
        h_prev = hs[reverse : length + reverse].reshape(steps, hs.shape[2])
        # the gate gradients that multiply W_hh: all of them, or GRU's r and z with δn⊙r
        recurrent = [dgx2d] if kind != GRU else [dgx2d[:, : 2 * dgh_n.shape[2]], dgh_n.view(steps, dgh_n.shape[2])]
        rounded_states = None
        if ctx.watched_output is not None and not transforms.output_edited(ctx):
            rounded_states = RoundedStates(ctx.watched_output.view(steps, hs.shape[2]), hs[length if reverse else 0].to(low), reverse)
        dx, dw_ih, dw_hh, sums = _backward_products(dgx2d, recurrent, x_low.view(steps, features), h_prev, w_ih, low, need[0], need[1], need[2],
                                                    rounded_states)  # fmt: skip
        dx = None if dx is None else dx.view(length, batch, features).to(ctx.x_dtype)
        db_ih = db_hh = None
        if b_ih is not None:
            db_ih = sums[0]
            db_hh = db_ih.clone() if kind != GRU else torch.cat([sums[0][: 2 * dgh_n.shape[2]], sums[1]])
        dw_hr = _low_matmul(dproj.view(steps, -1).t(), hraw.view(steps, -1), low) if w_hr is not None and need[5] else None
        return None, None, None, None, dx, dw_ih, dw_hh, db_ih, db_hh, dw_hr, dh0, dc0 if kind == LSTM else None, None, None


@dataclasses.dataclass
class RoundedStates:
    """The rounded h_{t-1} of every step, from the bf16 output of a layer without padding or projection: ``output``
    (L·N, H) holds bf16(h_t) of steps 0..L-1, so the steps after the first (forward; before the last, reverse) read
    their h_{t-1} from it, and that first step reads ``h0`` (N, H), rounded."""

    output: Tensor
    h0: Tensor
    reverse: bool

    def times(self, part: Tensor) -> Tensor:
        """``part^T H_prev`` in bf16, float32 result, for ``part`` (L·N, C): two products, no rounded copy of the states."""
        batch = self.h0.shape[0]
        if self.reverse:
            first, rest, states = part[-batch:], part[:-batch], self.output[batch:]
        else:
            first, rest, states = part[:batch], part[batch:], self.output[:-batch]
        return torch.mm(rest.t(), states).float() + torch.mm(first.t(), self.h0).float()


def _backward_products(dgx: Tensor, recurrent: list[Tensor], x_low: Tensor, h_prev: Tensor, w_ih: Tensor, low: torch.dtype,
                       want_dx: bool, want_dw_ih: bool, want_dw_hh: bool, rounded_states: RoundedStates | None = None):  # fmt: skip
    """``dG W_ih``, ``dG^T X``, ``[R]^T H_prev`` (R: ``recurrent``'s column groups, dG's first) in ``low`` with float32
    results, and the float32 column sums of dG and of R's other groups (the bias gradients), a block of rows at a time.
    With bf16 gate gradients, ``rounded_states`` (where given) supplies H_prev's rounded rows."""
    rows = dgx.shape[0]
    w_low = w_ih.to(low)
    if dgx.dtype == low:  # the loop returned its rounded gate gradients (bf16): products straight from them
        dx = torch.mm(dgx, w_low) if want_dx else None
        dw_ih = torch.mm(dgx.t(), x_low).float() if want_dw_ih else None
        dw_hh = None
        if want_dw_hh and rounded_states is not None:
            dw_hh = torch.cat([rounded_states.times(part) for part in recurrent])
        elif want_dw_hh:
            h_low = _copy(h_prev, low)
            dw_hh = torch.cat([torch.mm(part.t(), h_low).float() for part in recurrent])
        return dx, dw_ih, dw_hh, [_column_sums(part) for part in [dgx, *recurrent[1:]]]
    blocks = _blocks(rows, dgx.shape[1], low)
    block_rows = blocks[0][1]
    dx = []
    dw_ih = dgx.new_zeros(dgx.shape[1], w_ih.shape[1]) if want_dw_ih else None
    dw_hh = [dgx.new_zeros(part.shape[1], h_prev.shape[1]) for part in recurrent] if want_dw_hh else None
    summed = [dgx, *recurrent[1:]]
    sums = [dgx.new_zeros(part.shape[1]) for part in summed]
    dg_block = dgx.new_empty(block_rows, dgx.shape[1], dtype=low)
    part_blocks = [None] + [part.new_empty(block_rows, part.shape[1], dtype=low) for part in recurrent[1:]]
    h_block = h_prev.new_empty(block_rows, h_prev.shape[1], dtype=low)
    for start, stop in blocks:
        dg = dg_block[: stop - start].copy_(dgx[start:stop])
        if want_dx:
            dx.append(torch.mm(dg, w_low))
        if want_dw_ih:
            dw_ih += torch.mm(dg.t(), x_low[start:stop])
        parts = [dg[:, : recurrent[0].shape[1]]] + [block[: stop - start].copy_(part[start:stop]) for block, part in zip(part_blocks[1:], recurrent[1:])]
        for total, part in zip(sums, summed):
            total += part[start:stop].sum(0)
        if want_dw_hh:
            h = h_block[: stop - start].copy_(h_prev[start:stop])
            for total, part in zip(dw_hh, parts):
                total += torch.mm(part.t(), h)
    dx = None if not want_dx else dx[0] if len(dx) == 1 else torch.cat(dx)
    return dx, dw_ih, None if dw_hh is None else torch.cat(dw_hh), sums


def _column_sums(part: Tensor) -> Tensor:
    """float32 sums of the columns of a low-precision (rows, columns) matrix. ``sum(dtype=torch.float32)`` would
    convert the whole matrix first, into a fresh float32 intermediate (at C, dG's 134 MB: 65 of a bf16 LSTM training
    step's 420 ms went to its page faults); here blocks of rows go through one reused float32 buffer."""
    blocks = _blocks(part.shape[0], part.shape[1], torch.float32)
    if len(blocks) == 1:
        return part.sum(0, dtype=torch.float32)
    block = part.new_empty(blocks[0][1], part.shape[1], dtype=torch.float32)
    total = part.new_zeros(part.shape[1], dtype=torch.float32)
    for start, stop in blocks:
        total += block[: stop - start].copy_(part[start:stop]).sum(0)
    return total


def _layer_norm(spec, x, state, weights, valid, reverse, low, zoneout=None):
    """A LayerNorm variant: its input side ``LN(W_ih x) γ + b`` with the GEMM in ``low`` (LayerNorm in float32),
    then the recurrence in float32 by the hoisted loop's per-step math under autograd."""
    with torch.autocast(x.device.type, dtype=low):  # autocast's own rules: the GEMM in low, layer_norm in float32
        projected = spec.project_input(x, weights)
    recurrence = dataclasses.replace(spec, step=spec.recur)
    return reference.run_direction(recurrence, projected.float(), state, weights, valid, reverse, _float32(zoneout))
