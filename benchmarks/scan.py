"""The parallel-scan families against the sequential recurrences: time per step as T grows.

    python -m benchmarks.scan                  # writes docs/benchmarks-scan.md and docs/img/scan-time-per-step.png
    python -m benchmarks.scan --quick --out /tmp/scan.md --plot /tmp/scan.png   # tiny sizes, a smoke check

H = I = 256, T in {256, 1024, 4096, 16384}, B in {1, 8}, float32, time-major, one layer. For each
(T, B) a fresh process (so that no allocator history carries over from one size to the next) times,
interleaved (:func:`benchmarks.timing.interleaved`):

* torch.nn's GRU and LSTM, rnnkit's GRU (the fused C++ engine);
* rnnkit's MinGRU, MinLSTM and RGLRU (one GEMM, then the compiled scan);
* :class:`LogSpaceMinGRU`, the log-space minGRU of minGRU-pytorch (Heinsen's scan: cumsum and
  logcumsumexp, in plain PyTorch), the algorithm the issue trackers report slow;

each as inference (no_grad forward) and a training step (forward, backward of output.sum()), and
the training step's peak memory. Ratios are the peer's time over the contender's.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import subprocess
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import rnnkit
from benchmarks import timing

HIDDEN = 256
STEPS = (256, 1024, 4096, 16384)
BATCHES = (1, 8)
QUICK = {"hidden": 8, "steps": (16, 64), "batches": (1,)}
CONTENDERS = ("nn.GRU", "nn.LSTM", "rnnkit GRU", "rnnkit MinGRU", "rnnkit MinLSTM", "rnnkit RGLRU", "log-space minGRU")


def log_g(v):
    """log of minGRU's g (minGRU-pytorch's ``log_g``)."""
    return torch.where(v >= 0, (F.relu(v) + 0.5).log(), -F.softplus(-v))


def heinsen_scan(log_coefficients, log_values):
    """Heinsen (2023): h_t = a_t h_{t-1} + b_t for positive b in log space, by cumsum and logcumsumexp over time (dim 0)."""
    a_star = log_coefficients.cumsum(dim=0)
    return (a_star + (log_values - a_star).logcumsumexp(dim=0)).exp()


class LogSpaceMinGRU(nn.Module):
    """minGRU as minGRU-pytorch computes it (log space, zero initial state), on rnnkit.MinGRU's weights, time-major."""

    def __init__(self, layer: rnnkit.MinGRU) -> None:
        super().__init__()
        self.weight, self.bias = layer.weight_ih_l0, layer.bias_ih_l0

    def forward(self, x):
        gate, hidden = F.linear(x, self.weight, self.bias).chunk(2, dim=-1)  # rnnkit's order: z, then h̃
        log_z, log_one_minus_z = -F.softplus(-gate), -F.softplus(gate)
        return heinsen_scan(log_one_minus_z, log_z + log_g(hidden)), None


def contenders(hidden: int) -> dict[str, nn.Module]:
    torch.manual_seed(0)
    mingru = rnnkit.MinGRU(hidden, hidden)
    return {
        "nn.GRU": nn.GRU(hidden, hidden), "nn.LSTM": nn.LSTM(hidden, hidden), "rnnkit GRU": rnnkit.GRU(hidden, hidden),
        "rnnkit MinGRU": mingru, "rnnkit MinLSTM": rnnkit.MinLSTM(hidden, hidden), "rnnkit RGLRU": rnnkit.RGLRU(hidden, hidden),
        "log-space minGRU": LogSpaceMinGRU(mingru),
    }  # fmt: skip


def measure(steps: int, batch: int, hidden: int, repeats: int) -> dict:
    """One (T, B): median seconds per call of every contender, inference and training, and training peak bytes."""
    models = contenders(hidden)
    x = torch.randn(steps, batch, hidden)

    def infer(model):
        def call():
            with torch.no_grad():
                model(x)

        return call

    def train(model):
        def call():
            model.zero_grad(set_to_none=True)
            model(x)[0].sum().backward()

        return call

    result = {"steps": steps, "batch": batch, "hidden": hidden, "threads": torch.get_num_threads(), "ms": {}, "peak_mb": {}}
    for mode, make in (("inference", infer), ("training", train)):
        samples = timing.interleaved({name: make(m) for name, m in models.items()}, repeats=repeats, warmup=1)
        result["ms"][mode] = {name: 1e3 * timing.summarize(s).median for name, s in samples.items()}
    for name, model in models.items():
        model.zero_grad(set_to_none=True)
        result["peak_mb"][name] = timing.peak_memory(train(model), torch.device("cpu")).peak / 2**20
    return result


