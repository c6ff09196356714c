r"""``rnnkit diagnose``: watch gradients vanish in an Elman RNN, carry in an LSTM and a GRU, and explode.

Examples::

    rnnkit diagnose                                   # T=100, 2000 steps per cell, about a minute on one core
    rnnkit diagnose --quick --out /tmp/diagnose       # tiny sizes, a few seconds (tests, CI)
    rnnkit diagnose --seq-len 200 --steps 4000 --set carry_bias=None --set lr=0.003
    rnnkit diagnose all --out runs/claims             # the seeds' other claims, one REPORT.md

The other experiments (``future-context``, ``long-range``, ``order``, ``all``)
are subcommands, in :mod:`rnnkit.cli.diagnose_experiments`.

Everything runs on the adding problem (:func:`rnnkit.data.synthetic.adding_problem`):
sum the two marked values of a length-T sequence, read out at step T only.

1. **Gradient flow.** For each cell, ``‖∂L/∂h_t‖`` for every t, by the probes
   of :mod:`rnnkit.training.diagnostics`, at init and every ``record_every``
   training steps. The summary gives ``‖∂L/∂h_1‖ / ‖∂L/∂h_T‖``: how much of
   the gradient survives the trip back to the first step.
2. **Learning.** Each cell trains with Adam through :class:`rnnkit.training.Trainer`;
   validation MSE and the fraction of answers within 0.04 are set against
   predicting 1.0 (MSE 1/6).
3. **Exploding gradients.** An Elman RNN whose ``W_hh`` is scaled to spectral
   radius ``spectral_radius`` (> 1, the chaotic regime of a tanh network)
   trains with plain SGD, whose step grows with the gradient, with and without
   ``TrainerConfig(clip_grad_norm=...)`` (Pascanu et al., 2013, §3.2).

Writes to ``--out``: ``summary.csv``, ``gradient_flow_<cell>.csv`` (long
format, see :class:`~rnnkit.training.diagnostics.GradientFlowRecorder`),
``training_<cell>.csv`` (the trainer's CSVLogger), ``exploding.csv``, and
``gradient_flow.png``, ``training_curves.png``, ``exploding.png``. Results
are deterministic for a given seed and thread count.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from rnnkit import errors
from rnnkit.cli import _shared
from rnnkit.config import ConfigError, apply_overrides
from rnnkit.data import TensorBatches
from rnnkit.training import Callback, CSVLogger, NonFiniteLossError, Trainer, TrainerConfig
from rnnkit.data.synthetic import adding_problem
from rnnkit.models.long_range import AddingModel
from rnnkit.training.diagnostics import GradientFlowRecorder, decay_ratio, measure_gradient_flow
from rnnkit.training.experiments.common import COLORS, pyplot, torch_threads
from rnnkit.training.checkpoint import save_figure

CELLS = ("rnn", "lstm", "gru")


@dataclass
class DiagnoseConfig:
    """Every knob of ``rnnkit diagnose``; ``--set KEY=VALUE`` sets any of them."""

    # -- task and data
    seq_len: int = 100
    train_examples: int = 10_000
    val_examples: int = 1_000
    probe_examples: int = 256  # the first validation examples, measured by the recorder
    seed: int = 0
    # -- models and training (experiments 1 and 2)
    hidden_size: int = 32
    batch_size: int = 64
    steps: int = 2_000  # per cell
    lr: float = 0.01
    carry_bias: float | None = 2.0  # LSTM forget / GRU update gate bias at init; None: torch.nn's
    record_every: int = 50
    eval_every: int = 100
    # -- exploding gradients (experiment 3)
    spectral_radius: float = 3.0
    explode_lr: float = 0.1
    explode_steps: int = 300
    clip_grad_norm: float = 1.0
    # -- execution: the matrices are tiny (N=64, H=32), where threads only add
    # synchronisation, and one thread keeps results bitwise repeatable
    threads: int = 1

    def __post_init__(self) -> None:
        for name in ("seq_len", "train_examples", "val_examples", "probe_examples", "hidden_size", "batch_size", "steps",
                     "record_every", "eval_every", "explode_steps", "threads"):  # fmt: skip
            errors.check_positive_int(name, getattr(self, name))
        for name in ("lr", "spectral_radius", "explode_lr", "clip_grad_norm"):
            if not getattr(self, name) > 0:
                raise errors.fail(name, "a positive number", getattr(self, name))


QUICK = {"seq_len": 20, "train_examples": 256, "val_examples": 64, "probe_examples": 32, "hidden_size": 8, "batch_size": 16,
         "steps": 30, "record_every": 10, "eval_every": 10, "explode_steps": 20}  # fmt: skip


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "diagnose",
        help="show vanishing and exploding gradients (RNN vs LSTM vs GRU on the adding problem)",
        description="Train an Elman RNN, an LSTM and a GRU on the adding problem; record ||dL/dh_t|| per time step "
        "at init and during training; show exploding gradients with and without clipping. Writes CSVs, PNG plots and "
        "a summary table; see docs/diagnostics.md.",
    )
    # Defaults of None: the subcommands tell an option given here from one left out, and refuse it.
    parser.add_argument("--out", help="directory for the CSVs and plots (default runs/diagnose)")
    default, quick = DiagnoseConfig(), QUICK
    parser.add_argument("--seq-len", type=int, help=f"sequence length T (default {default.seq_len}; quick {quick['seq_len']})")
    parser.add_argument("--steps", type=int, help=f"training steps per cell (default {default.steps}; quick {quick['steps']})")
    parser.add_argument("--seed", type=int, help=f"seed of data, init and training (default {default.seed})")
    parser.add_argument("--quick", action="store_true", help="tiny sizes that run in a few seconds, for tests and CI")
    fields = ", ".join(f.name for f in dataclasses.fields(DiagnoseConfig))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=f"override a config key (repeatable), e.g. --set carry_bias=None; keys: {fields}")
    parser.set_defaults(handler=run)
    from rnnkit.cli.diagnose_experiments import add_subcommands  # here: that module imports this one

    add_subcommands(parser)


def config_from_args(args) -> DiagnoseConfig:
    config = DiagnoseConfig(**QUICK) if args.quick else DiagnoseConfig()
    config = apply_overrides(config, args.set)
    flags = {"seq_len": args.seq_len, "steps": args.steps, "seed": args.seed}
    return dataclasses.replace(config, **{k: v for k, v in flags.items() if v is not None})


@_shared.reports_errors("diagnose")
def run(args) -> int:
    try:
        config = config_from_args(args)
    except ValueError as error:  # a dataclass's own check of a value: a usage error like an unknown key
        raise ConfigError(str(error)) from None
    out = Path(args.out or "runs/diagnose")
    check_out(out)
    diagnose(config, out)
    return 0


def check_out(out: Path) -> None:
    """Refuse an ``--out`` that is a file, or a folder that holds a training run (its files could be overwritten)."""
    if out.is_dir() and any((out / name).exists() for name in ("config.json", "checkpoint.safetensors", "model.safetensors")):
        raise _shared.UsageError(f"--out {out}: expected a folder for the diagnosis, got one that holds a training run "
                                 "(its files could be overwritten); choose another")  # fmt: skip
    if out.exists() and not out.is_dir():
        raise _shared.UsageError(f"--out {out}: expected a folder for the diagnosis, got a file")


@dataclass
class DiagnoseResult:
    config: DiagnoseConfig
    cells: list[CellResult]
    explosions: list[ExplodeResult]
    summary: str  # the table printed at the end


def diagnose(config: DiagnoseConfig, out: Path) -> DiagnoseResult:
    """Run the three experiments, write every CSV and PNG into ``out``, print and return the summary."""
    out.mkdir(parents=True, exist_ok=True)
    with torch_threads(config.threads):
        started = time.perf_counter()
        print(f"rnnkit diagnose: adding problem, T={config.seq_len}, {config.steps} steps per cell, "
              f"hidden {config.hidden_size}, seed {config.seed} -> {out}", flush=True)  # fmt: skip
        train = adding_problem(config.train_examples, config.seq_len, seed=config.seed)
        val = adding_problem(config.val_examples, config.seq_len, seed=config.seed + 1)
        cells = [train_cell(cell, config, train, val, out) for cell in CELLS]
        runs = [(config.spectral_radius, None), (config.spectral_radius, config.clip_grad_norm), (None, None)]
        explosions = [explode(config, train, val, radius, clip) for radius, clip in runs]
        write_summary_csv(out / "summary.csv", cells, val)
        write_exploding_csv(out / "exploding.csv", explosions)
        plot_gradient_flow(cells, config, out / "gradient_flow.png")
        plot_training_curves(cells, out / "training_curves.png")
        plot_exploding(explosions, config, out / "exploding.png")
        summary = summary_text(config, cells, explosions, val, time.perf_counter() - started)
    print(summary)
    return DiagnoseResult(config, cells, explosions, summary)


# -- experiments 1 and 2: gradient flow and learning ------------------------------------------


@dataclass
class CellResult:
    cell: str
    init_torch_default: torch.Tensor  # ‖∂L/∂h_t‖ at torch.nn's init, (T,)
    history: list  # (step, GradientFlow) from the recorder, the first at init
    rows: list[dict]  # the trainer's train and val records
    val: dict[str, float]
    seconds: float

    def ratio(self, index: int) -> float:
        return decay_ratio(self.history[index][1].hidden["rnn.l0"])


class _Rows(Callback):
    """Keeps every train and validation record in memory."""

    def __init__(self) -> None:
        self.rows: list[dict] = []

    def on_step_end(self, trainer, record: dict) -> None:
        self.rows.append(dict(record))

    def on_evaluate_end(self, trainer, record: dict) -> None:
        self.rows.append(dict(record))


def train_cell(cell: str, config: DiagnoseConfig, train, val, out: Path) -> CellResult:
    probe = (val[0][: config.probe_examples], val[1][: config.probe_examples])
    torch.manual_seed(config.seed)
    init_torch_default = measure_gradient_flow(AddingModel(cell, config.hidden_size, carry_bias=None), *probe).hidden["rnn.l0"]
    torch.manual_seed(config.seed)  # the same weights, but for the carry gates' bias
    model = AddingModel(cell, config.hidden_size, carry_bias=config.carry_bias)
    recorder = GradientFlowRecorder(probe, every=config.record_every, csv_path=out / f"gradient_flow_{cell}.csv")
    rows = _Rows()
    trainer_config = TrainerConfig(max_epochs=10**9, max_steps=config.steps, seed=config.seed, eval_every=config.eval_every, progress=False)
    trainer = Trainer(model, torch.optim.Adam(model.parameters(), lr=config.lr), trainer_config,
                      callbacks=[CSVLogger(out / f"training_{cell}.csv"), recorder, rows])  # fmt: skip
    val_batches = TensorBatches(*val, 500, shuffle=False)
    started = time.perf_counter()
    trainer.fit(TensorBatches(*train, config.batch_size, seed=config.seed), val_batches)
    seconds = time.perf_counter() - started
    if recorder.history[-1][0] != trainer.position.step:
        recorder.record(trainer, trainer.position.step)
    result = CellResult(cell, init_torch_default, recorder.history, rows.rows, trainer.evaluate(val_batches), seconds)
    print(f"  {cell:<4}  val MSE {result.val['loss']:.4f}, within 0.04: {result.val['accuracy']:.1%}, "
          f"||dL/dh_1||/||dL/dh_T|| {result.ratio(0):.1e} -> {result.ratio(-1):.1e}  ({seconds:.1f} s)", flush=True)  # fmt: skip
    return result


# -- experiment 3: exploding gradients --------------------------------------------------------


@dataclass
class ExplodeResult:
    radius: float  # spectral radius of W_hh at init
    clip: float | None
    init_ratio: float  # ||dL/dh_1|| / ||dL/dh_T|| at init
    rows: list[dict]  # the trainer's step records
    nonfinite: str | None  # the trainer's message if training stopped on a NaN or Inf

    @property
    def max_grad_norm(self) -> float:
        return max((r["grad_norm"] for r in self.rows), default=math.nan)

    @property
    def name(self) -> str:
        return f"radius {self.radius:.2g}, " + ("no clipping" if self.clip is None else f"clip_grad_norm={self.clip:g}")


def spectral_radius(weight: torch.Tensor) -> float:
    return float(torch.linalg.eigvals(weight.detach()).abs().max())


def explode(config: DiagnoseConfig, train, val, radius: float | None, clip: float | None) -> ExplodeResult:
    """Train an Elman RNN with SGD, ``W_hh`` scaled to spectral ``radius`` (None: torch.nn's init, the control)."""
    torch.manual_seed(config.seed)
    model = AddingModel("rnn", config.hidden_size)
    weight = model.rnn.weight_hh_l0
    if radius is not None:
        with torch.no_grad():
            weight.mul_(radius / spectral_radius(weight))
    flow = measure_gradient_flow(model, val[0][: config.probe_examples], val[1][: config.probe_examples])
    rows = _Rows()
    # on_nonfinite="stop" raises at the first NaN or Inf; with "skip", every later
    # step of a diverged run would be skipped too, and skipped steps do not count
    # towards max_steps.
    trainer_config = TrainerConfig(max_epochs=10**9, max_steps=config.explode_steps, seed=config.seed, clip_grad_norm=clip,
                                   on_nonfinite="stop", progress=False)  # fmt: skip
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=config.explode_lr), trainer_config, callbacks=[rows])
    result = ExplodeResult(spectral_radius(weight), clip, decay_ratio(flow.hidden["rnn.l0"]), rows.rows, None)
    try:
        trainer.fit(TensorBatches(*train, config.batch_size, seed=config.seed))
    except NonFiniteLossError as error:
        result.nonfinite = str(error).split(" (epoch")[0]  # "loss: expected a finite value, got inf at step 28"
    print(f"  exploding, {result.name}: {len(rows.rows)} steps, max grad norm {result.max_grad_norm:.2e}"
          + (f", stopped: {result.nonfinite}" if result.nonfinite else ""), flush=True)  # fmt: skip
    return result


