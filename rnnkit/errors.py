"""Argument checks shared by cells and layers.

Every message has the same three parts: the argument's name, what was expected,
and what was received, so that a user can fix the call without reading our code.
"""

from __future__ import annotations

import torch
from torch import Tensor


def fail(argument: str, expected: str, received: object) -> ValueError:
    """Build the project's standard error: ``argument: expected ..., got ...``."""
    return ValueError(f"{argument}: expected {expected}, got {received}")


def check_positive_int(argument: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise fail(argument, "a positive int", repr(value))


def check_bool(argument: str, value: object) -> None:
    if not isinstance(value, bool):
        raise fail(argument, "a bool", repr(value))


def check_nonlinearity(value: object) -> None:
    if value not in ("tanh", "relu"):
        raise fail("nonlinearity", "'tanh' or 'relu'", repr(value))


def check_like(argument: str, tensor: Tensor, reference: Tensor, reference_name: str) -> None:
    """Require ``tensor`` to share dtype and device with ``reference``."""
    if tensor.dtype != reference.dtype:
        raise fail(argument, f"dtype {reference.dtype} (the dtype of {reference_name})", tensor.dtype)
    if tensor.device != reference.device:
        raise fail(argument, f"device {reference.device} (the device of {reference_name})", tensor.device)


def check_shape(argument: str, tensor: Tensor, expected: tuple[int, ...], legend: str) -> None:
    """Require an exact shape; ``legend`` spells out what each dimension means."""
    if tuple(tensor.shape) != tuple(expected):
        raise fail(argument, f"shape {tuple(expected)} {legend}", tuple(tensor.shape))


def check_finite(argument: str, tensor: Tensor, valid: Tensor | None = None, first_dim: str = "time step") -> None:
    """Raise on the first NaN or Inf of a (L, N, ...) tensor, naming its position.

    ``first_dim`` names dimension 0 in the message (a time step for inputs, a
    layer and direction for stacked states); dimension 1 is the batch index.
    ``valid`` is an optional (L, N) bool mask; positions outside it are padding
    and are not checked.
    """
    bad = ~torch.isfinite(tensor)
    if tensor.dim() > 2:
        bad = bad.flatten(2).any(-1)
    if valid is not None:
        bad = bad & valid
    if bool(bad.any()):
        step, batch = (int(i) for i in bad.nonzero()[0])
        value = tensor[step, batch]
        kind = "NaN" if bool(torch.isnan(value).any()) else "Inf"
        raise ValueError(
            f"{argument}: expected finite values (check_finite=True), got {kind} at batch index {batch}, {first_dim} {step}"
        )
