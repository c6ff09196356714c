"""Which library computes each of the engine's GEMMs faster: the measurements behind rnnkit.engine.gemm's rule.

Command: ``python -m benchmarks.gemm_routing [--repeats N] [--out docs/benchmarks-gemm.md]``

A training step of the fused engine makes three kinds of product that span all time steps (R = L*N rows,
G*H gate columns, K = I or H):

* the input projection ``X W_ih^T + b``, (R, K) x (K, G*H), and the input gradient ``dG W_ih``, (R, G*H) x (G*H, K):
  ``engine.gemm.linear``;
* the weight gradients ``dG^T X`` and ``dG^T H_prev``, (G*H, R) x (R, K): ``engine.gemm.matmul``.

Each is timed with MKL (``torch.addmm`` / ``@`` on the strided operands: MKL reads transposes without
a copy) and with oneDNN's matmul (``mkldnn._linear_pointwise``), counting the copies oneDNN needs:
its weight operand must be contiguous, so a weight gradient copies dG^T, the largest tensor of the
step. Shapes are configs A-C of ``benchmarks.run`` for each family; contenders alternate, and the
median of ``--repeats`` calls is reported. The last column says which library the rule picks.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from rnnkit.engine import gemm

CONFIGS = {"A": (1, 1000, 32, 128), "B": (32, 100, 64, 256), "C": (64, 256, 128, 512)}  # N, L, I, H (benchmarks.run)
GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}


def products(config: str, family: str):
    """(name, (M, K, N), MKL call, oneDNN call, what the rule picks) for each product of one config and family."""
    batch, length, inputs, hidden = CONFIGS[config]
    rows, gate_size = batch * length, GATES[family] * hidden
    torch.manual_seed(0)
    x, h_prev = torch.randn(rows, inputs), torch.randn(rows, hidden)
    w_ih, bias, d_gates = torch.randn(gate_size, inputs), torch.randn(gate_size), torch.randn(rows, gate_size)

    def picked(shape) -> str:
        return "oneDNN" if gemm.onednn_picked(*shape) else "MKL"

    projection, input_gradient = (rows, inputs, gate_size), (rows, gate_size, inputs)
    return [
        ("projection X W_ih^T + b", projection, lambda: gemm.addmm_linear(x, w_ih, bias), lambda: gemm.mkldnn_linear(x, w_ih, bias), picked(projection)),
        ("input gradient dG W_ih", input_gradient, lambda: gemm.addmm_linear(d_gates, w_ih.t(), None), lambda: gemm.mkldnn_linear(d_gates, w_ih.t(), None), picked(input_gradient)),
        ("weight gradient dG^T X", (gate_size, rows, inputs), lambda: d_gates.t() @ x, lambda: gemm.mkldnn_linear(d_gates.t(), x.t(), None), "MKL"),
        ("weight gradient dG^T H", (gate_size, rows, hidden), lambda: d_gates.t() @ h_prev, lambda: gemm.mkldnn_linear(d_gates.t(), h_prev.t(), None), "MKL"),
    ]  # fmt: skip


def median_seconds(calls: dict, repeats: int) -> dict[str, float]:
    samples = {name: [] for name in calls}
    for name, call in calls.items():
        call()  # warm-up: oneDNN primitive creation, first-touch pages
    for _ in range(repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in samples.items()}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, help="write the table to this Markdown file too")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    lines = [
        "| config | family | product | shape (M x K x N) | MKL ms | oneDNN ms (copies included) | oneDNN / MKL speed | rule picks | faster |",
        "|---|---|---|---|---:|---:|---:|---|---|",
    ]
    with torch.no_grad():
        for config in CONFIGS:
            for family in GATES:
                for name, shape, mkl, onednn, picked in products(config, family):
                    times = median_seconds({"MKL": mkl, "oneDNN": onednn}, args.repeats)
                    faster = "MKL" if times["MKL"] <= times["oneDNN"] else "oneDNN"
                    lines.append(
                        f"| {config} | {family} | {name} | {' x '.join(map(str, shape))} | {times['MKL'] * 1e3:.3f} | "
                        f"{times['oneDNN'] * 1e3:.3f} | {times['MKL'] / times['oneDNN']:.2f}x | {picked} | {faster} |"
                    )
                    print(lines[-1], flush=True)
    if args.out is not None:
        args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
