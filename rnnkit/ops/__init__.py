"""The one seam between Python and the compiled kernels: operators registered with ``torch.library``.

Every compiled kernel is an op of the ``rnnkit_fused`` library (``csrc/fused_loops.cpp`` and the
fragments in the other ``csrc/*.cpp``, built on first use by :mod:`rnnkit.ops.build`):

=============================  ==========================================================
``forward_loop``               a sequence's recurrence from its input projections, with history
``backward_loop``              the same recurrence walked backwards: every step's gate gradients
``forward_inference``          a whole direction without history (nothing needs a gradient)
``cell_step``                  one step of a stand-alone cell, for inference
``stacked_step``               one step of every layer and direction of a stacked layer (streaming)
``random_mask``                a regulariser's mask from a counter-based generator (``ops/random_masks.py``)
``layer_norm_lstm_forward``    the LayerNorm LSTM's recurrence, with history
``layer_norm_lstm_backward``   and its backward
``linear_scan``                h_t = a_t h_{t-1} + b_t over time (minGRU, minLSTM, RG-LRU), either direction
``linear_scan_backward``       its gradients: one scan the other way, then products
``scan_coefficients``          those families' (a_t, b_t) from their projected input, all steps at once
``scan_coefficients_backward`` and their backward
``int8_linear``                ``x W^T + b`` with int8 W, rows of x quantized on the fly (``csrc/lowp_loops.cpp``)
``int8_layer``                 a direction of an int8 layer, its projections per step, inference only (``csrc/lowp_loops.cpp``)
``projection``                 ``x W^T + b`` into a pooled buffer (``csrc/projection.cpp``)
``pooled_empty``               an empty tensor from the pool, for eager code's ``out=`` products (``csrc/buffer_pool.cpp``)
``buffer_pool_*``              the pool's limit, its statistics, and the tests' poisoned mode (``csrc/buffer_pool.cpp``)
=============================  ==========================================================

The kernels' large outputs (1 MiB or more) come from a pool that keeps freed buffers and hands them
out again already paged in (``csrc/buffer_pool.h`` says why: fresh pages cost 12-15% of a large training
step). It keeps at most :func:`buffer_pool_limit` bytes of freed buffers (1 GiB unless
``RNNKIT_BUFFER_POOL_MB`` says otherwise); ``buffer_pool_limit(0)`` returns them all and keeps none.

Each op has a schema (C++ ``TORCH_LIBRARY``), a CPU kernel, a fake kernel for shape
propagation (:mod:`rnnkit.ops.fakes`, used by torch.compile, torch.export and FakeTensor
tracing), and an Autograd kernel that refuses a call autograd would have to record: the
kernels are not differentiated one by one. The engines differentiate whole sequences
around them (:mod:`rnnkit.engine.fused`), and expose those as the composite ops
``rnnkit::recurrence`` and ``rnnkit::layer_norm_lstm``. Cells, layers and engines reach the
kernels only through the ops here; nothing else loads the library.

The CUDA kernels are Triton ops of the same library, registered from Python
(:mod:`rnnkit.ops.triton`): the LayerNorm LSTM's loop pair under the C++ pair's signatures,
the LayerNorm GRU's, and the linear scan.

Loading: ``import rnnkit`` registers nothing native until a CPU layer or cell first runs (or
:func:`native_loops` is called); a saved TorchScript or ``torch.export`` program that calls
these ops needs ``import rnnkit`` and one such call (or :func:`load`) first.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rnnkit.ops.build import NativeLoops, build_dir, native_loops, status
from rnnkit.ops.kinds import GRU, KINDS, LSTM, RNN_RELU, RNN_TANH


def load() -> bool:
    """Build or load the compiled library and register its ops; whether it is available (see :func:`status`)."""
    return native_loops() is not None


def buffer_pool_limit(limit_bytes: int | None = None) -> int | None:
    """The most freed kernel memory the buffer pool keeps, in bytes, after setting it to ``limit_bytes`` if given
    (0: keep nothing, and return what it holds now). None without the compiled library."""
    if limit_bytes is not None and (isinstance(limit_bytes, bool) or not isinstance(limit_bytes, int) or limit_bytes < 0):
        raise ValueError(f"buffer_pool_limit: limit_bytes must be an int >= 0 or None, got {limit_bytes!r}")
    if native_loops() is None:
        return None
    return torch.ops.rnnkit_fused.buffer_pool_limit(limit_bytes)


def pooled_empty(shape: tuple[int, ...], dtype: torch.dtype) -> Tensor:
    """``torch.empty(shape, dtype=dtype)`` on the CPU, from the kernels' buffer pool where the library is built: for a
    large buffer that eager code fills with ``out=`` products. Not for a recorded program (torch.compile, export)."""
    if native_loops() is None:
        return torch.empty(shape, dtype=dtype)
    return torch.ops.rnnkit_fused.pooled_empty(list(shape), dtype)


def buffer_pool_stats() -> dict[str, int] | None:
    """What the buffer pool holds: ``cached_bytes`` and ``cached_blocks`` (freed, kept for reuse), ``live_bytes``
    (handed out to tensors alive now), ``hits`` and ``misses`` (requests served from the cache or not),
    ``limit_bytes``, and the test settings ``poison`` (0 or 1) and ``min_bytes`` (the smallest request pooled).
    None without the compiled library."""
    if native_loops() is None:
        return None
    keys = ("cached_bytes", "cached_blocks", "live_bytes", "hits", "misses", "limit_bytes", "poison", "min_bytes")
    return dict(zip(keys, torch.ops.rnnkit_fused.buffer_pool_stats(), strict=True))


def recorded_by_autograd(*tensors: Tensor | None) -> bool:
    """Whether autograd records an op on these tensors: grad mode is on and one of them requires grad."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def single_step(name: str, x: Tensor, state: tuple[Tensor, ...], weights, native: NativeLoops | None = None) -> tuple[Tensor, ...] | None:
    """The new state after one step of x (N, H_in) through ``cell_step``, or None where that kernel does not apply.

    It applies to inference only (nothing needs a gradient), on float32/float64 CPU
    tensors, for the plain families (``name`` a key of :data:`KINDS`) without a projection
    or LayerNorm (``weights`` is a :class:`rnnkit.cells.CellWeights`), when the library is
    built (``native``, if given, is it), and outside tracing (a trace must record the
    differentiable path). It is the same math as the cell's step in one call instead of
    about eight dispatched ops: for one step at a time, that overhead is the whole cost.
    """
    kind = KINDS.get(name)
    if kind is None or weights.weight_hr is not None or weights.layer_norm is not None or recorded_by_autograd(x, *state, *weights[:4]):
        return None
    if x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64) or torch.jit.is_tracing() or torch.compiler.is_compiling():
        return None
    native = native or native_loops()
    if native is None:
        return None
    h, c = native.cell_step(kind, x, state[0], state[-1], *weights[:4])  # state[-1]: c, read only by the LSTM
    return (h, c) if kind == LSTM else (h,)


def step_kernel(name: str, dtype: torch.dtype):
    """``(kind, kernel)`` for repeated one-step calls of a stacked layer of a plain family on CPU tensors of
    ``dtype``, or None where ``cell_step`` does not apply (another family or dtype, or no build).
    ``kernel(kind, x, h0, c0, weights, directions) -> (y, h_n, c_n)`` is the ``stacked_step`` op itself, with
    :func:`single_step`'s contract per cell; the caller checks the rest of that once (CPU, no gradient, no
    projection or LayerNorm, outside tracing)."""
    kind = KINDS.get(name)
    if kind is None or dtype not in (torch.float32, torch.float64):
        return None
    native = native_loops()
    return None if native is None else (kind, native.stacked_step_kernel)


__all__ = [
    "GRU", "KINDS", "LSTM", "RNN_RELU", "RNN_TANH", "NativeLoops", "buffer_pool_limit", "buffer_pool_stats", "build_dir", "load", "native_loops", "pooled_empty",
    "recorded_by_autograd", "single_step", "status", "step_kernel",
]  # fmt: skip
