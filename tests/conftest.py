"""Test-wide settings: deterministic seeds and one intra-op thread.

The tests use tiny tensors, where threads only add synchronisation cost, and
one thread keeps CPU results bitwise repeatable from run to run.
"""

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
