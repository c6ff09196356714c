"""Checkpoints: exact resume (also after SIGKILL), integrity checks, and no unpickling ever."""

from __future__ import annotations

import dataclasses
import os
import pickle
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rnnkit.training import CheckpointError, Trainer, load_checkpoint, save_checkpoint
from rnnkit.training.callbacks import read_metrics
from tests.support.resumable_run import build

ROOT = Path(__file__).resolve().parents[1]


def _losses(run_dir: Path) -> list[tuple[str, str, str]]:
    return [(r["step"], r["split"], r["loss"]) for r in read_metrics(run_dir / "metrics.csv")]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> list:
    run_dir = tmp_path_factory.mktemp("uninterrupted")
    trainer, (train, val) = build(str(run_dir))
    trainer.fit(train, val)
    return _losses(run_dir)


def test_resume_in_process_gives_identical_losses(tmp_path, uninterrupted):
    trainer, (train, val) = build(str(tmp_path))
    trainer.config.max_steps = 7  # stops mid-stream, between checkpoints at 6 and 9
    trainer.fit(train, val)
    assert _losses(tmp_path)[-1][0] == "7"
    resumed, (train, val) = build(str(tmp_path))
    resumed.resume(tmp_path / "checkpoint.safetensors")
    assert resumed.position.step == 7 and resumed.position.window > 0 and resumed.position.carry is not None
    resumed.fit(train, val)
    assert _losses(tmp_path) == uninterrupted  # string-exact: the CSV holds repr(float)


def test_resume_after_sigkill_gives_identical_losses(tmp_path, uninterrupted):
    command = [sys.executable, "-m", "tests.support.resumable_run", str(tmp_path)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with subprocess.Popen([*command, "fresh", "--slow", "0.05"], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True) as process:
        for line in process.stdout:
            if line.strip() == "step 10":  # the checkpoint of step 9 is on disk
                process.send_signal(signal.SIGKILL)
                break
        process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL
    killed_at = load_checkpoint(tmp_path / "checkpoint.safetensors")[1]["position"]["step"]
    assert killed_at in (9, 12)  # the kill may land just after the next checkpoint
    finished = subprocess.run([*command, "resume"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert finished.returncode == 0, finished.stderr
    assert _losses(tmp_path) == uninterrupted


def test_atomic_write_leaves_the_old_checkpoint_when_interrupted(tmp_path, monkeypatch):
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, {"w": torch.ones(3)}, {"step": 1})

    def crash(*args, **kwargs):
        raise KeyboardInterrupt  # a kill between writing the temp file and renaming it

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, {"w": torch.zeros(3)}, {"step": 2})
    monkeypatch.undo()
    tensors, metadata = load_checkpoint(path)
    assert metadata == {"step": 1} and torch.equal(tensors["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["c.safetensors"]  # the temp file was cleaned up


def test_truncated_file_is_refused(tmp_path):
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, {"w": torch.randn(50)}, {"step": 1})
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(CheckpointError, match="unreadable file .*truncated, corrupted or of another format"):
        load_checkpoint(path)


def test_corrupted_tensor_bytes_are_refused(tmp_path):
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, {"w": torch.randn(50)}, {"step": 1})
    data = bytearray(path.read_bytes())
    data[-7] ^= 0x10
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="SHA-256, got different bytes; the file is corrupted"):
        load_checkpoint(path)


def test_config_mismatch_is_refused(tmp_path):
    trainer, (train, val) = build(str(tmp_path))
    trainer.config.max_steps = 1
    trainer.fit(train, val)
    other, _ = build(str(tmp_path))
    other.model.rnn = type(other.model.rnn)(8, 10, num_layers=1)  # one layer instead of two
    with pytest.raises(CheckpointError, match=r"missing \[\] and unexpected \['rnn.bias_hh_l1'"):
        other.resume(tmp_path / "checkpoint.safetensors")


