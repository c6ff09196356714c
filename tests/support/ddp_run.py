"""Data-parallel training for the DDP test; run under torchrun, or alone for the baseline.

usage: torchrun --standalone --nproc-per-node 2 -m tests.support.ddp_run OUT.safetensors
       python -m tests.support.ddp_run OUT.safetensors
Writes the final weights and the logged global losses (rank 0 only).
"""

from __future__ import annotations

import sys

import torch

from rnnkit.data import TensorBatches
from rnnkit.training import DistributedContext, Trainer, TrainerConfig, save_checkpoint
from rnnkit.training.callbacks import Callback
from tests.support.models import SignClassifier, sign_data

GLOBAL_BATCH = 16


class KeepLosses(Callback):
    def __init__(self) -> None:
        self.losses = []

    def on_step_end(self, trainer, record):
        self.losses.append(record["loss"])


def main(out: str) -> None:
    torch.set_num_threads(1)
    context = DistributedContext.from_env()
    torch.manual_seed(0)  # the same initial weights in every process
    model = SignClassifier()
    keep = KeepLosses()
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.5), TrainerConfig(max_epochs=2, progress=False),
                      callbacks=[keep], distributed=context)  # fmt: skip
    x, y = sign_data(128)
    trainer.fit(TensorBatches(x, y, GLOBAL_BATCH, rank=context.rank, world_size=context.world_size))
    if context.is_main:
        save_checkpoint(out, dict(model.state_dict()), {"losses": keep.losses, "world_size": context.world_size})
    context.close()


if __name__ == "__main__":
    main(sys.argv[1])
