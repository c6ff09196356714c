"""The seeds' claims (rnnkit.training.experiments): the tasks' invariants, each claim on its tiny config, the command."""

from __future__ import annotations

import csv
import re

import pytest
import torch

import rnnkit
from rnnkit.cli.main import main
from rnnkit.config import ConfigError, apply_overrides
from rnnkit.data.synthetic import country_language_task, country_language_words, future_token_task, marker_order_task
from rnnkit.models.long_range import open_carry_gate
from rnnkit.training.experiments import future_context, long_range, order

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _read_csv(path):
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _assert_png(path):
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 10_000, path  # a drawn figure, not an empty canvas


# -- the tasks ---------------------------------------------------------------------------------


def test_future_token_task_shifts_the_tokens_and_ignores_the_tail():
    x, y = future_token_task(50, 13, 4, vocab_size=5, seed=3)
    assert x.shape == y.shape == (50, 13) and x.dtype == y.dtype == torch.long
    assert ((x >= 0) & (x < 5)).all() and torch.equal(y[:, :9], x[:, 4:]) and (y[:, 9:] == -100).all()
    assert torch.equal(future_token_task(50, 13, 0, vocab_size=5, seed=3)[1], x)  # k = 0: the token itself
    with pytest.raises(ValueError, match=r"offset: expected an int in \[0, seq_len=13\), got 13"):
        future_token_task(5, 13, 13)


def test_country_language_task_puts_the_country_a_gap_before_the_query():
    x, y = country_language_task(64, 7, num_countries=5, seed=1)
    assert x.shape == (64, 8) and y.shape == (64,)
    assert torch.equal(x[:, 0], y) and (y < 5).all()
    assert ((x[:, 1:-1] >= 5) & (x[:, 1:-1] < 25)).all() and (x[:, -1] == 25).all()
    words = country_language_words(x[0], int(y[0]), 5)
    assert words.split()[-3:-1] == ["speak", "->"] and len(words.split()) == 8 + 2
    with pytest.raises(ValueError, match=r"num_countries: expected an int in \[2, 8\], got 11"):
        country_language_task(4, 7, num_countries=11)


def test_marker_order_task_comes_in_mirror_pairs_with_equal_bags():
    x, y = marker_order_task(40, 9, num_fillers=3, seed=2)
    assert x.shape == (40, 9) and ((x == 0).sum(1) == 1).all() and ((x == 1).sum(1) == 1).all()
    a_first = (x == 0).long().argmax(1) < (x == 1).long().argmax(1)
    assert torch.equal(y, a_first.long())
    first, second = x[0::2], x[1::2]
    assert torch.equal(y[0::2], 1 - y[1::2])
    assert torch.equal(first.sort(1).values, second.sort(1).values)  # the same bag of tokens
    assert torch.equal(first.clamp(min=2), second.clamp(min=2))  # only the markers moved
    assert y.float().mean() == 0.5
    with pytest.raises(ValueError, match="num_examples: expected an even number \\(mirror pairs\\), got 7"):
        marker_order_task(7, 9)


# -- each claim on its tiny config ---------------------------------------------------------------


def test_future_context_needs_the_backward_direction(tmp_path):
    config = future_context.FutureContextConfig(**future_context.QUICK)
    result = future_context.run(config, tmp_path)
    for cell in config.cells:
        uni, bi = result.accuracy(cell, False, 3), result.accuracy(cell, True, 3)
        assert bi >= uni + 0.30, (cell, uni, bi)  # measured 12.0% vs 95.5% (GRU)
        assert abs(uni - result.chance) < 0.05, uni  # x_{t+3} is independent of the past: chance, by construction
        assert result.accuracy(cell, False, 0) > 0.9 and result.accuracy(cell, True, 0) > 0.9
        counts = {r["parameters"] for r in result.rows if r["cell"] == cell}
        assert max(counts) / min(counts) < 1.05, counts  # equal parameter count, to a few percent
    rows = _read_csv(tmp_path / "future_context.csv")
    assert len(rows) == 2 * len(config.offsets) * len(config.cells) and float(rows[0]["val_accuracy"]) == result.rows[0]["val_accuracy"]
    _assert_png(tmp_path / "future_context.png")
    assert "| gru, bi (H=24) |" in future_context.report(result)


def test_long_range_memory_needs_gates_and_a_gradient_that_reaches(tmp_path):
    config = long_range.LongRangeConfig(**long_range.QUICK)
    result = long_range.run(config, tmp_path)
    far = max(config.gaps)
    assert result.get("rnn", min(config.gaps), "val_accuracy") > 0.9  # the RNN does learn the short gap
    assert result.get("gru", far, "val_accuracy") >= result.get("rnn", far, "val_accuracy") + 0.5  # measured 100% vs 11.7%
    assert abs(result.get("rnn", far, "val_accuracy") - result.chance) < 0.08
    assert result.get("rnn", far, "ratio_init") < 1e-6 < 1e-2 < result.get("gru", far, "ratio_init")  # measured 5e-12, 0.44
    assert len(_read_csv(tmp_path / "long_range.csv")) == len(config.gaps) * len(config.cells)
    _assert_png(tmp_path / "long_range.png")


