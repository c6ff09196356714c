"""The ``rnnkit`` command with faults injected, for the command-line tests.

usage: python -m tests.support.cli_faults [FAULT ...] -- COMMAND [ARGS ...]

Faults (each changes timing or fails one thing, never what a step computes):
  --step-delay S        sleep S seconds after every training step (a window to send signals in)
  --stall-at-step N     sleep for ten minutes after training step N
  --decode-delay S      sleep S seconds in every generation step
  --block-read          reading data (a file, an archive, standard input) prints "[fault] blocked reading ..." and blocks
  --full-disk-at N      the N-th write of a checkpoint.safetensors fails with ENOSPC (a full disk)
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
import time


def main() -> int:
    argv = sys.argv[1:]
    split = argv.index("--")
    parser = argparse.ArgumentParser()
    parser.add_argument("--step-delay", type=float)
    parser.add_argument("--stall-at-step", type=int)
    parser.add_argument("--decode-delay", type=float)
    parser.add_argument("--block-read", action="store_true")
    parser.add_argument("--full-disk-at", type=int)
    faults = parser.parse_args(argv[:split])

    from rnnkit.training import callbacks, checkpoint, trainer

    if faults.step_delay or faults.stall_at_step:
        defaults = trainer.default_callbacks

        class Slow(callbacks.Callback):
            def on_step_end(self, runner, record):
                time.sleep(600 if record["step"] == faults.stall_at_step else faults.step_delay or 0)

        trainer.default_callbacks = lambda config, is_main: [*defaults(config, is_main), Slow()]
    if faults.decode_delay:
        from rnnkit.models import LanguageModel

        decode_step = LanguageModel.decode_step

        def slow_decode_step(self, tokens, state):
            time.sleep(faults.decode_delay)
            return decode_step(self, tokens, state)

        LanguageModel.decode_step = slow_decode_step
    if faults.block_read:
        from rnnkit.tasks import common

        def blocked(what, *args):
            print(f"[fault] blocked reading {what}", flush=True)
            time.sleep(600)

        common.read_bytes = common.read_member = common.cached_package = blocked
        sys.stdin = type("BlockedStdin", (), {"read": lambda self, *args: blocked("standard input")})()
    if faults.full_disk_at:
        replace_with, writes = checkpoint._replace_with, []

        def fill_disk(path, payload):
            if path.name == "checkpoint.safetensors":
                writes.append(path)
                if len(writes) == faults.full_disk_at:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            replace_with(path, payload)

        checkpoint._replace_with = fill_disk
    from rnnkit.cli.main import main as rnnkit

    return rnnkit(argv[split + 1 :])


if __name__ == "__main__":
    sys.exit(main())
