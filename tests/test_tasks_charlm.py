"""Character-level LM: loaders, the Markov baselines against a plain reference, streaming evaluation, end to end."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
import torch

from rnnkit import tasks
from rnnkit.models import LanguageModel, LanguageModelConfig, RecurrentConfig
from rnnkit.tasks import charlm
from rnnkit.tasks.common import DataError
from tests.test_tasks_common import require_real_data


def write_text(path, n: int = 20000, seed: int = 0) -> str:
    """Text with structure an RNN can learn: words from a small lexicon, lines of a few words."""
    rng = np.random.default_rng(seed)
    words = ["the", "king", "queen", "is", "dead", "long", "live", "and", "so", "it", "goes"]
    out = []
    while sum(map(len, out)) < n:
        out.append(" ".join(rng.choice(words, size=rng.integers(2, 7))) + ".\n")
    text = "".join(out)
    path.write_text(text)
    return text


def test_loader_splits_a_text_of_your_own(tmp_path):
    text = write_text(tmp_path / "t.txt")
    train, val, test = charlm.load_texts(charlm.DataConfig(path=str(tmp_path / "t.txt"), val_fraction=0.1, test_fraction=0.2))
    assert train + val + test == text and len(test) == int(len(text) * 0.2) and len(val) == int(len(text) * 0.1)


@pytest.mark.parametrize("content,message", [
    (b"", r"expected text to learn from, found an empty file"),
    (b"caf\xe9 au lait\n", r"expected UTF-8 text \(text to learn from\), found byte 0xe9 at line 1"),
    (b"too short", r"expected enough text for train, validation and test parts, found 9 characters"),
])  # fmt: skip
def test_loader_rejects_bad_files_naming_them(tmp_path, content, message):
    path = tmp_path / "bad.txt"
    path.write_bytes(content)
    with pytest.raises(DataError, match=rf"{path}: {message}"):
        charlm.load_texts(charlm.DataConfig(path=str(path)))


def test_loader_holds_out_whole_plays_of_the_real_corpus():
    require_real_data(charlm.ARCHIVE)
    plays = charlm.read_plays()
    assert len(plays) == 42 and plays["romeo_and_juliet"].startswith("ROMEO AND JULIET")
    train, val, test = charlm.load_texts(charlm.DataConfig())
    assert test == plays["hamlet"] and val == plays["julius_caesar"] and plays["hamlet"] not in train
    with pytest.raises(DataError, match=r"data.val_plays/test_plays: expected names among .*, got \['hamlett'\]"):
        charlm.load_texts(charlm.DataConfig(test_plays=["hamlett"]))


# -- the Markov baselines against a plain dictionary implementation --------------------------------


def reference_bits(train: list[int], text: list[int], order: int, vocab: int, smoothing: str) -> float:
    """The smoothing formulas of the module docstring, one position at a time with dictionaries."""
    counts = [Counter() for _ in range(order + 1)]
    followers = [{} for _ in range(order + 1)]
    for n in range(order + 1):
        for i in range(n, len(train)):
            context = tuple(train[i - n : i])
            counts[n][context + (train[i],)] += 1
            counts[n][context] += 1
            followers[n].setdefault(context, set()).add(train[i])
    total = 0.0
    for i in range(1, len(text)):
        x = text[i]
        p = (counts[0][(x,)] + 1) / (counts[0][()] + vocab)
        for n in range(1, min(order, i) + 1):
            context = tuple(text[i - n : i])
            c, c_x = counts[n][context], counts[n][context + (x,)]
            if smoothing == "add-one":
                p = (c_x + 1) / (c + vocab)
            elif c > 0:
                types = len(followers[n][context])
                p = (c_x + types * p) / (c + types)
        total -= math.log2(p)
    return total / (len(text) - 1)


@pytest.mark.parametrize("smoothing", ["Witten-Bell", "add-one"])
def test_markov_model_matches_the_reference(smoothing):
    rng = np.random.default_rng(0)
    train = rng.integers(0, 5, 400) * (rng.random(400) < 0.7)  # skewed, with repeats
    text = rng.integers(0, 6, 120)  # a symbol never seen in training, too
    model = charlm.MarkovModel(train, order=3, vocab_size=6)
    for order in (1, 2, 3):
        expected = reference_bits(train.tolist(), text.tolist(), order, 6, smoothing)
        assert model.bits(text, order, smoothing) == pytest.approx(expected, rel=1e-12)


def test_witten_bell_is_a_distribution():
    rng = np.random.default_rng(1)
    model = charlm.MarkovModel(rng.integers(0, 4, 300), order=2, vocab_size=4)
    context = [1, 2]
    total = sum(2 ** -(model.bits(np.array(context + [x]), 2, "Witten-Bell") * 2 - model.bits(np.array(context), 2, "Witten-Bell"))
                for x in range(4))  # fmt: skip
    assert total == pytest.approx(1.0, abs=1e-12)


# -- the RNN -----------------------------------------------------------------------------------------


def test_bits_per_character_streams_through_chunks_like_one_call():
    torch.manual_seed(0)
    model = LanguageModel(LanguageModelConfig(7, 8, RecurrentConfig(cell="gru", hidden_size=8))).eval()
    ids = torch.randint(0, 7, (103,))
    with torch.no_grad():
        logits, _ = model(ids[:-1].unsqueeze(0))
    one_call = torch.nn.functional.cross_entropy(logits[0], ids[1:]).item() / math.log(2)
    assert charlm.bits_per_character(model, ids, chunk=10) == pytest.approx(one_call, rel=1e-5)


def test_trains_end_to_end_and_beats_the_uniform_baseline(tmp_path):
    write_text(tmp_path / "t.txt")
    task = tasks.get("charlm")
    overrides = ["trainer.max_steps=40", "trainer.eval_every=20", "data.eval_chars=None", "optim.lr=0.01"]
    config = task.config("fast", overrides, data=str(tmp_path / "t.txt"))
    report = task.train(config, tmp_path / "run", say=lambda message: None)
    rnn, uniform = report.rows["GRU language model"]["bits per character"], report.rows["uniform"]["bits per character"]
    assert rnn < uniform - 1.0  # the stated check: a bit per character better than uniform over the 18 symbols
    assert charlm.evaluate(config, tmp_path / "run").rows == report.rows
    sample = charlm.generate(config, tmp_path / "run", "the ", temperature=0.5, length=60, seed=1)
    assert sample.startswith("the ") and len(sample) == 64 and set(sample) <= set("the kingqueisdaolvf.\n")
    with pytest.raises(DataError, match=r"prime: expected one or more characters of the training text, got 'ROMEO:'"):
        charlm.generate(config, tmp_path / "run", "ROMEO:")
