"""``rnnkit demo``: train a small model for every task on its real data, and report each beside its baselines."""

from __future__ import annotations

import time
from pathlib import Path

from rnnkit import tasks
from rnnkit.cli import _shared
from rnnkit.training.checkpoint import atomic_write_text

DEMO = ["sentiment", "co2", "stocks", "charlm", "translation", "captioning", "music", "speech"]


def register(subparsers) -> None:
    parser = subparsers.add_parser("demo", help="train and report a small model for every task (a few minutes)",
                                   description=__doc__.split(":", 1)[1].strip(), formatter_class=_shared.formatter,
                                   epilog="The data comes from `make data`. Each task's run folder sits in OUT; OUT/REPORT.md gathers them.\n"
                                          "Unlike `rnnkit train`, the demo replaces what a previous demo left in OUT.")  # fmt: skip
    parser.add_argument("--fast", action="store_true", help="tiny models, for tests and CI: the numbers mean little")
    parser.add_argument("--out", default="runs/demo", metavar="DIR", help="where to write (default runs/demo)")
    _shared.add_threads(parser)
    parser.set_defaults(handler=handle)


@_shared.reports_errors("demo")
def handle(args) -> int:
    _shared.set_threads(args)
    out, size = Path(args.out), "fast" if args.fast else "demo"
    started = time.perf_counter()
    sections, timings = [], []
    for number, name in enumerate(DEMO, 1):
        task = tasks.get(name)
        print(f"\n[{number}/{len(DEMO)}] {name}: {task.summary}", flush=True)
        begun = time.perf_counter()
        report = task.train(task.config(size), out / name, say=lambda message: print(f"  {message}", flush=True))
        timings.append((name, time.perf_counter() - begun))
        print("\n".join("  " + line for line in report.console().splitlines()))
        for title, text in report.samples.items():
            print(f"  {title}:\n" + "\n".join("    " + line for line in text.splitlines()))
        sections.append(report.markdown(plot_prefix=f"{name}/", level=2))
    total = time.perf_counter() - started
    times = ", ".join(f"{name} {seconds:.0f} s" for name, seconds in timings)
    header = (f"# rnnkit demo{' (--fast: tiny models, the numbers mean little)' if args.fast else ''}\n\n"
              f"`rnnkit demo{' --fast' if args.fast else ''}` trained every task on its real data in {total:.0f} s ({times}). "
              f"Every metric is on held-out data; each task's run folder sits beside this file.\n\n")  # fmt: skip
    atomic_write_text(out / "REPORT.md", header + "\n".join(sections))
    print(f"\ndone in {total:.0f} s ({times}); report: {out / 'REPORT.md'}")
    return 0
