"""``rnnkit diagnose future-context | long-range | order | selective-copy | all``: the seeds' claims, one experiment each, one report.

Examples::

    rnnkit diagnose future-context --out runs/future      # unidirectional vs bidirectional, k = 0..10
    rnnkit diagnose long-range --set gaps=[10,100]          # Elman RNN vs LSTM vs GRU over a gap
    rnnkit diagnose order --quick                           # bag-of-words MLP vs RNN on order-only labels
    rnnkit diagnose selective-copy                          # 3-layer minGRU vs LSTM vs GRU (the parallel-scan issue)
    rnnkit diagnose all --out runs/claims                   # the three claims, into runs/claims/REPORT.md
    rnnkit diagnose all --set long_range.steps=300          # a section's key, dotted

The experiments live in :mod:`rnnkit.training.experiments`; this module parses
the options, runs them on one thread and writes ``REPORT.md`` beside their
CSVs and PNGs. ``all --set 'experiments=["gradients", ...]'`` adds the
gradient experiment of plain ``rnnkit diagnose`` (:mod:`rnnkit.cli.diagnose`)
to the report. See docs/diagnostics.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import torch

from rnnkit.cli import _shared
from rnnkit.cli import diagnose as plain_diagnose
from rnnkit.config import ConfigError, apply_overrides
from rnnkit.training.experiments import future_context, long_range, order, selective_copy
from rnnkit.training.experiments.common import check_choices, torch_threads


@dataclass(frozen=True)
class Experiment:
    module: ModuleType  # with a config class, QUICK, run(config, out) and report(result)
    config_class: type
    help: str


EXPERIMENTS = {
    "future-context": Experiment(future_context, future_context.FutureContextConfig,
                                 "tag each token with the one k steps later: unidirectional vs bidirectional RNN/LSTM/GRU"),
    "long-range": Experiment(long_range, long_range.LongRangeConfig,
                             "recall a country's language over a gap of 5..500 steps: Elman RNN vs LSTM vs GRU, with gradient flow"),
    "order": Experiment(order, order.OrderConfig, "which marker comes first: bag-of-words MLP vs recurrent classifiers"),
    "selective-copy": Experiment(selective_copy, selective_copy.SelectiveCopyConfig,
                                 "copy the colours among noise: 3-layer minGRU (parallel scan) vs LSTM vs GRU"),
}  # fmt: skip
# What `all` runs without --set: the seeds' three claims. "gradients" and "selective-copy" (minutes each) are added by --set.
DEFAULT_SECTIONS = ("future-context", "long-range", "order")
SECTIONS = ("gradients", *EXPERIMENTS)  # "gradients": plain `rnnkit diagnose`


@dataclass
class AllConfig:
    """``rnnkit diagnose all``: one section per experiment; ``--set long_range.steps=300`` sets a section's key."""

    # Which sections run, in this order. "gradients" (plain `rnnkit diagnose`, about 80 s more) is left out by
    # default to keep `all` within 5 minutes on 2 shared cores; --set 'experiments=["gradients", ...]' adds it.
    experiments: tuple[str, ...] = DEFAULT_SECTIONS
    gradients: plain_diagnose.DiagnoseConfig = field(default_factory=plain_diagnose.DiagnoseConfig)
    future_context: future_context.FutureContextConfig = field(default_factory=future_context.FutureContextConfig)
    long_range: long_range.LongRangeConfig = field(default_factory=long_range.LongRangeConfig)
    order: order.OrderConfig = field(default_factory=order.OrderConfig)
    selective_copy: selective_copy.SelectiveCopyConfig = field(default_factory=selective_copy.SelectiveCopyConfig)

    def __post_init__(self) -> None:
        check_choices("experiments", tuple(self.experiments), SECTIONS)


def add_subcommands(parser: argparse.ArgumentParser) -> None:
    """Add the experiments and ``all`` under ``rnnkit diagnose``; bare ``rnnkit diagnose`` keeps its gradient experiment."""
    subparsers = parser.add_subparsers(dest="experiment", metavar="EXPERIMENT",
                                       help="one of the seeds' claims, or all of them (default: the gradient experiment)")  # fmt: skip
    commands = {name: (e.help, e.config_class) for name, e in EXPERIMENTS.items()}
    commands["all"] = ("every experiment above (and with --set, the gradient experiment) into one REPORT.md", AllConfig)
    for name, (text, config_class) in commands.items():
        sub = subparsers.add_parser(name, help=text, description=f"{text}. Writes CSVs, PNGs and REPORT.md; see docs/diagnostics.md.")
        # Their own dests: the options of bare `rnnkit diagnose` stay apart, and run() refuses them here.
        sub.add_argument("--out", dest="experiment_out", metavar="DIR", default=f"runs/diagnose-{name}", help=f"output directory (default runs/diagnose-{name})")
        sub.add_argument("--seed", dest="experiment_seed", metavar="N", type=int, help="seed of data, init and training (default 0)")
        sub.add_argument("--quick", dest="experiment_quick", action="store_true", help="tiny sizes that run in seconds, for tests and CI")
        keys = ", ".join(f.name for f in dataclasses.fields(config_class))
        sub.add_argument("--set", dest="experiment_set", action="append", default=[], metavar="KEY=VALUE",
                         help=f"override a config key (repeatable); keys: {keys}")  # fmt: skip
        sub.set_defaults(handler=run)


