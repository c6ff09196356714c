"""``rnnkit eval RUN``: evaluate a trained run again on its held-out data, beside its baselines."""

from __future__ import annotations

from pathlib import Path

from rnnkit.cli import _shared


def register(subparsers) -> None:
    parser = subparsers.add_parser("eval", help="evaluate a trained run on its held-out data",
                                   description=__doc__.split(":", 1)[1].strip(), formatter_class=_shared.formatter,
                                   epilog="example:\n  rnnkit eval runs/sentiment")  # fmt: skip
    parser.add_argument("run", metavar="RUN", help="a run folder written by `rnnkit train`")
    _shared.add_threads(parser)
    parser.set_defaults(handler=handle)


@_shared.reports_errors("eval")
def handle(args) -> int:
    task, config, module = _shared.open_run(args)
    report = module.evaluate(config, Path(args.run))
    print(report.console())
    return 0
