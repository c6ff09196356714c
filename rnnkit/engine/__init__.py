"""Execution engines: how a layer runs one cell over a whole sequence.

Every engine implements the same function::

    run_direction(spec, x, state, weights, valid, reverse) -> (outputs, final_state)

with the arguments documented in :func:`rnnkit.engine.reference.run_direction`.
The layer calls it once per layer and direction; it never changes the layer's
public API or results. ``"reference"`` is the readable per-step loop that
defines the results; faster engines are checked against it.
"""

from __future__ import annotations

from rnnkit import errors
from rnnkit.engine import reference

ENGINES = {"reference": reference.run_direction}


def resolve(name: str):
    """The ``run_direction`` function for an engine name (``"auto"`` picks the default)."""
    if name == "auto":
        name = "reference"
    if name not in ENGINES:
        raise errors.fail("engine", f"one of {['auto', *ENGINES]}", repr(name))
    return ENGINES[name]


__all__ = ["ENGINES", "resolve"]