def _field(section: str) -> str:
    return section.replace("-", "_")


def section_config(section: str, quick: bool, seed: int | None):
    """One experiment's config: the defaults or its tiny ``QUICK`` sizes, and the seed if one is given."""
    if section == "gradients":
        config_class, tiny = plain_diagnose.DiagnoseConfig, plain_diagnose.QUICK
    else:
        config_class, tiny = EXPERIMENTS[section].config_class, EXPERIMENTS[section].module.QUICK
    config = config_class(**tiny) if quick else config_class()
    return config if seed is None else dataclasses.replace(config, seed=seed)


def config_from_args(args):
    quick, seed = args.experiment_quick, args.experiment_seed
    if args.experiment == "all":
        config = AllConfig(**{_field(s): section_config(s, quick, seed) for s in SECTIONS})
    else:
        config = section_config(args.experiment, quick, seed)
    return apply_overrides(config, args.experiment_set)


def _refuse_gradient_options(args) -> None:
    given = [flag for flag, value in (("--out", args.out), ("--seq-len", args.seq_len), ("--steps", args.steps), ("--seed", args.seed),
                                      ("--quick", args.quick or None), ("--set", args.set or None)) if value is not None]  # fmt: skip
    if given:
        raise ConfigError(f"{given[0]}: expected after the experiment name ('rnnkit diagnose {args.experiment} {given[0]} ...'), "
                          "got before it, where it belongs to the gradient experiment")  # fmt: skip


def run(args) -> int:
    return _shared.reports_errors(f"diagnose {args.experiment}")(_run)(args)


def _run(args) -> int:
    name = args.experiment
    _refuse_gradient_options(args)
    try:
        config = config_from_args(args)
    except ValueError as error:  # a dataclass's own check of a value: a usage error like an unknown key
        raise ConfigError(str(error)) from None
    out = Path(args.experiment_out)
    plain_diagnose.check_out(out)
    return _run_sections(name, config, out)


def _run_sections(name: str, config, out: Path) -> int:
    out.mkdir(parents=True, exist_ok=True)
    sections = list(config.experiments) if name == "all" else [name]
    started = time.perf_counter()
    parts, seconds = [], {}
    with torch_threads(1):
        for section in sections:
            print(f"rnnkit diagnose {section} -> {out}", flush=True)
            section_started = time.perf_counter()
            parts.append(run_section(section, getattr(config, _field(section)) if name == "all" else config, out))
            seconds[section] = time.perf_counter() - section_started
    write_report(out / "REPORT.md", parts, seconds, time.perf_counter() - started)
    print(f"rnnkit diagnose {name}: {time.perf_counter() - started:.1f} s in all; report {out / 'REPORT.md'}")
    return 0


def run_section(section: str, config, out: Path) -> str:
    """Run one experiment and return its Markdown section."""
    if section == "gradients":
        return gradients_report(plain_diagnose.diagnose(config, out))
    experiment = EXPERIMENTS[section]
    return experiment.module.report(experiment.module.run(config, out))


def write_report(path: Path, parts: list[str], seconds: dict[str, float], total: float) -> None:
    """REPORT.md, written beside and renamed over, so an interrupted run never leaves half a report."""
    timings = ", ".join(f"{name} {s:.0f} s" for name, s in seconds.items())
    header = [
        "# rnnkit diagnose: the seeds' claims, reproduced",
        "",
        f"{total:.0f} s in all ({timings}), on one thread; torch {torch.__version__}, Python {platform.python_version()}. "
        "Every number below is also in the CSV of its section; docs/diagnostics.md says what each shows."
        + ("" if "gradients" in seconds else " Vanishing and exploding gradients on the adding problem: plain `rnnkit diagnose`."),
        "",
    ]
    partial = path.with_name(path.name + ".part")
    partial.write_text("\n".join(header) + "\n" + "\n".join(parts))
    os.replace(partial, path)


def gradients_report(result: plain_diagnose.DiagnoseResult) -> str:
    """The section of plain ``rnnkit diagnose``: its three figures and its summary table."""
    c = result.config
    return "\n".join([
        "## Gradients vanish in an Elman RNN, gates carry them, and clipping tames an explosion",
        "",
        f"The adding problem, T={c.seq_len}: H={c.hidden_size}, {c.steps} Adam steps (lr {c.lr:g}, batch {c.batch_size}) per cell; "
        f"seed {c.seed}. See docs/diagnostics.md for the setup.",
        "",
        "![gradient flow](gradient_flow.png)",
        "",
        "![training curves](training_curves.png)",
        "",
        "![exploding gradients](exploding.png)",
        "",
        "```",
        result.summary.strip("\n"),
        "```",
    ]) + "\n"
