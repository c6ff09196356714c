"""Test-wide settings: deterministic seeds and one intra-op thread.

The tests use tiny tensors, where threads only add synchronisation cost, and
one thread keeps CPU results bitwise repeatable from run to run.
"""

import os

import pytest
import torch

# The Triton kernels' interpreter tests need TRITON_INTERPRET=1 before triton is imported: they run
# in a process of their own (tests/test_triton_interpreter.py), not in this one.
collect_ignore = [] if os.environ.get("TRITON_INTERPRET") == "1" else ["interpreted"]

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def tiny_runs(tmp_path_factory):
    """A tiny trained run of each task but stocks (which shares co2's code), trained once per session (about 5 s)."""
    from tests.support.serve_runs import train_tiny_runs

    return train_tiny_runs(tmp_path_factory.mktemp("runs"))