def test_order_defeats_the_bag_of_words(tmp_path):
    config = order.OrderConfig(**order.QUICK)
    result = order.run(config, tmp_path)
    assert abs(result.accuracy("mlp") - 0.5) <= 0.05  # mirror pairs: exactly 50% up to rounding ties
    assert result.accuracy("gru") >= 0.9  # measured 100%
    assert [s for s, _ in result.curves["gru"]] == list(range(20, config.steps + 1, 20))
    curves = _read_csv(tmp_path / "order_curves.csv")
    assert [float(r["val_accuracy"]) for r in curves if r["model"] == "gru"] == [a for _, a in result.curves["gru"]]
    _assert_png(tmp_path / "order.png")


def test_the_ratio_is_measured_below_float32s_range():
    config = long_range.LongRangeConfig(hidden_size=8)
    probe = country_language_task(4, 300, seed=5)
    torch.manual_seed(0)
    ratio = long_range.ratio(long_range.classifier(config, "rnn"), probe)
    assert 0 < ratio < 1e-45  # float32 would have read 0


def test_open_carry_gate_sets_every_direction_and_refuses_the_elman_rnn():
    layer = rnnkit.GRU(3, 5, num_layers=2, bidirectional=True)
    open_carry_gate(layer, 4.0)
    for name in ("bias_ih_l0", "bias_ih_l1_reverse"):
        assert torch.all(getattr(layer, name)[5:10] == 4.0) and torch.all(getattr(layer, name.replace("ih", "hh"))[5:10] == 0)
    assert not torch.all(layer.bias_ih_l0[:5] == 4.0)  # the reset gate keeps its init
    with pytest.raises(ValueError, match="layer: expected an rnnkit LSTM or GRU .*, got RNN"):
        open_carry_gate(rnnkit.RNN(3, 5), 1.0)


@pytest.mark.parametrize("make,message", [
    (lambda: future_context.FutureContextConfig(cells=("elman",)), r"cells: expected a non-empty list of distinct values from \['rnn', 'lstm', 'gru'\], got \['elman'\]"),
    (lambda: future_context.FutureContextConfig(offsets=(3, 20)), r"offsets: expected a non-empty list of ints in \[0, seq_len=20\), got \[3, 20\]"),
    (lambda: long_range.LongRangeConfig(gaps=(1,)), r"gaps: expected a non-empty list of ints >= 2, got \[1\]"),
    (lambda: order.OrderConfig(val_examples=999), r"val_examples: expected an even number .*, got 999"),
    (lambda: order.OrderConfig(lr=0.0), r"lr: expected a positive number, got 0.0"),
])  # fmt: skip
def test_config_errors(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_overrides_reach_list_keys_and_fail_on_unknown_ones():
    config = apply_overrides(long_range.LongRangeConfig(), ["gaps=[10, 100]", "carry_bias=None"])
    assert config.gaps == (10, 100) and config.carry_bias is None
    with pytest.raises(ConfigError, match="gap: unknown key for LongRangeConfig"):
        apply_overrides(config, ["gap=3"])


# -- the command -----------------------------------------------------------------------------------


TINY = ['experiments=["gradients", "future-context", "long-range", "order"]', "gradients.steps=4", "gradients.explode_steps=4", "future_context.steps=4", "future_context.offsets=[1]",
        "long_range.steps=4", "long_range.gaps=[6]", "order.steps=4", "order.eval_every=2"]  # fmt: skip


def test_diagnose_all_writes_one_report_with_every_figure(tmp_path, capsys):
    threads = torch.get_num_threads()
    args = ["diagnose", "all", "--quick", "--out", str(tmp_path), "--seed", "3"]
    assert main(args + [arg for item in TINY for arg in ("--set", item)]) == 0
    assert torch.get_num_threads() == threads
    report = (tmp_path / "REPORT.md").read_text()
    headings = re.findall(r"^## (.*)$", report, flags=re.M)
    assert len(headings) == 4 and headings[1] == "Future context needs a bidirectional RNN"
    images = re.findall(r"!\[[^]]*\]\(([^)]+)\)", report)
    assert sorted(images) == sorted(["gradient_flow.png", "training_curves.png", "exploding.png", "future_context.png",
                                     "long_range.png", "order.png"])  # fmt: skip
    for image in images:
        _assert_png(tmp_path / image)
    assert "seed 3." in report and "| 6 |" in report and not (tmp_path / "REPORT.md.part").exists()
    for name in ("summary.csv", "future_context.csv", "long_range.csv", "order.csv"):
        assert _read_csv(tmp_path / name), name
    assert "rnnkit diagnose all:" in capsys.readouterr().out


def test_each_experiment_is_a_subcommand(tmp_path):
    args = ["diagnose", "order", "--quick", "--out", str(tmp_path), "--set", "steps=4", "--set", "eval_every=2", "--set", "models=[\"mlp\"]"]
    assert main(args) == 0
    report = (tmp_path / "REPORT.md").read_text()
    assert re.findall(r"^## (.*)$", report, flags=re.M) == ["Order needs recurrence"] and "| bag-of-words MLP |" in report


def test_diagnose_subcommand_errors(capsys):
    assert main(["diagnose", "--steps", "5", "order"]) == 2
    assert capsys.readouterr().err.startswith("rnnkit diagnose order: error: --steps: expected after the experiment name")
    assert main(["diagnose", "all", "--set", "long_range.gap=3"]) == 2
    assert capsys.readouterr().err.startswith("rnnkit diagnose all: error: long_range.gap: unknown key for LongRangeConfig")
    assert main(["diagnose", "all", "--set", 'experiments=["gradient"]']) == 2
    assert capsys.readouterr().err.startswith("rnnkit diagnose all: error: experiments: expected a non-empty list of distinct values")
