r"""The scan engine: the linear-recurrence families (minGRU, minLSTM, RG-LRU) in parallel over time.

For a spec with ``coefficients`` (:mod:`rnnkit.cells.minimal`) one layer and direction is one
composite op, ``rnnkit::linear_recurrence`` (so a trace, torch.compile or torch.export records
one node whatever the length):

1. the projections of all steps, **one GEMM**: ``P = X W_ih^T + b_ih``, X (L*N, H_in), P (L*N, G*H);
2. the coefficients of every step at once: ``(a, b) = coefficients(P)``, each (L, N, H), by the
   compiled ``rnnkit_fused::scan_coefficients`` (one pass; its backward one more);
3. padding (``valid`` False) made the identity: a = 1, b = 0, so the state is held past a
   sequence's end, and a reverse pass starts from h0 at each sequence's last valid step;
4. the scan of h_t = a_t ⊙ h_{t-1} + b_t from h0 (reverse: h_t = a_t ⊙ h_{t+1} + b_t) by the
   compiled ``rnnkit_fused::linear_scan`` (``ops/csrc/linear_scan.cpp``: threads over features,
   time chunked when the features are too few); outputs zeroed at padding.

On CUDA (with triton installed) the scan is the Triton kernel of :mod:`rnnkit.ops.triton.scan`, the
same contract. Without the compiled library, or on another device or dtype, steps 2 and 4 are plain PyTorch:
the cells' own coefficient math and :func:`chunked_scan`, differentiated by autograd. The scan's
derivatives (:class:`LinearScan`) are scans too (docs/design/parallel-scan.md):

* backward: with g = ∂L/∂h, the total gradient of each state is a scan the other way,
  δ_t = g_t + a_{t+1} ⊙ δ_{t+1} (forward direction), and then ∂L/∂a_t = δ_t ⊙ h_{t-1},
  ∂L/∂b_t = δ_t, ∂L/∂h0 = a_0 ⊙ δ_0: ``rnnkit_fused::linear_scan_backward``, and, with grad
  mode on (double backward, torch.func), the same math from differentiable scans;
* forward mode: ḣ_t = a_t ⊙ ḣ_{t-1} + (ȧ_t ⊙ h_{t-1} + ḃ_t), from ḣ0: a scan again;
* vmap: the vmapped dimension joins the features (the scan) or the rows (the coefficients).

Results are the reference engine's (the per-step loop) up to rounding: the tests hold them to
1e-10 in float64 and 1e-5 in float32, outputs, states and every gradient.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from rnnkit import ops
from rnnkit.cells.base import CellSpec, CellWeights, State
from rnnkit.cells.minimal import LINEAR_RECURRENCE_SPECS
from rnnkit.ops import triton as triton_ops
from rnnkit.ops.kinds import MINGRU, SCAN_KINDS
from rnnkit.engine import transforms
from rnnkit.engine.gemm import linear


_SPECS = {SCAN_KINDS[name]: spec for name, spec in LINEAR_RECURRENCE_SPECS.items()}


def supports(spec: CellSpec) -> bool:
    """Whether the scan covers a family: those whose step is a linear recurrence (``spec.coefficients``)."""
    return spec.coefficients is not None


def run_direction(spec: CellSpec, x: Tensor, state: State, weights: CellWeights, valid: Tensor | None, reverse: bool,
                  zoneout: Tensor | None = None) -> tuple[Tensor, State]:  # fmt: skip
    """Same contract and results as :func:`rnnkit.engine.reference.run_direction`.

    Under autocast the projections of all steps (the one GEMM) run in the autocast dtype, as
    torch.nn's layers run theirs; the coefficients, the scan and the returned tensors are float32:
    the state is carried through every step, where low precision compounds. Zoneout keeps the recurrence linear: with keep weights m_t,
    h_t = m_t ⊙ h_{t-1} + (1 - m_t) ⊙ (a_t ⊙ h_{t-1} + b_t) is the scan of
    a'_t = a_t + m_t ⊙ (1 - a_t), b'_t = (1 - m_t) ⊙ b_t.
    """
    if not supports(spec):
        raise ValueError(f"engine scan: expected a linear-recurrence family (mingru, minlstm, rglru), got {spec.name!r}")
    kind = SCAN_KINDS[spec.name]
    if torch.is_autocast_enabled(x.device.type):
        length, batch, features = x.shape
        projected = torch.nn.functional.linear(x.reshape(length * batch, features), weights.weight_ih, weights.bias_ih)  # autocast's dtype
        with torch.autocast(x.device.type, enabled=False):
            y, h_n = _from_projected(kind, projected.float(), length, batch, _to_float32(state[0]), weights.decay_logit, valid, reverse,
                                     None if zoneout is None else _to_float32(zoneout))  # fmt: skip
        return y, (h_n,)
    args = (kind, x.contiguous(), state[0], weights.weight_ih, weights.bias_ih, weights.decay_logit, valid, reverse, zoneout)
    y, h_n = transforms.call(torch.ops.rnnkit.linear_recurrence, _linear_recurrence, *args)
    return y, (h_n,)


def _linear_recurrence(kind, x, h0, w_ih, b_ih, decay_logit, valid, reverse, zoneout=None):
    """``rnnkit::linear_recurrence``: one layer and direction of a linear-recurrence family, ``(y, h_n)``.

    The op is composite (its kernel runs these Python calls), so a trace, torch.compile and
    torch.export record one node per layer and direction, whatever the length.
    """
    length, batch, features = x.shape
    return _from_projected(kind, linear(x.reshape(length * batch, features), w_ih, b_ih), length, batch, h0, decay_logit, valid, reverse, zoneout)


def _from_projected(kind, projected, length, batch, h0, decay_logit, valid, reverse, zoneout):
    """The rest of a direction from its projected input (L*N, G*H): coefficients, padding, zoneout, the scan."""
    a, b = coefficients(kind, projected, decay_logit)
    a, b = a.view(length, batch, -1), b.view(length, batch, -1)
    if zoneout is not None:
        a, b = torch.addcmul(a, zoneout, 1 - a), b * (1 - zoneout)
    keep = None if valid is None else valid.unsqueeze(-1)
    if keep is not None:
        a = torch.where(keep, a, torch.ones((), dtype=a.dtype, device=a.device))
        b = torch.where(keep, b, torch.zeros((), dtype=b.dtype, device=b.device))
    h = scan(a, b, h0, reverse)
    final = h0.clone() if length == 0 else h[0] if reverse else h[-1]
    y = h if keep is None else torch.where(keep, h, torch.zeros((), dtype=h.dtype, device=h.device))
    return y, final


_LIBRARY = torch.library.Library("rnnkit", "FRAGMENT")
_LIBRARY.define(
    "linear_recurrence(int kind, Tensor x, Tensor h0, Tensor w_ih, Tensor? b_ih, Tensor? decay_logit, Tensor? valid, bool reverse, "
    "Tensor? zoneout=None) -> (Tensor, Tensor)"
)
_LIBRARY.impl("linear_recurrence", _linear_recurrence, "CompositeImplicitAutograd")


def coefficients(kind: int, projected: Tensor, decay_logit: Tensor | None) -> tuple[Tensor, Tensor]:
    """``(a, b)`` (R, H) from the projected input (R, G*H): the compiled kernel where it applies, else the cells' own math."""
    if _native(projected) is None:
        return _reference_coefficients(kind)(projected, decay_logit)
    if ops.recorded_by_autograd(projected, decay_logit) or transforms.functorch_active():
        return ScanCoefficients.apply(kind, projected, decay_logit)
    with torch.no_grad():
        return _native(projected).scan_coefficients(kind, projected.contiguous(), decay_logit)


