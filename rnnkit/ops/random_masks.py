r"""The regularisers' random masks from a counter-based generator: the ``random_mask`` op and its PyTorch twin.

A mask of n <= 2^32 elements drawn with the 62-bit seed s = 2^32 s_high + s_low (one draw from torch's
generator on the mask's device, so ``torch.manual_seed`` fixes it and a checkpoint's RNG state resumes it)
is, for i = 0 .. n-1, with Chris Wellons' lowbias32 integer hash ``mix`` on 32-bit words::

    mix(x) = x ^ x >> 16;  x * 0x7feb352d;  x ^ x >> 15;  x * 0x846ca68b;  x ^ x >> 16     (mod 2^32)
    u_i    = mix(mix(i ^ s_low) ^ s_high) >> 8        24 bits: u_i / 2^24 ~ U[0, 1), torch.rand's float32 grid
    mask_i = below if u_i < ceil(p 2^24) else above   P(below) = ceil(p 2^24) / 2^24, within 2^-24 of p

Why not ``torch.rand(shape) < p``: on CPU the uniform draw is single-threaded and costs ~3 ns an element,
then comparing and converting are two more passes; at the benchmark's config B (a (100, 32, 256) zoneout
mask) that was half of the regularisers' overhead on a training step. The compiled op is one multi-threaded
pass. Its twin computes the same bits with int64 tensor ops on any device, for builds without the library, CUDA tensors and recorded programs (torch.compile
traces the twin, so compiled and eager training draw the same masks).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from rnnkit.ops.build import native_loops

_WORD = (1 << 32) - 1
UNITS = 1 << 24  # the grid of u_i


def draw_seed(device: torch.device) -> Tensor:
    """A 0-dim int64 seed in [0, 2^62) from torch's generator on ``device`` (``randint``, not ``random_``: torch.compile
    traces the out-of-place draw, and breaks the graph at the in-place one)."""
    return torch.randint(0, 1 << 62, (), dtype=torch.int64, device=device)


def random_mask(seed: Tensor, shape, p: float, below: float, above: float, dtype: torch.dtype, device: torch.device) -> Tensor:
    """A mask of ``shape``: ``below`` with probability ~p (see the module docstring), else ``above``."""
    if device.type == "cpu" and not (torch.jit.is_tracing() or torch.compiler.is_compiling()):
        native = native_loops()
        if native is not None:
            return native.random_mask(int(seed), list(shape), p, below, above, dtype)
    return twin_mask(seed, shape, p, below, above, dtype)


def twin_mask(seed: Tensor, shape, p: float, below: float, above: float, dtype: torch.dtype) -> Tensor:
    """The op's result by PyTorch ops: the same bits on any device (tests compare the two)."""
    count = math.prod(shape)
    if count > 1 << 32:
        raise ValueError(f"random_mask: expected at most 2^32 elements, got {count}")
    index = torch.arange(count, dtype=torch.int64, device=seed.device)
    units = _mix(_mix(index ^ (seed & _WORD)) ^ ((seed >> 32) & _WORD)) >> 8
    threshold = math.ceil(p * UNITS)  # exact: p 2^24 is p's double with its exponent moved, as in the op
    low = torch.tensor(below, dtype=dtype, device=seed.device)
    return torch.where(units < threshold, low, torch.tensor(above, dtype=dtype, device=seed.device)).view(*shape)


def _mix(x: Tensor) -> Tensor:
    """lowbias32 on 32-bit words held in int64 (each product's low 32 bits are right even when int64 wraps)."""
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _WORD
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & _WORD
    return x ^ (x >> 16)
