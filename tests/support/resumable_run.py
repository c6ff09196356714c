"""A training run for the resume tests, driven from a subprocess so it can be SIGKILLed.

usage: python -m tests.support.resumable_run RUN_DIR {fresh|resume} [--slow SECONDS]
Prints "step N" as each step ends; the checkpoint of step N (every 3rd) is written
right after that line, so it exists once "step N+1" appears.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from rnnkit.data import StreamBatches
from rnnkit.training import Callback, Trainer, TrainerConfig
from tests.support.models import TinyLM, periodic_tokens

CONFIG = dict(max_epochs=2, tbptt_k1=6, tbptt_k2=9, clip_grad_norm=1.0, checkpoint_every=3, eval_every=4, progress=False)


class Announce(Callback):
    def __init__(self, slow: float) -> None:
        self.slow = slow

    def on_step_end(self, trainer, record):
        print(f"step {record['step']}", flush=True)
        time.sleep(self.slow)


def build(run_dir: str, slow: float = 0.0):
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = TinyLM(hidden=10, dropout=0.25)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=5, gamma=0.7)
    trainer = Trainer(model, optimizer, TrainerConfig(run_dir=run_dir, **CONFIG), scheduler=scheduler, callbacks=[Announce(slow)])
    data = StreamBatches(periodic_tokens(480), 4), StreamBatches(periodic_tokens(120, seed=1), 2)
    return trainer, data


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run_dir")
    parser.add_argument("mode", choices=["fresh", "resume"])
    parser.add_argument("--slow", type=float, default=0.0)
    args = parser.parse_args()
    trainer, (train, val) = build(args.run_dir, args.slow)
    if args.mode == "resume":
        trainer.resume(Path(args.run_dir) / "checkpoint.safetensors")
    trainer.fit(train, val)
    print("done", flush=True)


if __name__ == "__main__":
    main()