def _reference_coefficients(kind: int):
    """The family's ``coefficients`` of :mod:`rnnkit.cells.minimal` (which define the results) as a function of (P, Λ)."""
    spec = _SPECS[kind]
    return lambda projected, decay_logit: spec.coefficients(projected, CellWeights(None, None, None, None, decay_logit=decay_logit))


class ScanCoefficients(torch.autograd.Function):
    """The compiled coefficients, ``(a, b) = ScanCoefficients.apply(kind, P, Λ)``; higher orders by the cells' math."""

    @staticmethod
    def forward(kind, projected, decay_logit):
        return _native(projected).scan_coefficients(kind, projected.contiguous(), decay_logit)

    @staticmethod
    def setup_context(ctx, inputs, output):
        kind, projected, decay_logit = inputs
        ctx.kind = kind
        ctx.primals = (projected, decay_logit)
        ctx.save_for_backward(projected, decay_logit)

    @staticmethod
    def backward(ctx, grad_a, grad_b):
        projected, decay_logit = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True or torch.func: the cells' math, differentiable again
            return None, *transforms.reference_vjp(_reference_coefficients(ctx.kind), (projected, decay_logit), (grad_a, grad_b))
        hidden = projected.shape[1] // (2 if ctx.kind == MINGRU else 3)
        zeros = projected.new_zeros(projected.shape[0], hidden)
        grad_a, grad_b = (zeros if g is None else g for g in (grad_a, grad_b))
        d_projected, d_decay = _native(projected).scan_coefficients_backward(ctx.kind, projected, decay_logit, grad_a, grad_b)
        return None, d_projected, d_decay if decay_logit is not None else None

    @staticmethod
    def jvp(ctx, _kind, tangent_projected, tangent_decay):
        return transforms.reference_jvp(_reference_coefficients(ctx.kind), ctx.primals, (tangent_projected, tangent_decay))

    @staticmethod
    def vmap(info, in_dims, kind, projected, decay_logit):
        size = info.batch_size
        if in_dims[2] is not None:  # a batched Λ: one call per sample
            parts = [ScanCoefficients.apply(kind, projected if in_dims[1] is None else projected.select(in_dims[1], i), decay_logit.select(in_dims[2], i))
                     for i in range(size)]  # fmt: skip
            return tuple(torch.stack(p) for p in zip(*parts)), (0, 0)
        rows = projected.unsqueeze(0).expand(size, *projected.shape) if in_dims[1] is None else projected.movedim(in_dims[1], 0)
        a, b = ScanCoefficients.apply(kind, rows.reshape(-1, rows.shape[-1]), decay_logit)
        return (a.view(size, -1, a.shape[-1]), b.view(size, -1, b.shape[-1])), (0, 0)


