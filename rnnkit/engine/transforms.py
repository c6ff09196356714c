"""What the fused engine's autograd Functions share so that every PyTorch transform sees one differentiable op.

Each fused Function (:class:`rnnkit.engine.fused.FusedRecurrence`,
:class:`rnnkit.engine.fused_layer_norm.FusedLayerNormLSTM`) returns the output ``y`` (empty
when it is a view of the states), the state history ``hs`` (L+1, N, H_out), the cell history
``cs`` (LSTM, else empty) and non-differentiable internals kept for backward. The rules:

* **First order** (``backward`` with grad mode off): the compiled backward through time.
* **Higher order** (grad mode on in ``backward``: ``create_graph=True``, or inside torch.func,
  whose transforms always differentiate that way): the vector-Jacobian product of
  :func:`reference_outputs`, the cells' own step math under ``torch.func.vjp``, which is
  differentiable again. It recomputes the sequence once; the results are the reference engine's.
* **Forward mode** (``jvp``/``jacfwd``): ``torch.func.jvp`` of the same reference outputs.
* **vmap**: the vmapped dimension is folded into the batch dimension N, which the kernels
  already treat row by row (:func:`vmap_by_batch`); a batched weight runs one call per sample.
* **The output and the states**: without padding or projection the output is the state history's
  steps. Eagerly it shares hs's memory (:func:`shares_output`), and an in-place edit of it is
  detected and the history recomputed (:func:`keep_output`), as torch.nn's RNN and GRU allow such
  edits; in a recorded program it is a view of hs (:func:`output`). The final states are outputs
  of their own (:func:`final_states`), so that their gradients never become (L+1, N, H) buffers.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rnnkit.engine.reference import zone_out


def functorch_active() -> bool:
    """Whether a torch.func transform (grad, vmap, jvp, ...) is running around this call."""
    return torch._C._are_functorch_transforms_active()


def recorded() -> bool:
    """Whether a program is being recorded (torch.compile, torch.export, torch.jit.trace, and the ONNX exporters
    built on them): it must record the engine's op, one node that serves every length and is saved by name."""
    return torch.compiler.is_compiling() or torch.compiler.is_exporting() or torch.jit.is_tracing()


def call(op, kernel, *args):
    """Run an engine op: through the dispatcher where a program is being recorded; elsewhere its kernel directly.

    Eagerly the two are the same function, and the dispatch to a Python kernel costs about 100 µs a call.
    torch.func transforms need the direct call too: they reach an autograd.Function only when it is
    called directly, not from inside an op's kernel.
    """
    return op(*args) if recorded() and not functorch_active() else kernel(*args)


def final_states(hs: Tensor, cs: Tensor, reverse: bool, lstm: bool) -> tuple[Tensor, Tensor]:
    """``(h_n, c_n)`` copied out of the histories (c_n empty but for the LSTM): outputs of their own."""
    final = 0 if reverse else -1  # not the index L: a symbolic size under torch.compile would be specialised
    return hs[final].clone(), cs[final].clone() if lstm else cs.new_empty(0)


def output(y: Tensor, hs: Tensor, reverse: bool, output_is_view: bool) -> Tensor:
    """The layer-facing output: ``y``, or, where the Function returned it empty, a view of hs's steps."""
    if output_is_view:
        return hs[:-1] if reverse else hs[1:]  # slices, not narrow(length): no size to guard on under export
    return y


def output_gradient(output_is_view: bool, d_y: Tensor | None, d_hs: Tensor | None, hs: Tensor, reverse: bool) -> Tensor:
    """The gradient of the output (L, N, H_out), wherever it arrived: as d_y, or in d_hs where y was its view."""
    grad = (None if d_hs is None else d_hs[:-1] if reverse else d_hs[1:]) if output_is_view else d_y
    return hs.new_zeros(hs.shape[0] - 1, hs.shape[1], hs.shape[2]) if grad is None else grad


def shares_output(aliased: bool) -> bool:
    """Whether an eager call's output shares the state history's memory instead of being a view of it.

    Eagerly the output is made a tensor over hs's storage that is not an autograd view: its gradient
    then reaches backward as it is, with no (L+1, N, H) buffer of zeros to scatter it into, and an
    in-place edit of it is seen by its own version counter (:func:`keep_output`). A recorded program
    or a torch.func transform gets the honest view instead (``y`` empty, sliced by :func:`outputs`).
    """
    return aliased and not recorded() and not functorch_active()


def shared_output(y: Tensor, hs: Tensor, reverse: bool) -> Tensor:
    """The output over hs's steps (see :func:`shares_output`); ``y`` is the kernel's empty placeholder."""
    length, batch, size = hs.shape[0] - 1, hs.shape[1], hs.shape[2]
    offset = hs.storage_offset() + (0 if reverse else batch * size)
    return y.set_(hs.untyped_storage(), offset, (length, batch, size), (batch * size, size, 1))


def keep_output(ctx, y: Tensor, shared: bool) -> None:
    """Watch a shared output's version: torch.nn's RNN and GRU let callers edit their output in place before
    backward (``out += residual``), and that overwrites the saved states."""
    ctx.watched_output = y.detach() if shared else None  # detached: no reference cycle through y's grad_fn
    ctx.watched_version = y._version if shared else None


