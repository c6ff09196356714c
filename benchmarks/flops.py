"""FLOP counts of the recurrent layers, and this machine's measured GEMM peak.

FLOPs count only the matrix products, at 2 FLOPs per multiply-add; the
pointwise gate math (sigmoid, tanh, the products and sums of gates and
states) is ignored. Per time step and batch row, a cell with G gates
(RNN 1, GRU 3, LSTM 4), input size I, hidden size H and output size
H_out (= proj_size if set, else H) costs::

    2 * G*H * I       input projection   W_ih x_t
    2 * G*H * H_out   recurrent projection W_hh h_{t-1}
    2 * H_out * H     output projection  W_hr h_t   (LSTM with proj_size only)

A training step (forward and backward) is counted as 3x the forward: the
backward of each product ``Y = X W^T`` is two products of the same size,
``dX = dY W`` and ``dW = dY^T X``.

The GEMM peak is the best rate any of the available matrix-multiply kernels
reaches on a large square product, timed on this machine in the same run.
"""

from __future__ import annotations

import time

import torch

GATES = {"rnn": 1, "gru": 3, "lstm": 4}


def forward_flops(cell: str, batch: int, steps: int, input_size: int, hidden_size: int, proj_size: int = 0) -> int:
    """Matrix-product FLOPs of one forward pass of a single-layer, unidirectional layer."""
    out = proj_size or hidden_size
    gates = GATES[cell] * hidden_size
    per_row = 2 * gates * input_size + 2 * gates * out + (2 * out * hidden_size if proj_size else 0)
    return steps * batch * per_row


def training_flops(forward: int) -> int:
    """FLOPs of forward plus backward: 3x the forward (see the module docstring)."""
    return 3 * forward


def gemm_peak(device: torch.device, n: int = 2048, repeats: int = 10) -> dict[str, float | str]:
    """GFLOP/s of each matrix-multiply kernel on an (n x n) @ (n x n) float32 product.

    Kernels: ``torch.mm``, ``torch.addmm`` (with a bias) and, on CPU where the
    build has it, oneDNN's matmul through ``torch.ops.mkldnn._linear_pointwise``
    (the kernel behind torch's oneDNN linear layers). Each is called once to
    warm up, then timed ``repeats`` times; the *best* time is kept, since a
    peak is the rate the hardware can reach, not a typical one. A kernel that
    is missing or fails maps to a string saying why.
    """
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    bias = torch.randn(n, device=device)
    kernels = {
        "torch.mm": lambda: torch.mm(a, b),
        "torch.addmm": lambda: torch.addmm(bias, a, b),
    }
    if device.type == "cpu":
        linear_pointwise = getattr(torch.ops.mkldnn, "_linear_pointwise", None) if hasattr(torch.ops, "mkldnn") else None
        if linear_pointwise is None:
            kernels["oneDNN matmul (mkldnn._linear_pointwise)"] = None
        else:
            kernels["oneDNN matmul (mkldnn._linear_pointwise)"] = lambda: linear_pointwise(a, b, bias, "none", [], "")
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    flops = 2 * n**3
    rates: dict[str, float | str] = {}
    for name, fn in kernels.items():
        if fn is None:
            rates[name] = "not available in this torch build"
            continue
        try:
            rates[name] = flops / best_time(fn, repeats, sync) / 1e9
        except (RuntimeError, NotImplementedError) as error:
            rates[name] = f"failed: {str(error).splitlines()[0][:80]}"
    return rates


def best_time(fn, repeats: int, sync=lambda: None) -> float:
    """Seconds of the fastest of ``repeats`` calls of ``fn``, after one call to warm up."""
    fn()
    sync()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - start)
    return best


LOW_PRECISIONS = ("bf16", "int8")  # kernels of these precisions are named with the precision first


def peak_of(rates: dict[str, float | str], precision: str = "float32") -> float:
    """The highest measured rate of a precision (float32: the kernels not named bf16/int8), in GFLOP/s; NaN if none."""
    chosen = [
        rate for name, rate in rates.items()
        if isinstance(rate, float) and (name.startswith(f"{precision} ") if precision in LOW_PRECISIONS else not name.startswith(LOW_PRECISIONS))
    ]  # fmt: skip
    return max(chosen) if chosen else float("nan")