def scan(a: Tensor, b: Tensor, h0: Tensor, reverse: bool = False) -> Tensor:
    """Every state of the linear recurrence, a, b (T, *S), h0 (*S) -> (T, *S).

    The reference loop it equals (``reverse`` runs t from T-1 down to 0)::

        h = h0
        for t in range(T):
            h = a[t] * h + b[t]
            out[t] = h
    """
    steps, shape = a.shape[0], a.shape[1:]
    a, b, h0 = a.reshape(steps, -1), b.reshape(steps, -1), h0.reshape(-1)
    if _native(a) is None and triton_ops.runs_on(a):  # CUDA (or Triton's interpreter): the Triton scan, its own autograd
        from rnnkit.ops.triton.scan import linear_scan as triton_scan  # imports triton: only where it runs

        flat = triton_scan(a.unsqueeze(1), b.unsqueeze(1), h0.unsqueeze(0), reverse).squeeze(1)
    elif _native(a) is None:
        flat = chunked_scan(a, b, h0, reverse)
    elif ops.recorded_by_autograd(a, b, h0) or transforms.functorch_active():  # torch.func reaches the Function's rules only
        flat = LinearScan.apply(a, b, h0, reverse)
    else:
        flat = _kernel(a, b, h0, reverse)
    return flat.view(steps, *shape)


def _native(t: Tensor):
    if t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64):
        return ops.native_loops()
    return None


def _kernel(a: Tensor, b: Tensor, h0: Tensor, reverse: bool) -> Tensor:
    with torch.no_grad():
        return _native(a).linear_scan(a.contiguous(), b.contiguous(), h0.contiguous(), reverse)


class LinearScan(torch.autograd.Function):
    """The compiled scan, differentiable to any order: ``h = LinearScan.apply(a, b, h0, reverse)`` on (T, F), (T, F), (F,)."""

    @staticmethod
    def forward(a, b, h0, reverse):
        return _kernel(a, b, h0, reverse)

    @staticmethod
    def setup_context(ctx, inputs, output):
        a, _, h0, reverse = inputs
        ctx.reverse = reverse
        ctx.save_for_backward(a, h0, output)
        ctx.save_for_forward(a, h0, output)

    @staticmethod
    def backward(ctx, grad_h):
        a, h0, h = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True or torch.func: the same math, from differentiable scans
            return (*scan_vjp(a, h0, h, grad_h, ctx.reverse), None)
        return (*_native(a).linear_scan_backward(a.contiguous(), h, h0.contiguous(), grad_h.contiguous(), ctx.reverse), None)

    @staticmethod
    def jvp(ctx, tangent_a, tangent_b, tangent_h0, _reverse):
        a, h0, h = ctx.saved_tensors
        drive = torch.zeros_like(h) if tangent_b is None else tangent_b
        if tangent_a is not None:
            drive = drive + tangent_a * _previous_states(h, h0, ctx.reverse)
        start = torch.zeros_like(h0) if tangent_h0 is None else tangent_h0
        return _differentiable_scan(a, drive, start, ctx.reverse)

    @staticmethod
    def vmap(info, in_dims, a, b, h0, reverse):
        size = info.batch_size

        def features_last(t, d, axis):  # the vmapped dimension moved beside the features, then merged with them
            t = t.unsqueeze(axis).expand(*t.shape[:axis], size, *t.shape[axis:]) if d is None else t.movedim(d, axis)
            return t.reshape(*t.shape[:axis], -1)

        h = LinearScan.apply(features_last(a, in_dims[0], 1), features_last(b, in_dims[1], 1), features_last(h0, in_dims[2], 0), reverse)
        return h.view(h.shape[0], size, -1), 1


