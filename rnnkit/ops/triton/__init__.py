"""rnnkit's Triton kernels: the GPU side of the op seam (:mod:`rnnkit.ops`).

Each kernel family is a file of ``@triton.jit`` kernels (``*_kernels.py``) and a file that
registers its ops in the ``rnnkit_fused`` library with ``torch.library.custom_op``: a schema,
a fake kernel (``register_fake``) and, where the op is differentiated on its own,
``register_autograd``. They are

==================================  ================================================================
``triton_linear_scan``              ``h_t = a_t ⊙ h_{t-1} + b_t``, chunked over time (:mod:`.scan`)
``triton_layer_norm_lstm_step``     one LayerNorm LSTM step's normalisation and gate math, and its
``triton_layer_norm_lstm_step_backward``  backward (:mod:`.layer_norm`)
``triton_layer_norm_gru_step``      the same for the LayerNorm GRU
``triton_layer_norm_gru_step_backward``
==================================  ================================================================

Devices: the ops run on CUDA tensors. On CPU tensors they run only through Triton's
interpreter, with ``TRITON_INTERPRET=1`` in the environment *before triton is imported*
(Triton decides at decoration time, its own library included, whether a kernel is compiled or
interpreted): that is how the test suite checks every kernel without a GPU, in a process of its
own (tests/interpreted/). Elsewhere a CPU call raises ``ValueError``.
"""

from __future__ import annotations

import importlib
import importlib.util
import os

import torch
from torch import Tensor

from rnnkit import errors


def available() -> bool:
    """Whether the ``triton`` package is installed (the ``triton`` extra of rnnkit's pyproject)."""
    return importlib.util.find_spec("triton") is not None


def interpreting() -> bool:
    """Whether ``TRITON_INTERPRET=1`` is set: CPU tensors then run through Triton's interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def runs_on(tensor: Tensor | str) -> bool:
    """Whether the Triton ops run on this tensor's device (or device type): CUDA with triton installed, or CPU
    while interpreting."""
    device = tensor if isinstance(tensor, str) else tensor.device.type
    return available() and (device == "cuda" or (device == "cpu" and interpreting()))


def kernels(family: str, tensor: Tensor):
    """The kernel module ``rnnkit.ops.triton.<family>_kernels``, after checking that it can run on the tensor's device.

    CUDA: compiled kernels (interpreted ones under ``TRITON_INTERPRET=1``, as Triton itself does).
    CPU: only under ``TRITON_INTERPRET=1``; otherwise ``ValueError``.
    """
    device = tensor.device.type
    if not available():
        raise RuntimeError("rnnkit's Triton kernels need the triton package: pip install 'rnnkit[triton]'")
    if device == "cpu" and not interpreting():
        raise errors.fail("tensor device", "a CUDA tensor (on CPU the Triton kernels run only with TRITON_INTERPRET=1)", device)
    if device not in ("cpu", "cuda"):
        raise errors.fail("tensor device", "a CUDA tensor (or CPU with TRITON_INTERPRET=1)", device)
    return importlib.import_module(f"rnnkit.ops.triton.{family}_kernels")


def check_floating(name: str, tensor: Tensor) -> None:
    """The kernels compute in their inputs' precision: float32 or float64."""
    if tensor.dtype not in (torch.float32, torch.float64):
        raise errors.fail(name, "a float32 or float64 tensor (the Triton kernels' precisions)", tensor.dtype)


def block_size(features: int) -> int:
    """A power of two covering ``features`` (Triton blocks are powers of two), at least 16."""
    return max(16, 1 << (features - 1).bit_length())


def launch_options(block: int) -> dict:
    """Compile options of a launch whose program holds a few blocks of ``block`` values.

    Warps grow with the block so that each thread keeps a few values per block in registers.
    No fused multiply-add contraction: every product is rounded as written, as in the
    interpreter's numpy arithmetic and the C++ kernels, and Triton's default for it is changing.
    """
    return {"num_warps": 4 if block <= 512 else 8 if block <= 2048 else 16, "enable_fp_fusion": False}


__all__ = ["available", "block_size", "check_floating", "interpreting", "kernels", "launch_options", "runs_on"]
