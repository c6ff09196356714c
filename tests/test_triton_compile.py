"""Every Triton kernel compiles for a CUDA GPU (sm_90, to a cubin), here, without one.

The interpreter (tests/test_triton_interpreter.py) checks what the kernels compute; it runs them as
Python and so cannot see what only the compiler rejects (types, constexpr branches, loop bounds).
Triton's wheel carries the whole toolchain down to ptxas, so compiling needs no device.
"""

from __future__ import annotations

import pytest

pytest.importorskip("triton", reason="the triton extra is not installed")

from rnnkit.ops import triton as triton_ops  # noqa: E402

if triton_ops.interpreting():
    pytest.skip("TRITON_INTERPRET=1: the kernels are interpreted, not compiled", allow_module_level=True)

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from rnnkit.ops.triton import layer_norm_kernels, scan_kernels  # noqa: E402


def pointers(names: str, dtype: str) -> dict[str, str]:
    return {name: f"*{dtype}" for name in names.split()}


def signatures(dtype: str):
    """(kernel, signature, constexprs) of every kernel, with the branches taken that padding, zoneout and biases add."""
    scan = {"T": "i32", "F": "i32", "chunk": "i32", "REVERSE": "constexpr", "BLOCK": "constexpr"}
    step = {"valid_ptr": "*u8", "zoneout_ptr": f"*{dtype}", "H": "i32", "HAS_VALID": "constexpr", "HAS_ZONEOUT": "constexpr", "BLOCK": "constexpr"}
    taken = {"HAS_VALID": True, "HAS_ZONEOUT": True, "BLOCK": 64}
    return [
        (scan_kernels.chunk_summaries, {**pointers("a_ptr b_ptr prod_ptr last_ptr", dtype), **scan}, {"REVERSE": True, "BLOCK": 128}),
        (scan_kernels.chunk_carries, {**pointers("h0_ptr prod_ptr last_ptr carry_ptr", dtype), "F": "i32", "chunks": "i32", "BLOCK": "constexpr"}, {"BLOCK": 128}),
        (scan_kernels.chunk_scan, {**pointers("a_ptr b_ptr carry_ptr h_ptr", dtype), **scan}, {"REVERSE": False, "BLOCK": 128}),
        (
            layer_norm_kernels.lstm_forward_step,
            {**pointers("gates_ptr a_ptr h_prev_ptr c_prev_ptr h_ptr c_ptr y_ptr ahat_ptr chat_ptr rstd_ptr", dtype),
             **pointers("gain_hh_ptr gain_cell_ptr bias_cell_ptr", dtype), **step, "eps": "fp32"},
            taken,
        ),
        (
            layer_norm_kernels.lstm_backward_step,
            {**pointers("gates_ptr c_prev_ptr ahat_ptr chat_ptr rstd_ptr dy_ptr gain_hh_ptr gain_cell_ptr bias_cell_ptr", dtype),
             **pointers("dh_ptr dc_ptr dgx_ptr da_ptr dn_ptr", dtype), **step},
            taken,
        ),
        (
            layer_norm_kernels.gru_forward_step,
            {**pointers("gates_ptr a_ptr h_prev_ptr h_ptr y_ptr ahat_ptr hn_ptr rstd_ptr gain_hh_ptr b_hh_ptr", dtype), **step,
             "eps": "fp32", "HAS_BIAS": "constexpr"},
            {**taken, "HAS_BIAS": True},
        ),
        (
            layer_norm_kernels.gru_backward_step,
            {**pointers("gates_ptr h_prev_ptr ahat_ptr hn_ptr rstd_ptr dy_ptr gain_hh_ptr dh_ptr dgx_ptr dgh_ptr da_ptr", dtype), **step},
            taken,
        ),
    ]  # fmt: skip


@pytest.mark.parametrize("dtype", ["fp32", "fp64"])
def test_every_kernel_compiles_to_a_cubin(dtype, monkeypatch, tmp_path):
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path))  # a fresh cache: every kernel is really compiled
    for kernel, signature, constexprs in signatures(dtype):
        order = list(kernel.arg_names)
        assert sorted(signature) == sorted(order), kernel.__name__  # every argument typed: the table matches the kernel
        compiled = triton.compile(
            ASTSource(kernel, {name: signature[name] for name in order}, constexprs),
            target=GPUTarget("cuda", 90, 32), options={"num_warps": 4, "enable_fp_fusion": False},
        )  # fmt: skip
        assert compiled.asm["cubin"], kernel.__name__
        assert f".entry {kernel.__name__}" in compiled.asm["ptx"], kernel.__name__
