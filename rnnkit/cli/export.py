"""``rnnkit export RUN --format onnx|pt2 | --quantize int8 [--out FILE]``: a trained run as a self-contained program.

Sentiment and forecasting export the whole model; charlm exports one step with
its state as inputs and outputs, so that generation can stream (see
rnnkit/tasks/export.py for the inputs and outputs). ONNX files hold native
LSTM/GRU/RNN nodes and run in onnxruntime; pt2 files are torch.export programs
(loading one needs ``import rnnkit``). Batch and length stay dynamic. ``--quantize int8`` writes
the run's model converted by rnnkit.quantize_dynamic (int8 weights) in the safe checkpoint format,
RUN/model.int8.safetensors, which rnnkit.models.load_model reads back as an int8 model."""

from __future__ import annotations

from pathlib import Path

from rnnkit.cli import _shared

EPILOG = """examples:
  rnnkit export runs/sentiment --format onnx            # writes runs/sentiment/model.onnx
  rnnkit export runs/charlm --format pt2 --out step.pt2
  rnnkit export runs/sentiment --quantize int8          # writes runs/sentiment/model.int8.safetensors"""


def register(subparsers) -> None:
    parser = subparsers.add_parser("export", help="export a trained run to ONNX or a torch.export program",
                                   description=__doc__.split(":", 1)[1].strip(), epilog=EPILOG,
                                   formatter_class=_shared.formatter)  # fmt: skip
    parser.add_argument("run", metavar="RUN", help="a run folder written by `rnnkit train`")
    parser.add_argument("--format", choices=["onnx", "pt2"], help="onnx (onnxruntime) or pt2 (torch.export)")
    parser.add_argument("--quantize", choices=["int8"], help="instead of --format: the int8 model as a safetensors checkpoint")
    parser.add_argument("--out", metavar="FILE", help="where to write (default: RUN/model.onnx or RUN/model.pt2)")
    _shared.add_threads(parser)
    parser.set_defaults(handler=handle)


@_shared.reports_errors("export")
def handle(args) -> int:
    from rnnkit.tasks import export

    if (args.format is None) == (args.quantize is None):
        raise _shared.UsageError("expected exactly one of --format onnx|pt2 and --quantize int8 (an int8 model exports as a checkpoint only)")
    task, config, _ = _shared.open_run(args)
    if args.out:
        check_out(Path(args.out))
    if args.quantize is not None:
        out = Path(args.out) if args.out else Path(args.run) / f"model.{args.quantize}.safetensors"
        print(f"wrote {export.quantized(Path(args.run), args.quantize, out)}")
        return 0
    out = Path(args.out) if args.out else Path(args.run) / f"model.{args.format}"
    path = export.export(task.name, config, Path(args.run), args.format, out)
    print(f"wrote {path}")
    return 0


EXPORTS = (".onnx", ".pt2", ".int8.safetensors")  # what export writes: an earlier export may be replaced, nothing else


def check_out(out: Path) -> None:
    """Refuse an ``--out`` that would destroy something other than an earlier export (the run's model or config, a folder)."""
    if out.is_dir() or (out.exists() and not out.name.endswith(EXPORTS)):
        raise _shared.UsageError(f"--out {out}: expected a new file or an earlier export (a name ending in {', '.join(EXPORTS)}), "
                                 f"got an existing {'folder' if out.is_dir() else 'file'}; export would replace it")  # fmt: skip
