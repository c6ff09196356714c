r"""Selective copying: do the parallel-scan recurrences learn what the gated RNNs learn?

The task (:func:`rnnkit.data.synthetic.selective_copy_task`; Mamba, §4.1, and "Were RNNs All We
Needed?", §4): K colours scattered among noise in a region of R steps, then K markers at which
the model must emit the colours in order. A per-position tagger (:class:`~rnnkit.models.SequenceTagger`,
three stacked layers) is trained per cell with the same budget: minGRU (and, if asked, minLSTM
and RG-LRU) beside the LSTM and the GRU. A linear recurrence's gates read only its input, so one
layer cannot count the colours it has written; stacked layers can, which is why the paper (and
this experiment) use three.

CPU-sized configuration (the defaults): R = 64, K = 4 colours of 8, hidden 64, 3 layers, Adam
lr 3e-3, 2,000 steps of 64 sequences. The minGRU paper's (R = 4096, K = 16, 400k steps) needs a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


from rnnkit import errors
from rnnkit.data.synthetic import selective_copy_task
from rnnkit.models import InputConfig, RecurrentConfig, SequenceTagger, TaggerConfig
from rnnkit.training.experiments.common import COLORS, Budget, check_budget_fields, check_choices, pyplot, train_each, write_rows
from rnnkit.training.checkpoint import save_figure

MODELS = ("mingru", "minlstm", "rglru", "lstm", "gru")
TITLES = {"mingru": "minGRU", "minlstm": "minLSTM", "rglru": "RG-LRU", "lstm": "LSTM", "gru": "GRU"}
SCAN_COLORS = {"mingru": "tab:purple", "minlstm": "tab:orange", "rglru": "tab:brown"}


@dataclass
class SelectiveCopyConfig:
    """``rnnkit diagnose selective-copy``: every knob; ``--set KEY=VALUE`` sets any of them."""

    models: tuple[str, ...] = ("mingru", "lstm", "gru")
    region_len: int = 64
    num_tokens: int = 4
    num_colors: int = 8
    num_layers: int = 3
    embedding_dim: int = 32
    hidden_size: int = 64
    train_examples: int = 20_000
    val_examples: int = 2_000
    steps: int = 2_000
    batch_size: int = 64
    lr: float = 3e-3
    eval_every: int = 100
    seed: int = 0

    def __post_init__(self) -> None:
        check_budget_fields(self)
        for name in ("region_len", "num_tokens", "num_colors", "num_layers", "embedding_dim", "hidden_size", "eval_every"):
            errors.check_positive_int(name, getattr(self, name))
        check_choices("models", tuple(self.models), MODELS)
        if self.region_len < self.num_tokens:
            raise errors.fail("region_len", f">= num_tokens ({self.num_tokens})", self.region_len)


QUICK = {"models": ("mingru", "gru"), "region_len": 8, "num_tokens": 2, "num_colors": 3, "num_layers": 2, "hidden_size": 16,
         "embedding_dim": 8, "train_examples": 512, "val_examples": 256, "steps": 40, "eval_every": 20}  # fmt: skip


def make_model(config: SelectiveCopyConfig, name: str) -> SequenceTagger:
    inputs = InputConfig(vocab_size=config.num_colors + 2, embedding_dim=config.embedding_dim, padding_idx=None)
    rnn = RecurrentConfig(cell=name, hidden_size=config.hidden_size, num_layers=config.num_layers)
    return SequenceTagger(TaggerConfig(input=inputs, num_tags=config.num_colors + 1, rnn=rnn))


@dataclass
class SelectiveCopyResult:
    config: SelectiveCopyConfig
    rows: list[dict]  # one per model
    curves: dict[str, list[tuple[int, float]]]  # model -> (step, val token accuracy)

    def accuracy(self, name: str) -> float:
        return next(r["val_token_accuracy"] for r in self.rows if r["model"] == name)


def run(config: SelectiveCopyConfig, out: Path) -> SelectiveCopyResult:
    """Train every model; write ``selective_copy.csv``, ``selective_copy_curves.csv`` and ``selective_copy.png`` into ``out``."""
    budget = Budget(config.steps, config.batch_size, config.lr, config.seed, eval_every=config.eval_every)
    shape = dict(num_tokens=config.num_tokens, num_colors=config.num_colors)
    train = selective_copy_task(config.train_examples, config.region_len, **shape, seed=config.seed)
    val = selective_copy_task(config.val_examples, config.region_len, **shape, seed=config.seed + 1)
    rows, curves = train_each(config.models, lambda name: make_model(config, name), train, val, budget, "selective copy", "val_token_accuracy")
    result = SelectiveCopyResult(config, rows, curves)
    write_rows(out / "selective_copy.csv", rows)
    write_rows(out / "selective_copy_curves.csv", [{"model": n, "step": s, "val_token_accuracy": a} for n, c in curves.items() for s, a in c])
    plot(result, out / "selective_copy.png")
    return result


def plot(result: SelectiveCopyResult, png: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.5), layout="constrained")
    for name, curve in result.curves.items():
        color = SCAN_COLORS.get(name, COLORS.get(name))
        ax.plot([s for s, _ in curve], [a for _, a in curve], "o-", ms=3, color=color, label=f"{TITLES[name]} ({result.accuracy(name):.1%})")
    c = result.config
    ax.axhline(1 / c.num_colors, color="k", ls=":", lw=1, label=f"chance 1/{c.num_colors}")
    ax.set(xlabel="training step", ylabel="held-out token accuracy", ylim=(0, 1.02),
           title=f"Selective copying: {c.num_tokens} colours among {c.region_len} steps, {c.num_layers} layers")  # fmt: skip
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, png, dpi=110)
    plt.close(fig)


def report(result: SelectiveCopyResult) -> str:
    c = result.config
    lines = [
        "## Selective copying: the parallel-scan recurrences learn it",
        "",
        f"{c.num_tokens} colours (of {c.num_colors}) at random positions among {c.region_len} noise steps, then {c.num_tokens} "
        f"markers where the colours must be emitted in order. {c.num_layers}-layer taggers, hidden {c.hidden_size}; "
        f"{c.steps} Adam steps (lr {c.lr:g}, batch {c.batch_size}) on {c.train_examples} sequences per model, "
        f"token accuracy on {c.val_examples} held-out sequences; seed {c.seed}.",
        "",
        "![selective copying](selective_copy.png)",
        "",
        "| model | params | held-out token accuracy | training seconds |",
        "| --- | --- | --- | --- |",
    ]
    lines += [f"| {TITLES[r['model']]} | {r['parameters']} | {r['val_token_accuracy']:.1%} | {r['train_seconds']:.0f} |" for r in result.rows]
    return "\n".join(lines) + "\n"