# -- records ----------------------------------------------------------------------------------


def baseline(val) -> dict[str, float]:
    """Predicting 1.0, the mean target, for every sequence."""
    error = val[1] - 1.0
    return {"loss": float(error.pow(2).mean()), "accuracy": float((error.abs() < AddingModel.TOLERANCE).float().mean())}


def write_summary_csv(path: Path, cells: list[CellResult], val) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["model", "ratio_init_torch_default", "ratio_init", "ratio_trained", "val_mse", "val_within_0.04", "train_seconds"])
        for c in cells:
            ratios = [decay_ratio(c.init_torch_default), c.ratio(0), c.ratio(-1)]
            writer.writerow([c.cell, *map(repr, ratios), repr(c.val["loss"]), repr(c.val["accuracy"]), f"{c.seconds:.2f}"])
        base = baseline(val)
        writer.writerow(["predict_1.0", "", "", "", repr(base["loss"]), repr(base["accuracy"]), ""])


def write_exploding_csv(path: Path, explosions: list[ExplodeResult]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["run", "spectral_radius", "clip_grad_norm", "step", "loss", "grad_norm"])
        for e in explosions:
            clip = "" if e.clip is None else e.clip
            writer.writerows([e.name, repr(e.radius), clip, r["step"], repr(r["loss"]), repr(r["grad_norm"])] for r in e.rows)


