"""The hoisted loop: all input projections in one batched op, then the reference loop over the recurrence.

For a cell whose spec splits its step into ``project_input`` and ``recur``
(the LayerNorm variants), the input projection, LN(W_ih x_t) ⊙ γ + b, does
not depend on the state. So it runs once over the whole (L, N, H_in) input,
one GEMM and one LayerNorm, and the per-step loop is left with the recurrent
GEMM, its LayerNorm and the gate math. Backward is autograd's. The results are
the reference engine's, since the per-step math is the same functions.

Under torch.compile, torch.export or torch.jit.trace the recurrence is the op
``rnnkit::hoisted_recurrence`` instead, so that the program holds one node that
serves every length rather than an unrolled loop: the op runs the same loop
without autograd, and its backward, the op ``rnnkit::hoisted_recurrence_backward``,
is the vector-Jacobian product of that loop recomputed
(:func:`rnnkit.engine.transforms.reference_vjp`). It has no second derivative and
says so; the eager layer has.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from rnnkit.cells.base import CellSpec, CellWeights, LayerNormWeights, State
from rnnkit.cells.gru import LAYER_NORM_GRU
from rnnkit.cells.lstm import LAYER_NORM_LSTM
from rnnkit.engine import reference, transforms

SPECS = {spec.name: spec for spec in (LAYER_NORM_GRU, LAYER_NORM_LSTM)}


def supports(spec: CellSpec) -> bool:
    return spec.project_input is not None and spec.recur is not None


def run_direction(
    spec: CellSpec, x: Tensor, state: State, weights: CellWeights, valid: Tensor | None, reverse: bool, zoneout: Tensor | None = None
) -> tuple[Tensor, State]:
    """Same contract and results as :func:`rnnkit.engine.reference.run_direction`."""
    projected = spec.project_input(x, weights)  # (L, N, G*H), every step at once
    if spec.name in SPECS and transforms.recorded() and not transforms.functorch_active():
        if zoneout is not None:
            raise ValueError(
                f"zoneout: the LayerNorm variants ({spec.name}) have no zoneout under torch.jit.trace, torch.export or "
                "torch.compile (rnnkit::hoisted_recurrence takes no masks); run the layer eagerly, or set zoneout=0"
            )
        norm = weights.layer_norm
        c0 = state[1] if len(state) == 2 else None
        y, h_n, c_n = hoisted_recurrence(
            spec.name, projected, state[0], c0, weights.weight_hh, weights.bias_hh, weights.weight_hr,
            norm.gain_hh, norm.gain_cell, norm.bias_cell, valid, reverse,
        )  # fmt: skip
        return y, (h_n, c_n) if c0 is not None else (h_n,)
    recurrence = dataclasses.replace(spec, step=spec.recur)
    return reference.run_direction(recurrence, projected, state, weights, valid, reverse, zoneout)


def _loop(family, projected, h0, c0, w_hh, b_hh, w_hr, gain_hh, gain_cell, bias_cell, valid, reverse):
    """The recurrence of the hoisted loop as a function of tensors: ``(y, h_n, c_n)``, c_n empty but for the LSTM."""
    spec = SPECS[family]
    weights = CellWeights(None, w_hh, None, b_hh, w_hr, LayerNormWeights(None, gain_hh, gain_cell, bias_cell))
    state = (h0,) if c0 is None else (h0, c0)
    y, final = reference.run_direction(dataclasses.replace(spec, step=spec.recur), projected, state, weights, valid, reverse)
    return y, final[0], final[1] if c0 is not None else projected.new_empty(0)


@torch.library.custom_op("rnnkit::hoisted_recurrence", mutates_args=())
def hoisted_recurrence(
    family: str, projected: Tensor, h0: Tensor, c0: Tensor | None, w_hh: Tensor, b_hh: Tensor | None, w_hr: Tensor | None,
    gain_hh: Tensor, gain_cell: Tensor | None, bias_cell: Tensor | None, valid: Tensor | None, reverse: bool,
) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    """The recurrence of a LayerNorm variant from its projected inputs (L, N, G*H): ``(y, h_n, c_n)``."""
    y, h_n, c_n = _loop(family, projected, h0, c0, w_hh, b_hh, w_hr, gain_hh, gain_cell, bias_cell, valid, reverse)
    return y, h_n.clone(), c_n.clone()  # outputs of an op own their memory


@hoisted_recurrence.register_fake
def _(family, projected, h0, c0, w_hh, b_hh, w_hr, gain_hh, gain_cell, bias_cell, valid, reverse):
    length, batch, _ = projected.shape
    c_n = projected.new_empty(batch, c0.shape[1]) if c0 is not None else projected.new_empty(0)
    return projected.new_empty(length, batch, h0.shape[1]), projected.new_empty(batch, h0.shape[1]), c_n


def _setup_context(ctx, inputs, output):
    family, *tensors, reverse = inputs
    ctx.family, ctx.reverse, ctx.valid = family, reverse, tensors[-1]
    ctx.save_for_backward(*tensors[:-1])


def _backward(ctx, dy, dh_n, dc_n):
    grads = hoisted_recurrence_backward(ctx.family, list(ctx.saved_tensors), dy, dh_n, dc_n, ctx.valid, ctx.reverse)
    present = (g if t is not None else None for g, t in zip(grads, ctx.saved_tensors))
    return None, *present, None, None


hoisted_recurrence.register_autograd(_backward, setup_context=_setup_context)


@torch.library.custom_op("rnnkit::hoisted_recurrence_backward", mutates_args=())
def hoisted_recurrence_backward(
    family: str, inputs: list[Tensor | None], dy: Tensor, dh_n: Tensor, dc_n: Tensor, valid: Tensor | None, reverse: bool
) -> list[Tensor]:
    """Gradients of ``hoisted_recurrence``'s tensor inputs (empty where an input is None): the loop recomputed
    with autograd. An op of its own, so that a compiled backward holds one node, not the unrolled loop."""

    def outputs(*tensors):
        return _loop(family, *tensors, valid, reverse)

    with torch.enable_grad():
        grads = transforms.reference_vjp(outputs, tuple(inputs), (dy, dh_n, dc_n))
    return [dy.new_empty(0) if g is None else g.detach() for g in grads]


@hoisted_recurrence_backward.register_fake
def _(family, inputs, dy, dh_n, dc_n, valid, reverse):
    return [dy.new_empty(0) if t is None else torch.empty_like(t) for t in inputs]


def _refuse_double_backward(ctx, *grads):
    raise RuntimeError(
        "rnnkit::hoisted_recurrence (a LayerNorm variant under torch.jit.trace, torch.export or torch.compile) "
        "has no second derivative; take higher-order gradients of the eager layer"
    )


hoisted_recurrence_backward.register_autograd(_refuse_double_backward)
