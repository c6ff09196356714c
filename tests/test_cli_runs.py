"""`rnnkit train` from the command line: resume bit for bit after SIGKILL, SIGINT and SIGTERM, no silent overwrite, faults while writing.

Every run is a tiny charlm (30 updates of a 32-unit GRU on 20,000 generated
characters, a checkpoint every 5), most of them in a subprocess through
tests/support/cli_faults.py, which can slow steps down or inject a fault.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

from rnnkit.cli.main import main
from rnnkit.training import Trainer, checkpoint, load_checkpoint
from rnnkit.training.callbacks import read_metrics
from tests.test_tasks_charlm import write_text

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
STEPS = 30


def command(args, faults=()) -> list[str]:
    return [sys.executable, "-m", "tests.support.cli_faults", *faults, "--", *map(str, args)]


def rnnkit(args, faults=(), env=ENV) -> subprocess.CompletedProcess:
    return subprocess.run(command(args, faults), capture_output=True, text=True, env=env, cwd=ROOT, timeout=180)


def start(args, faults=(), **kwargs) -> subprocess.Popen:
    return subprocess.Popen(command(args, faults), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, cwd=ROOT, **kwargs)


def wait_for(condition, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            pytest.fail(f"the command ended (exit {process.returncode}) before the test could act: {process.stderr.read()}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail("the command never reached the point the test waits for")
        time.sleep(0.02)


def wait_for_line(process: subprocess.Popen, start: str) -> None:
    for line in process.stdout:
        if line.startswith(start):
            return
    pytest.fail(f"no line starting with {start!r}; exit {process.wait()}: {process.stderr.read()}")


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


def step_of(run: Path) -> int:
    return load_checkpoint(run / "checkpoint.safetensors")[1]["position"]["step"]


def outcome(run: Path) -> dict:
    """What a finished run leaves, minus wall-clock times: it must be the same bit for bit however the run got there."""
    metrics = [{k: v for k, v in row.items() if k != "seconds"} for row in read_metrics(run / "metrics.csv")]
    return {"metrics": metrics, **{name: (run / name).read_bytes() for name in ("config.json", "model.safetensors", "results.json", "REPORT.md")}}


def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


class Reference:
    def __init__(self, root: Path) -> None:
        self.text = root / "text.txt"
        write_text(self.text)
        self.run = root / "reference"

    def train(self, run: Path, *extra) -> list:
        return ["train", "charlm", "--size", "fast", "--data", self.text, "--out", run,
                f"trainer.max_steps={STEPS}", "trainer.checkpoint_every=5", *extra]  # fmt: skip


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Reference:
    reference = Reference(tmp_path_factory.mktemp("cli_runs"))
    finished = rnnkit(reference.train(reference.run))
    assert finished.returncode == 0, finished.stderr
    return reference


# -- resume ---------------------------------------------------------------------------------


def test_sigkill_then_resume_equals_the_uninterrupted_run(tmp_path, reference):
    run = tmp_path / "run"
    process = start(reference.train(run), faults=["--step-delay", "0.1"])
    wait_for(lambda: (run / "checkpoint.safetensors").exists(), process)
    process.kill()
    process.communicate(timeout=30)
    killed_at = step_of(run)
    assert killed_at < STEPS and not (run / "model.safetensors").exists()
    resumed = rnnkit(["train", "--resume", run])
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.startswith(f"resuming charlm in {run} from the checkpoint of step {killed_at}\n")
    assert outcome(run) == outcome(reference.run)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_checkpoints_at_the_next_update_and_exits(tmp_path, reference, signum):
    run = tmp_path / "run"
    process = start(reference.train(run), faults=["--step-delay", "0.1"])
    wait_for(lambda: (run / "checkpoint.safetensors").exists(), process)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 128 + signum  # 130, 143
    step = step_of(run)
    assert 5 <= step < STEPS
    assert one_line(stderr) == (f"rnnkit train: interrupted by {signal.Signals(signum).name}; checkpoint of step {step} in "
                                f"{run / 'checkpoint.safetensors'}; continue with: rnnkit train --resume {run}")  # fmt: skip
    last_row = [r for r in read_metrics(run / "metrics.csv") if r["split"] == "train"][-1]
    assert int(last_row["step"]) == step  # the checkpoint is of the last update made: written at the next safe point


def test_a_second_ctrl_c_stops_at_once_and_keeps_the_last_checkpoint(tmp_path, reference):
    run = tmp_path / "run"
    process = start(reference.train(run, "trainer.checkpoint_every=1"), faults=["--stall-at-step", "2"])
    wait_for(lambda: (run / "checkpoint.safetensors").exists(), process)  # step 1's; step 2 is under way, then stalls
    process.send_signal(signal.SIGINT)
    time.sleep(0.5)
    assert process.poll() is None  # the first Ctrl-C waits for the update to end (which it never does here)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130
    assert one_line(stderr).startswith(f"rnnkit train: interrupted by SIGINT; checkpoint of step 1 in {run / 'checkpoint.safetensors'}")
    assert step_of(run) == 1  # stopping at the next safe point would have written step 2's
    assert not list(run.glob(".checkpoint*"))  # no temporary file left behind


def test_resume_takes_the_same_command_line_or_a_longer_budget(tmp_path, reference):
    run = tmp_path / "run"
    shutil.copytree(reference.run, run)
    assert main([str(a) for a in reference.train(run, "--resume", run)]) == 0  # the whole command line repeated
    assert outcome(run) == outcome(reference.run)  # a finished run: rewritten the same, not trained further
    assert main(["train", "charlm", "--size", "demo", "--resume", str(run)]) == 2  # another config
    assert main(["train", "--resume", str(run), f"trainer.max_steps={STEPS + 4}"]) == 0
    rows = [{k: v for k, v in r.items() if k != "seconds"} for r in read_metrics(run / "metrics.csv")]
    assert [int(r["step"]) for r in rows if r["split"] == "train"] == list(range(1, STEPS + 5))
    assert rows[: len(outcome(reference.run)["metrics"])] == outcome(reference.run)["metrics"]
    assert step_of(run) == STEPS + 4


def test_resume_refuses_a_changed_config_naming_the_keys(tmp_path, reference, capsys):
    run = tmp_path / "run"
    shutil.copytree(reference.run, run)
    before = snapshot(run)
    assert main(["train", "--resume", str(run), "model.rnn.hidden_size=37", "optim.lr=0.5"]) == 2
    assert capsys.readouterr().err == (
        f"rnnkit train: error: --resume {run}: expected the run's own config (only trainer.max_steps, trainer.max_epochs, "
        "trainer.checkpoint_every, trainer.progress may change), got different model.rnn.hidden_size (run: 32, now: 37), "
        "optim.lr (run: 0.002, now: 0.5)\n"
    )
    assert main(["train", "sentiment", "--resume", str(run)]) == 2
    assert f"TASK: expected charlm, the task of the run in {run}, got sentiment" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path / "nowhere")]) == 1
    assert "expected a run folder with config.json" in capsys.readouterr().err
    assert main(["train"]) == 2
    assert "TASK: expected a task to train" in capsys.readouterr().err
    assert snapshot(run) == before


def test_resume_refuses_a_corrupt_checkpoint_naming_it(tmp_path, reference):
    run = tmp_path / "run"
    shutil.copytree(reference.run, run)
    path = run / "checkpoint.safetensors"
    path.write_bytes(path.read_bytes()[:-100])
    before = snapshot(run)
    result = rnnkit(["train", "--resume", run])
    assert result.returncode == 1
    line = one_line(result.stderr)
    assert line.startswith(f"rnnkit train: error: checkpoint {str(path)!r}: expected a safetensors file written by rnnkit")
    assert "truncated, corrupted" in line
    assert snapshot(run) == before  # refused before anything started


# -- no silent overwrite --------------------------------------------------------------------


def test_train_into_a_run_refuses_and_offers_resume_or_overwrite(reference):
    before = snapshot(reference.run)
    result = rnnkit(reference.train(reference.run))
    assert result.returncode == 2
    assert one_line(result.stderr) == (f"rnnkit train: error: --out {reference.run}: expected a new folder, got one that holds a run; "
                                       f"continue it with `rnnkit train --resume {reference.run}`, or replace it with --overwrite")  # fmt: skip
    assert snapshot(reference.run) == before


def test_overwrite_interrupted_before_its_first_checkpoint_keeps_the_old_run(tmp_path, reference):
    run = tmp_path / "run"
    shutil.copytree(reference.run, run)
    before = snapshot(run)
    process = start(reference.train(run, "trainer.max_steps=12", "--overwrite"), faults=["--block-read"])
    wait_for_line(process, "[fault] blocked reading")  # loading the data
    assert (tmp_path / ".run.replaced").is_dir()  # the old run, moved aside
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130
    assert one_line(stderr) == f"rnnkit train: interrupted by SIGINT before the new run's first checkpoint; the previous run is back in {run}"
    assert snapshot(run) == before and sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_overwrite_killed_before_its_first_checkpoint_is_undone_by_the_next_train(tmp_path, reference, capsys):
    run = tmp_path / "run"
    shutil.copytree(reference.run, run)
    before = snapshot(run)
    os.replace(run, tmp_path / ".run.replaced")  # what a SIGKILL leaves: the old run aside, the new one without a checkpoint
    run.mkdir()
    (run / "config.json").write_text("{}")
    args = [str(a) for a in reference.train(run, "trainer.max_steps=12")]
    assert main(args) == 2  # the old run is back, and is not overwritten without --overwrite
    assert f"restored the run in {run}" in capsys.readouterr().out
    assert snapshot(run) == before
    assert main([*args, "--overwrite"]) == 0
    assert [p.name for p in tmp_path.iterdir()] == ["run"] and step_of(run) == 12


def test_train_refuses_a_folder_of_other_files_even_with_overwrite(tmp_path, reference, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    assert main([str(a) for a in reference.train(tmp_path, "--overwrite")]) == 2
    assert "expected a new or empty folder, got one with other files (notes.txt)" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_overwrite_refuses_a_run_folder_that_also_holds_files_of_yours(tmp_path, reference, capsys):
    run = tmp_path / "run"
    shutil.copytree(reference.run, run)
    (run / "notes.txt").write_text("mine")
    (run / "data").mkdir()
    (run / "data" / "series.csv").write_text("1\n2\n")
    before = snapshot(run)
    assert main([str(a) for a in reference.train(run, "--overwrite")]) == 2
    err = capsys.readouterr().err
    assert "got other files too (data, notes.txt); --overwrite would delete them: move them out first" in err
    assert snapshot(run) == before and sorted(p.name for p in tmp_path.iterdir()) == ["run"]


# -- faults while writing, and NaN ------------------------------------------------------------


def test_a_full_disk_keeps_the_previous_checkpoint(tmp_path, reference):
    run = tmp_path / "run"
    result = rnnkit(reference.train(run), faults=["--full-disk-at", "2"])  # step 10's checkpoint
    assert result.returncode == 1
    line = one_line(result.stderr)
    assert line.startswith(f"rnnkit train: error: {run / 'checkpoint.safetensors'}: expected to write ")
    assert line.endswith("bytes, got No space left on device; the previous file is unchanged")
    assert step_of(run) == 5 and not list(run.glob(".checkpoint*"))


def test_an_unwritable_folder_keeps_the_previous_checkpoint(tmp_path, reference, monkeypatch, capsys):
    run = tmp_path / "run"
    mkstemp, writes = tempfile.mkstemp, []

    def refuse_the_second_checkpoint(*args, prefix="", **kwargs):
        writes.append(prefix)
        if writes.count(".checkpoint.safetensors.") == 2:  # the folder became read-only before step 10's checkpoint
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
        return mkstemp(*args, prefix=prefix, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", refuse_the_second_checkpoint)
    assert main([str(a) for a in reference.train(run)]) == 1
    assert capsys.readouterr().err.endswith("bytes, got Permission denied; the previous file is unchanged\n")
    monkeypatch.undo()
    assert step_of(run) == 5


def test_a_nan_loss_never_reaches_a_checkpoint_also_when_resumed(tmp_path, reference, monkeypatch, capsys):
    run, nan_at = tmp_path / "run", []
    window_loss = Trainer._window_loss

    def poisoned(self, *args):
        loss, carry, lagged = window_loss(self, *args)
        return (loss * float("nan") if self.position.step + 1 in nan_at else loss), carry, lagged

    monkeypatch.setattr(Trainer, "_window_loss", poisoned)
    for step, args, kept in ((8, reference.train(run), 5), (13, ["train", "--resume", run], 10)):
        nan_at[:] = [step]
        assert main([str(a) for a in args]) == 1
        err = capsys.readouterr().err
        assert err.startswith(f"rnnkit train: error: loss: expected a finite value, got nan at step {step} ")
        assert err.endswith("training stopped, no checkpoint was written after it\n") and err.count("\n") == 1
        tensors, metadata = load_checkpoint(run / "checkpoint.safetensors")
        assert metadata["position"]["step"] == kept
        assert all(bool(torch.isfinite(t).all()) for t in tensors.values() if t.is_floating_point())


# -- interrupting the C++ kernel's first build ------------------------------------------------------


def test_ctrl_c_during_the_first_kernel_build_exits_cleanly(tmp_path, reference):
    if not (shutil.which("c++") or shutil.which("g++")) or os.environ.get("RNNKIT_ENGINE_NO_BUILD", "") not in ("", "0"):
        pytest.skip("no C++ compiler, or the build is switched off: there is no kernel build to interrupt")
    build = tmp_path / "build"
    command_line = command(reference.train(tmp_path / "run"))
    process = subprocess.Popen(command_line, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                               env={**ENV, "RNNKIT_BUILD_DIR": str(build)}, start_new_session=True)  # fmt: skip
    wait_for(lambda: (build / "build.ninja").exists(), process)
    os.killpg(process.pid, signal.SIGINT)  # as Ctrl-C in a terminal: the compiler gets it too
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130
    assert one_line(stderr) == "rnnkit train: interrupted by SIGINT before the first checkpoint; nothing to resume (run the same command again)"


def test_overwrite_deletes_the_old_run_at_the_new_ones_first_checkpoint(tmp_path, reference, monkeypatch, capsys):
    run = tmp_path / "run"
    shutil.copytree(reference.run, run)
    replace_with, writes = checkpoint._replace_with, []

    def full_after_the_first_checkpoint(path, payload):
        writes.append(path.name)
        if writes.count("checkpoint.safetensors") == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        replace_with(path, payload)

    monkeypatch.setattr(checkpoint, "_replace_with", full_after_the_first_checkpoint)
    assert main([str(a) for a in reference.train(run, "--overwrite")]) == 1
    assert "No space left on device" in capsys.readouterr().err
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["run"]  # the old run went at the first checkpoint; the new one stays
    assert step_of(run) == 5 and not (run / "model.safetensors").exists()