def summary_text(config: DiagnoseConfig, cells: list[CellResult], explosions: list[ExplodeResult], val, seconds: float) -> str:
    """The table printed at the end; every number in it is also in summary.csv or exploding.csv."""
    bias = "torch.nn's" if config.carry_bias is None else f"{config.carry_bias:g}"
    lines = [
        "",
        f"Gradient flow and learning, adding problem T={config.seq_len}.  ratio = ||dL/dh_1|| / ||dL/dh_T|| (1: no decay)",
        f"{'model':<12}{'ratio, init':>13}{f'init, bias {bias}':>17}{'trained':>11}{'val MSE':>10}{'within 0.04':>13}{'seconds':>9}",
    ]
    for c in cells:
        lines.append(f"{c.cell:<12}{decay_ratio(c.init_torch_default):>13.1e}{c.ratio(0):>17.1e}{c.ratio(-1):>11.1e}"
                     f"{c.val['loss']:>10.4f}{c.val['accuracy']:>13.1%}{c.seconds:>9.1f}")  # fmt: skip
    base = baseline(val)
    lines += [
        f"{'predict 1.0':<12}{'':>41}{base['loss']:>10.4f}{base['accuracy']:>13.1%}   (theory: MSE 1/6 = 0.1667)",
        f"ratio, init: torch.nn's init. init, bias {bias}: the LSTM's forget and the GRU's update gate biased open,",
        "the init that was trained (the RNN has no gate: same weights). trained: after the last step.",
        "",
        f"Exploding gradients: Elman RNN, SGD lr {config.explode_lr:g}, {config.explode_steps} steps; radius: of W_hh's spectrum",
        f"{'run':<34}{'ratio, init':>12}{'max grad norm':>15}{'last loss':>11}  outcome",
    ]
    for e in explosions:
        last = e.rows[-1]["loss"] if e.rows else math.nan
        outcome = e.nonfinite or f"finite for all {len(e.rows)} steps"
        lines.append(f"{e.name:<34}{e.init_ratio:>12.1e}{e.max_grad_norm:>15.2e}{last:>11.3g}  {outcome}")
    lines.append(f"\nTotal {seconds:.1f} s on {config.threads} thread(s).")
    return "\n".join(lines)


