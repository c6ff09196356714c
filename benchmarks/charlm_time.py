"""charlm at equal wall-clock time: GRU, LSTM, minGRU and RG-LRU, bits per character against seconds.

    python -m benchmarks.charlm_time                    # 120 s of training per cell; writes docs/benchmarks-charlm.md + PNG
    python -m benchmarks.charlm_time --seconds 20 --out /tmp/c.md --plot /tmp/c.png

Each cell trains the charlm task's language model (:mod:`rnnkit.tasks.charlm`: 2 layers,
H = 256, embedding 64, Shakespeare without Julius Caesar and Hamlet) by truncated BPTT
(32 streams x 100 characters, the state carried between windows, Adam lr 2e-3) for the same
wall-clock budget of training time; every ``--eval-seconds`` the validation bits per character
(the first 40,000 characters of Julius Caesar) are measured, off the clock. Each cell runs in
a fresh process. The comparison asks whether the parallel-scan recurrences, cheaper per step,
learn as much per second as the gated RNNs.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rnnkit.models import LanguageModel, LanguageModelConfig, RecurrentConfig
from rnnkit.tasks import charlm

CELLS = ("gru", "lstm", "mingru", "rglru")
TITLES = {"gru": "GRU", "lstm": "LSTM", "mingru": "minGRU", "rglru": "RG-LRU", "minlstm": "minLSTM"}


def detach(state):
    return None if state is None else tuple(s.detach() for s in state) if isinstance(state, tuple) else state.detach()


def train_for(cell: str, seconds: float, eval_seconds: float, window: int = 100, streams: int = 32, eval_chars: int = 40_000) -> dict:
    """Train one cell for ``seconds`` of training time; the validation bpc curve over that time."""
    torch.manual_seed(0)
    train_text, val_text, _ = charlm.load_texts(charlm.DataConfig())
    vocabulary = [charlm.UNKNOWN] + sorted(set(train_text) - {charlm.UNKNOWN})
    train_ids, val_ids = charlm.encode(train_text, vocabulary), charlm.encode(val_text[:eval_chars], vocabulary)
    length = len(train_ids) // streams
    data = train_ids[: length * streams].view(streams, length)
    rnn = RecurrentConfig(cell=cell, hidden_size=256, num_layers=2, dropout=0.1)
    model = LanguageModel(LanguageModelConfig(len(vocabulary), 64, rnn, 0.1))
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    curve, spent, steps, start, state, next_eval = [], 0.0, 0, 0, None, 0.0
    while spent < seconds:
        if spent >= next_eval:
            curve.append((spent, steps, charlm.bits_per_character(model, val_ids)))
            next_eval += eval_seconds
        model.train()
        tick = time.perf_counter()
        if start + window + 1 > length:
            start, state = 0, None
        chunk = data[:, start : start + window + 1]
        logits, state = model(chunk[:, :-1], state)
        loss = F.cross_entropy(logits.flatten(0, 1), chunk[:, 1:].flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        state = detach(state)
        start += window
        steps += 1
        spent += time.perf_counter() - tick
    curve.append((spent, steps, charlm.bits_per_character(model, val_ids)))
    return {"cell": cell, "curve": curve, "threads": torch.get_num_threads(), "parameters": sum(p.numel() for p in model.parameters())}


def render(results: list[dict], seconds: float, plot: str, out: str) -> str:
    gru = next((r for r in results if r["cell"] == "gru"), None)
    lines = ["# charlm at equal wall-clock time", "",
             f"`python -m benchmarks.charlm_time --seconds {seconds:g}`, {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, "
             f"{results[0]['threads']} threads. Each cell: the charlm model (2 layers, H = 256), truncated BPTT (32 x 100 characters), "
             f"Adam lr 2e-3, {seconds:g} s of training time, validation bits per character on 40,000 characters of Julius Caesar "
             "(evaluation off the clock), each in a fresh process.", "",
             f"![bpc against wall-clock time]({os.path.relpath(plot, Path(out).parent)})", "",
             "| cell | parameters | updates | final validation bpc | vs GRU | target (within 0.02 of GRU, or better) |", "|---|---|---|---|---|---|"]  # fmt: skip
    for r in results:
        _, steps, bpc = r["curve"][-1]
        delta = None if gru is None else bpc - gru["curve"][-1][2]
        status = "" if delta is None or r["cell"] in ("gru", "lstm") else ("MET" if delta <= 0.02 else "MISSED")
        lines.append(f"| {TITLES[r['cell']]} | {r['parameters']:,} | {steps} | {bpc:.3f} | {'' if delta is None else f'{delta:+.3f}'} | {status} |")
    return "\n".join(lines) + "\n"


def draw(results: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4.2))
    for r in results:
        axis.plot([c[0] for c in r["curve"]], [c[2] for c in r["curve"]], "o-", ms=3, label=TITLES[r["cell"]])
    axis.set(xlabel="training seconds", ylabel="validation bits per character", title="charlm: bpc against wall-clock time (2 cores)")
    axis.set_ylim(top=min(4.5, axis.get_ylim()[1]))
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    tmp = Path(path).with_suffix(".tmp.png")
    figure.savefig(tmp, dpi=110)
    tmp.replace(path)
    plt.close(figure)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.charlm_time", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=120.0, help="training seconds per cell (default 120)")
    parser.add_argument("--eval-seconds", type=float, default=None, help="training seconds between evaluations (default seconds/8)")
    parser.add_argument("--cells", default=",".join(CELLS), help=f"comma-separated cells (default {','.join(CELLS)})")
    parser.add_argument("--out", default="docs/benchmarks-charlm.md")
    parser.add_argument("--plot", default="docs/img/charlm-bpc-time.png")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: cell,seconds,eval_seconds in this process
    args = parser.parse_args(argv)
    if args.one:
        cell, seconds, eval_seconds = args.one.split(",")
        print(json.dumps(train_for(cell, float(seconds), float(eval_seconds))))
        return
    cells = [c.strip() for c in args.cells.split(",") if c.strip()]
    unknown = [c for c in cells if c not in TITLES]
    if unknown or not cells:
        parser.error(f"--cells: expected names among {sorted(TITLES)}, got {unknown or 'nothing'}")
    eval_seconds = args.eval_seconds or args.seconds / 8
    results = []
    for cell in cells:
        print(f"{cell}: {args.seconds:g} s ...", file=sys.stderr, flush=True)
        command = [sys.executable, "-m", "benchmarks.charlm_time", "--one", f"{cell},{args.seconds},{eval_seconds}"]
        done = subprocess.run(command, capture_output=True, text=True, check=False, cwd=Path(__file__).resolve().parent.parent)
        if done.returncode != 0:
            raise SystemExit(f"{cell} failed:\n{done.stderr[-3000:]}")
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    draw(results, args.plot)
    tmp = Path(args.out).with_suffix(".tmp")
    tmp.write_text(render(results, args.seconds, args.plot, args.out))
    tmp.replace(args.out)
    print(f"wrote {args.out} and {args.plot}", file=sys.stderr)


if __name__ == "__main__":
    main()
