"""Building and loading the compiled kernels (``csrc/*.cpp``): the library behind :mod:`rnnkit.ops`.

The kernel is JIT-compiled with :func:`torch.utils.cpp_extension.load` the first
time a CPU layer runs on the fused engine, once per process, and cached on
disk: later processes only load the shared library (it is rebuilt when the
source, the flags or the torch headers change). It includes only
``<torch/library.h>`` and a few ATen operator headers, so a cold build takes
~8 s on 2 cores (not the ~30 s of ``<torch/extension.h>``) and a cached load
~0.1 s. It needs a C++ compiler and ``ninja`` (the ``ninja`` PyPI package
will do). Flags: ``-O3 -march=native`` (it runs on the machine that built
it), ``-fopenmp``, and ``-fno-math-errno -fno-trapping-math`` (as PyTorch
itself is built) so that the gate math vectorises.

Where it goes: ``$RNNKIT_BUILD_DIR`` if set, else ``$TORCH_EXTENSIONS_DIR/rnnkit``
if set, else ``~/.cache/rnnkit/<torch version>``.

Set ``RNNKIT_ENGINE_NO_BUILD=1`` to skip the build and use the pure-PyTorch
loop kernel. Any failure (no compiler, no ninja, a compile error) also falls
back to it; :func:`status` says which path is in use and why.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import time
import warnings

import torch

from rnnkit.ops import fakes


# fused_loops.cpp defines the library (TORCH_LIBRARY); every other file in csrc/ adds its ops to it
# with TORCH_LIBRARY_FRAGMENT, so a kernel family is one file and one more source here.
SOURCES = sorted(pathlib.Path(__file__).with_name("csrc").glob("*.cpp"))
HEADERS = sorted(pathlib.Path(__file__).with_name("csrc").glob("*.h"))
NO_BUILD_ENV = "RNNKIT_ENGINE_NO_BUILD"

_state: dict = {"tried": False, "loops": None, "reason": "not built yet (builds on first use)", "path": None, "seconds": None}


def build_dir() -> pathlib.Path:
    if os.environ.get("RNNKIT_BUILD_DIR"):
        return pathlib.Path(os.environ["RNNKIT_BUILD_DIR"])
    if os.environ.get("TORCH_EXTENSIONS_DIR"):
        return pathlib.Path(os.environ["TORCH_EXTENSIONS_DIR"]) / "rnnkit"
    return pathlib.Path.home() / ".cache" / "rnnkit" / torch.__version__.replace("+", "_")


class NativeLoops:
    """The compiled loop kernel behind the contract of :mod:`rnnkit.engine.fused_loops`."""

    def __init__(self, ops) -> None:
        self._ops = ops

    def forward_loop(self, kind, xp, h0, c0, w_hh, b_hn, w_hr, valid, reverse, zoneout=None, output_mask=None, output_dtype=None):
        return self._ops.forward_loop(kind, xp, h0, c0, w_hh, b_hn, w_hr, _contiguous(valid), reverse, _contiguous(zoneout), _contiguous(output_mask),
                                      output_dtype)  # fmt: skip

    def forward_inference(self, kind, x, w_ih, bias, h0, c0, w_hh, b_hn, w_hr, valid, reverse, output_dtype=None):
        """A whole direction without autograd, from the raw input x: ``(y, h_n, c_n)`` (c_n empty unless LSTM).

        Keeps no history: the input projections are computed a chunk of steps at a time into a small buffer.
        ``output_dtype`` bf16 with a float32 x: y in bf16, rounded as the loop writes it (the states stay float32).
        """
        return self._ops.forward_inference(kind, x, w_ih, bias, h0, c0, w_hh, b_hn, w_hr, _contiguous(valid), reverse, output_dtype)

    def backward_loop(self, kind, gates, hs, cs, hn, hraw, w_hh, w_hr, valid, reverse, dy, dh_n, dc_n, zoneout=None, output_mask=None):
        return self._ops.backward_loop(
            kind, gates, hs, cs, hn, hraw, w_hh, w_hr, _contiguous(valid), reverse, dy, dh_n, dc_n, _contiguous(zoneout), _contiguous(output_mask)
        )

    def layer_norm_lstm_forward(self, xp, h0, c0, w_hh, gain_hh, gain_cell, bias_cell, valid, reverse, zoneout=None):
        return self._ops.layer_norm_lstm_forward(xp, h0, c0, w_hh, gain_hh, gain_cell, bias_cell, _contiguous(valid), reverse, _contiguous(zoneout))

    def layer_norm_lstm_backward(self, gates, hs, cs, ahat, chat, rstd, w_hh, gain_hh, gain_cell, bias_cell, valid, reverse, dy, dh_n, dc_n, zoneout=None):
        return self._ops.layer_norm_lstm_backward(
            gates, hs, cs, ahat, chat, rstd, w_hh, gain_hh, gain_cell, bias_cell, _contiguous(valid), reverse, dy, dh_n, dc_n, _contiguous(zoneout)
        )

    def cell_step(self, kind, x, h, c, w_ih, w_hh, b_ih, b_hh):
        """One inference step of a cell: ``(h', c')`` from x (N, H_in) and the state (c' is empty unless LSTM)."""
        return self._ops.cell_step(kind, x, h, c, w_ih, w_hh, b_ih, b_hh)

    def random_mask(self, seed, shape, p, below, above, dtype):
        """A regulariser's mask from the counter-based generator; see rnnkit/ops/random_masks.py and csrc/random_masks.cpp."""
        return self._ops.random_mask(seed, shape, p, below, above, dtype)

    @property
    def stacked_step_kernel(self):
        """The ``stacked_step`` op's overload itself, for a caller that makes it thousands of times (streaming):
        ``kernel(kind, x, h0, c0, weights, directions) -> (y, h_n, c_n)``; see csrc/stacked_step.cpp."""
        return self._ops.stacked_step.default

    def linear_scan(self, a, b, h0, reverse, chunks=0):
        """Every state of ``h_t = a_t * h_{t-1} + b_t`` (reverse: from t = T-1 down), a, b (T, F), h0 (F,); see csrc/linear_scan.cpp."""
        return self._ops.linear_scan(a, b, h0, reverse, chunks)

    def scan_coefficients(self, kind, projected, decay_logit):
        """``(a, b)`` (R, H) of a linear-recurrence family from its projected input (R, G*H); see csrc/scan_coefficients.cpp."""
        return self._ops.scan_coefficients(kind, projected, decay_logit)

    def scan_coefficients_backward(self, kind, projected, decay_logit, grad_a, grad_b):
        """``(∂P, ∂Λ)`` of :meth:`scan_coefficients` (∂Λ empty but for RG-LRU)."""
        return self._ops.scan_coefficients_backward(kind, projected, decay_logit, grad_a, grad_b)

    def projection(self, x, weight, bias):
        """``x W^T + b`` (rows, outputs) by MKL into a pooled buffer (csrc/projection.cpp; the rule that picks it is in
        rnnkit/engine/gemm.py)."""
        return self._ops.projection(x, weight, bias)

    def linear_scan_backward(self, a, h, h0, grad_h, reverse, chunks=0):
        """``(∂a, ∂b, ∂h0)`` of :meth:`linear_scan` from the gradient of every state ``grad_h`` (T, F)."""
        return self._ops.linear_scan_backward(a, h, h0, grad_h, reverse, chunks)


def _headers_flag() -> str:
    """A define that names the headers' contents: cpp_extension rebuilds when sources or flags change, and a header is neither."""
    digest = hashlib.sha256(b"".join(header.read_bytes() for header in HEADERS)).hexdigest()[:16]
    return f"-DRNNKIT_HEADERS_SHA={digest}"


def _contiguous(valid):
    return None if valid is None else valid.contiguous()


def native_loops() -> NativeLoops | None:
    """The compiled kernel, building it on the first call; None when unavailable (see :func:`status`)."""
    if not _state["tried"]:
        _state["tried"] = True
        _build()
    return _state["loops"]


def _build() -> None:
    if os.environ.get(NO_BUILD_ENV, "") not in ("", "0"):
        _state["reason"] = f"{NO_BUILD_ENV}={os.environ[NO_BUILD_ENV]} is set"
        return
    start = time.perf_counter()
    try:
        from torch.utils import cpp_extension

        _put_pip_ninja_on_path()
        directory = build_dir()
        directory.mkdir(parents=True, exist_ok=True)
        # cpp_extension warns about things that do not matter here (e.g. a compiler
        # version check); the project runs with warnings as errors, so keep them out.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            path = cpp_extension.load(
                name="rnnkit_fused_loops",
                sources=[str(source) for source in SOURCES],
                extra_cflags=["-O3", "-march=native", "-fopenmp", "-fno-math-errno", "-fno-trapping-math", _headers_flag()],
                extra_ldflags=["-fopenmp"],
                build_directory=str(directory),
                is_python_module=False,
                verbose=False,
            )
        ops = torch.ops.rnnkit_fused
        ops.forward_loop, ops.cell_step, ops.linear_scan  # noqa: B018 - raises if the library did not register its ops
        fakes.register_fakes()
    except Exception as error:  # noqa: BLE001 - any failure means: use the fallback, and say why
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        _state["reason"] = f"C++ build failed ({type(error).__name__}: {first_line[:300]})"
        return
    _state.update(loops=NativeLoops(ops), path=str(path), seconds=time.perf_counter() - start, reason=None)


def _put_pip_ninja_on_path() -> None:
    """cpp_extension runs ``ninja`` from PATH; a venv's pip-installed ninja is not there unless activated."""
    try:
        import ninja
    except ImportError:
        return
    if ninja.BIN_DIR not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")


def status() -> str:
    """One line: which loop kernel CPU tensors get, and why."""
    if _state["loops"] is not None:
        return f"fused C++ (compiled at {_state['path']}, loaded in {_state['seconds']:.1f} s)"
    return f"fused pure-PyTorch fallback: {_state['reason']}"


__all__ = ["NativeLoops", "build_dir", "native_loops", "status"]