def run_fresh(steps: int, batch: int, hidden: int, repeats: int, threads: int) -> dict:
    command = [sys.executable, "-m", "benchmarks.scan", "--one", f"{steps},{batch},{hidden},{repeats},{threads}"]
    done = subprocess.run(command, capture_output=True, text=True, check=False, cwd=Path(__file__).resolve().parent.parent)
    if done.returncode != 0:
        raise RuntimeError(f"benchmark of T={steps}, B={batch} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def targets(results: list[dict]) -> list[tuple[str, str, str]]:
    """(target, measured, status) of issue 15, at T = 4096, B = 1 (where measured) and across T."""
    rows = []
    at = {(r["steps"], r["batch"]): r for r in results}
    if (4096, 1) in at:
        train = at[(4096, 1)]["ms"]["training"]
        for peer, threshold in (("nn.GRU", 30), ("rnnkit GRU", 3), ("log-space minGRU", 3)):
            ratio = train[peer] / train["rnnkit MinGRU"]
            rows.append((f"T=4096, B=1 training: MinGRU vs {peer} >= {threshold}x", f"{ratio:.1f}x", "MET" if ratio >= threshold else "MISSED"))
    for batch in sorted({r["batch"] for r in results}):
        per_token = [r["ms"]["training"]["rnnkit MinGRU"] / r["steps"] for r in results if r["batch"] == batch]
        if len(per_token) > 1:
            middle = sorted(per_token)[len(per_token) // 2]
            spread = max(abs(p / middle - 1) for p in per_token)
            rows.append((f"B={batch} training: MinGRU time per step flat within ±30% over T", f"±{100 * spread:.0f}% of the median",
                         "MET" if spread <= 0.3 else "MISSED"))  # fmt: skip
    for r in results:
        mine, theirs = r["peak_mb"]["rnnkit MinGRU"], r["peak_mb"]["nn.GRU"]
        rows.append((f"T={r['steps']}, B={r['batch']}: MinGRU training memory <= nn.GRU's", f"{mine:.1f} vs {theirs:.1f} MB",
                     "MET" if mine <= theirs else "MISSED"))  # fmt: skip
    return rows


def render(results: list[dict], plot: str | None, quick: bool, out_path: str) -> str:
    out = ["# Parallel scan against sequential recurrences", ""]
    if quick:
        out += ["**Quick smoke run: tiny sizes, not representative.**", ""]
    out += [f"`python -m benchmarks.scan`, {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, torch {torch.__version__}, "
            f"{results[0]['threads']} threads, float32, H = I = {results[0]['hidden']}, one layer, time-major; each (T, B) in a fresh "
            "process; medians of interleaved calls. Ratio: the row's time over MinGRU's (above 1: MinGRU is faster).", ""]  # fmt: skip
    out += ["## Targets", "", "| target | measured | status |", "|---|---|---|"]
    out += [f"| {t} | {m} | {s} |" for t, m, s in targets(results)] + [""]
    if plot:
        out += [f"![time per step against T]({os.path.relpath(plot, Path(out_path).parent)})", ""]
    for mode in ("training", "inference"):
        out += [f"## {mode.capitalize()}: ms per call (µs per step)", "", "| T | B | contender | ms | µs/step | ratio to MinGRU |", "|---|---|---|---|---|---|"]
        for r in results:
            ms = r["ms"][mode]
            for name in CONTENDERS:
                out.append(f"| {r['steps']} | {r['batch']} | {name} | {ms[name]:.2f} | {1e3 * ms[name] / r['steps']:.2f} | {ms[name] / ms['rnnkit MinGRU']:.2f} |")
        out.append("")
    out += ["## Training-step peak memory (MB)", "", "| T | B | " + " | ".join(CONTENDERS) + " |", "|---|---|" + "---|" * len(CONTENDERS)]
    out += [f"| {r['steps']} | {r['batch']} | " + " | ".join(f"{r['peak_mb'][n]:.1f}" for n in CONTENDERS) + " |" for r in results]
    return "\n".join(out) + "\n"


def draw(results: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    batches = sorted({r["batch"] for r in results})
    figure, axes = plt.subplots(1, len(batches), figsize=(5 * len(batches), 3.6), squeeze=False)
    for axis, batch in zip(axes[0], batches):
        rows = [r for r in results if r["batch"] == batch]
        for name, style in (("nn.GRU", "o-"), ("rnnkit GRU", "s-"), ("rnnkit MinGRU", "^-"), ("log-space minGRU", "v--"), ("rnnkit RGLRU", "d:")):
            axis.plot([r["steps"] for r in rows], [1e3 * r["ms"]["training"][name] / r["steps"] for r in rows], style, label=name)
        axis.set(xscale="log", yscale="log", xlabel="sequence length T", ylabel="training µs per step", title=f"B = {batch}, H = {rows[0]['hidden']}")
        axis.grid(True, which="both", alpha=0.3)
    axes[0][0].legend(fontsize=8)
    figure.suptitle("The seeds' 'slow computation', answered: time per step against T")
    figure.tight_layout()
    tmp = Path(path).with_suffix(".tmp.png")
    figure.savefig(tmp, dpi=110)
    tmp.replace(path)  # no partial file replaces a good one
    plt.close(figure)


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scan", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke check")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds per contender (default 5; 2 with --quick)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads in each measuring process")
    parser.add_argument("--out", default="docs/benchmarks-scan.md", help="Markdown report")
    parser.add_argument("--plot", default="docs/img/scan-time-per-step.png", help="PNG plot of time per step against T ('' for none)")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: T,B,H,repeats,threads, measured in this process
    args = parser.parse_args(argv)
    if args.one:
        steps, batch, hidden, repeats, threads = (int(v) for v in args.one.split(","))
        torch.set_num_threads(threads)
        gc.collect()
        gc.freeze()
        print(json.dumps(measure(steps, batch, hidden, repeats)))
        return []
    hidden, steps, batches = (QUICK["hidden"], QUICK["steps"], QUICK["batches"]) if args.quick else (HIDDEN, STEPS, BATCHES)
    repeats = args.repeats or (2 if args.quick else 5)
    results = []
    for batch in batches:
        for t in steps:
            print(f"T={t}, B={batch} ...", file=sys.stderr, flush=True)
            results.append(run_fresh(t, batch, hidden, repeats, args.threads))
    if args.plot:
        draw(results, args.plot)
    tmp = Path(args.out).with_suffix(".tmp")
    tmp.write_text(render(results, args.plot, args.quick, args.out))
    tmp.replace(args.out)
    print(f"wrote {args.out}" + (f" and {args.plot}" if args.plot else ""), file=sys.stderr)
    return results


if __name__ == "__main__":
    main()
