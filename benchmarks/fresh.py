"""Each config in a fresh process: the benchmark's default method.

A training step allocates and frees buffers of megabytes, and whether glibc serves them from
its heap or from fresh pages depends on what ran earlier in the process (its mmap threshold
rises as large blocks are freed), which swung whole rows of config B with the run order. So
the parent process measures the GEMM peaks and streaming, and runs every config in a child
``python -m benchmarks.run`` of its own (same options, ``--configs`` that one config), which
writes its rows as JSON (never pickle) to a file the parent reads back. ``--single-process``
keeps the old order: every config in the one process, one after the other.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks import timing

# Options the parent sets per child, or that only the parent acts on.
_PARENT_ONLY = ("--configs", "--out", "--worker-result")


def child_argv(argv: list[str], config: str, result: Path) -> list[str]:
    """The parent's command line for one config's child: its own options, ``--configs config``, and where to write."""
    kept, skip = [], False
    for token in argv:
        if skip:
            skip = False
            continue
        if token in _PARENT_ONLY:
            skip = True
            continue
        if token.startswith(tuple(f"{flag}=" for flag in _PARENT_ONLY)):
            continue
        kept.append(token)
    return [*kept, "--configs", config, "--worker-result", str(result)]


def run_config(argv: list[str], config: str, report, say) -> None:
    """Run one config in a fresh process and add its rows and notes to ``report``."""
    with tempfile.TemporaryDirectory() as folder:
        result = Path(folder) / "rows.json"
        command = [sys.executable, *(["-W", "error"] if sys.warnoptions == ["error"] else []), "-m", "benchmarks.run", *child_argv(argv, config, result)]
        done = subprocess.run(command, cwd=Path(__file__).resolve().parent.parent, capture_output=True, text=True, check=False)
        if done.returncode != 0 or not result.is_file():
            report.notes.append(f"config {config}: its process failed (exit {done.returncode}): {done.stderr.strip()[-500:]}")
            say(done.stderr[-2000:])
            return
        read(json.loads(result.read_text()), report)


def write(report, path: Path) -> None:
    """A child's rows, notes and peak memories as JSON."""
    data = {
        "timed": [dataclasses.asdict(t) for t in report.timed],
        "memory": [[d, c, ce, n, dataclasses.asdict(m)] for d, c, ce, n, m in report.memory],
        "notes": report.notes,
    }
    path.write_text(json.dumps(data))


def read(data: dict, report) -> None:
    from benchmarks.run import Timed

    for row in data["timed"]:
        report.timed.append(Timed(**{**row, "ms": timing.Stats(**row["ms"])}))
    report.memory += [(d, c, ce, n, timing.Memory(**m)) for d, c, ce, n, m in data["memory"]]
    report.notes += [n for n in data["notes"] if n not in report.notes]