def output_edited(ctx) -> bool:
    """Whether a shared output, and so the saved state history, was edited in place (then it must be recomputed)."""
    return ctx.watched_output is not None and ctx.watched_output._version != ctx.watched_version


def reference_outputs(
    step, weights, x: Tensor, state: tuple[Tensor, ...], valid: Tensor | None, reverse: bool, output_is_view: bool, zoneout: Tensor | None = None
):
    """A Function's differentiable outputs ``(y, h_n, c_n, hs)`` computed by a cell's step, one step at a time.

    Same layout as the kernels: ``hs[before]`` enters step t and ``hs[after]`` leaves it
    (``before = t + reverse``, ``after = t + 1 - reverse``); padded steps hold the state and
    output zeros; ``y`` is empty where it is a view of hs; ``c_n`` is empty but for the LSTM;
    ``zoneout`` as in :func:`rnnkit.engine.reference.run_direction`.
    """

    length = x.shape[0]
    lstm = len(state) == 2
    hs: list[Tensor | None] = [None] * (length + 1)
    start = length if reverse else 0
    hs[start] = state[0]
    ys: list[Tensor | None] = [None] * length
    for t in range(length - 1, -1, -1) if reverse else range(length):
        y, new = step(x[t], state, weights)
        if zoneout is not None:
            y, new = zone_out(zoneout[t], state, new)
        if valid is not None:
            keep = valid[t].unsqueeze(-1)
            y = torch.where(keep, y, torch.zeros((), dtype=y.dtype, device=y.device))
            new = tuple(torch.where(keep, n, o) for n, o in zip(new, state))
        ys[t], state = y, new
        hs[t + 1 - reverse] = new[0]
    empty = x.new_empty(0)
    y_out = empty if output_is_view or length == 0 else torch.stack(ys)
    return y_out, state[0], state[1] if lstm else empty, torch.stack(hs)


def _of_present(function, primals):
    """``function`` as a function of the primals that are tensors only (the others stay None), and their indices."""
    present = [i for i, p in enumerate(primals) if p is not None]

    def of_present(*tensors):
        full = list(primals)
        for i, t in zip(present, tensors):
            full[i] = t
        return function(*full)

    return of_present, present


def reference_vjp(function, primals: tuple[Tensor | None, ...], cotangents: tuple[Tensor | None, ...]) -> tuple[Tensor | None, ...]:
    """``vjp`` of ``function(*primals) -> outputs`` for the primals that are tensors (None elsewhere), differentiable again."""
    of_present, present = _of_present(function, primals)
    outs, pullback = torch.func.vjp(of_present, *(primals[i] for i in present))
    cotangents = tuple(torch.zeros_like(o) if c is None else c for o, c in zip(outs, cotangents))
    grads = pullback(cotangents)
    result: list[Tensor | None] = [None] * len(primals)
    for i, g in zip(present, grads):
        result[i] = g
    return tuple(result)


def reference_jvp(function, primals: tuple[Tensor | None, ...], tangents: tuple[Tensor | None, ...]) -> tuple[Tensor, ...]:
    """``jvp`` of ``function(*primals) -> outputs`` (a None tangent is zero)."""
    of_present, present = _of_present(function, primals)
    primal_in = tuple(primals[i] for i in present)
    tangent_in = tuple(torch.zeros_like(primals[i]) if tangents[i] is None else tangents[i] for i in present)
    return torch.func.jvp(of_present, primal_in, tangent_in)[1]


def vmap_by_batch(apply, info, in_dims, args, roles):
    """vmap rule: fold the vmapped dimension into the batch dimension N, or run per sample if a weight is batched.

    ``roles`` names each argument's layout: ``"seq"`` (L, N, F), ``"mask"`` (L, N), ``"state"``
    (N, F), ``"weight"`` (anything, must not be batched to fold) or ``None`` (not a tensor).
    Every output of ``apply`` is time-major ``(T, N, F)``, a state ``(N, F)`` or an empty placeholder.
    """
    size = info.batch_size
    if any(d is not None for d, role in zip(in_dims, roles) if role == "weight"):
        per_sample = [apply(*(a if d is None else a.select(d, i) for a, d in zip(args, in_dims))) for i in range(size)]
        stacked = tuple(torch.stack(parts) for parts in zip(*per_sample))
        return stacked, tuple(0 for _ in stacked)
    batch_axis = {"seq": 1, "mask": 1, "state": 0}
    folded = []
    for a, d, role in zip(args, in_dims, roles):
        if role not in batch_axis or a is None:
            folded.append(a)
            continue
        axis = batch_axis[role]
        a = a.unsqueeze(axis).expand(*a.shape[:axis], size, *a.shape[axis:]) if d is None else a.movedim(d, axis)
        folded.append(a.reshape(*a.shape[:axis], size * a.shape[axis + 1], *a.shape[axis + 2 :]))
    results = apply(*folded)
    unfolded, dims = [], []
    for r in results:  # (T, N, F) outputs are batched at dim 1, (N, F) ones at dim 0, empty placeholders not at all
        if r.dim() == 3:
            unfolded.append(r.view(r.shape[0], size, r.shape[1] // size, r.shape[2]))
            dims.append(1)
        elif r.dim() == 2:
            unfolded.append(r.view(size, r.shape[0] // size, r.shape[1]))
            dims.append(0)
        else:
            unfolded.append(r)
            dims.append(None)
    return tuple(unfolded), tuple(dims)