class _Sentinel:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def test_pickle_payload_is_refused_and_never_executed(tmp_path):
    sentinel = tmp_path / "pwned"
    path = tmp_path / "checkpoint.safetensors"
    path.write_bytes(pickle.dumps(_Sentinel(str(sentinel))))
    trainer, _ = build(str(tmp_path / "run"))
    with pytest.raises(CheckpointError, match="expected a safetensors file written by rnnkit"):
        trainer.resume(path)
    assert not sentinel.exists()
    # torch.save's zip-of-pickles format is refused the same way
    torch.save({"x": _Sentinel(str(sentinel))}, path)
    with pytest.raises(CheckpointError):
        load_checkpoint(path)
    assert not sentinel.exists()


def test_metadata_must_be_json(tmp_path):
    with pytest.raises(CheckpointError, match="metadata: expected JSON-serialisable values"):
        save_checkpoint(tmp_path / "c.safetensors", {"w": torch.ones(1)}, {"bad": object()})
    assert not (tmp_path / "c.safetensors").exists()


def test_a_run_that_had_spent_its_budget_trains_no_further_when_resumed(tmp_path):
    trainer, (train, val) = build(str(tmp_path))
    trainer.config.max_steps = 7
    trainer.fit(train, val)
    resumed, (train, val) = build(str(tmp_path))
    resumed.config.max_steps = 7
    resumed.resume(tmp_path / "checkpoint.safetensors").fit(train, val)
    assert resumed.position.step == 7 and _losses(tmp_path)[-1][0] == "7"


def test_a_run_stopped_early_stays_stopped_when_resumed(tmp_path):
    def early_stopping_run():
        trainer, data = build(str(tmp_path))
        config = dataclasses.replace(trainer.config, early_stopping_patience=1, early_stopping_min_delta=100.0)
        return Trainer(trainer.model, trainer.optimizer, config, scheduler=trainer.scheduler), data

    trainer, (train, val) = early_stopping_run()
    trainer.fit(train, val)
    stopped_at = trainer.position.step
    assert stopped_at == 8  # the second evaluation (every 4 steps) could not improve by 100
    resumed, (train, val) = early_stopping_run()
    resumed.resume(tmp_path / "checkpoint.safetensors").fit(train, val)
    assert resumed.position.step == stopped_at and _losses(tmp_path)[-1][0] == str(stopped_at)


def test_a_checkpoint_from_before_monitor_resumes_with_its_best_val_loss(tmp_path):
    from rnnkit.training.checkpoint import load_checkpoint, save_checkpoint

    trainer, (train, val) = build(str(tmp_path))
    trainer.fit(train, val)
    tensors, metadata = load_checkpoint(tmp_path / "checkpoint.safetensors")
    best = metadata["position"].pop("best_val")
    assert best is not None
    save_checkpoint(tmp_path / "old.safetensors", tensors, {**metadata, "position": {**metadata["position"], "best_val_loss": best}})
    resumed, _ = build(str(tmp_path))
    resumed.resume(tmp_path / "old.safetensors")
    assert resumed.position.best_val == best and not hasattr(resumed.position, "best_val_loss")


def test_atomic_writes_give_a_file_the_mode_open_would(tmp_path):
    from rnnkit.training.checkpoint import atomic_write_text

    mode = lambda path: stat.S_IMODE(path.stat().st_mode)  # noqa: E731
    shared, private = tmp_path / "REPORT.md", tmp_path / "config.json"
    before = os.umask(0o022)
    try:
        atomic_write_text(shared, "a report")  # readable by others, as run folders are meant to be shared and served
        assert mode(shared) == 0o644
        os.umask(0o077)
        atomic_write_text(private, "{}")
        assert mode(private) == 0o600
        shared.chmod(0o640)
        atomic_write_text(shared, "a new report")  # a file written again keeps the mode its owner gave it
        assert mode(shared) == 0o640 and shared.read_text() == "a new report"
    finally:
        os.umask(before)