# -- plots ------------------------------------------------------------------------------------


def plot_gradient_flow(cells: list[CellResult], config: DiagnoseConfig, png: Path) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2), layout="constrained")
    steps = torch.arange(1, config.seq_len + 1)
    for c in cells:
        for ax, norms in ((axes[0], c.history[0][1].hidden["rnn.l0"]), (axes[1], c.history[-1][1].hidden["rnn.l0"])):
            ax.semilogy(steps, norms / norms[-1], color=COLORS[c.cell], label=c.cell)
        axes[0].semilogy(steps, c.init_torch_default / c.init_torch_default[-1], color=COLORS[c.cell], ls=":", alpha=0.7)
        ratios = [decay_ratio(f.hidden["rnn.l0"]) for _, f in c.history]
        axes[2].semilogy([s for s, _ in c.history], ratios, "o-", ms=3, color=COLORS[c.cell], label=c.cell)
    axes[0].set_title(f"at init (dotted: torch.nn's init; solid: carry bias {config.carry_bias})", fontsize=10)
    axes[1].set_title(f"after {config.steps} training steps", fontsize=10)
    for ax in axes[:2]:
        ax.set_xlabel("time step t (the loss reads step T)")
        ax.set_ylabel("‖∂L/∂h_t‖ / ‖∂L/∂h_T‖")
    axes[2].set_title("‖∂L/∂h_1‖ / ‖∂L/∂h_T‖ during training", fontsize=10)
    axes[2].set_xlabel("training step")
    for ax in axes:
        ax.grid(alpha=0.3, which="both")
        ax.legend()
    fig.suptitle(f"Gradient flow back through time, adding problem T={config.seq_len}")
    save_figure(fig, png, dpi=110)
    plt.close(fig)


