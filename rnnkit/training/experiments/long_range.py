r"""Long-range dependencies: memory over a long gap needs gates, and fails where the gradient vanishes.

The seeds: "I have been staying in Germany for the last 10 years. I can speak
fluently ___": the word that decides the answer can be far away; the Elman
RNN loses it, and the LSTM is the remedy.

The task (:func:`rnnkit.data.synthetic.country_language_task`): a country,
``gap - 1`` filler words drawn at random, then "speak"; the label is the
country's language, read from the last step (chance 1/C). Each cell is a
unidirectional :class:`~rnnkit.models.SequenceClassifier` (pooling ``last``)
with the same hidden size, trained for the same number of steps at every gap.
For the LSTM and the GRU the carry gate (forget gate, update gate) starts
with bias ``carry_bias``, see :func:`rnnkit.models.long_range.open_carry_gate`.

Beside each accuracy, the gradient-flow ratio of :mod:`rnnkit.training.diagnostics`,
``‖∂L/∂h_1‖ / ‖∂L/∂h_T‖`` on a probe batch, at init and after training: how
much of the loss's gradient at the query reaches the step that read the country
(in float64).
minGRU is not in rnnkit yet; it joins ``cells`` once the parallel-scan work lands.
"""

from __future__ import annotations

from copy import deepcopy
from dataclasses import dataclass
from pathlib import Path

import torch

from rnnkit import errors
from rnnkit.data.synthetic import COUNTRIES, FILLER, country_language_task, country_language_words
from rnnkit.models import InputConfig, ManyToOneConfig, RecurrentConfig, SequenceClassifier
from rnnkit.models.long_range import open_carry_gate
from rnnkit.training.diagnostics import decay_ratio, measure_gradient_flow
from rnnkit.training.experiments.common import (COLORS, Budget, check_budget_fields, check_choices, parameter_count, pyplot,
                                                train_and_evaluate, write_rows)  # fmt: skip
from rnnkit.training.checkpoint import save_figure

CELLS = ("rnn", "lstm", "gru")


@dataclass
class LongRangeConfig:
    """``rnnkit diagnose long-range``: every knob; ``--set KEY=VALUE`` sets any of them."""

    gaps: tuple[int, ...] = (5, 10, 20, 50, 100, 200, 500)  # steps from the country to the query
    cells: tuple[str, ...] = CELLS
    num_countries: int = 8
    embedding_dim: int = 16
    hidden_size: int = 32
    carry_bias: float | None = 4.0  # LSTM forget / GRU update gate bias at init; None: torch.nn's
    train_examples: int = 4_000
    val_examples: int = 1_000
    probe_examples: int = 32  # the first validation examples, for the gradient-flow ratio
    steps: int = 500  # per model and gap: the fixed training budget
    batch_size: int = 32
    lr: float = 0.003  # at 0.01 the Elman RNN stalls even at gap 5 (docs/diagnostics.md)
    seed: int = 0

    def __post_init__(self) -> None:
        check_budget_fields(self)
        for name in ("embedding_dim", "hidden_size", "probe_examples"):
            errors.check_positive_int(name, getattr(self, name))
        check_choices("cells", tuple(self.cells), CELLS)
        if not self.gaps or any(isinstance(g, bool) or not isinstance(g, int) or g < 2 for g in self.gaps):
            raise errors.fail("gaps", "a non-empty list of ints >= 2", list(self.gaps))
        if not 2 <= self.num_countries <= len(COUNTRIES):
            raise errors.fail("num_countries", f"an int in [2, {len(COUNTRIES)}]", self.num_countries)


QUICK = {"gaps": (5, 40), "cells": ("rnn", "gru"), "hidden_size": 16, "train_examples": 1_000, "val_examples": 400, "steps": 250}


def classifier(config: LongRangeConfig, cell: str) -> SequenceClassifier:
    vocab = config.num_countries + len(FILLER) + 1
    inputs = InputConfig(vocab_size=vocab, embedding_dim=config.embedding_dim, padding_idx=None)
    rnn = RecurrentConfig(cell=cell, hidden_size=config.hidden_size)
    model = SequenceClassifier(ManyToOneConfig(input=inputs, output_size=config.num_countries, rnn=rnn, pooling="last"))
    if cell != "rnn" and config.carry_bias is not None:
        open_carry_gate(model.rnn, config.carry_bias)
    return model


@dataclass
class LongRangeResult:
    config: LongRangeConfig
    rows: list[dict]  # one per (cell, gap)
    example: str  # one training sequence in words

    def get(self, cell: str, gap: int, key: str) -> float:
        return next(r[key] for r in self.rows if (r["cell"], r["gap"]) == (cell, gap))

    @property
    def chance(self) -> float:
        return 1 / self.config.num_countries


def ratio(model, probe) -> float:
    """``‖∂L/∂h_1‖ / ‖∂L/∂h_T‖`` of the model's recurrent layer on the probe batch.

    Measured on a float64 copy in eval mode: over hundreds of steps the Elman
    RNN's ratio falls below float32's smallest number (1e-45), where it would read 0.
    """
    copy = deepcopy(model).double().eval()
    return decay_ratio(measure_gradient_flow(copy, *probe).hidden["rnn.l0"])


