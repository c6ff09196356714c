"""Smoke test of the benchmark suite: ``python -m benchmarks.run --quick`` runs and writes its report.

No timing is asserted (benchmarks are not tests); this only checks that the
suite runs end to end, without Python warnings, and that the Markdown report
has its sections and one row per cell. It runs in a subprocess so that the
suite's thread setting cannot leak into the other tests, and with
``RNNKIT_ENGINE_NO_BUILD=1`` so that a fresh checkout does not compile the
fused engine's C++ loop here (its own tests do that).
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CELLS = ("LSTM", "GRU", "RNN (tanh)")


def table(markdown: str, section: str) -> tuple[list[str], list[list[str]]]:
    """Header and body rows of the first table after the heading ``section``, as stripped cells."""
    after = markdown.split(section, 1)[1].splitlines()
    start = next(i for i, line in enumerate(after) if line.startswith("|"))
    lines = list(itertools.takewhile(lambda line: line.startswith("|"), after[start:]))
    cells = [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in lines]
    return cells[0], cells[2:]


def test_quick_run_writes_markdown_report(tmp_path):
    out = tmp_path / "benchmarks.md"
    result = subprocess.run(
        [sys.executable, "-W", "error", "-m", "benchmarks.run", "--quick", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
        env={**os.environ, "RNNKIT_ENGINE_NO_BUILD": "1"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Warning" not in result.stderr, result.stderr[-3000:]
    markdown = out.read_text()
    for heading in ("## Machine", "## Method"):
        assert heading in markdown, heading

    header, targets = table(markdown, "## Targets")
    assert header == ["target", "measured", "status"]
    assert targets and all(row[2] in ("MET", "MISSED", "NOT MEASURED") for row in targets)

    header, layers = table(markdown, "## Layers (cpu)")
    assert header[:7] == ["config", "cell", "mode", "contender", "median ms", "IQR ms", "ratio"]
    for config in ("A", "B", "C"):
        for cell in CELLS:
            for mode in ("inference", "training"):
                here = [row[3] for row in layers if row[:3] == [config, cell, mode]]
                assert "torch.nn" in here and any(c.startswith("rnnkit auto") for c in here), (config, cell, mode, here)

    header, memory = table(markdown, "### Training-step peak memory (cpu)")
    assert header[:5] == ["config", "cell", "contender", "peak MB", "ratio"]
    assert {row[1] for row in memory} == set(CELLS)

    header, streaming = table(markdown, "## Streaming")
    assert header[:3] == ["cell", "contender", "µs/step"]
    assert {row[0] for row in streaming} == set(CELLS)

    header, peaks = table(markdown, "### GEMM peak (cpu")
    assert header == ["kernel", "GFLOP/s"] and peaks


def test_interleaved_rounds_vary_each_contender_s_predecessor():
    # a fixed cyclic order (a rotating start) kept each contender behind the same one, whose aftermath it then paid
    # for in every round; the orders are shuffled per round, and seeded: the same in every run
    from benchmarks import timing

    def trace():
        calls = []
        samples = timing.interleaved({name: (lambda name=name: calls.append(name)) for name in "abcde"}, repeats=8, warmup=2)
        return calls, samples

    calls, samples = trace()
    assert calls == trace()[0]
    assert all(len(times) == 8 for times in samples.values())  # warm-up rounds run but are not reported
    rounds = [calls[i : i + 5] for i in range(0, len(calls), 5)]
    assert all(sorted(order) == list("abcde") for order in rounds)  # every contender once a round
    for name in "abcde":
        before = {order[order.index(name) - 1] for order in rounds if order.index(name) > 0}
        assert len(before) >= 3, (name, before)
        assert sum(order[0] == name for order in rounds) < len(rounds)  # nobody always first
