"""The hoisted loop: all input projections in one batched op, then the reference loop over the recurrence.

For a cell whose spec splits its step into ``project_input`` and ``recur``
(the LayerNorm variants), the input projection, LN(W_ih x_t) ⊙ γ + b, does
not depend on the state. So it runs once over the whole (L, N, H_in) input,
one GEMM and one LayerNorm, and the per-step loop is left with the recurrent
GEMM, its LayerNorm and the gate math. Backward is autograd's. The results are
the reference engine's, since the per-step math is the same functions.
"""

from __future__ import annotations

import dataclasses

from torch import Tensor

from rnnkit.cells.base import CellSpec, CellWeights, State
from rnnkit.engine import reference


def supports(spec: CellSpec) -> bool:
    return spec.project_input is not None and spec.recur is not None


def run_direction(spec: CellSpec, x: Tensor, state: State, weights: CellWeights, valid: Tensor | None, reverse: bool) -> tuple[Tensor, State]:
    """Same contract and results as :func:`rnnkit.engine.reference.run_direction`."""
    projected = spec.project_input(x, weights)  # (L, N, G*H), every step at once
    recurrence = dataclasses.replace(spec, step=spec.recur)
    return reference.run_direction(recurrence, projected, state, weights, valid, reverse)
