"""Execution engines: how a layer runs one cell over a whole sequence.

Every engine implements the same function::

    run_direction(spec, x, state, weights, valid, reverse) -> (outputs, final_state)

with the arguments documented in :func:`rnnkit.engine.reference.run_direction`.
The layer calls it once per layer and direction; it never changes the layer's
public API or results. ``"reference"`` is the readable per-step loop that
defines the results; faster engines are checked against it.

* ``"fused"`` (what ``"auto"`` picks): one autograd node per layer and
  direction with hand-written backward through time (:mod:`rnnkit.engine.fused`).
  On CPU its time loop is compiled C++, built on first use; without a
  compiler, with ``RNNKIT_ENGINE_NO_BUILD=1``, or on other devices it runs the
  same math as a pure-PyTorch loop. The LayerNorm LSTM (without
  ``proj_size``) has its own compiled kernel (:mod:`rnnkit.engine.fused_layer_norm`);
  the other LayerNorm variants, and the LayerNorm LSTM without the build, run
  the hoisted loop (:mod:`rnnkit.engine.hoisted`).
  For inference (nothing requires a gradient) the compiled path keeps no
  history: the input projections are computed a few steps at a time into a
  buffer that stays in cache, and only the output is a full-length buffer.
  LSTM inference in float32 without padding or ``proj_size`` goes to oneDNN's
  LSTM primitive (the kernel torch.nn.LSTM runs on CPU) once batch x hidden
  reaches ``fused.ONEDNN_LSTM_MIN_BATCH_HIDDEN``, where it measured faster, except for an
  output of 32 MiB or more with W_hh of at most 4 MiB, which the loop writes into a pooled buffer.
* On CUDA, ``"auto"`` hands the configurations cuDNN computes exactly (plain RNN,
  LSTM, GRU; ``proj_size``; ``lengths=`` or packed) to torch's cuDNN kernels, the ones
  torch.nn runs (:mod:`rnnkit.engine.cudnn`, which lists what stays with rnnkit). The
  LayerNorm LSTM and GRU run rnnkit's Triton kernels (:mod:`rnnkit.ops.triton`) when
  triton is installed; the plain families under ``engine="fused"`` run the pure-PyTorch loop.
  The linear-recurrence families (minGRU, minLSTM, RG-LRU) run the parallel scan
  (:mod:`rnnkit.engine.scan`): all projections in one GEMM, then h_t = a_t h_{t-1} + b_t by
  the compiled scan op (backward: a scan the other way), or in plain PyTorch without it.

Under autocast the fused engine runs the GEMMs that span all steps in the autocast dtype and the
recurrence in float32, returning torch.nn's dtypes (:mod:`rnnkit.engine.autocast`). int8
inference (``rnnkit.quantize_dynamic``) has its own engine, :mod:`rnnkit.engine.int8`.

Every compiled kernel is an op of :mod:`rnnkit.ops`; the fused engine's sequences are the
composite ops ``rnnkit::recurrence`` and ``rnnkit::layer_norm_lstm``, with autograd that serves
double backward and torch.func (:mod:`rnnkit.engine.transforms`), and ONNX rules
(:mod:`rnnkit.engine.onnx_export`). docs/design/ops.md and docs/toolchain.md say how and what.

The stand-alone cells (``rnnkit.RNNCell``, ``LSTMCell``, ``GRUCell``) have no
engine argument: with autograd they run their readable ``step``; for inference
(nothing requires a gradient) on float32/float64 CPU tensors, without
``proj_size``, they call the same compiled library's one-step kernel, when it
is built. That is what makes streaming, one step per call, cheap.

:func:`describe` says which path a layer takes and why.
"""

from __future__ import annotations

from rnnkit import errors
from rnnkit import ops
from rnnkit.engine import cudnn, fused, hoisted, onnx_export, reference, scan
from rnnkit.ops import triton as triton_ops

ENGINES = {"reference": reference.run_direction, "fused": fused.run_direction}
DEFAULT = "fused"


