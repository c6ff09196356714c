"""One time step per call without autograd: the layer's streaming path.

Streaming calls a layer once per time step, with the state carried from call
to call. There, the general path's bookkeeping (layout object, time
dimension, engine dispatch, a clone and a stack per state, each weight looked
up by name) costs more than the compiled one-step kernel that the fused
engine ends in for a length-1 sequence. :func:`inference_step` takes the step
without the time dimension, with the same input and state checks (the same
errors) and the same kernel, so its results are bit-identical to the general
path's::

    for layer k, direction d:           (N: batch, H_in: input size, H: hidden)
        h_kd, c_kd = step(x, h_0[k*D+d], c_0[k*D+d])     x (N, H_in) -> h (N, H)
        x = cat_d(h_kd)                                   dropout between layers, as the general path
    output = x[None];  h_n = stack(h_kd);  c_n = stack(c_kd)

A :class:`StepPlan` holds what does not change between calls: the family's
kernel code and each cell's weights. It is kept, keyed on the ids of the layer's
registered parameters, while they are the same objects (and dropped by ``.to()``) (a replaced, deleted or swapped-in parameter,
as ``torch.func.functional_call`` does, makes a new plan on the next call;
the plan holds the tensors, so their ids cannot be reused meanwhile). Layers
whose weights are not all registered parameters (weight dropout swaps in a
plain tensor), LayerNorm variants, projections and dtypes the kernel lacks
take the per-cell path, which looks every weight up anew.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import torch
from torch import Tensor

from rnnkit.cells.base import State
from rnnkit.engine import cudnn, fused, transforms
from rnnkit.layers import regularisers


class StepPlan(NamedTuple):
    """What a layer's compiled one-step calls need, built once per set of parameters."""

    kernel: Callable  # the stacked_step op: kernel(kind, x, h0, c0, weights, directions) -> (y, h_n, c_n)
    kind: int
    dtype: torch.dtype
    weights: list[Tensor]  # per (layer, direction), in order: w_ih, w_hh, b_ih, b_hh (1-D empty biases without bias)
    cells: int  # layers * directions
    lstm: bool


def inference_step(layer, input, hx):
    """``layer.forward(input, hx)`` for a single time step without autograd, or None where the general path must run.

    It applies to a tensor of one time step, without ``lengths`` or ``check_finite``, with grad mode off, on the
    fused engine (not one swapped in, e.g. by diagnostics), without an active regulariser, and not under CPU
    autocast (the kernel is CPU-only; elsewhere :func:`one_step` runs the fused engine's ``run_direction``,
    which handles autocast). With a :class:`StepPlan` and no dropout to draw between layers, the whole step
    is one ``stacked_step`` call; otherwise each (layer, direction) steps on its own.
    """
    if torch.is_grad_enabled() or torch.is_autocast_enabled("cpu") or layer.check_finite or layer.run_direction is not fused.run_direction:
        return None
    if regularisers.active(layer, layer.training):  # masks and zoneout need the time dimension: the general path
        return None
    if transforms.recorded():  # a recorded program must hold the op that serves every length
        return None
    if transforms.functorch_active():  # vmap & co.: the engine's Functions carry the transform rules, the step op none
        return None
    if not isinstance(input, Tensor) or (input.is_cuda and cudnn.declines(layer, "cuda") is None):
        return None  # on CUDA torch's cuDNN step is the faster one
    rank = input.dim()
    batch_first = rank == 3 and layer.batch_first
    if rank not in (2, 3) or input.shape[1 if batch_first else 0] != 1:
        return None
    unbatched = rank == 2
    batch = 1 if unbatched else input.shape[0 if batch_first else 1]
    plan = _plan(layer)
    if plan is not None and input.shape[-1] == layer.input_size and input.dtype == plan.dtype and input.is_cpu:
        if not (layer.training and layer.dropout != 0.0 and layer.num_layers > 1):  # no dropout to draw between layers
            stacked = _stacked_state(layer, plan, hx, input, batch, unbatched)
            if stacked is not None:
                return _stacked_step(layer, plan, input, *stacked, batch_first and batch > 1)
    x = input if unbatched else input.select(1, 0) if batch_first else input[0]  # (N, H_in); unbatched: a batch of one
    layer._check_input(x)  # the general checks: they raise the error for bad input
    states = layer._initial_states(hx, x, unbatched)
    y, finals = layer._run_layers(x, states, None, one_step)  # dropout between layers drawn as on the general path
    return (y if unbatched else y.unsqueeze(1 if batch_first else 0)), final_state(finals, unbatched)


def _plan(layer) -> StepPlan | None:
    """The layer's cached plan, rebuilt when its registered parameters changed; None where the kernel does not apply."""
    ids = [*map(id, layer._parameters.values())]
    cached = layer.__dict__.get("_step_plan")
    if cached is not None and cached[0] == ids:
        return cached[1]
    plan = _build_plan(layer)
    layer.__dict__["_step_plan"] = (ids, plan)  # a None (no kernel for this layer) is kept too: not re-decided every call
    return plan


