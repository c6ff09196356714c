r"""Linear-recurrence cells: minGRU and minLSTM (Feng et al., 2024) and RG-LRU (De et al., 2024).

Their gates read only x_t, never h_{t-1}, so one step is linear in the state::

    h_t = a_t ⊙ h_{t-1} + b_t,      (a_t, b_t) = coefficients(W_ih x_t + b_ih),  a_t ∈ (0, 1)
    y_t = h_t

which is what lets an engine take the projections of all steps in one GEMM and scan the
recurrence in parallel over time (:mod:`rnnkit.engine.scan`; docs/design/parallel-scan.md).
The step functions below are the paper's equations one step at a time; the reference
engine runs them and defines the results.

Shapes, per family with G gates:

* ``x_t``: (N, H_in) or (H_in,); ``h_t``: (N, H) or (H,); the state is ``(h,)``
* ``weight_ih``: (G*H, H_in), ``bias_ih``: (G*H,); no ``weight_hh``, no ``bias_hh``
* RG-LRU only: ``decay_logit`` Λ: (H,)

Initialisation: weights and biases ~ U(-1/√H, 1/√H), as every rnnkit family; RG-LRU's Λ as
its paper says (below).

**minGRU** (Feng et al., 2024, "Were RNNs All We Needed?", §3.1), gates in the order z, h̃::

    z_t = σ(W_z x_t + b_z)
    h̃_t = g(W_h x_t + b_h),       g(v) = v + 1/2 if v >= 0 else σ(v)
    h_t = (1 - z_t) ⊙ h_{t-1} + z_t ⊙ h̃_t

g(·) is the paper's log-space version (the one its models were trained with): it keeps h̃_t
positive. It is applied to the candidate only, never to an initial state: a state passed in
is a previous h_t, and transforming it again (as the paper's log-space code does with
log g(h_0)) makes streaming disagree with one call.

**minLSTM** (§3.2), gates in the order f, i, h̃, with the normalised gates f', i'::

    f_t = σ(W_f x_t + b_f),  i_t = σ(W_i x_t + b_i),  h̃_t = g(W_h x_t + b_h)
    f'_t = f_t / (f_t + i_t),  i'_t = i_t / (f_t + i_t)
    h_t = f'_t ⊙ h_{t-1} + i'_t ⊙ h̃_t

computed as f'_t = σ(log σ(f̂_t) - log σ(î_t)), i'_t = σ(log σ(î_t) - log σ(f̂_t)), the
paper's log-space form, equal to the ratios and stable where both gates are tiny.

**RG-LRU** (De et al., 2024, Griffin/Hawk, §2.4), gates in the order r, i, u, with c = 8::

    r_t = σ(W_a x_t + b_a),  i_t = σ(W_x x_t + b_x),  u_t = W_u x_t + b_u
    a_t = σ(Λ)^(c r_t)                     (log a_t = -c r_t softplus(-Λ))
    h_t = a_t ⊙ h_{t-1} + √(1 - a_t²) ⊙ (i_t ⊙ u_t)

Λ is initialised so that σ(Λ)^c is uniform in [0.9, 0.999], as §2.4 says (recurrentgemma
draws σ(Λ) itself from that range; we follow the paper). Departures, so that the layer takes
``input_size != hidden_size`` as rnnkit.GRU does: the value u_t is a linear map of x_t (in
Griffin that linear branch, and a Conv1D, sit outside the RG-LRU) and the gates read x_t
through the same single GEMM; W_a, W_x are dense, as in the paper (recurrentgemma's are
block-diagonal). recurrentgemma's document-boundary reset and its clipped gradient of the
square root are not in §2.4 and are not applied.

Reference loop over ``x`` of shape (L, N, H_in), minGRU's (the others differ in the gates)::

    h = torch.zeros(N, H)
    for x_t in x.unbind(0):
        k_z, k_h = (x_t @ W_ih.T + b_ih).chunk(2, dim=-1)
        z = k_z.sigmoid()
        h = (1 - z) * h + z * g(k_h)
        outputs.append(h)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from rnnkit.cells.base import CellSpec, CellWeights, RecurrentCell, State, linear

RG_LRU_C = 8.0  # De et al. (2024), §2.4: "c is a scalar-valued constant set to 8"
RG_LRU_INIT_RANGE = (0.9, 0.999)  # σ(Λ)^c ~ U(0.9, 0.999) at initialisation, §2.4


def g(v: Tensor) -> Tensor:
    """minGRU's positive activation (Feng et al., 2024, §3.1, log-space version): v + 1/2 for v >= 0, else σ(v)."""
    return torch.where(v >= 0, v + 0.5, torch.sigmoid(v))


def project_input(x: Tensor, w: CellWeights) -> Tensor:
    """``W_ih x + b_ih``: every gate of every family here, in one GEMM (over all steps in the scan engine)."""
    return linear(x, w.weight_ih, w.bias_ih)


# -- coefficients (a_t, b_t) of h_t = a_t * h_{t-1} + b_t, from the projected input ---------------------------


