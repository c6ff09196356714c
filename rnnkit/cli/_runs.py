"""Run folders under ``rnnkit train``: never overwritten silently, replaced safely, resumed only as they were.

* A new run goes into a folder that does not exist or is empty. A folder that
  holds a run is refused, with the two ways on: ``--resume RUN`` or
  ``--overwrite``. A folder with other files in it is refused either way
  (rnnkit deletes only runs).
* ``--overwrite`` moves the old run aside (``.NAME.replaced`` beside it) and
  deletes it once the new run has written its first checkpoint. If the new
  run stops before that (an error, Ctrl-C), the old one is put back; if it was
  killed, the next ``rnnkit train`` into that folder puts it back.
* ``--resume RUN`` checks every checkpoint of the run before anything starts,
  and accepts a config that differs from the run's only in :data:`SAFE_KEYS`.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from rnnkit import config as configs
from rnnkit.cli._shared import UsageError
from rnnkit.training import Callback, load_checkpoint

# Keys that change how far training goes or how often it saves, never what a step computes.
SAFE_KEYS = ("trainer.max_steps", "trainer.max_epochs", "trainer.checkpoint_every", "trainer.progress")
RUN_FILES = ("config.json", "checkpoint.safetensors", "model.safetensors")


# What a run folder holds that rnnkit wrote: the run files, the trainer's records, the report and its plots, exports,
# and sub-runs (a baseline, a language model) or TensorBoard logs. --overwrite deletes a folder only if that is all.
RUN_OUTPUTS = {*RUN_FILES, "best.safetensors", "metrics.csv", "REPORT.md", "results.json", "model.onnx", "model.pt2", "tensorboard"}


def _is_run_output(path: Path) -> bool:
    name = path.name
    if path.is_dir():
        return name in RUN_OUTPUTS or any((path / run_file).exists() for run_file in (*RUN_FILES, "metrics.csv"))
    return name in RUN_OUTPUTS or name.endswith((".png", ".mid")) or (name.startswith("model.") and name.endswith(".safetensors"))


def holds_run(folder: Path) -> bool:
    return any((folder / name).exists() for name in RUN_FILES)


def checkpoint_step(run: Path) -> int | None:
    """The step of ``run/checkpoint.safetensors``, or None if it has none."""
    path = run / "checkpoint.safetensors"
    if not path.is_file():
        return None
    position = load_checkpoint(path)[1].get("position")
    if not isinstance(position, dict) or not isinstance(position.get("step"), int):
        raise UsageError(f"--resume {run}: expected {path} to be a training checkpoint (with the trainer's position), "
                         f"got a checkpoint without one (a model file?)")  # fmt: skip
    return position["step"]


# -- a new run, or a replaced one ---------------------------------------------------------


class ReplacedRun(Callback):
    """The old run of ``folder``, moved aside while the new one starts.

    As a trainer callback it deletes the old run at the new one's first
    checkpoint; :meth:`restore` puts it back if that never came.
    """

    def __init__(self, folder: Path) -> None:
        self.folder, self.aside = folder, aside_of(folder)
        os.replace(folder, self.aside)
        self.kept = True

    def on_checkpoint(self, trainer, path) -> None:
        self.discard()

    def discard(self) -> None:
        """The new run stands: delete the old one."""
        if self.kept:
            shutil.rmtree(self.aside)
            self.kept = False

    def restore(self) -> bool:
        """Put the old run back if the new one wrote no checkpoint; True if it did so."""
        if not self.kept:
            return False
        shutil.rmtree(self.folder, ignore_errors=True)
        os.replace(self.aside, self.folder)
        self.kept = False
        return True


def aside_of(folder: Path) -> Path:
    return folder.parent / f".{folder.name}.replaced"


def recover_killed_overwrite(folder: Path, say) -> None:
    """Finish what a killed ``--overwrite`` of ``folder`` left: keep the new run if it checkpointed, else the old."""
    aside = aside_of(folder)
    if not aside.is_dir():
        return
    if (folder / "checkpoint.safetensors").is_file():
        shutil.rmtree(aside)
        return
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(aside, folder)
    say(f"restored the run in {folder}: its replacement (--overwrite) was stopped before its first checkpoint")


def prepare_new_run(folder: Path, overwrite: bool, say) -> ReplacedRun | None:
    """Check that ``folder`` may take a new run; with ``overwrite``, move its old run aside."""
    recover_killed_overwrite(folder, say)
    if not folder.exists():
        return None
    if not folder.is_dir():
        raise UsageError(f"--out {folder}: expected a folder for the run, got a file")
    if sorted(p.name for p in folder.iterdir()) == ["config.json"]:  # a run that failed before it saved anything
        (folder / "config.json").unlink()
        say(f"removed {folder / 'config.json'}: the run it began saved nothing (it stopped before its first checkpoint)")
    if holds_run(folder):
        if overwrite:
            foreign = sorted(p.name for p in folder.iterdir() if not _is_run_output(p))
            if foreign:
                raise UsageError(f"--out {folder}: expected a folder that holds only a run to replace, got other files too "
                                 f"({', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''}); --overwrite would delete them: "
                                 f"move them out first")  # fmt: skip
            return ReplacedRun(folder)
        raise UsageError(f"--out {folder}: expected a new folder, got one that holds a run; "
                         f"continue it with `rnnkit train --resume {folder}`, or replace it with --overwrite")  # fmt: skip
    others = sorted(p.name for p in folder.iterdir())
    if others:
        raise UsageError(f"--out {folder}: expected a new or empty folder, got one with other files ({', '.join(others[:3])}"
                         f"{', ...' if len(others) > 3 else ''}); rnnkit replaces only run folders, choose another")  # fmt: skip
    return None


# -- resuming -----------------------------------------------------------------------------------


def resume_config(run: Path, stored, fresh):
    """``fresh`` if it differs from the run's ``stored`` config only in :data:`SAFE_KEYS`, else a ConfigError naming the keys."""
    old, new = _flatten(configs.to_dict(stored)), _flatten(configs.to_dict(fresh))
    differing = [key for key in sorted(set(old) | set(new)) if old.get(key) != new.get(key) and key not in SAFE_KEYS]
    if differing:
        changes = ", ".join(f"{key} (run: {old.get(key)!r}, now: {new.get(key)!r})" for key in differing[:6])
        raise configs.ConfigError(f"--resume {run}: expected the run's own config (only {', '.join(SAFE_KEYS)} may change), "
                                  f"got different {changes}{' and more' if len(differing) > 6 else ''}")  # fmt: skip
    return fresh


def check_checkpoints(run: Path) -> None:
    """Read every checkpoint of the run (also ``baseline/``), so that a corrupt one stops us before any work, named."""
    for path in sorted([*run.rglob("checkpoint.safetensors"), *run.rglob("best.safetensors")]):
        load_checkpoint(path)


def _flatten(data: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


__all__ = ["SAFE_KEYS", "ReplacedRun", "check_checkpoints", "checkpoint_step", "prepare_new_run", "resume_config"]
