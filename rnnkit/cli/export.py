"""``rnnkit export RUN --format onnx|pt2 [--out FILE]``: a trained run as a self-contained program.

Sentiment and forecasting export the whole model; charlm exports one step with
its state as inputs and outputs, so that generation can stream (see
rnnkit/tasks/export.py for the inputs and outputs). ONNX files hold native
LSTM/GRU/RNN nodes and run in onnxruntime; pt2 files are torch.export programs
(loading one needs ``import rnnkit``). Batch and length stay dynamic."""

from __future__ import annotations

from pathlib import Path

from rnnkit.cli import _shared

EPILOG = """examples:
  rnnkit export runs/sentiment --format onnx            # writes runs/sentiment/model.onnx
  rnnkit export runs/charlm --format pt2 --out step.pt2"""


def register(subparsers) -> None:
    parser = subparsers.add_parser("export", help="export a trained run to ONNX or a torch.export program",
                                   description=__doc__.split(":", 1)[1].strip(), epilog=EPILOG,
                                   formatter_class=_shared.formatter)  # fmt: skip
    parser.add_argument("run", metavar="RUN", help="a run folder written by `rnnkit train`")
    parser.add_argument("--format", required=True, choices=["onnx", "pt2"], help="onnx (onnxruntime) or pt2 (torch.export)")
    parser.add_argument("--out", metavar="FILE", help="where to write (default: RUN/model.onnx or RUN/model.pt2)")
    _shared.add_threads(parser)
    parser.set_defaults(handler=handle)


@_shared.reports_errors("export")
def handle(args) -> int:
    from rnnkit.tasks import export

    task, config, _ = _shared.open_run(args)
    out = Path(args.out) if args.out else Path(args.run) / f"model.{args.format}"
    path = export.export(task.name, config, Path(args.run), args.format, out)
    print(f"wrote {path}")
    return 0