def mingru_coefficients(projected: Tensor, w: CellWeights) -> tuple[Tensor, Tensor]:
    k_z, k_h = projected.chunk(2, dim=-1)
    z = torch.sigmoid(k_z)
    return 1 - z, z * g(k_h)


def minlstm_coefficients(projected: Tensor, w: CellWeights) -> tuple[Tensor, Tensor]:
    k_f, k_i, k_h = projected.chunk(3, dim=-1)
    log_ratio = F.logsigmoid(k_f) - F.logsigmoid(k_i)  # log(f / i)
    return torch.sigmoid(log_ratio), torch.sigmoid(-log_ratio) * g(k_h)  # f' = f/(f+i), i' = i/(f+i)


def rglru_coefficients(projected: Tensor, w: CellWeights) -> tuple[Tensor, Tensor]:
    k_r, k_i, u = projected.chunk(3, dim=-1)
    log_a = -RG_LRU_C * torch.sigmoid(k_r) * F.softplus(-w.decay_logit)  # log(σ(Λ)^(c r))
    normaliser = torch.sqrt(-torch.expm1(2 * log_a))  # √(1 - a²), accurate as a -> 1
    return torch.exp(log_a), normaliser * (torch.sigmoid(k_i) * u)


def init_rglru_decay_logit_(decay_logit: Tensor) -> None:
    """Λ such that σ(Λ)^c ~ U(0.9, 0.999) (De et al., 2024, §2.4)."""
    low, high = RG_LRU_INIT_RANGE
    with torch.no_grad():
        a_c = torch.empty_like(decay_logit, dtype=torch.float64).uniform_(low, high)
        decay_logit.copy_(torch.logit(a_c.pow(1.0 / RG_LRU_C)))


# -- the steps, as the papers write them ---------------------------------------------------------------------


def mingru_step(x_t: Tensor, state: State, w: CellWeights) -> tuple[Tensor, State]:
    k_z, k_h = project_input(x_t, w).chunk(2, dim=-1)
    z = torch.sigmoid(k_z)
    h = (1 - z) * state[0] + z * g(k_h)
    return h, (h,)


def minlstm_step(x_t: Tensor, state: State, w: CellWeights) -> tuple[Tensor, State]:
    f_norm, i_times_candidate = minlstm_coefficients(project_input(x_t, w), w)
    h = f_norm * state[0] + i_times_candidate
    return h, (h,)


def rglru_step(x_t: Tensor, state: State, w: CellWeights) -> tuple[Tensor, State]:
    a, normalised_input = rglru_coefficients(project_input(x_t, w), w)
    h = a * state[0] + normalised_input
    return h, (h,)


def _recur(coefficients):
    """``recur(projected_x_t, state, w)``: the step after its input projection, as the hoisted loop runs it."""

    def recur(projected: Tensor, state: State, w: CellWeights) -> tuple[Tensor, State]:
        a, b = coefficients(projected, w)
        h = a * state[0] + b
        return h, (h,)

    return recur


def _spec(name: str, gates: int, step, coefficients, init_decay_logit=None) -> CellSpec:
    return CellSpec(name=name, gates=gates, state_count=1, step=step, project_input=project_input, recur=_recur(coefficients),
                    coefficients=coefficients, init_decay_logit=init_decay_logit)  # fmt: skip


MINGRU = _spec("mingru", 2, mingru_step, mingru_coefficients)
MINLSTM = _spec("minlstm", 3, minlstm_step, minlstm_coefficients)
RGLRU = _spec("rglru", 3, rglru_step, rglru_coefficients, init_rglru_decay_logit_)
LINEAR_RECURRENCE_SPECS = {spec.name: spec for spec in (MINGRU, MINLSTM, RGLRU)}


class _LinearRecurrentCell(RecurrentCell):
    """One step of a linear-recurrence family: ``h' = cell(x, h)``, ``h`` zeros if None.

    Args:
        input_size: H_in, the features of ``x``.
        hidden_size: H, the features of ``h``.
        bias: learn ``bias_ih`` (there is no ``bias_hh``: the gates do not read h).
    """

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device=None, dtype=None) -> None:
        super().__init__(input_size, hidden_size, bias, device=device, dtype=dtype)

    def forward(self, input: Tensor, hx: Tensor | None = None) -> Tensor:
        return self._run(input, None if hx is None else (hx,))[0]


class MinGRUCell(_LinearRecurrentCell):
    __doc__ = "minGRU (Feng et al., 2024, §3.1); the math is in :mod:`rnnkit.cells.minimal`.\n\n" + _LinearRecurrentCell.__doc__
    spec = MINGRU


class MinLSTMCell(_LinearRecurrentCell):
    __doc__ = "minLSTM (Feng et al., 2024, §3.2); the math is in :mod:`rnnkit.cells.minimal`.\n\n" + _LinearRecurrentCell.__doc__
    spec = MINLSTM


class RGLRUCell(_LinearRecurrentCell):
    __doc__ = (
        "RG-LRU (De et al., 2024, §2.4); the math is in :mod:`rnnkit.cells.minimal`. Owns ``decay_logit`` Λ (H,).\n\n"
        + _LinearRecurrentCell.__doc__
    )
    spec = RGLRU