def plot_training_curves(cells: list[CellResult], png: Path) -> None:
    plt = pyplot()
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(11, 4), layout="constrained")
    for c in cells:
        train = [(r["step"], r["loss"]) for r in c.rows if r["split"] == "train"]
        val = [(r["step"], r["loss"], r["accuracy"]) for r in c.rows if r["split"] == "val"]
        loss_ax.semilogy(*zip(*train), color=COLORS[c.cell], alpha=0.25, lw=0.8)
        loss_ax.semilogy([v[0] for v in val], [v[1] for v in val], "o-", ms=3, color=COLORS[c.cell], label=f"{c.cell} (val)")
        acc_ax.plot([v[0] for v in val], [v[2] for v in val], "o-", ms=3, color=COLORS[c.cell], label=c.cell)
    loss_ax.axhline(1 / 6, color="k", ls="--", lw=1, label="predict 1.0 (1/6)")
    loss_ax.set(xlabel="training step", ylabel="MSE (faint: train batches)", title="loss")
    acc_ax.set(xlabel="training step", ylabel="fraction within 0.04", title="validation accuracy", ylim=(0, 1))
    for ax in (loss_ax, acc_ax):
        ax.grid(alpha=0.3, which="both")
        ax.legend()
    save_figure(fig, png, dpi=110)
    plt.close(fig)


def plot_exploding(explosions: list[ExplodeResult], config: DiagnoseConfig, png: Path) -> None:
    plt = pyplot()
    fig, (norm_ax, loss_ax) = plt.subplots(1, 2, figsize=(11, 4), layout="constrained")
    for e, color in zip(explosions, ("tab:red", "tab:blue", "tab:gray")):
        steps = [r["step"] for r in e.rows]
        norm_ax.semilogy(steps, [r["grad_norm"] for r in e.rows], color=color, label=e.name)
        loss_ax.semilogy(steps, [r["loss"] for r in e.rows], color=color, label=e.name)
        if e.nonfinite and steps:
            loss_ax.plot(steps[-1], e.rows[-1]["loss"], "x", ms=10, color=color, label="next step: non-finite")
    norm_ax.axhline(config.clip_grad_norm, color="k", ls="--", lw=1, label=f"clip threshold {config.clip_grad_norm:g}")
    norm_ax.set(xlabel="training step", ylabel="‖∂L/∂θ‖ before clipping", title="gradient norm")
    loss_ax.set(xlabel="training step", ylabel="training loss (MSE)", title="loss")
    for ax in (norm_ax, loss_ax):
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.suptitle(f"Exploding gradients: Elman RNN, W_hh scaled to spectral radius {config.spectral_radius:g}, SGD lr {config.explode_lr:g}")
    save_figure(fig, png, dpi=110)
    plt.close(fig)