def scan_vjp(a: Tensor, h0: Tensor, h: Tensor, grad_h: Tensor, reverse: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients of ``(a, b, h0)`` from the gradient of every state: one scan in the other direction, then products.

    Forward direction: δ_t = g_t + a_{t+1} δ_{t+1} (δ_{T-1} = g_{T-1}), a reverse scan whose
    coefficient at t is a_{t+1}; the reverse direction mirrors it. Differentiable again.
    """
    if a.shape[0] == 0:
        return torch.zeros_like(a), torch.zeros_like(a), torch.zeros_like(h0)
    zero = a.new_zeros(1, a.shape[1])
    later_coefficient = torch.cat([zero, a[:-1]]) if reverse else torch.cat([a[1:], zero])
    total = _differentiable_scan(later_coefficient, grad_h, torch.zeros_like(h0), not reverse)
    first = -1 if reverse else 0  # the step that reads h0
    return total * _previous_states(h, h0, reverse), total, a[first] * total[first]


def _previous_states(h: Tensor, h0: Tensor, reverse: bool) -> Tensor:
    """The state each step reads: h_{t-1} (forward) or h_{t+1} (reverse), h0 at the first step."""
    return torch.cat([h[1:], h0.unsqueeze(0)]) if reverse else torch.cat([h0.unsqueeze(0), h[:-1]])


def _differentiable_scan(a: Tensor, b: Tensor, h0: Tensor, reverse: bool) -> Tensor:
    """The scan inside a derivative: recorded by autograd where grad mode is on (double backward, torch.func)."""
    if torch.is_grad_enabled():
        return LinearScan.apply(a, b, h0, reverse)
    return _kernel(a, b, h0, reverse)


def chunked_scan(a: Tensor, b: Tensor, h0: Tensor, reverse: bool = False, chunk_size: int | None = None) -> Tensor:
    """The scan in plain PyTorch, differentiated by autograd: for devices, dtypes and machines without the kernel.

    Args:
        a, b: (T, *S) coefficients; h0: (*S).
        chunk_size: C, the steps per chunk; ⌈√T⌉ if None (it minimises the C + ⌈T/C⌉ sequential steps).

    T is padded to K chunks of C steps (identity steps a = 1, b = 0: exact for any T). Every chunk
    runs from a zero start, all chunks at once, keeping the running product of a; a loop over the
    K chunk boundaries carries the true state; one fused step adds it in. That is C + K ≈ 2√T
    sequential elementwise ops instead of T, with no division and no logarithm.
    """
    if reverse:
        return chunked_scan(a.flip(0), b.flip(0), h0, False, chunk_size).flip(0)
    steps = a.shape[0]
    if chunk_size is None:
        chunk_size = math.isqrt(steps - 1) + 1 if steps > 1 else 1  # ⌈√T⌉
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size: expected a positive int, got {chunk_size!r}")
    if steps == 0:
        return a.new_empty(a.shape)
    chunks = -(-steps // chunk_size)
    padding = chunks * chunk_size - steps
    if padding:
        a = torch.cat([a, a.new_ones(padding, *a.shape[1:])])
        b = torch.cat([b, b.new_zeros(padding, *b.shape[1:])])
    a_steps = a.reshape(chunks, chunk_size, *a.shape[1:]).unbind(1)  # C tensors of (K, *S)
    b_steps = b.reshape(chunks, chunk_size, *b.shape[1:]).unbind(1)
    local, decay = [b_steps[0]], [a_steps[0]]
    for a_j, b_j in zip(a_steps[1:], b_steps[1:]):
        local.append(torch.addcmul(b_j, a_j, local[-1]))
        decay.append(a_j * decay[-1])
    chunk_ends, chunk_decays = local[-1].unbind(0), decay[-1].unbind(0)
    starts = [h0]
    for end, end_decay in zip(chunk_ends[:-1], chunk_decays[:-1]):
        starts.append(torch.addcmul(end, end_decay, starts[-1]))
    h = torch.addcmul(torch.stack(local, 1), torch.stack(decay, 1), torch.stack(starts).unsqueeze(1))
    return h.reshape(chunks * chunk_size, *h.shape[2:])[:steps]


def _to_float32(t: Tensor) -> Tensor:
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t
