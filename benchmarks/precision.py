"""The low-precision rows of the benchmark: bf16 autocast and int8 inference, each against its torch.nn peer.

* ``inference bf16`` / ``training bf16``: torch.nn's layer and rnnkit's, both called under
  ``torch.autocast("cpu", dtype=torch.bfloat16)`` (on CUDA: that device's autocast); the
  training step backpropagates the same loss as the float32 rows, summed in float32.
* ``inference int8``: torch.nn's float32 layer (the peer a user would replace), torch.ao's
  ``quantize_dynamic`` of that layer (qint8 weights), and ``rnnkit.quantize_dynamic`` of rnnkit's
  layer. CPU only; rnnkit's int8 rows need its compiled kernels.

Every contender holds torch.nn's weights; ``max abs diff`` is against torch.nn's float32 output,
so it shows each precision's rounding, not a bug.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable

import torch
from torch import nn

import rnnkit
from rnnkit import ops

BF16_MODES = ("inference bf16", "training bf16")
INT8_MODE = "inference int8"
TORCH_AO = "torch.ao int8 (quantize_dynamic)"
RNNKIT_INT8 = "rnnkit int8 (rnnkit.quantize_dynamic)"


def precision_of(mode: str) -> str:
    """The GEMM precision a mode's rows are measured against: ``float32``, ``bf16`` or ``int8``."""
    return mode.rsplit(" ", 1)[1] if mode.endswith((" bf16", " int8")) else "float32"


def quiet_deprecations():
    """torch.ao's quantized tensors warn that they are deprecated; the benchmark still measures them as the peer."""
    stack = contextlib.ExitStack()
    stack.enter_context(warnings.catch_warnings())
    warnings.simplefilter("ignore")
    return stack


def calls(torch_layer: nn.Module, kit_layer: nn.Module, auto_label: str, torch_name: str, x: torch.Tensor, notes: list[str]) -> dict[tuple[str, str], Callable[[], object]]:
    """``{(contender, mode): call}`` for the bf16 and int8 rows of one config and cell."""
    device = x.device.type
    autocast = lambda: torch.autocast(device, dtype=torch.bfloat16)  # noqa: E731
    found: dict[tuple[str, str], Callable[[], object]] = {}
    for name, model in ((torch_name, torch_layer), (auto_label, kit_layer)):
        found[(name, BF16_MODES[0])] = _inference(model, x, autocast)
        found[(name, BF16_MODES[1])] = _training(model, x, autocast)
    if device != "cpu":
        return found
    found[(torch_name, INT8_MODE)] = _inference(torch_layer, x, contextlib.nullcontext)
    with quiet_deprecations():
        ao = torch.ao.quantization.quantize_dynamic(nn.Sequential(torch_layer), {type(torch_layer)}, dtype=torch.qint8)
    found[(TORCH_AO, INT8_MODE)] = _inference(ao, x, quiet_deprecations)
    if ops.native_loops() is None:
        note = f"{RNNKIT_INT8} not timed: it needs the compiled kernels ({ops.status()})"
        if note not in notes:
            notes.append(note)
    else:
        found[(RNNKIT_INT8, INT8_MODE)] = _inference(rnnkit.quantize_dynamic(kit_layer), x, contextlib.nullcontext)
    return found


def _inference(model: nn.Module, x: torch.Tensor, context) -> Callable[[], object]:
    def call():
        with torch.no_grad(), context():
            return model(x)

    return call


def _training(model: nn.Module, x: torch.Tensor, context) -> Callable[[], None]:
    def call():
        model.zero_grad(set_to_none=True)
        with context():
            out, state = model(x)
        state = state if isinstance(state, tuple) else (state,)
        (out.float().sum() + sum(s.float().sum() for s in state)).backward()

    return call


def gemm_rates(n: int, repeats: int, best_of) -> dict[str, float | str]:
    """bf16 and int8 GEMM rates (GFLOP/s; GOP/s for int8) on an (n x n) @ (n x n) product, for `% peak`.

    ``best_of(fn, repeats)`` times a call the way :func:`benchmarks.flops.gemm_peak` does (best of ``repeats``).
    """
    a, b = torch.randn(n, n), torch.randn(n, n)
    kernels: dict[str, Callable[[], object] | str] = {"bf16 torch.mm": lambda a16=a.bfloat16(), b16=b.bfloat16(): torch.mm(a16, b16)}
    if ops.native_loops() is not None:
        from rnnkit.engine import int8

        matrix = int8.pack(*int8.quantize_weight(b))
        kernels["int8 rnnkit int8_linear (x quantized per row in the call)"] = lambda: int8.linear(a, matrix, None)
    else:
        kernels["int8 rnnkit int8_linear (x quantized per row in the call)"] = f"not available: {ops.status()}"
    with quiet_deprecations():
        packed = torch.ao.nn.quantized.dynamic.Linear(n, n)
        packed.set_weight_bias(torch.quantize_per_tensor(b, 0.02, 0, torch.qint8), None)
        kernels["int8 torch.ao dynamic linear (x quantized in the call)"] = lambda: packed(a)
        rates: dict[str, float | str] = {}
        for name, fn in kernels.items():
            if isinstance(fn, str):
                rates[name] = fn
                continue
            try:
                rates[name] = 2 * n**3 / best_of(fn, repeats) / 1e9
            except (RuntimeError, NotImplementedError) as error:
                rates[name] = f"failed: {str(error).splitlines()[0][:80]}"
    return rates


def targets(median, configs, cells, auto_label: str, torch_name: str, add, ratio, title) -> None:
    """The issue's bf16 and int8 targets at configs B and C, through the benchmark's ``add``/``ratio`` helpers."""
    for config in (c for c in configs if c in ("B", "C")):
        for cell in cells:
            threshold = 1.2 if cell == "lstm" else 2.0
            for mode in BF16_MODES:
                value = ratio(median(config, cell, mode, torch_name), median(config, cell, mode, auto_label))
                add(f"{config} {title[cell]} {mode}: torch.nn / rnnkit, both under autocast >= {threshold:.1f}x", value, threshold)
            ours = median(config, cell, INT8_MODE, RNNKIT_INT8)
            add(f"{config} {title[cell]} int8 inference: torch.nn float32 / rnnkit int8 >= 2.0x", ratio(median(config, cell, INT8_MODE, torch_name), ours), 2.0)
            add(f"{config} {title[cell]} int8 inference: torch.ao int8 / rnnkit int8 >= 2.0x", ratio(median(config, cell, INT8_MODE, TORCH_AO), ours), 2.0)
