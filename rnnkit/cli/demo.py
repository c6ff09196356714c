"""``rnnkit demo``: train a small model for every task on its real data, and report each beside its baselines.

The tasks are independent and each runs on ``--threads`` threads, so with
``--jobs N`` (default: one per core) N of them train at once, each in a
fresh process. The numbers are the same as one at a time: every task seeds
itself and runs single-process either way (tested). Workers ignore Ctrl-C;
the command itself takes the signal and stops them.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import torch

from rnnkit import tasks
from rnnkit.cli import _shared
from rnnkit.training.checkpoint import atomic_write_text

# The tasks in the report's order, with the seconds each took in the demo on a 2-core AVX2 machine (docs/results.md):
# workers take the longest first, so that they finish close together. Only that order depends on the seconds.
DEMO = {"sentiment": 146, "co2": 18, "stocks": 10, "charlm": 135, "translation": 76, "captioning": 29, "music": 13, "speech": 161}


def register(subparsers) -> None:
    parser = subparsers.add_parser("demo", help="train and report a small model for every task (a few minutes)",
                                   description=__doc__.split(":", 1)[1].split("\n\n")[0].strip(), formatter_class=_shared.formatter,
                                   epilog="The data comes from `make data`. Each task's run folder sits in OUT; OUT/REPORT.md gathers them.\n"
                                          "Unlike `rnnkit train`, the demo replaces what a previous demo left in OUT.")  # fmt: skip
    parser.add_argument("--fast", action="store_true", help="tiny models, for tests and CI: the numbers mean little")
    parser.add_argument("--out", default="runs/demo", metavar="DIR", help="where to write (default runs/demo)")
    parser.add_argument("--jobs", type=int, default=None, metavar="N",
                        help="tasks trained at once, each in its own process (default: the cores available divided by --threads)")  # fmt: skip
    _shared.add_threads(parser)
    parser.set_defaults(handler=handle)


def default_jobs(threads: int) -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1  # the former: Linux only
    return max(1, min(len(DEMO), cores // max(threads, 1)))


def train_task(job: tuple[int, str, str, Path, bool]) -> tuple[str, tasks.common.Report, float]:
    """Train one task into ``out/name``, in this process or a worker; ``tagged`` prefixes its lines with its name."""
    number, name, size, out, tagged = job
    task = tasks.get(name)
    prefix = f"  [{name}] " if tagged else "  "
    print(f"\n[{number}/{len(DEMO)}] {name}: {task.summary}", flush=True)
    begun = time.perf_counter()
    report = task.train(task.config(size), out / name, say=lambda message: print(f"{prefix}{message}", flush=True))
    return name, report, time.perf_counter() - begun


def _start_worker(threads: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C reaches the whole group: the parent handles it
    torch.set_num_threads(threads)


def _in_workers(work: list, jobs: int, threads: int):
    """Yield ``train_task``'s results as ``jobs`` fresh spawned processes finish them.

    A task's error is raised here; so is a worker that dies (killed, out of
    memory), as :class:`ChildProcessError`, where a pool that waited for it
    would hang. On any way out, a signal included, the workers are stopped.
    """
    pool = ProcessPoolExecutor(jobs, multiprocessing.get_context("spawn"), _start_worker, (threads,), max_tasks_per_child=1)
    try:
        pending = {pool.submit(train_task, job): job[1] for job in work}
        for future in as_completed(pending):
            try:
                result = future.result()
            except BrokenProcessPool:
                raise ChildProcessError(f"a worker process ended abruptly (killed, or out of memory); unfinished: {', '.join(pending.values())}; "
                                        "`rnnkit demo --jobs 1` trains one task at a time in this process") from None  # fmt: skip
            del pending[future]
            yield result
    finally:
        workers = list(pool._processes.values())  # ProcessPoolExecutor has no public way to stop running workers (3.14 adds one)
        pool.shutdown(wait=False, cancel_futures=True)
        for worker in workers:
            worker.terminate()
        for worker in workers:
            worker.join()


@_shared.reports_errors("demo")
def handle(args) -> int:
    _shared.set_threads(args)
    jobs = default_jobs(args.threads) if args.jobs is None else args.jobs
    if jobs < 1:
        raise _shared.UsageError(f"--jobs: expected a number of tasks to train at once, at least 1, got {jobs}")
    out, size = Path(args.out), "fast" if args.fast else "demo"
    started = time.perf_counter()
    numbers = {name: number for number, name in enumerate(DEMO, 1)}
    work = [(numbers[name], name, size, out, jobs > 1) for name in sorted(DEMO, key=DEMO.__getitem__, reverse=True)]
    reports, timings = {}, {}
    for name, report, seconds in (map(train_task, sorted(work)) if jobs == 1 else _in_workers(work, jobs, args.threads)):
        reports[name], timings[name] = report, seconds
        done = f"\n[{name}] done in {seconds:.0f} s" if jobs > 1 else ""
        print(done + "\n" + "\n".join("  " + line for line in report.console().splitlines()))
        for title, text in report.samples.items():
            print(f"  {title}:\n" + "\n".join("    " + line for line in text.splitlines()), flush=True)
    total = time.perf_counter() - started
    times = ", ".join(f"{name} {timings[name]:.0f} s" for name in DEMO)
    at_once = f", {jobs} at a time" if jobs > 1 else ""
    sections = [reports[name].markdown(plot_prefix=f"{name}/", level=2) for name in DEMO]
    header = (f"# rnnkit demo{' (--fast: tiny models, the numbers mean little)' if args.fast else ''}\n\n"
              f"`rnnkit demo{' --fast' if args.fast else ''}` trained every task on its real data in {total:.0f} s "
              f"({times}{at_once}). Every metric is on held-out data; each task's run folder sits beside this file.\n\n")  # fmt: skip
    atomic_write_text(out / "REPORT.md", header + "\n".join(sections))
    print(f"\ndone in {total:.0f} s ({times}{at_once}); report: {out / 'REPORT.md'}")
    return 0
