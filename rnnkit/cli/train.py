"""``rnnkit train TASK``: train a task's model on its data and write a run folder, or continue one with --resume RUN."""

from __future__ import annotations

import sys
from pathlib import Path

from rnnkit import config as configs
from rnnkit import tasks
from rnnkit.cli import _runs, _shared, _signals
from rnnkit.tasks import common
from rnnkit.training import Callback

EPILOG = """tasks:
{tasks}

examples:
  rnnkit train sentiment --out runs/sentiment
  rnnkit train co2 model.rnn.cell=lstm data.horizon=26 trainer.max_epochs=60
  rnnkit train charlm --size demo --out runs/charlm-small
  rnnkit train sentiment --data reviews.csv      # your own data: see docs/tasks.md
  rnnkit train lm --data a.txt b.txt --out runs/lm   # a word-level language model on plain text
  rnnkit train sentiment --init runs/lm          # fine-tune the LM on the sentences, then the classifier
  rnnkit train --resume runs/charlm              # after Ctrl-C or a crash: continue exactly
  rnnkit train --resume runs/charlm trainer.max_steps=10000   # train a finished run longer

Overrides are dotted keys of the task's typed config (rnnkit/tasks/<task>.py);
an unknown key or a value of the wrong type is an error. The run folder gets
config.json, model.safetensors, the trainer's checkpoints, metrics.csv,
loss.png (and other plots), results.json and REPORT.md.

A folder that holds a run is never replaced silently: --resume continues it,
--overwrite replaces it (the old run is deleted only once the new one has
written its first checkpoint). A resumed run keeps its config; only these
keys may change: {safe}.
Ctrl-C or SIGTERM stops at the next update with a checkpoint (exit 130 or
143); a second Ctrl-C stops at once. See docs/tasks.md."""


def register(subparsers) -> None:
    listing = "\n".join(f"  {name:<10} {task.summary}" for name, task in tasks.TASKS.items())
    parser = subparsers.add_parser("train", help="train a task's model and report it beside baselines",
                                   description=__doc__.split(":", 1)[1].strip(), formatter_class=_shared.formatter,
                                   epilog=EPILOG.format(tasks=listing, safe=", ".join(_runs.SAFE_KEYS)))  # fmt: skip
    parser.add_argument("task", nargs="?", metavar="TASK", help="one of: " + ", ".join(tasks.TASKS) + " (optional with --resume)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. trainer.max_epochs=5")
    parser.add_argument("--data", metavar="PATH", nargs="+", action="extend",
                        help="train on your own file(s) instead of the built-in data (format: the task's docs; lm takes several)")
    parser.add_argument("--init", metavar="RUN", help="sentiment: start from the language model of an `rnnkit train lm` run (fine-tuned, then the classifier)")
    parser.add_argument("--out", metavar="RUN_DIR", help="run folder (default runs/TASK); it must be new or empty, see --overwrite")
    parser.add_argument("--size", choices=tasks.SIZES, help="model and training size (default: default)")
    parser.add_argument("--resume", metavar="RUN", help="continue the run in RUN from its last checkpoint, with its config")
    parser.add_argument("--overwrite", action="store_true", help="replace the run in --out (kept until the new one's first checkpoint)")
    _shared.add_threads(parser)
    _shared.accept_positionals_anywhere(parser)
    parser.set_defaults(handler=handle)


@_shared.reports_errors("train")
def handle(args) -> int:
    _shared.set_threads(args)
    task, config, out, resume = plan(args, say)
    replaced = None if resume else _runs.prepare_new_run(out, args.overwrite, say)
    if resume:
        step = _runs.checkpoint_step(out)
        start = f"from the checkpoint of step {step}" if step is not None else "from the start (it has no checkpoint yet)"
        print(f"resuming {task.name} in {out} {start}", flush=True)
    else:
        print(f"training {task.name} ({task.summary}) into {out}{' (replacing the run there)' if replaced else ''}", flush=True)
    callbacks = [StopOnSignal(args.signals), *([replaced] if replaced else [])]
    try:
        build_kernel()
        with common.fit_options(resume=resume, callbacks=callbacks):
            report = task.train(config, out, say=say)
    except KeyboardInterrupt as interruption:
        restored = replaced is not None and replaced.restore()
        print(f"rnnkit train: {stopped_line(interruption, out, restored)}", file=sys.stderr)
        return _signals.exit_code(interruption)
    except BaseException:
        if replaced is not None and replaced.restore():
            say(f"the previous run is back in {out}")
        raise
    finally:
        args.signals.defer(None)
    if replaced is not None:
        replaced.discard()
    print(report.console())
    print(f"report: {out / 'REPORT.md'}")
    return 0


def say(message: str) -> None:
    print(f"  {message}", flush=True)


