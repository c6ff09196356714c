r"""Future context: a tag that depends on a later token needs a bidirectional RNN.

The seeds: in a unidirectional RNN "it's not possible to consider any future
input for the current state"; a bidirectional RNN reads the sequence both
ways, and "if you take a phrase in which the last word is known, then
predicting the phrase will become much easier".

The task (:func:`rnnkit.data.synthetic.future_token_task`): tag every token
with the token k steps later, ``y_t = x_{t+k}``, for each k in ``offsets``.
For k > 0 the target is independent of everything a unidirectional model has
read, so on held-out data it scores 1/V (V = ``vocab_size``) in expectation,
however it is trained; the backward direction of a bidirectional model has
read ``x_{t+k}`` k steps before it reaches t. Each pair of models is one
:class:`~rnnkit.models.SequenceTagger` per direction setting, with the
unidirectional hidden size chosen so that its parameter count is the closest
to the bidirectional one's (both counts are reported).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from rnnkit import errors
from rnnkit.data.synthetic import future_token_task
from rnnkit.models import InputConfig, RecurrentConfig, SequenceTagger, TaggerConfig
from rnnkit.training.experiments.common import (COLORS, Budget, check_budget_fields, check_choices, parameter_count, pyplot,
                                                train_and_evaluate, write_rows)  # fmt: skip
from rnnkit.training.checkpoint import save_figure

CELLS = ("rnn", "lstm", "gru")


@dataclass
class FutureContextConfig:
    """``rnnkit diagnose future-context``: every knob; ``--set KEY=VALUE`` sets any of them."""

    offsets: tuple[int, ...] = tuple(range(11))  # k: the tag at step t is the token at t + k
    cells: tuple[str, ...] = CELLS
    seq_len: int = 20
    vocab_size: int = 8
    embedding_dim: int = 16
    hidden_size: int = 24  # of each direction of the bidirectional model; the unidirectional one is matched
    train_examples: int = 4_000
    val_examples: int = 1_000
    steps: int = 400  # per model
    batch_size: int = 64
    lr: float = 0.01
    seed: int = 0

    def __post_init__(self) -> None:
        check_budget_fields(self)
        for name in ("seq_len", "vocab_size", "embedding_dim", "hidden_size"):
            errors.check_positive_int(name, getattr(self, name))
        check_choices("cells", tuple(self.cells), CELLS)
        if not self.offsets or any(not 0 <= k < self.seq_len for k in self.offsets):
            raise errors.fail("offsets", f"a non-empty list of ints in [0, seq_len={self.seq_len})", list(self.offsets))


QUICK = {"offsets": (0, 3), "cells": ("gru",), "train_examples": 1_000, "val_examples": 500, "steps": 150}


def tagger(config: FutureContextConfig, cell: str, hidden_size: int, bidirectional: bool) -> SequenceTagger:
    inputs = InputConfig(vocab_size=config.vocab_size, embedding_dim=config.embedding_dim, padding_idx=None)
    rnn = RecurrentConfig(cell=cell, hidden_size=hidden_size, bidirectional=bidirectional)
    return SequenceTagger(TaggerConfig(input=inputs, num_tags=config.vocab_size, rnn=rnn))


def matched_hidden_size(config: FutureContextConfig, cell: str) -> int:
    """The unidirectional hidden size whose tagger has the parameter count closest to the bidirectional one's."""
    target = parameter_count(tagger(config, cell, config.hidden_size, True))
    return min(range(1, 4 * config.hidden_size), key=lambda h: abs(parameter_count(tagger(config, cell, h, False)) - target))


@dataclass
class FutureContextResult:
    config: FutureContextConfig
    rows: list[dict]  # one per (cell, direction, k): accuracy on the validation set

    def accuracy(self, cell: str, bidirectional: bool, offset: int) -> float:
        return next(r["val_accuracy"] for r in self.rows if (r["cell"], r["bidirectional"], r["offset"]) == (cell, bidirectional, offset))

    @property
    def chance(self) -> float:
        return 1 / self.config.vocab_size

    @property
    def seconds(self) -> float:
        return sum(r["train_seconds"] for r in self.rows)


