"""`rnnkit serve` and `rnnkit explain` on the command line: their options, defaults and errors."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from rnnkit.cli.main import main


@pytest.mark.parametrize("command", ["serve", "explain"])
def test_help(command, capsys):
    with pytest.raises(SystemExit) as exit:
        main([command, "--help"])
    assert exit.value.code == 0 and capsys.readouterr().out.startswith(f"usage: rnnkit {command}")


def test_serve_listens_on_loopback_unless_told_otherwise(tiny_runs, monkeypatch, capsys):
    pytest.importorskip("fastapi", reason="the serve extra is not installed (pip install 'rnnkit[serve]')")
    import rnnkit.serve

    calls = []
    monkeypatch.setattr(rnnkit.serve, "listen", lambda host, port: FakeListener(host, port))
    monkeypatch.setattr(rnnkit.serve, "serve", lambda app, listener: calls.append((app, *listener.getsockname())))
    assert main(["serve", str(tiny_runs["sentiment"]), str(tiny_runs["charlm"])]) == 0
    app, host, port = calls[-1]
    assert (host, port) == ("127.0.0.1", 8000) and "http://127.0.0.1:8000/" in capsys.readouterr().out
    assert {"/api/sentiment/predict", "/api/charlm/generate", "/api/runs"} <= {route.path for route in app.routes}
    assert main(["serve", str(tiny_runs["sentiment"]), "--host", "0.0.0.0", "--port", "8123"]) == 0
    assert calls[-1][1:] == ("0.0.0.0", 8123)
    assert main(["serve", str(tiny_runs["sentiment"]), str(tiny_runs["sentiment"])]) == 1
    assert "expected run folders with different names" in capsys.readouterr().err


class FakeListener:
    def __init__(self, host, port):
        self.address = (host, port)

    def getsockname(self):
        return self.address


def test_serve_says_in_one_line_that_its_port_is_taken_or_its_host_not_here(tiny_runs, capsys):
    pytest.importorskip("fastapi", reason="the serve extra is not installed (pip install 'rnnkit[serve]')")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", str(tiny_runs["sentiment"]), "--port", str(port)]) == 1
    out, err = capsys.readouterr()  # nothing said of serving first, and no uvicorn log
    assert out == "" and err == f"rnnkit serve: error: port: expected a port free on 127.0.0.1, got {port} (Address already in use)\n"
    assert main(["serve", str(tiny_runs["sentiment"]), "--host", "192.0.2.1"]) == 1  # TEST-NET-1: no machine's own address
    assert capsys.readouterr().err == ("rnnkit serve: error: host: expected an address of this machine, got '192.0.2.1' "
                                       "(Cannot assign requested address)\n")  # fmt: skip


def test_serve_answers_on_its_port_and_stops_at_ctrl_c_without_a_traceback(tiny_runs):
    pytest.importorskip("uvicorn", reason="the serve extra is not installed (pip install 'rnnkit[serve]')")
    with socket.socket() as probe:  # a port free a moment ago: the server binds it again at once
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "rnnkit", "serve", str(tiny_runs["sentiment"]), "--port", str(port)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert server.stdout.readline() == f"rnnkit serve: 1 run(s) at http://127.0.0.1:{port}/ (Ctrl-C stops)\n"
        deadline, answer = time.monotonic() + 60, None
        while answer is None and time.monotonic() < deadline and server.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/runs", timeout=5) as response:
                    answer = json.load(response)
            except OSError:
                time.sleep(0.2)
        assert answer is not None and tiny_runs["sentiment"].name in json.dumps(answer)
        server.send_signal(signal.SIGINT)
        _, err = server.communicate(timeout=60)
    finally:
        server.kill()
    assert server.returncode == 130 and "Traceback" not in err and err.endswith("rnnkit serve: interrupted by SIGINT; stopped\n")


def test_explain_prints_each_words_contribution_and_draws_a_strip(tiny_runs, tmp_path, capsys):
    png = tmp_path / "strip.png"
    assert main(["explain", str(tiny_runs["sentiment"]), "the film is not good .", "--png", str(png)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("negative (P(positive) = ")
    assert [line.split()[0] for line in lines[1:-1]] == ["the", "film", "is", "not", "good", "."]
    assert float(lines[4].split()[1]) < 0 and png.stat().st_size > 1000  # "not" counts against positive
    assert main(["explain", str(tiny_runs["charlm"]), "text"]) == 1
    assert "expected a sentiment run, got charlm" in capsys.readouterr().err
    (tmp_path / "a.png").mkdir()
    for bad, why in ((tmp_path / "strip.txt", ""), (tmp_path, " (a folder)"), (tmp_path / "a.png", " (a folder)")):
        assert main(["explain", str(tiny_runs["sentiment"]), "good", "--png", str(bad)]) == 2
        out, err = capsys.readouterr()  # refused before the model is read: nothing explained
        assert out == "" and err == f"rnnkit explain: error: --png: expected the path of a .png file, got {str(bad)!r}{why}\n"



def test_serve_refuses_a_run_whose_model_is_another_task_s(tiny_runs, tmp_path, capsys, monkeypatch):
    """A sentiment run holding charlm's model is refused by name at start-up, before the socket is bound
    (predict, eval and explain: tests/test_cli.py)."""
    import shutil

    run = tmp_path / "sentiment"
    shutil.copytree(tiny_runs["sentiment"], run)
    shutil.copy(tiny_runs["charlm"] / "model.safetensors", run / "model.safetensors")
    import rnnkit.serve as serving

    def no_listening(*args):  # were the run accepted, the test fails here instead of serving forever
        raise AssertionError("serve bound a socket for a run it should have refused")

    monkeypatch.setattr(serving, "listen", no_listening)
    assert main(["serve", str(run)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "expected the sentiment task's model, a SequenceClassifier" in err and "got a LanguageModel" in err
