"""``rnnkit export``: trained runs as ONNX (run by onnxruntime) and torch.export programs, equal to PyTorch."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from rnnkit.models import load_model
from rnnkit.tasks import charlm, export, forecasting, load_run, sentiment

onnxruntime = pytest.importorskip("onnxruntime")


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "rnnkit", "export", *map(str, args)], capture_output=True, text=True, timeout=300, cwd=cwd)


def session(path):
    return onnxruntime.InferenceSession(str(path))


@pytest.mark.parametrize("fmt", ["onnx", "pt2"])
def test_sentiment_exports_the_whole_model(tiny_runs, fmt, tmp_path):
    run = tiny_runs["sentiment"]
    out = tmp_path / f"sentiment.{fmt}"
    result = run_cli(run, "--format", fmt, "--out", out)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"wrote {out}"
    model, extra = load_model(run / "model.safetensors")
    sentences = ["This is not a good movie", "great", "The movie was not bad at all , and I liked the actors"]
    tokens, lengths = sentiment.encode(sentences, extra["vocabulary"], 10_000)  # a batch and a length not seen at export
    expected = sentiment.probabilities(model.eval(), sentences, extra["vocabulary"])
    if fmt == "onnx":
        probabilities = session(out).run(None, {"tokens": tokens.numpy(), "lengths": lengths.numpy()})[0]
    else:
        probabilities = torch.export.load(out).module()(tokens, lengths).detach().numpy()
    np.testing.assert_allclose(probabilities[:, 1], expected, atol=1e-5)


@pytest.mark.parametrize("fmt", ["onnx", "pt2"])
def test_forecasting_exports_the_whole_model(tiny_runs, fmt, tmp_path):
    run = tiny_runs["co2"]
    _, config = load_run(run)
    out = export.export("co2", config, run, fmt, tmp_path / f"co2.{fmt}")
    model, _ = load_model(run / "model.safetensors")
    window = torch.randn(5, config.data.window, 1)
    with torch.no_grad():
        expected = model.eval()(window)[0].numpy()
    got = session(out).run(None, {"window": window.numpy()})[0] if fmt == "onnx" else torch.export.load(out).module()(window).detach().numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert forecasting.Config is type(config)


def test_charlm_one_step_model_generates_the_same_characters_in_onnxruntime(tiny_runs, tmp_path):
    run = tiny_runs["charlm"]
    out = tmp_path / "step.onnx"
    assert run_cli(run, "--format", "onnx", "--out", out).returncode == 0
    model, extra = load_model(run / "model.safetensors")
    vocabulary = extra["vocabulary"]
    prime = charlm.encode("the ", vocabulary)
    expected = model.generate(prime.unsqueeze(0), 40, greedy=True)[0].tolist()
    step = session(out)
    names = [i.name for i in step.get_inputs()]
    rnn = model.rnn
    state = [np.zeros((rnn.num_layers * rnn.num_directions, 1, rnn.hidden_size), dtype=np.float32) for _ in names[1:]]
    logits = None
    for token in prime.tolist():  # prime through the one-step model, then greedy: argmax, feed back
        logits, *state = step.run(None, {"token": np.array([token]), **dict(zip(names[1:], state))})
    generated = []
    for _ in range(40):
        token = int(logits[0].argmax())
        generated.append(token)
        logits, *state = step.run(None, {"token": np.array([token]), **dict(zip(names[1:], state))})
    assert "".join(vocabulary[t] for t in generated) == "".join(vocabulary[t] for t in expected)


def test_bad_run_and_unsupported_task_get_one_line_errors(tiny_runs, tmp_path):
    missing = run_cli(tmp_path / "nothing-here", "--format", "onnx")
    assert missing.returncode == 1 and len(missing.stderr.strip().splitlines()) == 1, missing.stderr
    assert "nothing-here" in missing.stderr
    unsupported = run_cli(tiny_runs["translation"], "--format", "onnx", "--out", tmp_path / "t.onnx")
    assert unsupported.returncode == 1 and len(unsupported.stderr.strip().splitlines()) == 1, unsupported.stderr
    assert "expected a run of sentiment, co2, stocks, charlm, got translation" in unsupported.stderr
    assert not (tmp_path / "t.onnx").exists()
    bad_format = run_cli(tiny_runs["sentiment"], "--format", "tflite")
    assert bad_format.returncode == 2 and "invalid choice: 'tflite'" in bad_format.stderr


def test_charlm_one_step_pt2_program_generates_the_same_characters(tiny_runs, tmp_path):
    """The pt2 program of charlm's step (it failed inside torch.export: the input projection's GEMM rule compared
    the symbolic batch with a FLOP threshold, a guard that torch.export could not print)."""
    run = tiny_runs["charlm"]
    out = tmp_path / "step.pt2"
    result = run_cli(run, "--format", "pt2", "--out", out)
    assert result.returncode == 0, result.stderr
    model, extra = load_model(run / "model.safetensors")
    prime = charlm.encode("the ", extra["vocabulary"])
    expected = model.generate(prime.unsqueeze(0), 20, greedy=True)[0].tolist()
    step = torch.export.load(out).module()
    rnn = model.rnn
    state = [torch.zeros(rnn.num_layers * rnn.num_directions, 1, rnn.hidden_size) for _ in range(rnn.spec.state_count)]
    with torch.no_grad():
        for token in prime.tolist():  # batch 1, where the program was exported at batch 2
            logits, *state = step(torch.tensor([token]), *state)
        generated = []
        for _ in range(20):
            generated.append(int(logits[0].argmax()))
            logits, *state = step(torch.tensor([generated[-1]]), *state)
    assert generated == expected
