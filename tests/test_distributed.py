"""Two processes under torchrun (gloo, loopback) equal one process on the same global batch.

DDP averages gradients; each process holds an equal half of every global
batch and a mean-reduced loss, so every update equals the single-process one.
Only the order of floating-point additions differs (all-reduce vs one sum),
hence the tolerance of 1e-5 on the weights after 16 updates.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from rnnkit.training import load_checkpoint
from tests.support.models import SignClassifier

ROOT = Path(__file__).resolve().parents[1]


def test_two_process_ddp_equals_single_process(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    single = tmp_path / "single.safetensors"
    double = tmp_path / "ddp.safetensors"
    subprocess.run([sys.executable, "-m", "tests.support.ddp_run", str(single)], cwd=ROOT, env=env, check=True, timeout=120)
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "tests.support.ddp_run", str(double)]
    result = subprocess.run(launch, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]

    weights_1, meta_1 = load_checkpoint(single)
    weights_2, meta_2 = load_checkpoint(double)
    assert (meta_1["world_size"], meta_2["world_size"]) == (1, 2)
    assert len(meta_1["losses"]) == len(meta_2["losses"]) == 16
    for a, b in zip(meta_1["losses"], meta_2["losses"]):
        assert abs(a - b) < 1e-5
    for name in weights_1:
        torch.testing.assert_close(weights_2[name], weights_1[name], atol=1e-5, rtol=1e-5, msg=lambda m: f"{name}: {m}")
    # the runs did train: the weights moved away from their shared initialisation
    torch.manual_seed(0)
    initial = SignClassifier().state_dict()
    assert any((weights_1[n] - initial[n]).abs().max() > 1e-2 for n in initial)
