"""Callbacks: what the trainer does besides training.

A callback overrides any of ``on_fit_start``, ``on_step_end``,
``on_evaluate_end``, ``on_epoch_end``, ``on_checkpoint`` (after each write of
``run_dir/checkpoint.safetensors``) and ``on_fit_end``. One with state that
must survive a resume (early stopping's patience, say) returns it from
``state_dict`` as JSON-serialisable data.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

from tqdm.auto import tqdm
from rnnkit.training.checkpoint import save_figure


class Callback:
    def on_fit_start(self, trainer, train) -> None: ...
    def on_step_end(self, trainer, record: dict) -> None: ...
    def on_evaluate_end(self, trainer, record: dict) -> None: ...
    def on_epoch_end(self, trainer) -> None: ...
    def on_checkpoint(self, trainer, path: Path) -> None: ...
    def on_fit_end(self, trainer) -> None: ...

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None: ...


class ProgressBar(Callback):
    """A tqdm bar with loss, throughput and ETA; silent when stdout is not a terminal."""

    def __init__(self, stream=None) -> None:
        self.stream = stream or sys.stdout
        self.bar = None

    def on_fit_start(self, trainer, train) -> None:
        cfg = trainer.config
        total = cfg.max_steps
        if total is None:
            per_batch = 1
            if cfg.tbptt_k1 and hasattr(train, "streams"):
                per_batch = -(-(train.streams.shape[0] - 1) // cfg.tbptt_k1)
            total = cfg.max_epochs * len(train) * per_batch
        disable = not (hasattr(self.stream, "isatty") and self.stream.isatty())
        self.bar = tqdm(total=total, initial=trainer.position.step, file=self.stream, disable=disable, unit="step", dynamic_ncols=True)

    def on_step_end(self, trainer, record: dict) -> None:
        self.bar.update(1)
        rate = record["items"] / max(record["seconds"], 1e-9)
        self.bar.set_postfix(loss=f"{record['loss']:.4f}", items_per_s=f"{rate:,.0f}", refresh=False)

    def on_evaluate_end(self, trainer, record: dict) -> None:
        if not self.bar.disable:
            self.bar.write(f"step {record['step']}: " + ", ".join(f"val {k} {v:.4f}" for k, v in record.items() if isinstance(v, float)), file=self.stream)

    def on_fit_end(self, trainer) -> None:
        self.bar.close()


class CSVLogger(Callback):
    """Appends every step and evaluation to a CSV file, one row each.

    On resume, rows past the checkpoint's step (written by the interrupted run
    after its last checkpoint) are dropped, so the file reads as one clean run.
    Losses are written with ``repr``, which round-trips floats exactly.
    """

    FIELDS = ["step", "epoch", "split", "loss", "grad_norm", "lr", "items", "seconds", "metrics"]

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def on_fit_start(self, trainer, train) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        step = trainer.position.step
        kept = [row for row in read_metrics(self.path) if int(row["step"]) <= step] if step and self.path.exists() else []
        with self.path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.FIELDS)
            writer.writeheader()
            writer.writerows(kept)

    def on_step_end(self, trainer, record: dict) -> None:
        self._append(record)

    def on_evaluate_end(self, trainer, record: dict) -> None:
        self._append(record)

    def _append(self, record: dict) -> None:
        row = {k: (repr(v) if isinstance(v, float) else v) for k, v in record.items() if k in self.FIELDS}
        extra = {k: v for k, v in record.items() if k not in self.FIELDS}
        row["metrics"] = ";".join(f"{k}={v!r}" for k, v in extra.items())
        with self.path.open("a", newline="") as f:
            csv.DictWriter(f, fieldnames=self.FIELDS).writerow(row)


def read_metrics(path: str | Path) -> list[dict]:
    with Path(path).open(newline="") as f:
        return list(csv.DictReader(f))


class LossPlot(Callback):
    """Saves the train and validation loss curves as a PNG at the end of training (from the CSV)."""

    def __init__(self, csv_path: str | Path, png_path: str | Path) -> None:
        self.csv_path, self.png_path = Path(csv_path), Path(png_path)

    def on_fit_end(self, trainer) -> None:
        if self.csv_path.exists():
            plot_loss_curves(read_metrics(self.csv_path), self.png_path)


def plot_loss_curves(rows: list[dict], png_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for split, style in (("train", "-"), ("val", "o-")):
        points = [(int(r["step"]), float(r["loss"])) for r in rows if r["split"] == split]
        if points:
            ax.plot(*zip(*points), style, label=split, markersize=3)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    png_path.parent.mkdir(parents=True, exist_ok=True)
    save_figure(fig, png_path, dpi=120)
    plt.close(fig)


class EarlyStopping(Callback):
    """Stops training after ``patience`` evaluations without an improvement of ``min_delta`` in the monitored number (val loss by default)."""

    def __init__(self, patience: int, min_delta: float = 0.0) -> None:
        self.patience, self.min_delta = patience, min_delta
        self.best: float | None = None
        self.bad_evaluations = 0

    def on_fit_start(self, trainer, train) -> None:
        if self.bad_evaluations >= self.patience:
            trainer.should_stop = True  # resumed from a run that had stopped early: it stays stopped

    def on_evaluate_end(self, trainer, record: dict) -> None:
        score = trainer.monitored(record)
        if self.best is None or score < self.best - self.min_delta:
            self.best, self.bad_evaluations = score, 0
        else:
            self.bad_evaluations += 1
            if self.bad_evaluations >= self.patience:
                trainer.should_stop = True

    def state_dict(self) -> dict:
        return {"best": self.best, "bad_evaluations": self.bad_evaluations}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.bad_evaluations = state["best"], state["bad_evaluations"]


def default_callbacks(config, is_main: bool) -> list[Callback]:
    """Progress on the main process, CSV and plot in ``run_dir``, TensorBoard logs and early stopping if configured."""
    callbacks: list[Callback] = []
    if config.early_stopping_patience:
        callbacks.append(EarlyStopping(config.early_stopping_patience, config.early_stopping_min_delta))
    if not is_main:
        return callbacks
    if config.progress:
        callbacks.append(ProgressBar())
    if config.run_dir:
        run = Path(config.run_dir)
        callbacks += [CSVLogger(run / "metrics.csv"), LossPlot(run / "metrics.csv", run / "loss.png")]
    if config.tensorboard:
        from rnnkit.training.tensorboard import TensorBoardLogger

        if not config.run_dir:
            raise ValueError("tensorboard: expected False unless run_dir is set (the logs go to run_dir/tensorboard), got True")

        callbacks.append(TensorBoardLogger(Path(config.run_dir) / "tensorboard", config.tensorboard_every))
    return callbacks
