r"""Order: a label that depends on order only defeats the bag of words, and not an RNN.

The seeds: the same words in another order mean something else, and an
order-free model (the bag of words, their one-to-one model) cannot tell them
apart. The sentiment task shows it on real data (negation); here the data are
controlled so that order is all there is.

The task (:func:`rnnkit.data.synthetic.marker_order_task`): two markers A and
B once each among random fillers; the label says whether A comes first. The
examples come in mirror pairs (A and B swapped: the opposite label, the same
bag of tokens), so :class:`~rnnkit.models.BagOfFeaturesMLP`, which sees the
mean of the embedded tokens, gives both members of a pair the same answer and
scores exactly 50% on training and held-out data alike: at chance by
construction, whatever its size or training. Each recurrent cell is a
:class:`~rnnkit.models.SequenceClassifier` (pooling ``last``) with the same
budget.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


from rnnkit import errors
from rnnkit.data.synthetic import marker_order_task
from rnnkit.models import BagOfFeaturesConfig, BagOfFeaturesMLP, InputConfig, ManyToOneConfig, RecurrentConfig, SequenceClassifier
from rnnkit.training.experiments.common import COLORS, Budget, check_budget_fields, check_choices, pyplot, train_each, write_rows
from rnnkit.training.checkpoint import save_figure

MODELS = ("mlp", "rnn", "lstm", "gru")


@dataclass
class OrderConfig:
    """``rnnkit diagnose order``: every knob; ``--set KEY=VALUE`` sets any of them."""

    models: tuple[str, ...] = MODELS  # "mlp": the bag-of-words MLP; the others: a recurrent classifier
    seq_len: int = 20
    num_fillers: int = 8
    embedding_dim: int = 16
    hidden_size: int = 32  # the MLP's hidden layer and the recurrent layers' state
    train_examples: int = 4_000  # even: mirror pairs
    val_examples: int = 1_000
    steps: int = 200
    batch_size: int = 64
    lr: float = 0.01
    eval_every: int = 10
    seed: int = 0

    def __post_init__(self) -> None:
        check_budget_fields(self)
        for name in ("seq_len", "num_fillers", "embedding_dim", "hidden_size", "eval_every"):
            errors.check_positive_int(name, getattr(self, name))
        check_choices("models", tuple(self.models), MODELS)
        for name in ("train_examples", "val_examples"):
            if getattr(self, name) % 2:
                raise errors.fail(name, "an even number (the examples come in mirror pairs)", getattr(self, name))


QUICK = {"models": ("mlp", "gru"), "train_examples": 1_000, "val_examples": 1_000, "steps": 120, "eval_every": 20}


def make_model(config: OrderConfig, name: str):
    inputs = InputConfig(vocab_size=config.num_fillers + 2, embedding_dim=config.embedding_dim, padding_idx=None)
    if name == "mlp":
        return BagOfFeaturesMLP(BagOfFeaturesConfig(input=inputs, output_size=2, hidden_size=config.hidden_size))
    rnn = RecurrentConfig(cell=name, hidden_size=config.hidden_size)
    return SequenceClassifier(ManyToOneConfig(input=inputs, output_size=2, rnn=rnn, pooling="last"))


@dataclass
class OrderResult:
    config: OrderConfig
    rows: list[dict]  # one per model
    curves: dict[str, list[tuple[int, float]]]  # model -> (step, val accuracy)

    def accuracy(self, name: str) -> float:
        return next(r["val_accuracy"] for r in self.rows if r["model"] == name)


def run(config: OrderConfig, out: Path) -> OrderResult:
    """Train every model, write ``order.csv``, ``order_curves.csv`` and ``order.png`` into ``out``."""
    budget = Budget(config.steps, config.batch_size, config.lr, config.seed, eval_every=config.eval_every)
    train = marker_order_task(config.train_examples, config.seq_len, num_fillers=config.num_fillers, seed=config.seed)
    val = marker_order_task(config.val_examples, config.seq_len, num_fillers=config.num_fillers, seed=config.seed + 1)
    rows, curves = train_each(config.models, lambda name: make_model(config, name), train, val, budget, "order")
    result = OrderResult(config, rows, curves)
    write_rows(out / "order.csv", rows)
    write_rows(out / "order_curves.csv", [{"model": n, "step": step, "val_accuracy": a} for n, c in curves.items() for step, a in c])
    plot(result, out / "order.png")
    return result


def plot(result: OrderResult, png: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.5), layout="constrained")
    for name, curve in result.curves.items():
        label = "bag-of-words MLP" if name == "mlp" else f"{name} classifier"
        ax.plot([s for s, _ in curve], [a for _, a in curve], "o-", ms=3, color=COLORS[name], label=f"{label} ({result.accuracy(name):.1%})")
    ax.axhline(0.5, color="k", ls=":", lw=1, label="chance 1/2")
    c = result.config
    ax.set(xlabel="training step", ylabel="held-out accuracy", ylim=(0.3, 1.02),
           title=f"Order only: does marker A come before B? (T={c.seq_len}, mirror pairs)")  # fmt: skip
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, png, dpi=110)
    plt.close(fig)


def report(result: OrderResult) -> str:
    c = result.config
    lines = [
        "## Order needs recurrence",
        "",
        f"Two markers among {c.seq_len - 2} random fillers ({c.num_fillers} filler tokens); the label is whether A comes "
        "before B. Examples come in mirror pairs (A and B swapped), so a bag of tokens cannot tell the labels apart. "
        f"{c.steps} Adam steps (lr {c.lr:g}, batch {c.batch_size}) on {c.train_examples} sequences per model, "
        f"accuracy on {c.val_examples} held-out sequences; seed {c.seed}.",
        "",
        "![order](order.png)",
        "",
        "| model | params | held-out accuracy |",
        "| --- | --- | --- |",
    ]
    for r in result.rows:
        name = "bag-of-words MLP" if r["model"] == "mlp" else f"{r['model']} classifier"
        lines.append(f"| {name} | {r['parameters']} | {r['val_accuracy']:.1%} |")
    return "\n".join(lines) + "\n"
