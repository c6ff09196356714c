"""``rnnkit train TASK``: train a task's model on its data and write a run folder."""

from __future__ import annotations

from pathlib import Path

from rnnkit import tasks
from rnnkit.cli import _shared

EPILOG = """tasks:
{tasks}

examples:
  rnnkit train sentiment --out runs/sentiment
  rnnkit train co2 model.rnn.cell=lstm data.horizon=26 trainer.max_epochs=60
  rnnkit train charlm --size demo --out runs/charlm-small
  rnnkit train sentiment --data reviews.csv      # your own data: see docs/tasks.md

Overrides are dotted keys of the task's typed config (rnnkit/tasks/<task>.py);
an unknown key or a value of the wrong type is an error. The run folder gets
config.json, model.safetensors, the trainer's checkpoints, metrics.csv,
loss.png (and other plots), results.json and REPORT.md."""


def register(subparsers) -> None:
    listing = "\n".join(f"  {name:<10} {task.summary}" for name, task in tasks.TASKS.items())
    parser = subparsers.add_parser("train", help="train a task's model and report it beside baselines",
                                   description=__doc__.split(":", 1)[1].strip(), epilog=EPILOG.format(tasks=listing),
                                   formatter_class=_shared.formatter)  # fmt: skip
    parser.add_argument("task", choices=list(tasks.TASKS), metavar="TASK", help="one of: " + ", ".join(tasks.TASKS))
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. trainer.max_epochs=5")
    parser.add_argument("--data", metavar="PATH", help="train on your own file instead of the built-in data (format: the task's docs)")
    parser.add_argument("--out", metavar="RUN_DIR", help="run folder (default runs/TASK; its files are replaced)")
    parser.add_argument("--size", choices=tasks.SIZES, default="default", help="model and training size (default: default)")
    _shared.add_threads(parser)
    _shared.accept_positionals_anywhere(parser)
    parser.set_defaults(handler=handle)


@_shared.reports_errors("train")
def handle(args) -> int:
    _shared.set_threads(args)
    task = tasks.get(args.task)
    config = task.config(args.size, args.overrides, args.data and str(Path(args.data).resolve()))  # eval works from anywhere
    out = Path(args.out or f"runs/{task.name}")
    print(f"training {task.name} ({task.summary}) into {out}", flush=True)
    report = task.train(config, out, say=lambda message: print(f"  {message}", flush=True))
    print(report.console())
    print(f"report: {out / 'REPORT.md'}")
    return 0
