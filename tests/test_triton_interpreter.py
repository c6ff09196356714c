"""Every Triton kernel through Triton's interpreter, on CPU, in a process of its own.

Triton decides when it is imported whether kernels (its own library's included) are compiled or
interpreted, so ``TRITON_INTERPRET=1`` cannot be switched on for some tests of one process. This
runs tests/interpreted/ in a child pytest with it set; the child's report is in the failure message.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton", reason="the triton extra is not installed")

ROOT = Path(__file__).resolve().parents[1]


def test_triton_kernels_through_the_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    child = subprocess.run(
        [sys.executable, "-m", "pytest", "tests/interpreted", "-o", "addopts=", "-q", "-ra", "-x", "-p", "no:cacheprovider"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    report = child.stdout[-6000:] + child.stderr[-2000:]
    assert child.returncode == 0, f"tests/interpreted failed (exit {child.returncode}):\n{report}"
    summary = child.stdout.strip().splitlines()[-1]
    assert " passed" in summary and "skipped" not in summary, report  # nothing silently left out