def run(config: FutureContextConfig, out: Path) -> FutureContextResult:
    """Train every (cell, direction, k), write ``future_context.csv`` and ``future_context.png`` into ``out``."""
    budget = Budget(config.steps, config.batch_size, config.lr, config.seed)
    sizes = {cell: {True: config.hidden_size, False: matched_hidden_size(config, cell)} for cell in config.cells}
    rows = []
    for k in config.offsets:
        train = future_token_task(config.train_examples, config.seq_len, k, vocab_size=config.vocab_size, seed=config.seed)
        val = future_token_task(config.val_examples, config.seq_len, k, vocab_size=config.vocab_size, seed=config.seed + 1)
        for cell in config.cells:
            for bidirectional in (False, True):
                torch.manual_seed(config.seed)
                model = tagger(config, cell, sizes[cell][bidirectional], bidirectional)
                fit = train_and_evaluate(model, train, val, budget)
                rows.append({"cell": cell, "bidirectional": bidirectional, "hidden_size": sizes[cell][bidirectional],
                             "parameters": parameter_count(model), "offset": k, "val_accuracy": fit.val["accuracy"],
                             "val_loss": fit.val["loss"], "train_seconds": round(fit.seconds, 2)})  # fmt: skip
            uni, bi = rows[-2]["val_accuracy"], rows[-1]["val_accuracy"]
            print(f"  future-context k={k:<2} {cell:<4} unidirectional {uni:6.1%}  bidirectional {bi:6.1%}", flush=True)
    result = FutureContextResult(config, rows)
    write_rows(out / "future_context.csv", rows)
    plot(result, out / "future_context.png")
    return result


def plot(result: FutureContextResult, png: Path) -> None:
    plt = pyplot()
    config = result.config
    fig, ax = plt.subplots(figsize=(10, 4.5), layout="constrained")
    for cell in config.cells:
        for bidirectional, style in ((True, "o-"), (False, "s--")):
            accuracy = [result.accuracy(cell, bidirectional, k) for k in config.offsets]
            count = next(r["parameters"] for r in result.rows if (r["cell"], r["bidirectional"]) == (cell, bidirectional))
            label = f"{cell}, {'bidirectional' if bidirectional else 'unidirectional'} ({count} params)"
            ax.plot(config.offsets, accuracy, style, ms=4, color=COLORS[cell], alpha=1.0 if bidirectional else 0.7, label=label)
    ax.axhline(result.chance, color="k", ls=":", lw=1, label=f"chance 1/{config.vocab_size}")
    ax.set(xlabel="k: the tag at step t is the token at step t + k", ylabel="validation accuracy", ylim=(0, 1.02),
           title=f"Future context: tag each token with the one k steps later (T={config.seq_len}, {config.steps} steps)")  # fmt: skip
    ax.set_xticks(list(config.offsets))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside: the curves fill the axes
    save_figure(fig, png, dpi=110)
    plt.close(fig)


def report(result: FutureContextResult) -> str:
    """The Markdown section of REPORT.md: the setup, the figure, and every accuracy."""
    c = result.config
    header = "| model | params | " + " | ".join(f"k={k}" for k in c.offsets) + " |"
    lines = [
        "## Future context needs a bidirectional RNN",
        "",
        f"Tag each token with the token k steps later; T={c.seq_len}, V={c.vocab_size} (chance {result.chance:.1%}); "
        f"{c.steps} Adam steps (lr {c.lr:g}, batch {c.batch_size}) on {c.train_examples} sequences per model, "
        f"accuracy on {c.val_examples} held-out sequences; seed {c.seed}.",
        "",
        "![future context](future_context.png)",
        "",
        header,
        "|" + " --- |" * (len(c.offsets) + 2),
    ]
    for cell in c.cells:
        for bidirectional in (False, True):
            row = [r for r in result.rows if (r["cell"], r["bidirectional"]) == (cell, bidirectional)]
            name = f"{cell}, {'bi' if bidirectional else 'uni'} (H={row[0]['hidden_size']})"
            lines.append(f"| {name} | {row[0]['parameters']} | " + " | ".join(f"{r['val_accuracy']:.1%}" for r in row) + " |")
    return "\n".join(lines) + "\n"

