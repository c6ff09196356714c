"""Tests of the Triton kernels through Triton's interpreter: CPU tensors, ``TRITON_INTERPRET=1``.

Triton reads that variable when it is imported, so these run in a process of their own, started
by tests/test_triton_interpreter.py (or by hand: ``TRITON_INTERPRET=1 pytest tests/interpreted``).
"""

import os

import pytest

if os.environ.get("TRITON_INTERPRET") != "1":
    raise pytest.UsageError("tests/interpreted needs TRITON_INTERPRET=1 (tests/test_triton_interpreter.py sets it)")