def resolve(name: str):
    """The ``run_direction`` function for an engine name (``"auto"`` picks the default)."""
    if name == "auto":
        name = DEFAULT
    if name not in ENGINES:
        raise errors.fail("engine", f"one of {['auto', *ENGINES]}", repr(name))
    return ENGINES[name]


def describe(layer=None) -> str:
    """Which path a layer (or, with no argument, ``engine="auto"`` on CPU) runs, and why.

    For the fused engine on CPU this builds the C++ kernel if it was not built
    yet, so the answer is the path the next forward will take, e.g.
    ``"fused C++ (compiled at ...)"`` or ``"fused pure-PyTorch fallback: <reason>"``.
    """
    name = "auto" if layer is None else getattr(layer, "engine", "auto")
    chosen = DEFAULT if name == "auto" else name
    prefix = f"engine={name!r}: " if name == "auto" else ""
    if chosen == "reference":
        return prefix + "reference per-step loop (autograd records every step)"
    spec = getattr(layer, "spec", None)
    device = _device(layer)
    if spec is not None and scan.supports(spec):
        if device == "cpu" and ops.native_loops() is not None:
            kernel = "compiled C++ scan, rnnkit_fused::linear_scan (" + ops.status() + ")"
        elif triton_ops.runs_on(device):
            kernel = "Triton scan, rnnkit_fused::triton_linear_scan" + (" (through Triton's interpreter)" if triton_ops.interpreting() else "")
        else:
            kernel = "plain-PyTorch chunked scan (about 2*sqrt(L) sequential elementwise steps)"
        return prefix + f"parallel scan for {spec.name!r}: projections of all steps in one GEMM, then the linear recurrence by the {kernel}"
    if layer is not None and device == "cuda" and cudnn.declines(layer, device) is None:
        return prefix + f"torch's cuDNN kernels (torch._VF.{cudnn.FUNCTIONS[spec.name]}, as torch.nn.{type(layer).__name__} on CUDA): cuDNN computes this configuration exactly"
    layer_norm = spec is not None and spec.name in ("layer_norm_lstm", "layer_norm_gru") and not getattr(layer, "proj_size", 0)
    if layer_norm and triton_ops.runs_on(device):
        mode = "compiled" if device == "cuda" and not triton_ops.interpreting() else "through Triton's interpreter"
        return prefix + f"fused Triton {spec.name} kernels ({mode}): one kernel per step for LayerNorm and gate math, GEMMs by torch"
    if layer_norm and spec.name == "layer_norm_lstm" and device == "cpu" and ops.native_loops() is not None:
        return prefix + "fused C++ LayerNorm LSTM kernel (" + ops.status() + ")"
    if spec is not None and (not fused.supports(spec) or getattr(layer, "layer_norm", False)):
        fallback = "the hoisted loop (input projections in one GEMM, per-step recurrence under autograd)" if hoisted.supports(spec) else "the reference per-step loop"
        why = "; the Triton kernels need the triton package" if layer_norm and device == "cuda" else ""
        return prefix + f"fused engine has no kernel for {spec.name!r}{why}: runs {fallback}"
    if device != "cpu":
        return prefix + f"fused pure-PyTorch loop (the compiled kernel is CPU-only; parameters are on {device})"
    ops.native_loops()
    text = prefix + ops.status()
    if spec is None or (spec.name == "lstm" and not getattr(layer, "proj_size", 0)):
        text += f"; LSTM inference in float32 without padding: oneDNN's LSTM primitive once batch x hidden >= {fused.ONEDNN_LSTM_MIN_BATCH_HIDDEN}"
        text += " (the compiled loop for an output of 32 MiB or more with W_hh of at most 4 MiB)"
    return text


def _device(layer) -> str:
    parameter = None if layer is None else next(layer.parameters(), None)
    return "cpu" if parameter is None else parameter.device.type


onnx_export.register_symbolic()

__all__ = ["DEFAULT", "ENGINES", "describe", "resolve"]
