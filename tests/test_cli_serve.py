"""`rnnkit serve` and `rnnkit explain` on the command line: their options, defaults and errors."""

from __future__ import annotations

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
    monkeypatch.setattr(rnnkit.serve, "serve", lambda app, host, port: calls.append((app, host, port)))
    assert main(["serve", str(tiny_runs["sentiment"]), str(tiny_runs["charlm"])]) == 0
    app, host, port = calls[-1]
    assert (host, port) == ("127.0.0.1", 8000) and "http://127.0.0.1:8000/" in capsys.readouterr().out
    assert {"/api/sentiment/predict", "/api/charlm/generate", "/api/runs"} <= {route.path for route in app.routes}
    assert main(["serve", str(tiny_runs["sentiment"]), "--host", "0.0.0.0", "--port", "8123"]) == 0
    assert calls[-1][1:] == ("0.0.0.0", 8123)
    assert main(["serve", str(tiny_runs["sentiment"]), str(tiny_runs["sentiment"])]) == 1
    assert "expected run folders with different names" in capsys.readouterr().err


def test_explain_prints_each_words_contribution_and_draws_a_strip(tiny_runs, tmp_path, capsys):
    png = tmp_path / "strip.png"
    assert main(["explain", str(tiny_runs["sentiment"]), "the film is not good .", "--png", str(png)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("negative (P(positive) = ")
    assert [line.split()[0] for line in lines[1:-1]] == ["the", "film", "is", "not", "good", "."]
    assert float(lines[4].split()[1]) < 0 and png.stat().st_size > 1000  # "not" counts against positive
    assert main(["explain", str(tiny_runs["charlm"]), "text"]) == 1
    assert "expected a sentiment run, got charlm" in capsys.readouterr().err
