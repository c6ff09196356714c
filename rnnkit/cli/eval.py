"""``rnnkit eval RUN [--quantize int8]``: evaluate a trained run again on its held-out data, beside its baselines."""

from __future__ import annotations

import inspect
import time
from pathlib import Path

from rnnkit.cli import _shared


def register(subparsers) -> None:
    parser = subparsers.add_parser("eval", help="evaluate a trained run on its held-out data",
                                   description=__doc__.split(":", 1)[1].strip(), formatter_class=_shared.formatter,
                                   epilog="examples:\n  rnnkit eval runs/sentiment\n  rnnkit eval runs/charlm --quantize int8")  # fmt: skip
    parser.add_argument("run", metavar="RUN", help="a run folder written by `rnnkit train`")
    parser.add_argument("--quantize", choices=QUANTIZATIONS, default=None,
                        help="also evaluate the model converted by rnnkit.quantize_dynamic and print what it costs "
                             "(sentiment, charlm, co2, stocks)")  # fmt: skip
    _shared.add_threads(parser)
    parser.set_defaults(handler=handle)


QUANTIZATIONS = ("int8",)  # rnnkit.tasks.common.QUANTIZATIONS, spelled here so that `rnnkit --help` imports no task


@_shared.reports_errors("eval")
def handle(args) -> int:
    task, config, module = _shared.open_run(args)
    if args.quantize is None:
        print(module.evaluate(config, Path(args.run)).console())
        return 0
    if "quantize" not in inspect.signature(module.evaluate).parameters:
        raise _shared.UsageError(f"--quantize: expected a run of sentiment, charlm, co2 or stocks, got {task.name}")
    start = time.perf_counter()
    full = module.evaluate(config, Path(args.run))
    middle = time.perf_counter()
    small = module.evaluate(config, Path(args.run), quantize=args.quantize)
    end = time.perf_counter()
    print("float32:\n" + full.console() + f"\n\n{args.quantize}:\n" + small.console() + "\n")
    print(cost(full, small, args.quantize, middle - start, end - middle))
    return 0


def cost(full, small, scheme: str, full_seconds: float, small_seconds: float) -> str:
    """One line per metric of the run's own model (the first row): float32, the quantized value and the change."""
    name = next(iter(full.rows))
    lines = [f"{scheme} against float32, {name}:"]
    for column in full.columns:
        a, b = full.rows[name].get(column), small.rows.get(name, {}).get(column)
        if isinstance(a, float) and isinstance(b, float):
            lines.append(f"  {column}: {a:.4f} -> {b:.4f} ({b - a:+.4f}, {100 * (b - a) / max(abs(a), 1e-12):+.2f}%)")
    lines.append(f"  evaluation time (whole report, data included): {full_seconds:.1f} s -> {small_seconds:.1f} s")
    return "\n".join(lines)