def plan(args, say=print):
    """``(task, config, run folder, resume?)`` from the command line; a resumed run's config must match (see _runs)."""
    overrides, name = list(args.overrides), args.task
    if name is not None and "=" in name:  # `train --resume RUN key=value`: the first override took TASK's place
        overrides, name = [name, *overrides], None
    if name is not None and name not in tasks.TASKS:
        raise _shared.UsageError(f"TASK: expected one of {list(tasks.TASKS)}, got {name!r}")
    data_files = list(args.data or [])
    overrides += [item for item in data_files if "=" in item and not Path(item).exists()]  # `--data a.txt b.txt key=value`
    data_files = [item for item in data_files if item not in overrides]
    data = [str(Path(item).resolve()) for item in data_files] or None  # eval works from anywhere
    if args.init is not None:
        if name != "sentiment" or args.resume is not None:
            raise _shared.UsageError(f"--init: expected it with `train sentiment` (a new run), got it with {name or '--resume'}")
        if not (Path(args.init) / "model.safetensors").is_file():
            raise _shared.UsageError(f"--init: expected a run folder of `rnnkit train lm` with model.safetensors, got {args.init}")
        overrides[:0] = init_overrides(Path(args.init))
    if args.resume is None:
        if name is None:
            raise _shared.UsageError(f"TASK: expected a task to train (one of {list(tasks.TASKS)}) or --resume RUN, got neither")
        task = tasks.get(name)
        return task, task.config(args.size or "default", overrides, data), Path(args.out or f"runs/{task.name}"), False
    run = Path(args.resume)
    _runs.recover_killed_overwrite(run, say)
    if args.overwrite:
        raise _shared.UsageError("--overwrite: expected it without --resume (which continues the run in place), got both")
    if args.out is not None and Path(args.out).resolve() != run.resolve():
        raise _shared.UsageError(f"--out: expected none with --resume (the run stays in {run}), got {args.out}")
    task, stored = tasks.load_run(run)
    if name is None:
        if args.size is not None or data is not None:
            raise _shared.UsageError("--size/--data: expected them only with TASK (a resumed run keeps its own), got them with --resume alone")
        try:
            fresh = configs.apply_overrides(stored, overrides)
        except configs.ConfigError:
            raise
        except ValueError as error:  # a check in a dataclass's __post_init__
            raise configs.ConfigError(str(error)) from None
    elif name != task.name:
        raise _shared.UsageError(f"TASK: expected {task.name}, the task of the run in {run}, got {name}")
    else:
        fresh = task.config(args.size or "default", overrides, data)
    _runs.check_checkpoints(run)
    return task, _runs.resume_config(run, stored, fresh), run, True


def init_overrides(run: Path) -> list[str]:
    """``--init RUN``: pretraining from RUN's language model, whose embedding and LSTM sizes the classifier takes."""
    task, lm_config = tasks.load_run(run)
    if task.name != "lm":
        raise _shared.UsageError(f"--init: expected a run folder of `rnnkit train lm`, got a {task.name} run in {run}")
    rnn = lm_config.model.rnn
    return ["pretrain.enabled=true", f"pretrain.init={run.resolve()}", f"model.embedding_dim={lm_config.model.embedding_dim}",
            *(f"model.rnn.{key}={getattr(rnn, key)}" for key in ("cell", "hidden_size", "num_layers", "layer_norm", "nonlinearity")),
            "model.rnn.bidirectional=false"]  # fmt: skip


class StopOnSignal(Callback):
    """While the trainer runs, the first SIGINT/SIGTERM stops it after the current update; its checkpoint is then written."""

    def __init__(self, guard: _signals.SignalGuard) -> None:
        self.guard = guard

    def on_fit_start(self, trainer, train) -> None:
        self.guard.defer(lambda signum: setattr(trainer, "should_stop", True))

    def on_fit_end(self, trainer) -> None:
        self.guard.defer(None)
        if self.guard.received is not None:  # the trainer has just written its checkpoint
            raise _signals.Interrupted(self.guard.received)


def build_kernel() -> None:
    """Build the fused engine's C++ kernel (first use only) before training, where Ctrl-C may stop it at once.

    Built at the first update instead, an interrupted build would leave that
    process on the pure-PyTorch kernel, and its checkpoint would not resume
    bit for bit like the uninterrupted run.
    """
    from rnnkit import ops

    ops.load()


def stopped_line(interruption: KeyboardInterrupt, run: Path, restored: bool) -> str:
    """One line: which signal stopped training, where the last checkpoint is, and how to go on."""
    checkpoints = sorted(run.rglob("checkpoint.safetensors"), key=lambda p: p.stat().st_mtime) if run.is_dir() else []
    head = f"interrupted by {_signals.name(interruption)}"
    if restored:
        return f"{head} before the new run's first checkpoint; the previous run is back in {run}"
    if not checkpoints:
        return f"{head} before the first checkpoint; nothing to resume (run the same command again)"
    step = _runs.checkpoint_step(checkpoints[-1].parent)
    return f"{head}; checkpoint of step {step} in {checkpoints[-1]}; continue with: rnnkit train --resume {run}"
