"""The reference engine: the readable per-step loop, one cell step at a time.

This is the definition every faster engine is tested against. It runs one
layer in one direction over a whole padded sequence.

Time steps are taken with ``x.unbind(0)``, not ``x[t]`` inside the loop:
indexing makes autograd allocate a full-size zero gradient for ``x`` at every
step in backward, which was measured at 13x slower training.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rnnkit.cells.base import CellSpec, CellWeights, State


def run_direction(
    spec: CellSpec,
    x: Tensor,
    state: State,
    weights: CellWeights,
    valid: Tensor | None,
    reverse: bool,
    zoneout: Tensor | None = None,
) -> tuple[Tensor, State]:
    r"""Run one cell over ``x`` and return ``(outputs, final_state)``.

    Args:
        spec: the cell family.
        x: (L, N, H_in) input.
        state: the initial state, each tensor (N, size).
        weights: this layer and direction's weights.
        valid: optional (L, N) bool mask, True where ``t < lengths[n]``.
            Invalid steps leave the state untouched and output zeros; since a
            reverse pass meets a sequence's padding first, holding the initial
            state there makes it start exactly at the sequence's last valid step.
        reverse: run from t = L-1 down to 0.
        zoneout: optional (L, N, H_out) keep-previous weights ``m_t`` (Krueger et al., 2017, §2):
            0/1 masks drawn with probability p in training (the layer passes them as bool flags,
            True = 1, which type promotion makes the weights), the constant p in eval mode.
            The hidden state (the first state tensor; the LSTM's ``c`` is not zoned out, as in
            haste) becomes ``h_t = m_t ⊙ h_{t-1} + (1 - m_t) ⊙ h̃_t``, ``h̃_t`` the cell's
            new state, and the output is that ``h_t``. Padding is applied after it.

    Returns:
        outputs: (L, N, H_out); final_state: the state after the last valid step.
    """
    steps = x.unbind(0)
    masks = valid.unsqueeze(-1).unbind(0) if valid is not None else None
    zones = zoneout.unbind(0) if zoneout is not None else None
    order = range(len(steps) - 1, -1, -1) if reverse else range(len(steps))
    outputs: list[Tensor] = [x] * len(steps)  # placeholders, every slot is overwritten
    for t in order:
        y, new_state = spec.step(steps[t], state, weights)
        if zones is not None:
            y, new_state = zone_out(zones[t], state, new_state)
        if masks is not None:
            keep = masks[t]
            y = torch.where(keep, y, torch.zeros((), dtype=y.dtype, device=y.device))
            new_state = tuple(torch.where(keep, new, old) for new, old in zip(new_state, state))
        outputs[t] = y
        state = new_state
    return torch.stack(outputs), state


def zone_out(keep: Tensor, state: State, new_state: State) -> tuple[Tensor, State]:
    """One step's zoneout: ``h = h̃ + m ⊙ (h_prev - h̃)`` (= m h_prev + (1-m) h̃) on the hidden state; ``(y, state)``."""
    h = new_state[0] + keep * (state[0] - new_state[0])
    return h, (h, *new_state[1:])