def forget_plan(layer) -> None:
    """Drop the cached plan: after ``.to()``/``.double()`` the parameters keep their identities but not their dtype
    or device (``RecurrentLayer._apply`` calls this)."""
    layer.__dict__.pop("_step_plan", None)


def _build_plan(layer) -> StepPlan | None:
    if layer.proj_size or layer.layer_norm:
        return None
    parameters = layer._parameters
    names = [cell[:4] for cell in layer._cell_names]  # w_ih, w_hh, b_ih, b_hh
    if any(name is not None and name not in parameters for cell in names for name in cell):
        return None  # a weight swapped for a plain attribute: looked up on every call instead
    present = [parameters[name] for cell in names for name in cell if name is not None]
    dtypes = {w.dtype for w in present}
    if len(dtypes) != 1 or not all(w.is_cpu for w in present):
        return None
    dtype = dtypes.pop()
    found = fused.step_kernel(layer.spec, present[0])
    if found is None:
        return None
    kind, kernel = found
    no_bias = torch.empty(0, dtype=dtype)  # the op's list holds tensors only: an empty one stands for "no bias"
    weights = [no_bias if name is None else parameters[name] for cell in names for name in cell]
    return StepPlan(kernel, kind, dtype, weights, len(names), layer.spec.state_count == 2)


def _stacked_state(layer, plan: StepPlan, hx, input: Tensor, batch: int, unbatched: bool) -> tuple[Tensor, Tensor] | None:
    """``(h_0, c_0)`` as (cells, N, H) when ``hx`` is exactly what the layer expects (zeros for None; c_0 is h_0
    but for the LSTM); None otherwise, and the general checks run and name what is wrong."""
    if hx is None:
        zeros = input.new_zeros(plan.cells, batch, layer.hidden_size)
        return zeros, zeros
    if plan.lstm:
        if not (isinstance(hx, (tuple, list)) and len(hx) == 2):
            return None
        h_0, c_0 = hx
    else:
        h_0 = c_0 = hx
    expected = (plan.cells, layer.hidden_size) if unbatched else (plan.cells, batch, layer.hidden_size)
    for part in (h_0, c_0) if plan.lstm else (h_0,):
        if not isinstance(part, Tensor) or part.shape != expected or part.dtype != input.dtype or not part.is_cpu:
            return None
    return (h_0.unsqueeze(1), c_0.unsqueeze(1)) if unbatched else (h_0, c_0)


def _stacked_step(layer, plan: StepPlan, input: Tensor, h_0: Tensor, c_0: Tensor, batch_first_rows: bool):
    """The whole step in one ``stacked_step`` call: ``(output, h_n)``, or ``(output, (h_n, c_n))``, in the input's layout.

    The op takes the input as it is, unbatched (1, H_in) or a time-major length-1 sequence (1, N, H_in), and
    returns the output in the same layout: at this size, the two views that would take the time dimension off
    and put it back cost a tenth of the call. A batch-first input of one row has that layout too; only one of
    several rows, (N, 1, H_in), is viewed as (N, H_in) and back."""
    x = input.select(1, 0) if batch_first_rows else input
    y, h_n, c_n = plan.kernel(plan.kind, x, h_0, c_0, plan.weights, layer.num_directions)
    if input.dim() == 2:  # unbatched: the states come back without their batch of one
        h_n, c_n = h_n.squeeze(1), c_n.squeeze(1) if plan.lstm else c_n
    elif batch_first_rows:
        y = y.unsqueeze(1)
    return y, ((h_n, c_n) if plan.lstm else h_n)


def one_step(spec, x: Tensor, state: State, weights, valid: None, reverse: bool) -> tuple[Tensor, State]:
    """An engine's ``run_direction`` for one time step, without the time dimension: x (N, H_in) -> (y, final).

    The fused engine's one-step kernel where it applies, as ``fused.run_direction`` takes it for a length-1
    sequence (the direction does not matter for one step); elsewhere ``fused.run_direction`` itself. ``y`` may
    share memory with ``final``: :func:`final_state` copies.
    """
    stepped = fused.single_step(spec, x, state, weights)
    if stepped is not None:
        return stepped[0], stepped
    y, final = fused.run_direction(spec, x.unsqueeze(0), state, weights, valid, reverse)
    return y.squeeze(0), final


def final_state(finals: list[State], unbatched: bool):
    """``h_n``, or ``(h_n, c_n)`` for LSTM, from each (layer, direction)'s final state of (N, size) tensors.

    Batched: stacked to (D*num_layers, N, size). Unbatched, the parts are (1, size) and are concatenated to
    (D*num_layers, size). Both copy, so ``h_n`` never shares memory with the output.
    """
    join = torch.cat if unbatched else torch.stack
    h_n = join([final[0] for final in finals])
    return h_n if len(finals[0]) == 1 else (h_n, join([final[1] for final in finals]))