def run(config: LongRangeConfig, out: Path) -> LongRangeResult:
    """Train every (cell, gap), write ``long_range.csv`` and ``long_range.png`` into ``out``."""
    budget = Budget(config.steps, config.batch_size, config.lr, config.seed)
    rows = []
    for gap in config.gaps:
        train = country_language_task(config.train_examples, gap, num_countries=config.num_countries, seed=config.seed)
        val = country_language_task(config.val_examples, gap, num_countries=config.num_countries, seed=config.seed + 1)
        probe = (val[0][: config.probe_examples], val[1][: config.probe_examples])
        for cell in config.cells:
            torch.manual_seed(config.seed)
            model = classifier(config, cell)
            ratio_init = ratio(model, probe)
            fit = train_and_evaluate(model, train, val, budget)
            rows.append({"cell": cell, "gap": gap, "parameters": parameter_count(model), "val_accuracy": fit.val["accuracy"],
                         "val_loss": fit.val["loss"], "ratio_init": ratio_init, "ratio_trained": ratio(model, probe),
                         "train_seconds": round(fit.seconds, 2)})  # fmt: skip
            r = rows[-1]
            print(f"  long-range gap={gap:<4} {cell:<4} accuracy {r['val_accuracy']:6.1%}  "
                  f"||dL/dh_1||/||dL/dh_T|| {r['ratio_init']:.1e} -> {r['ratio_trained']:.1e}  ({fit.seconds:.1f} s)", flush=True)  # fmt: skip
    tokens, labels = country_language_task(1, min(config.gaps), num_countries=config.num_countries, seed=config.seed)
    result = LongRangeResult(config, rows, country_language_words(tokens[0], int(labels[0]), config.num_countries))
    write_rows(out / "long_range.csv", rows)
    plot(result, out / "long_range.png")
    return result


def plot(result: LongRangeResult, png: Path) -> None:
    plt = pyplot()
    config = result.config
    fig, (acc_ax, ratio_ax) = plt.subplots(1, 2, figsize=(12, 4.5), layout="constrained")
    for cell in config.cells:
        gaps = list(config.gaps)
        acc_ax.semilogx(gaps, [result.get(cell, g, "val_accuracy") for g in gaps], "o-", color=COLORS[cell], label=cell)
        ratio_ax.loglog(gaps, [result.get(cell, g, "ratio_trained") for g in gaps], "o-", color=COLORS[cell], label=f"{cell}, trained")
        ratio_ax.loglog(gaps, [result.get(cell, g, "ratio_init") for g in gaps], "o:", ms=3, color=COLORS[cell], alpha=0.6,
                        label=f"{cell}, at init")  # fmt: skip
    acc_ax.axhline(result.chance, color="k", ls=":", lw=1, label=f"chance 1/{config.num_countries}")
    acc_ax.set(xlabel="gap: steps from the country to the query", ylabel="validation accuracy", ylim=(0, 1.02),
               title=f"accuracy after {config.steps} steps (batch {config.batch_size})")  # fmt: skip
    ratio_ax.set(xlabel="gap: steps from the country to the query", ylabel="‖∂L/∂h_1‖ / ‖∂L/∂h_T‖",
                 title="gradient reaching the country's step")  # fmt: skip
    for ax in (acc_ax, ratio_ax):
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    bias = "torch.nn's init" if config.carry_bias is None else f"carry gates' bias {config.carry_bias:g}"
    fig.suptitle(f"Long-range memory: country ... {{gap - 1 fillers}} ... speak -> language (H={config.hidden_size}, {bias})")
    save_figure(fig, png, dpi=110)
    plt.close(fig)


def report(result: LongRangeResult) -> str:
    c = result.config
    bias = "torch.nn's init" if c.carry_bias is None else f"the LSTM's forget and the GRU's update gate biased to {c.carry_bias:g} at init"
    lines = [
        "## Memory over a long gap needs gates",
        "",
        f"A country, gap - 1 random filler words, then the query; the label is the country's language "
        f"({c.num_countries} countries, chance {result.chance:.1%}). Example (gap {min(c.gaps)}): `{result.example}`. "
        f"H={c.hidden_size}, {bias}; {c.steps} Adam steps (lr {c.lr:g}, batch {c.batch_size}) per model and gap, "
        f"{c.train_examples} training and {c.val_examples} held-out sequences; seed {c.seed}. "
        f"ratio: ‖∂L/∂h_1‖ / ‖∂L/∂h_T‖ on {c.probe_examples} held-out sequences, at init -> after training. "
        "minGRU is not in rnnkit yet.",
        "",
        "![long range](long_range.png)",
        "",
        "| gap | " + " | ".join(f"{cell} accuracy | {cell} ratio" for cell in c.cells) + " |",
        "| --- |" + " --- | --- |" * len(c.cells),
    ]
    for gap in c.gaps:
        cells = [f"{result.get(cell, gap, 'val_accuracy'):.1%} | {result.get(cell, gap, 'ratio_init'):.0e} -> "
                 f"{result.get(cell, gap, 'ratio_trained'):.0e}" for cell in c.cells]  # fmt: skip
        lines.append(f"| {gap} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
