"""What the experiments share: training one model for a fixed budget, counting parameters, threads, plots."""

from __future__ import annotations

import contextlib
import csv
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from rnnkit import errors
from rnnkit.data import TensorBatches
from rnnkit.training.callbacks import Callback
from rnnkit.training.trainer import Trainer, TrainerConfig


@dataclass
class Budget:
    """The fixed training budget every model of an experiment gets: Adam, ``steps`` updates of ``batch_size``."""

    steps: int
    batch_size: int
    lr: float
    seed: int
    eval_every: int | None = None  # steps between validation records; None: only at the end


def check_budget_fields(config, names=("train_examples", "val_examples", "steps", "batch_size")) -> None:
    """The checks every experiment config shares: positive counts and a positive learning rate."""
    for name in names:
        errors.check_positive_int(name, getattr(config, name))
    if not config.lr > 0:
        raise errors.fail("lr", "a positive number", config.lr)


def check_choices(name: str, values: tuple, allowed: tuple) -> None:
    if not values or any(v not in allowed for v in values) or len(set(values)) != len(values):
        raise errors.fail(name, f"a non-empty list of distinct values from {list(allowed)}", list(values))


@dataclass
class Fit:
    """One trained model: its final validation metrics, the validation records along the way, the time it took."""

    val: dict[str, float]
    curve: list[tuple[int, float]] = field(default_factory=list)  # (step, val accuracy), with eval_every
    seconds: float = 0.0


class _ValAccuracy(Callback):
    def __init__(self) -> None:
        self.curve: list[tuple[int, float]] = []

    def on_evaluate_end(self, trainer, record: dict) -> None:
        self.curve.append((record["step"], record["accuracy"]))


def train_and_evaluate(model: nn.Module, train: tuple, val: tuple, budget: Budget) -> Fit:
    """Train ``model`` for ``budget.steps`` updates on ``train``, then evaluate it on all of ``val`` in one batch."""
    curve = _ValAccuracy()
    config = TrainerConfig(max_epochs=10**9, max_steps=budget.steps, seed=budget.seed, eval_every=budget.eval_every, progress=False)
    trainer = Trainer(model, torch.optim.Adam(model.parameters(), lr=budget.lr), config, callbacks=[curve])
    val_batches = TensorBatches(*val, len(val[1]), shuffle=False)
    started = time.perf_counter()
    trainer.fit(TensorBatches(*train, budget.batch_size, seed=budget.seed), val_batches if budget.eval_every else None)
    seconds = time.perf_counter() - started
    return Fit(trainer.evaluate(val_batches), curve.curve, seconds)


def train_each(names, make_model, train: tuple, val: tuple, budget: Budget, label: str, accuracy: str = "val_accuracy") -> tuple[list[dict], dict]:
    """Train ``make_model(name)`` for each name with the same seed and budget: one CSV row per model, and its curve.

    Returns ``(rows, curves)``: rows of model, parameters, ``accuracy`` (the held-out accuracy's column
    name), val_loss and train_seconds; curves of (step, held-out accuracy) per model.
    """
    rows, curves = [], {}
    for name in names:
        torch.manual_seed(budget.seed)
        model = make_model(name)
        fit = train_and_evaluate(model, train, val, budget)
        rows.append({"model": name, "parameters": parameter_count(model), accuracy: fit.val["accuracy"],
                     "val_loss": fit.val["loss"], "train_seconds": round(fit.seconds, 2)})  # fmt: skip
        curves[name] = fit.curve
        print(f"  {label} {name:<7} accuracy {fit.val['accuracy']:6.1%}  ({fit.seconds:.1f} s)", flush=True)
    return rows, curves


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@contextlib.contextmanager
def torch_threads(count: int):
    """Run the block on ``count`` intra-op threads; restore the previous count after.

    The experiments' matrices are tiny (batch 64, hidden 32), where extra
    threads only add synchronisation, and one thread keeps results bitwise
    repeatable.
    """
    errors.check_positive_int("threads", count)
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def write_rows(path: Path, rows: list[dict]) -> None:
    """One CSV with a header from the first row's keys; floats as ``repr`` (exact)."""
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({k: repr(v) if isinstance(v, float) else v for k, v in row.items()} for row in rows)


def pyplot():
    """matplotlib's pyplot on the Agg backend: files only, no display needed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


COLORS = {"rnn": "tab:red", "lstm": "tab:blue", "gru": "tab:green", "mlp": "tab:gray"}
